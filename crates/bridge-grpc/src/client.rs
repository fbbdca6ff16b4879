//! [`GrpcLogic`]: client logic in another process, called over gRPC.

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use angzarr_ports::{BusinessReply, ClientLogic, ClientLogicError, ContextualCommand, async_trait};
use prost::Message;
use prost::bytes::Bytes;
use tokio::time::Instant;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::codec::BytesCodec;
use crate::status::status_error;
use crate::target::{Target, TargetError};

const HANDLE_PATH: &str = "/angzarr.v1.BusinessLogic/Handle";

/// How [`GrpcLogic`] reaches the logic, and how long it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcConfig {
    /// How long one connection attempt may take (TCP; a Unix socket connects at once or
    /// fails).
    pub connect_timeout: Duration,
    /// How long one command may take, retries included: [`ClientLogic::handle`] answers
    /// within it. Also sent as the call's `grpc-timeout`, so that the server can give up too.
    pub request_timeout: Duration,
    /// How many times a call that found the logic unavailable is sent again.
    pub retries: u32,
    /// The wait before the first retry; it doubles for each following one.
    pub backoff: Duration,
    /// The largest command or reply, in bytes.
    pub max_message_bytes: usize,
    /// TCP keepalive on the connection, so that a peer that vanished without closing it (a
    /// host gone, a partition) is noticed while idle; `None` disables it.
    pub tcp_keepalive: Option<Duration>,
    /// HTTP/2 pings while calls are in flight, at this interval; `None` (the default)
    /// disables them. Some servers (grpc-go's default policy) close connections that ping
    /// more often than every five minutes.
    pub http2_keepalive: Option<Duration>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retries: 2,
            backoff: Duration::from_millis(20),
            max_message_bytes: 4 * 1024 * 1024,
            tcp_keepalive: Some(Duration::from_secs(10)),
            http2_keepalive: None,
        }
    }
}

/// Client logic served by another process (any language) as the gRPC service
/// `angzarr.v1.BusinessLogic`, reached over TCP or a Unix domain socket.
///
/// Connects on first use, and again after the connection is lost, so that a logic server
/// that restarts is used again without restarting the host. Calls that find the logic
/// unavailable are sent again ([`GrpcConfig::retries`]): the logic is a pure decision and
/// nothing is appended before its reply, so a second call can only give a second, equal,
/// answer. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct GrpcLogic {
    target: Target,
    grpc: tonic::client::Grpc<Channel>,
    config: GrpcConfig,
}

impl fmt::Debug for GrpcLogic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcLogic")
            .field("target", &self.target)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GrpcLogic {
    /// Logic served at `target`: `http://host:port`, `host:port` or `unix:/path/to.sock`.
    /// Nothing is connected yet: an unreachable target is reported by the first command, as
    /// [`ClientLogicError::Unavailable`].
    ///
    /// # Panics
    /// Outside a Tokio runtime (the connection is driven by a task of the current runtime,
    /// which must outlive this logic).
    pub fn new(target: &str, config: GrpcConfig) -> Result<Self, TargetError> {
        Ok(Self::with_target(target.parse()?, config))
    }

    /// Logic served at an already parsed `target`; see [`new`](Self::new).
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn with_target(target: Target, config: GrpcConfig) -> Self {
        let endpoint = match Endpoint::from_shared(target.to_string()) {
            Ok(endpoint) => endpoint,
            // `Target` only holds URIs that parsed and socket paths, which tonic takes as is.
            Err(error) => unreachable!("a parsed target was refused by tonic: {error}"),
        };
        let mut endpoint = endpoint
            .connect_timeout(config.connect_timeout)
            // A small request must not wait for a delayed ACK.
            .tcp_nodelay(true)
            .tcp_keepalive(config.tcp_keepalive)
            // Messages are small and one at a time: the BDP probe's pings only add work.
            .http2_adaptive_window(false);
        if let Some(interval) = config.http2_keepalive {
            endpoint = endpoint
                .http2_keep_alive_interval(interval)
                .keep_alive_timeout(interval);
        }
        let grpc = tonic::client::Grpc::new(endpoint.connect_lazy())
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        Self {
            target,
            grpc,
            config,
        }
    }

    /// Where the logic is served.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The configuration this logic was built with.
    pub fn config(&self) -> &GrpcConfig {
        &self.config
    }

    /// One call, the reply's bytes undecoded.
    async fn call(&self, command: Bytes, timeout: Duration) -> Result<Bytes, Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|error| Status::from_error(error.into()))?;
        let mut request = Request::new(command);
        request.set_timeout(timeout);
        let path = PathAndQuery::from_static(HANDLE_PATH);
        Ok(grpc.unary(request, path, BytesCodec).await?.into_inner())
    }
}

/// What one failed attempt means.
enum Failure {
    /// The logic could not be reached, or the connection died: worth another attempt.
    Transport(String),
    /// The logic said it is unavailable: worth another attempt.
    Unavailable(ClientLogicError),
    /// The logic answered this.
    Final(ClientLogicError),
}

fn classify(status: &Status, deadline: Duration) -> Failure {
    // Statuses made up by the client from a transport error carry that error as their source
    // (tonic sets it); statuses the server sent carry none.
    if status.source().is_some() {
        return Failure::Transport(describe(status));
    }
    match status.code() {
        Code::Unavailable => Failure::Unavailable(status_error(status, deadline)),
        _ => Failure::Final(status_error(status, deadline)),
    }
}

fn plural(attempts: u32) -> String {
    match attempts {
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    }
}

/// The chain of errors under a status made up from a transport error, outermost first.
fn describe(status: &Status) -> String {
    let mut text = String::new();
    let mut source = status.source();
    while let Some(error) = source {
        let part = error.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        source = error.source();
    }
    text
}

#[async_trait]
impl ClientLogic for GrpcLogic {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let deadline = self.config.request_timeout;
        let expires = Instant::now() + deadline;
        let command = Bytes::from(command.encode_to_vec());
        let mut attempt: u32 = 0;
        let mut first_failure: Option<String> = None;
        loop {
            let remaining = expires.saturating_duration_since(Instant::now());
            let status =
                match tokio::time::timeout_at(expires, self.call(command.clone(), remaining)).await
                {
                    Ok(Ok(reply)) => {
                        return BusinessReply::decode(reply).map_err(|error| {
                            ClientLogicError::InvalidReply(format!(
                                "{}: the reply is not a BusinessReply: {error}",
                                self.target
                            ))
                        });
                    }
                    Ok(Err(status)) => status,
                    Err(_) if attempt == 0 => return Err(ClientLogicError::Timeout(deadline)),
                    // A retry only happens because the logic was unavailable: that is the news.
                    Err(_) => {
                        return Err(ClientLogicError::Unavailable(format!(
                            "{}: no answer within {deadline:?} ({})",
                            self.target,
                            plural(attempt + 1)
                        )));
                    }
                };
            // The server gives up on the call's `grpc-timeout` with a status of its own.
            if Instant::now() >= expires {
                return Err(ClientLogicError::Timeout(deadline));
            }
            let failure = classify(&status, deadline);
            if let Failure::Final(error) = failure {
                return Err(error);
            }
            let backoff = self.config.backoff.saturating_mul(1 << attempt.min(16));
            if attempt >= self.config.retries || Instant::now() + backoff >= expires {
                return Err(match failure {
                    Failure::Transport(reason) => {
                        // How the first attempt failed (a connection lost mid-call, say) can
                        // differ from how the last did (refused): both are worth reading.
                        let first = match first_failure {
                            Some(first) if first != reason => format!("; first attempt: {first}"),
                            _ => String::new(),
                        };
                        ClientLogicError::Unavailable(format!(
                            "{}: {reason} ({}){first}",
                            self.target,
                            plural(attempt + 1)
                        ))
                    }
                    Failure::Unavailable(error) | Failure::Final(error) => error,
                });
            }
            if let Failure::Transport(reason) = &failure {
                first_failure.get_or_insert_with(|| reason.clone());
            }
            tracing::debug!(target = %self.target, attempt, "client logic unavailable, retrying");
            tokio::time::sleep(backoff).await;
            attempt += 1;
        }
    }
}
