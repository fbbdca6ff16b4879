//! Fixtures of the tests: logic served in process or by a child process (this test binary
//! run again), a server that misbehaves on purpose, and the conformance harness.

// Each test binary uses part of this module.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use angzarr_bridge_grpc::{GrpcConfig, GrpcLogic, LogicListener, ServeConfig, serve_logic};
use angzarr_conformance::bridge::{BridgeHarness, Fault};
use angzarr_ports::{BusinessReply, ClientLogic, ClientLogicError, ContextualCommand, async_trait};
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, StdError, http};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

/// How the logic is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A Unix domain socket, as a sidecar would be.
    Unix,
    /// Loopback TCP.
    Tcp,
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

/// A fresh target to listen on: a new socket path in `dir`, or a free loopback port.
pub fn fresh_target(transport: Transport, dir: &Path) -> String {
    match transport {
        Transport::Unix => {
            let n = SOCKETS.fetch_add(1, Ordering::Relaxed);
            format!("unix:{}", dir.join(format!("logic-{n}.sock")).display())
        }
        Transport::Tcp => "127.0.0.1:0".to_owned(),
    }
}

/// A target nothing listens on.
pub fn unreachable_target(transport: Transport, dir: &Path) -> String {
    match transport {
        Transport::Unix => format!("unix:{}", dir.join("nobody-listens.sock").display()),
        Transport::Tcp => {
            // Bound then closed: the port is free, and refuses connections.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        }
    }
}

/// Logic behind a bridge, with what serves it: dropping it stops the server or kills the
/// child process.
pub struct Served {
    pub logic: GrpcLogic,
    stop: Option<oneshot::Sender<()>>,
    child: Option<tokio::process::Child>,
}

#[async_trait]
impl ClientLogic for Served {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        self.logic.handle(command).await
    }
}

/// A server running in this process until `stop` is sent or dropped.
pub struct Server {
    pub target: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops the server and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Serves `logic` on `target` in this process.
pub async fn start(logic: Arc<dyn ClientLogic>, target: &str) -> Server {
    let listener = LogicListener::bind(target).await.unwrap();
    let target = listener.target().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve_logic(logic, listener, &ServeConfig::default(), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Server { target, stop, task }
}

/// `logic` served in this process over `transport` and called through a [`GrpcLogic`].
pub async fn served(
    logic: Arc<dyn ClientLogic>,
    transport: Transport,
    dir: &Path,
    config: GrpcConfig,
) -> Served {
    let server = start(logic, &fresh_target(transport, dir)).await;
    Served {
        logic: GrpcLogic::new(&server.target, config).unwrap(),
        stop: Some(server.stop),
        child: None,
    }
}

/// The fault server (see [`FaultService`]) over `transport`, called through a [`GrpcLogic`].
pub async fn fault_server(transport: Transport, dir: &Path, config: GrpcConfig) -> Served {
    let listener = LogicListener::bind(&fresh_target(transport, dir))
        .await
        .unwrap();
    let target = listener.target().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder().add_service(FaultService);
    let shutdown = async {
        let _ = stopped.await;
    };
    tokio::spawn(async move {
        match listener {
            LogicListener::Tcp(listener) => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
            LogicListener::Unix(listener) => {
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                router
                    .serve_with_incoming_shutdown(incoming, shutdown)
                    .await
            }
        }
        .unwrap();
    });
    Served {
        logic: GrpcLogic::new(&target, config).unwrap(),
        stop: Some(stop),
        child: None,
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

// --- The misbehaving server: raw bytes in and out, so that it can answer anything. ---

/// What the fault server answers, by the domain of the command.
pub const FAILS_MESSAGE: &str = "ValueError: the handler raised";

/// Serves `angzarr.v1.BusinessLogic` with a fault per domain: `fault-fails` answers an
/// `UNKNOWN` status (what an exception gives in most gRPC runtimes), `fault-hangs` never
/// answers, `fault-malformed` answers bytes that are not a `BusinessReply`.
#[derive(Debug, Clone)]
pub struct FaultService;

impl NamedService for FaultService {
    const NAME: &'static str = "angzarr.v1.BusinessLogic";
}

impl<B> tonic::codegen::Service<http::Request<B>> for FaultService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.unary(FaultHandler, request).await)
        })
    }
}

/// Not a `BusinessReply`: a field tag with the invalid wire type 7.
pub const MALFORMED: &[u8] = &[0x0f, 0x01, 0x02];

struct FaultHandler;

impl UnaryService<Bytes> for FaultHandler {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let command = ContextualCommand::decode(request.into_inner())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let domain = command
                .command
                .and_then(|book| book.cover)
                .map(|cover| cover.domain)
                .unwrap_or_default();
            match domain.as_str() {
                "fault-fails" => Err(Status::unknown(FAILS_MESSAGE)),
                "fault-hangs" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Err(Status::internal("woke up"))
                }
                "fault-malformed" => Ok(Response::new(Bytes::from_static(MALFORMED))),
                other => Err(Status::not_found(format!("no fault for domain {other:?}"))),
            }
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

// --- A logic server in a child process: this test binary, run again. ---

const MODE_VAR: &str = "ANGZARR_BRIDGE_GRPC_CHILD";
const TARGET_VAR: &str = "ANGZARR_BRIDGE_GRPC_CHILD_TARGET";
const LISTENING: &str = "LISTENING ";

/// What the child serves.
#[derive(Debug, Clone, Copy)]
pub enum ChildLogic {
    /// The bank, without snapshots.
    Bank,
    /// Logic whose process exits while it handles a command.
    ExitsOnCall,
}

/// Logic that ends its process in the middle of a call.
struct ExitOnCall;

#[async_trait]
impl ClientLogic for ExitOnCall {
    async fn handle(&self, _: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        std::process::exit(17)
    }
}

/// The child: serves the logic `ANGZARR_BRIDGE_GRPC_CHILD` names on the target
/// `ANGZARR_BRIDGE_GRPC_CHILD_TARGET` until killed. Without those variables (an ordinary test
/// run), it has nothing to do.
#[test]
fn serve_child() {
    let Ok(mode) = std::env::var(MODE_VAR) else {
        return;
    };
    let target = std::env::var(TARGET_VAR).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let logic: Arc<dyn ClientLogic> = match mode.as_str() {
            "Bank" => Arc::new(angzarr_example_bank::logic(0)),
            "ExitsOnCall" => Arc::new(ExitOnCall),
            other => panic!("unknown child logic {other}"),
        };
        let listener = LogicListener::bind(&target).await.unwrap();
        {
            // Straight to stdout, bypassing the harness's capture.
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{LISTENING}{}", listener.target().unwrap()).unwrap();
            stdout.flush().unwrap();
        }
        serve_logic(
            logic,
            listener,
            &ServeConfig::default(),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
}

/// A child process serving `logic` on `target`, once it listens; killed when dropped.
pub async fn spawn_child(logic: ChildLogic, target: &str) -> (tokio::process::Child, String) {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "common::serve_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE_VAR, format!("{logic:?}"))
        .env(TARGET_VAR, target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let target = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the child exited before listening");
        // The harness may print on the same line ("test common::serve_child ... ").
        if let Some((_, target)) = line.split_once(LISTENING) {
            break target.trim().to_owned();
        }
    };
    // Keep reading, so that the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, target)
}

// --- The conformance harness. ---

/// The bank and the faults over one transport.
pub struct GrpcHarness {
    transport: Transport,
    dir: tempfile::TempDir,
}

impl GrpcHarness {
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[async_trait]
impl BridgeHarness for GrpcHarness {
    async fn bank(&self, snapshot_every: u64) -> Arc<dyn ClientLogic> {
        let logic = Arc::new(angzarr_example_bank::logic(snapshot_every));
        Arc::new(served(logic, self.transport, self.dir(), GrpcConfig::default()).await)
    }

    fn faults(&self) -> Vec<Fault> {
        Fault::ALL.to_vec()
    }

    async fn faulty(&self, fault: Fault, deadline: Duration) -> Arc<dyn ClientLogic> {
        let mut config = GrpcConfig::default();
        config.request_timeout = deadline;
        match fault {
            Fault::Fails | Fault::Hangs | Fault::MalformedReply => {
                Arc::new(fault_server(self.transport, self.dir(), config).await)
            }
            Fault::Unreachable => {
                let target = unreachable_target(self.transport, self.dir());
                Arc::new(GrpcLogic::new(&target, config).unwrap())
            }
            Fault::DiesMidCall => {
                let target = fresh_target(self.transport, self.dir());
                let (child, target) = spawn_child(ChildLogic::ExitsOnCall, &target).await;
                Arc::new(Served {
                    logic: GrpcLogic::new(&target, config).unwrap(),
                    stop: None,
                    child: Some(child),
                })
            }
            other => panic!("no fixture for {other:?}"),
        }
    }
}
