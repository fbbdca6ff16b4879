//! The front door as clients nobody here wrote see it: reflection in both protocol versions,
//! listing exactly what is served and answering failed lookups in the stream; roots answered
//! in their canonical spelling; `ListRoots` pages capped.

use std::sync::Arc;

use angzarr_core::Gateway;
use angzarr_ports::{ClientLogic, ClientLogicError, Domain, async_trait};
use angzarr_proto::prost::Message;
use angzarr_proto::prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};
use angzarr_proto::v1::business_reply::Outcome;
use angzarr_proto::v1::command_gateway_client::CommandGatewayClient;
use angzarr_proto::v1::event_query_client::EventQueryClient;
use angzarr_proto::v1::{
    BusinessReply, CommandBook, CommandPage, ContextualCommand, Cover, EventPage, EventsEmitted,
    ListRootsRequest,
};
use angzarr_server::ServerConfig;
use angzarr_store_memory::MemoryStore;
use prost_types::Any;
use tonic::Code;
use tonic::transport::Channel;
use tonic_reflection::pb::{v1, v1alpha};
use uuid::Uuid;

/// Accepts every command: one event carrying the command's payload.
struct Accepting;

#[async_trait]
impl ClientLogic for Accepting {
    async fn handle(&self, command: ContextualCommand) -> Result<BusinessReply, ClientLogicError> {
        let history = command.events.map(|book| book.pages).unwrap_or_default();
        let sequence = history.last().map_or(0, |last| last.sequence + 1);
        let payload = command
            .command
            .and_then(|book| book.pages.into_iter().next())
            .and_then(|page| page.payload);
        Ok(BusinessReply {
            outcome: Some(Outcome::Events(EventsEmitted {
                pages: vec![EventPage {
                    sequence,
                    payload,
                    ..EventPage::default()
                }],
                snapshot_state: None,
                state: None,
            })),
        })
    }
}

/// A server over a memory store with `Accepting` logic as `domain`, stopped when dropped.
struct Server {
    gateway: Gateway,
    channel: Channel,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    async fn start(config: ServerConfig) -> Self {
        let store = Arc::new(MemoryStore::new());
        let gateway = Gateway::builder(store.clone(), store)
            .register(Domain::new("domain").unwrap(), Arc::new(Accepting))
            .build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = gateway.clone();
        tokio::spawn(async move {
            angzarr_server::serve(
                listener,
                served,
                &config,
                async move { drop(stopped.await) },
            )
            .await
        });
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{address}")).unwrap();
        Self {
            gateway,
            channel: endpoint.connect().await.unwrap(),
            stop: Some(stop),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn command(root: &str) -> CommandBook {
    CommandBook {
        cover: Some(Cover {
            domain: "domain".into(),
            root: root.into(),
            ..Cover::default()
        }),
        pages: vec![CommandPage {
            payload: Some(Any {
                type_url: "type.googleapis.com/test.v1.Command".into(),
                value: vec![],
            }),
        }],
        ..CommandBook::default()
    }
}

/// A descriptor set with one file, `test/extra.proto`, defining `test.v1.Extra`.
fn extra_descriptor_set() -> Vec<u8> {
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("test/extra.proto".into()),
            package: Some("test.v1".into()),
            message_type: vec![DescriptorProto {
                name: Some("Extra".into()),
                ..DescriptorProto::default()
            }],
            ..FileDescriptorProto::default()
        }],
    }
    .encode_to_vec()
}

const SERVED: [&str; 5] = [
    "angzarr.v1.CommandGateway",
    "angzarr.v1.EventQuery",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The v1 requests of the reflection test, in order: services, an unknown symbol, then
/// symbols of angzarr, of the health and reflection services and of the extra descriptor set.
fn reflection_requests() -> Vec<v1::ServerReflectionRequest> {
    use v1::server_reflection_request::MessageRequest;
    [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("no.such.Symbol".into()),
        MessageRequest::FileContainingSymbol("angzarr.v1.CommandBook".into()),
        MessageRequest::FileContainingSymbol("grpc.health.v1.Health".into()),
        MessageRequest::FileContainingSymbol("grpc.reflection.v1alpha.ServerReflection".into()),
        MessageRequest::FileContainingSymbol("test.v1.Extra".into()),
    ]
    .into_iter()
    .map(|request| v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    })
    .collect()
}

/// Checks the v1 answers to [`reflection_requests`].
fn check_reflection_answers(answers: &[v1::ServerReflectionResponse]) {
    use v1::server_reflection_response::MessageResponse;
    assert_eq!(answers.len(), 6, "every request is answered: {answers:?}");
    let Some(MessageResponse::ListServicesResponse(list)) = &answers[0].message_response else {
        panic!("not a service list: {:?}", answers[0]);
    };
    let mut names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, SERVED, "exactly the served services");
    let Some(MessageResponse::ErrorResponse(error)) = &answers[1].message_response else {
        panic!("an unknown symbol was answered {:?}", answers[1]);
    };
    assert_eq!(error.error_code, Code::NotFound as i32);
    assert!(error.error_message.contains("no.such.Symbol"), "{error:?}");
    for (answer, file) in answers[2..].iter().zip([
        "angzarr/v1/types.proto",
        "health.proto",
        "reflection_v1alpha.proto",
        "test/extra.proto",
    ]) {
        let Some(MessageResponse::FileDescriptorResponse(files)) = &answer.message_response else {
            panic!("not a file: {answer:?}");
        };
        let first = FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
        assert_eq!(first.name(), file);
    }
}

fn with_extra_descriptors() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.descriptor_sets = vec![extra_descriptor_set()];
    config
}

#[tokio::test]
async fn reflection_v1_lists_the_served_services_and_answers_failed_lookups_in_the_stream() {
    let server = Server::start(with_extra_descriptors()).await;
    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(reflection_requests()))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(answer) = responses.message().await.unwrap() {
        answers.push(answer);
    }
    check_reflection_answers(&answers);
}

#[tokio::test]
async fn reflection_v1alpha_answers_as_v1_does() {
    let server = Server::start(with_extra_descriptors()).await;
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    // The two versions' messages are the same field for field.
    let requests: Vec<v1alpha::ServerReflectionRequest> = reflection_requests()
        .iter()
        .map(|request| Message::decode(request.encode_to_vec().as_slice()).unwrap())
        .collect();
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answers: Vec<v1::ServerReflectionResponse> = Vec::new();
    while let Some(answer) = responses.message().await.unwrap() {
        answers.push(Message::decode(answer.encode_to_vec().as_slice()).unwrap());
    }
    check_reflection_answers(&answers);
}

#[tokio::test]
async fn an_invalid_descriptor_set_stops_the_server_from_starting() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let gateway = Gateway::builder(store.clone(), store).build();
    let mut config = ServerConfig::default();
    config.descriptor_sets = vec![vec![0xFF, 0xFF]];
    let result = angzarr_server::serve(listener, gateway, &config, std::future::pending()).await;
    assert!(
        matches!(result, Err(angzarr_server::ServerError::Reflection(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_root_is_answered_in_its_canonical_form() {
    let server = Server::start(ServerConfig::default()).await;
    let root = Uuid::new_v4();
    let mut gateway = CommandGatewayClient::new(server.channel.clone());
    for spelled in [
        root.simple().to_string().to_uppercase(),
        root.to_string().to_uppercase(),
        root.simple().to_string(),
    ] {
        let response = gateway
            .execute(command(&spelled))
            .await
            .unwrap()
            .into_inner();
        let cover = response.events.unwrap().cover.unwrap();
        assert_eq!(cover.root, root.to_string(), "sent as {spelled}");
    }
    let refused = gateway.execute(command("not-a-uuid")).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn list_roots_pages_are_capped() {
    let server = Server::start(ServerConfig::default()).await;
    for _ in 0..1_001 {
        let root = Uuid::new_v4().to_string();
        server.gateway.execute(command(&root)).await.unwrap();
    }
    let mut query = EventQueryClient::new(server.channel.clone());
    let page = |limit| ListRootsRequest {
        domain: "domain".into(),
        after: String::new(),
        limit,
    };
    let count = |response: tonic::Response<angzarr_proto::v1::ListRootsResponse>| {
        response.into_inner().roots.len()
    };
    assert_eq!(
        count(query.list_roots(page(u32::MAX)).await.unwrap()),
        1_000
    );
    assert_eq!(count(query.list_roots(page(1_001)).await.unwrap()), 1_000);
    assert_eq!(
        count(query.list_roots(page(0)).await.unwrap()),
        100,
        "the default"
    );
    assert_eq!(count(query.list_roots(page(7)).await.unwrap()), 7);
}
