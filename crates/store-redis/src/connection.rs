//! The connection to one server or to a cluster, and how requests go over it.

use std::time::Instant;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, NodeAddress};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, RedisError, Value};
use tokio::sync::Mutex;

use crate::config::{RedisConfig, Topology};
use crate::error::{CallError, OpenError};

/// Requests to the server or cluster. Every request is pipelined on one connection per node,
/// shared by all callers.
pub(crate) enum Connection {
    /// One server, over a connection that is replaced when it breaks.
    Single(Box<SingleNode>),
    /// A cluster: the client keeps a connection per node, follows the slot map and
    /// redirections, and re-sends a request after a redirection or a lost connection. The
    /// append script recognises its own re-sent copy (`script.rs`), and the error finally
    /// returned may be a later copy's: every error of an append is an unknown outcome
    /// (`error.rs`).
    Cluster(ClusterConnection),
}

/// One server. `redis`'s `ConnectionManager` reconnects too, but it reports a failure to
/// reconnect and a failure after sending alike; here a failure to connect is known to have
/// sent nothing, which keeps an append's outcome known.
pub(crate) struct SingleNode {
    client: Client,
    config: AsyncConnectionConfig,
    /// Held while connecting, so that callers wait for one attempt instead of making their own.
    state: Mutex<SingleState>,
}

#[derive(Default)]
struct SingleState {
    /// The current connection and its generation; `None` until the first request, or after
    /// a connection broke or an attempt failed.
    current: Option<(u64, MultiplexedConnection)>,
    /// Connection attempts so far: the generation of the next connection.
    attempts: u64,
    /// When and why the last attempt failed.
    failure: Option<(Instant, RedisError)>,
}

impl SingleNode {
    /// The current connection, connecting if there is none. A caller that waited while an
    /// attempt failed gets that failure instead of making an attempt of its own, so that no
    /// caller waits for more than one connection timeout.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), CallError> {
        let arrived = Instant::now();
        let mut state = self.state.lock().await;
        if let Some((generation, connection)) = state.current.as_ref() {
            return Ok((*generation, connection.clone()));
        }
        if let Some((failed_at, failure)) = state.failure.as_ref()
            && *failed_at >= arrived
        {
            return Err(CallError::NotSent(failure.clone()));
        }
        state.attempts += 1;
        let generation = state.attempts;
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
        {
            Ok(connection) => {
                state.current = Some((generation, connection.clone()));
                state.failure = None;
                Ok((generation, connection))
            }
            Err(error) => {
                state.failure = Some((Instant::now(), error.clone()));
                Err(CallError::NotSent(error))
            }
        }
    }

    /// Drops connection `generation` if it is still the current one: the next request
    /// connects anew.
    async fn forget(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state
            .current
            .as_ref()
            .is_some_and(|(current, _)| *current == generation)
        {
            state.current = None;
        }
    }

    async fn send(&self, cmd: &Cmd) -> Result<Value, CallError> {
        let (generation, mut connection) = self.connection().await?;
        match connection.req_packed_command(cmd).await {
            Ok(value) => Ok(value),
            Err(error) => {
                if error.is_unrecoverable_error() {
                    self.forget(generation).await;
                }
                Err(CallError::Sent(error))
            }
        }
    }
}

impl Connection {
    /// Connects as `config` says, and checks that the server is of that topology.
    pub(crate) async fn open(config: &RedisConfig) -> Result<Self, OpenError> {
        match &config.topology {
            Topology::Single { url } => {
                let client = Client::open(url.as_str()).map_err(OpenError::Connect)?;
                let single = SingleNode {
                    client,
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(config.connection_timeout))
                        .set_response_timeout(Some(config.response_timeout)),
                    state: Mutex::new(SingleState::default()),
                };
                let connection = Self::Single(Box::new(single));
                let info: String = connection
                    .query(redis::cmd("INFO").arg("cluster"))
                    .await
                    .map_err(|error| match error {
                        CallError::NotSent(error) | CallError::Sent(error) => {
                            OpenError::Connect(error)
                        }
                        CallError::Reply(message) => OpenError::WrongTopology(message),
                    })?;
                if info.lines().any(|line| line.trim() == "cluster_enabled:1") {
                    return Err(OpenError::WrongTopology(
                        "the server is a Redis Cluster node: configure the store for a cluster"
                            .into(),
                    ));
                }
                Ok(connection)
            }
            Topology::Cluster { urls } => {
                let mut builder = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(config.connection_timeout)
                    .response_timeout(config.response_timeout)
                    .retries(config.cluster_retries);
                if !config.cluster_address_map.is_empty() {
                    let parse = |address: &str| {
                        address.parse::<NodeAddress>().map_err(|_| {
                            OpenError::InvalidConfig(format!("{address:?} is not host:port"))
                        })
                    };
                    let map = config
                        .cluster_address_map
                        .iter()
                        .map(|(announced, reachable)| Ok((parse(announced)?, parse(reachable)?)))
                        .collect::<Result<_, OpenError>>()?;
                    builder = builder.node_address_map(map);
                }
                let client = builder.build().map_err(OpenError::Connect)?;
                let cluster = client
                    .get_async_connection()
                    .await
                    .map_err(OpenError::Connect)?;
                let connection = Self::Cluster(cluster);
                Ok(connection)
            }
        }
    }

    /// Whether this is a cluster, whose keys of different slots cannot meet in one script.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Sends `cmd` and returns the raw reply, server errors included as errors.
    pub(crate) async fn send(&self, cmd: &Cmd) -> Result<Value, CallError> {
        let value = match self {
            Self::Single(single) => single.send(cmd).await?,
            Self::Cluster(cluster) => cluster
                .clone()
                .req_packed_command(cmd)
                .await
                .map_err(CallError::Sent)?,
        };
        value.extract_error().map_err(CallError::Sent)
    }

    /// Sends a command that reads or whose repetition is harmless, and converts the reply.
    /// On one server, a request that finds the connection broken (the server restarted since
    /// the last request) is sent once more over a new one.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, CallError> {
        let value = match self.send(cmd).await {
            Err(CallError::Sent(error))
                if matches!(self, Self::Single(_)) && error.is_unrecoverable_error() =>
            {
                self.send(cmd).await?
            }
            other => other?,
        };
        convert(value)
    }
}

/// Converts a reply, or says what was wrong with it.
pub(crate) fn convert<T: FromRedisValue>(value: Value) -> Result<T, CallError> {
    redis::from_redis_value(value)
        .map_err(|error| CallError::Reply(format!("unexpected reply from Redis: {error}")))
}
