//! The front door in-process, over a real socket, with client logic that misbehaves on purpose.

use std::sync::Arc;
use std::time::Duration;

use angzarr_core::Gateway;
use angzarr_ports::{ClientLogic, ClientLogicError, Domain, async_trait};
use angzarr_proto::v1::command_gateway_client::CommandGatewayClient;
use angzarr_proto::v1::{BusinessReply, CommandBook, CommandPage, ContextualCommand, Cover};
use angzarr_server::ServerConfig;
use angzarr_store_memory::MemoryStore;
use prost_types::Any;
use tonic::Code;

/// Sleeps, then fails as it is told.
struct Misbehaving {
    delay: Duration,
    error: ClientLogicError,
}

#[async_trait]
impl ClientLogic for Misbehaving {
    async fn handle(&self, _: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        tokio::time::sleep(self.delay).await;
        Err(self.error.clone())
    }
}

async fn status_of(logic: Misbehaving, timeout: Duration) -> tonic::Status {
    let store = Arc::new(MemoryStore::new());
    let gateway = Gateway::builder(store.clone(), store)
        .register(Domain::new("slow").unwrap(), Arc::new(logic))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = ServerConfig::default();
    config.request_timeout = timeout;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        angzarr_server::serve(
            listener,
            gateway,
            &config,
            async move { drop(stopped.await) },
        )
        .await
    });
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap();
    let mut client = CommandGatewayClient::new(endpoint.connect().await.unwrap());
    let command = CommandBook {
        cover: Some(Cover {
            domain: "slow".into(),
            root: uuid::Uuid::new_v4().to_string(),
            ..Cover::default()
        }),
        pages: vec![CommandPage {
            payload: Some(Any {
                type_url: "t/C".into(),
                value: vec![],
            }),
        }],
        ..CommandBook::default()
    };
    let status = client.execute(command).await.unwrap_err();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    status
}

#[tokio::test]
async fn a_command_that_outlives_the_request_timeout_is_deadline_exceeded() {
    let logic = Misbehaving {
        delay: Duration::from_secs(5),
        error: ClientLogicError::Failed("late".into()),
    };
    let status = status_of(logic, Duration::from_millis(100)).await;
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn unreachable_client_logic_is_unavailable() {
    let logic = Misbehaving {
        delay: Duration::ZERO,
        error: ClientLogicError::Unavailable("no route".into()),
    };
    let status = status_of(logic, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(status.message().contains("no route"));
}
