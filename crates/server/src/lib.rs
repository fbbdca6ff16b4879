#![doc = include_str!("../README.md")]

mod query;
mod reflection;
mod status;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use angzarr_core::Gateway;
use angzarr_proto::v1::{
    CommandBook, CommandResponse,
    command_gateway_server::{self, CommandGateway, CommandGatewayServer},
    event_query_server::{self, EventQueryServer},
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tonic_reflection::pb::v1::server_reflection_server::{
    self as reflection_v1, ServerReflectionServer as ReflectionV1Server,
};
use tonic_reflection::pb::v1alpha::server_reflection_server::{
    self as reflection_v1alpha, ServerReflectionServer as ReflectionV1AlphaServer,
};

pub use query::EventQueryService;
pub use status::{command_status, event_store_status, snapshot_store_status};

/// Limits of the gRPC front door, and the descriptors it serves by reflection.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// How long one command may take; a client's shorter `grpc-timeout` wins.
    pub request_timeout: Duration,
    /// Encoded `FileDescriptorSet`s of the registered domains' commands, events and states,
    /// served by reflection beside angzarr's own, so that clients can build the payloads of
    /// commands and read events without `.proto` files. Each set must contain the files its
    /// files import.
    pub descriptor_sets: Vec<Vec<u8>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            descriptor_sets: Vec::new(),
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sizes, not the bytes of the descriptor sets.
        let sets: Vec<usize> = self.descriptor_sets.iter().map(Vec::len).collect();
        f.debug_struct("ServerConfig")
            .field("max_message_bytes", &self.max_message_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("descriptor_set_bytes", &sets)
            .finish()
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listener's address could not be read.
    #[error("cannot read the listening address: {0}")]
    Address(#[source] std::io::Error),
    /// The transport failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not load the descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves `CommandGateway.Execute` from a [`Gateway`].
pub struct CommandGatewayService {
    gateway: Gateway,
    timeout: Duration,
}

impl CommandGatewayService {
    /// Executes commands with `gateway`, each within `timeout`.
    pub fn new(gateway: Gateway, timeout: Duration) -> Self {
        Self { gateway, timeout }
    }
}

#[tonic::async_trait]
impl CommandGateway for CommandGatewayService {
    async fn execute(
        &self,
        request: Request<CommandBook>,
    ) -> Result<Response<CommandResponse>, Status> {
        // The client's own deadline, when shorter, wins.
        let timeout =
            client_deadline(&request).map_or(self.timeout, |client| client.min(self.timeout));
        // The core answers with the root in its canonical form, however the client spelled it.
        let command = request.into_inner();
        let idempotent = !command.request_id.is_empty();
        match tokio::time::timeout(timeout, self.gateway.execute(command)).await {
            Ok(Ok(response)) => Ok(Response::new(response)),
            Ok(Err(error)) => Err(command_status(error)),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "the command did not complete within {timeout:?}, and may or may not have been applied; {}",
                if idempotent {
                    "retrying it with the same request_id is safe"
                } else {
                    "it had no request_id, so a retry may apply it twice"
                }
            ))),
        }
    }
}

/// The `grpc-timeout` header: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn client_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Serves the front door on `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
///
/// Exposes `angzarr.v1.CommandGateway`, `angzarr.v1.EventQuery`, the standard gRPC health
/// service (`grpc.health.v1.Health`) and server reflection (`grpc.reflection.v1` and
/// `v1alpha`). Reflection lists exactly these services and resolves their types, the health
/// service's and those of [`ServerConfig::descriptor_sets`], so that tools such as `grpcurl`
/// need no `.proto` files, even to build a command's payload.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let limit = config.max_message_bytes;
    let commands = CommandGatewayServer::new(CommandGatewayService::new(
        gateway.clone(),
        config.request_timeout,
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let queries = EventQueryServer::new(EventQueryService::new(
        gateway.event_store().clone(),
        gateway.snapshot_store().clone(),
    ))
    .max_decoding_message_size(limit)
    .max_encoding_message_size(limit);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CommandGatewayServer<CommandGatewayService>>()
        .await;
    health
        .set_serving::<EventQueryServer<EventQueryService>>()
        .await;
    let reflection = reflection_service(&config.descriptor_sets)?;
    // Without TCP_NODELAY, a small response waits for the client's delayed ACK (40 ms on
    // Linux) whenever one client sends one request at a time.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    // No server-wide timeout: `Execute` applies its own, so that a command that runs out of
    // time always answers DEADLINE_EXCEEDED with what that means.
    tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted,
        ))
        .add_service(health_service)
        .add_service(ReflectionV1Server::new(reflection.clone()))
        .add_service(ReflectionV1AlphaServer::new(reflection))
        .add_service(commands)
        .add_service(queries)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// Checks that `set`, an encoded `FileDescriptorSet`, can be served by reflection beside
/// angzarr's own descriptors (as [`ServerConfig::descriptor_sets`]): every file decodes, and
/// every file it imports is in it or in angzarr's. [`serve`] refuses such a set too, but only
/// once it starts; this lets a caller say earlier which set is wrong.
pub fn check_descriptor_set(set: &[u8]) -> Result<(), ServerError> {
    reflection_service(&[set.to_vec()]).map(|_| ())
}

/// The reflection service of what [`serve`] serves, with the `extra` descriptor sets.
fn reflection_service(extra: &[Vec<u8>]) -> Result<reflection::Reflection, ServerError> {
    let served = [
        command_gateway_server::SERVICE_NAME,
        event_query_server::SERVICE_NAME,
        tonic_health::pb::health_server::SERVICE_NAME,
        reflection_v1::SERVICE_NAME,
        reflection_v1alpha::SERVICE_NAME,
    ];
    let own = [
        angzarr_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let descriptors = reflection::Descriptors::new(
        own.into_iter().chain(extra.iter().map(Vec::as_slice)),
        served.map(str::to_owned).to_vec(),
    )?;
    Ok(reflection::Reflection::new(descriptors))
}

/// tonic refuses a message over `max_message_bytes` with `OUT_OF_RANGE`; gRPC's own
/// implementations, and our contract, say `RESOURCE_EXHAUSTED`. None of our handlers answers
/// `OUT_OF_RANGE`, so every such status is tonic's size check.
fn oversized_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let out_of_range = http::HeaderValue::from_static("11");
    let headers = response.headers_mut();
    if headers.get("grpc-status") == Some(&out_of_range) {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// The address `listener` is bound to.
pub fn local_addr(listener: &TcpListener) -> Result<SocketAddr, ServerError> {
    listener.local_addr().map_err(ServerError::Address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_headers_are_understood() {
        let deadline = |value: &str| {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert("grpc-timeout", value.parse().unwrap());
            client_deadline(&request)
        };
        assert_eq!(deadline("250m"), Some(Duration::from_millis(250)));
        assert_eq!(deadline("3S"), Some(Duration::from_secs(3)));
        assert_eq!(deadline("2M"), Some(Duration::from_secs(120)));
        assert_eq!(deadline("7u"), Some(Duration::from_micros(7)));
        assert_eq!(deadline("soon"), None);
        assert_eq!(deadline("S"), None);
        assert_eq!(client_deadline(&Request::new(())), None);
    }
}
