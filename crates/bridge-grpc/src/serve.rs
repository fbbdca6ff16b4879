//! Serving any Rust [`ClientLogic`] as `angzarr.v1.BusinessLogic`, over TCP or a Unix socket.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use angzarr_ports::ClientLogic;
use angzarr_proto::v1::business_logic_server::{BusinessLogic, BusinessLogicServer};
use angzarr_proto::v1::{BusinessReply, ContextualCommand};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::status::error_status;
use crate::target::{Target, TargetError};

/// Limits of [`serve_logic`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeConfig {
    /// The largest command or reply, in bytes.
    pub max_message_bytes: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Why the logic could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The target to listen on is not valid.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The address or socket path could not be bound.
    #[error("cannot listen on {target}: {source}")]
    Bind {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The transport failed.
    #[error("the client logic server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound listener for [`serve_logic`].
#[derive(Debug)]
pub enum LogicListener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix domain socket listener.
    Unix(UnixListener),
}

impl From<TcpListener> for LogicListener {
    fn from(listener: TcpListener) -> Self {
        LogicListener::Tcp(listener)
    }
}

impl From<UnixListener> for LogicListener {
    fn from(listener: UnixListener) -> Self {
        LogicListener::Unix(listener)
    }
}

impl LogicListener {
    /// Listens on `target`, written as for [`GrpcLogic::new`](crate::GrpcLogic::new): port 0
    /// picks a free port. A socket file left by a server that died is replaced; one that a
    /// live server answers on is not ([`ServeError::Bind`]).
    pub async fn bind(target: &str) -> Result<Self, ServeError> {
        let bind_error = |source| ServeError::Bind {
            target: target.to_owned(),
            source,
        };
        match target.parse::<Target>()? {
            Target::Tcp(uri) => {
                let address = uri.trim_start_matches("http://");
                let listener = TcpListener::bind(address).await.map_err(bind_error)?;
                Ok(LogicListener::Tcp(listener))
            }
            Target::Unix(path) => {
                // Refused: the file is there but nobody listens, the remains of a dead server.
                if let Err(error) = UnixStream::connect(&path).await
                    && error.kind() == io::ErrorKind::ConnectionRefused
                {
                    std::fs::remove_file(&path).map_err(bind_error)?;
                }
                Ok(LogicListener::Unix(
                    UnixListener::bind(&path).map_err(bind_error)?,
                ))
            }
        }
    }

    /// The target a [`GrpcLogic`](crate::GrpcLogic) reaches this listener at (`http://` and
    /// the bound address, or `unix:` and the path).
    pub fn target(&self) -> io::Result<Target> {
        match self {
            LogicListener::Tcp(listener) => {
                Ok(Target::Tcp(format!("http://{}", listener.local_addr()?)))
            }
            LogicListener::Unix(listener) => {
                let address = listener.local_addr()?;
                let path = address.as_pathname().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "an unnamed Unix socket")
                })?;
                Ok(Target::Unix(path.to_owned()))
            }
        }
    }
}

/// `BusinessLogic` over a [`ClientLogic`].
struct LogicService {
    logic: Arc<dyn ClientLogic>,
}

/// Aborts the task when the call is dropped (the client gave up), so that abandoned work stops.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tonic::async_trait]
impl BusinessLogic for LogicService {
    async fn handle(
        &self,
        request: Request<ContextualCommand>,
    ) -> Result<Response<BusinessReply>, Status> {
        let logic = Arc::clone(&self.logic);
        let command = request.into_inner();
        // On a task of its own, so that a panic in the logic answers INTERNAL instead of
        // taking the connection down (which the client would take for an unavailable server).
        let mut task = AbortOnDrop(tokio::spawn(async move { logic.handle(command).await }));
        match (&mut task.0).await {
            Ok(Ok(reply)) => Ok(Response::new(reply)),
            Ok(Err(error)) => Err(error_status(&error)),
            Err(error) => Err(Status::internal(format!(
                "the client logic panicked: {error}"
            ))),
        }
    }
}

/// Serves `logic` as `angzarr.v1.BusinessLogic` on `listener` until `shutdown` completes,
/// then lets calls in flight finish. A Unix socket's file is removed when the server stops.
///
/// Errors the logic returns become statuses as [`error_status`](crate::error_status) says, so
/// that a [`GrpcLogic`](crate::GrpcLogic) calling this server sees the same errors as the
/// logic returned. A panic in the logic answers `INTERNAL`.
pub async fn serve_logic(
    logic: Arc<dyn ClientLogic>,
    listener: impl Into<LogicListener>,
    config: &ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let service = BusinessLogicServer::from_arc(Arc::new(LogicService { logic }))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let router = tonic::transport::Server::builder()
        .http2_adaptive_window(Some(false))
        .add_service(service);
    match listener.into() {
        LogicListener::Tcp(listener) => {
            // Without TCP_NODELAY, a small reply waits for the client's delayed ACK.
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?;
        }
        LogicListener::Unix(listener) => {
            let path: Option<PathBuf> = listener
                .local_addr()
                .ok()
                .and_then(|address| address.as_pathname().map(ToOwned::to_owned));
            let served = router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                .await;
            if let Some(path) = path {
                let _ = std::fs::remove_file(path);
            }
            served?;
        }
    }
    Ok(())
}
