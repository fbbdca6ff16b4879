//! gRPC server reflection, `v1` and `v1alpha`, over one index of the served descriptors.
//!
//! tonic-reflection's service ends the stream with an error status when a lookup fails; the
//! protocol answers an `ErrorResponse` in the stream and goes on, and clients rely on it
//! (Python's `ProtoReflectionDescriptorDatabase` turns a `NOT_FOUND` answer into a `KeyError`,
//! grpcurl probes symbols that may not exist). So the answers are made here. A file is sent
//! with the files it imports, transitively, as grpc-go does, leaving out those already sent on
//! the stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use angzarr_proto::prost::{self, Message};
use angzarr_proto::prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_reflection::pb::{v1, v1alpha};
use tonic_reflection::server::Error;

use v1::server_reflection_request::MessageRequest;
use v1::server_reflection_response::MessageResponse;

/// A registered `.proto` file.
#[derive(Debug)]
struct File {
    /// Its `FileDescriptorProto`, with the bytes it was registered with (decoding and
    /// encoding again would drop custom options, which prost keeps no field for).
    encoded: Vec<u8>,
    /// The files it imports.
    dependencies: Vec<String>,
}

/// What reflection answers from: the registered files, their symbols and the services served.
#[derive(Debug)]
pub(crate) struct Descriptors {
    files: HashMap<String, File>,
    /// Fully qualified name (`angzarr.v1.CommandBook`, `angzarr.v1.CommandBook.cover`) to the
    /// file that defines it.
    symbols: HashMap<String, String>,
    /// The fully qualified names of the message types.
    messages: HashSet<String>,
    /// What `ListServices` answers: only what is served, although a registered file may
    /// define other services (`services.proto` defines `BusinessLogic`, which client logic
    /// serves, not this server).
    services: Vec<String>,
}

impl Descriptors {
    /// Indexes the files of `sets` (encoded `FileDescriptorSet`s); the first file of a name
    /// wins. Every import must be among the registered files, or clients could not resolve
    /// the types that use it.
    pub(crate) fn new<'a>(
        sets: impl IntoIterator<Item = &'a [u8]>,
        services: Vec<String>,
    ) -> Result<Self, Error> {
        let mut descriptors = Self {
            files: HashMap::new(),
            symbols: HashMap::new(),
            messages: HashSet::new(),
            services,
        };
        for set in sets {
            for encoded in split_file_descriptor_set(set)? {
                let file = FileDescriptorProto::decode(encoded.as_slice())?;
                descriptors.register(file, encoded)?;
            }
        }
        for (name, file) in &descriptors.files {
            if let Some(missing) = file
                .dependencies
                .iter()
                .find(|dependency| !descriptors.files.contains_key(*dependency))
            {
                return Err(Error::InvalidFileDescriptorSet(format!(
                    "{name} imports {missing}, which no registered descriptor set contains"
                )));
            }
        }
        Ok(descriptors)
    }

    fn register(&mut self, file: FileDescriptorProto, encoded: Vec<u8>) -> Result<(), Error> {
        let name = file
            .name
            .clone()
            .ok_or_else(|| Error::InvalidFileDescriptorSet("a file has no name".into()))?;
        if self.files.contains_key(&name) {
            return Ok(());
        }
        let mut symbols = Vec::new();
        let package = file.package();
        if !package.is_empty() {
            symbols.push(package.to_owned());
        }
        for message in &file.message_type {
            self.message_symbols(package, message, &mut symbols);
        }
        for enumeration in &file.enum_type {
            enum_symbols(package, enumeration, &mut symbols);
        }
        for extension in &file.extension {
            symbols.push(qualified(package, extension.name()));
        }
        for service in &file.service {
            let service_name = qualified(package, service.name());
            for method in &service.method {
                symbols.push(qualified(&service_name, method.name()));
            }
            symbols.push(service_name);
        }
        for symbol in symbols {
            // A package spans files: it resolves to the first one.
            self.symbols.entry(symbol).or_insert_with(|| name.clone());
        }
        let file = File {
            encoded,
            dependencies: file.dependency,
        };
        self.files.insert(name, file);
        Ok(())
    }

    fn message_symbols(&mut self, scope: &str, message: &DescriptorProto, into: &mut Vec<String>) {
        let name = qualified(scope, message.name());
        for field in message.field.iter().chain(&message.extension) {
            into.push(qualified(&name, field.name()));
        }
        for oneof in &message.oneof_decl {
            into.push(qualified(&name, oneof.name()));
        }
        for nested in &message.nested_type {
            self.message_symbols(&name, nested, into);
        }
        for enumeration in &message.enum_type {
            enum_symbols(&name, enumeration, into);
        }
        self.messages.insert(name.clone());
        into.push(name);
    }

    /// The answer to one request; a failed lookup is an `ErrorResponse`, not the end of the
    /// stream. `sent` holds the files already sent on this stream.
    fn answer(
        &self,
        request: v1::ServerReflectionRequest,
        sent: &mut HashSet<String>,
    ) -> v1::ServerReflectionResponse {
        let answer = match &request.message_request {
            None => Err(error(Code::InvalidArgument, "the request asks for nothing")),
            Some(MessageRequest::FileByFilename(name)) => self
                .file_with_imports(name, sent)
                .ok_or_else(|| error(Code::NotFound, format!("no file named {name:?}"))),
            Some(MessageRequest::FileContainingSymbol(symbol)) => self
                .symbols
                .get(symbol)
                .and_then(|file| self.file_with_imports(file, sent))
                .ok_or_else(|| error(Code::NotFound, format!("no symbol named {symbol:?}"))),
            Some(MessageRequest::FileContainingExtension(extension)) => Err(error(
                Code::NotFound,
                format!(
                    "no extension {} of {:?} is registered",
                    extension.extension_number, extension.containing_type
                ),
            )),
            Some(MessageRequest::AllExtensionNumbersOfType(message)) => {
                if self.messages.contains(message) {
                    Ok(MessageResponse::AllExtensionNumbersResponse(
                        v1::ExtensionNumberResponse {
                            base_type_name: message.clone(),
                            extension_number: Vec::new(),
                        },
                    ))
                } else {
                    Err(error(
                        Code::NotFound,
                        format!("no message type named {message:?}"),
                    ))
                }
            }
            Some(MessageRequest::ListServices(_)) => Ok(MessageResponse::ListServicesResponse(
                v1::ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| v1::ServiceResponse { name: name.clone() })
                        .collect(),
                },
            )),
        };
        v1::ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(answer.unwrap_or_else(|error| error)),
        }
    }

    /// `name`, then the files it imports, transitively, that `sent` does not hold yet.
    fn file_with_imports(&self, name: &str, sent: &mut HashSet<String>) -> Option<MessageResponse> {
        self.files.get(name)?;
        let mut encoded = Vec::new();
        let mut queue = VecDeque::from([name]);
        while let Some(next) = queue.pop_front() {
            let Some(file) = self.files.get(next) else {
                continue;
            };
            let new = sent.insert(next.to_owned());
            // The file asked for is always sent, even if it was before.
            if new || encoded.is_empty() {
                encoded.push(file.encoded.clone());
                queue.extend(file.dependencies.iter().map(String::as_str));
            }
        }
        Some(MessageResponse::FileDescriptorResponse(
            v1::FileDescriptorResponse {
                file_descriptor_proto: encoded,
            },
        ))
    }
}

fn qualified(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

fn enum_symbols(scope: &str, enumeration: &EnumDescriptorProto, into: &mut Vec<String>) {
    let name = qualified(scope, enumeration.name());
    for value in &enumeration.value {
        // Enum values are siblings of their enum in protobuf's scoping (`pkg.VALUE`); the
        // nested spelling (`pkg.Enum.VALUE`) is accepted too.
        into.push(qualified(scope, value.name()));
        into.push(qualified(&name, value.name()));
    }
    into.push(name);
}

fn error(code: Code, message: impl Into<String>) -> MessageResponse {
    MessageResponse::ErrorResponse(v1::ErrorResponse {
        error_code: code as i32,
        error_message: message.into(),
    })
}

/// The encoded `FileDescriptorProto`s of an encoded `FileDescriptorSet` (`repeated
/// FileDescriptorProto file = 1`), as they are, without decoding them.
fn split_file_descriptor_set(mut set: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    use prost::encoding::{DecodeContext, bytes, decode_key, skip_field};
    let mut files = Vec::new();
    while !set.is_empty() {
        let (tag, wire_type) = decode_key(&mut set)?;
        if tag == 1 {
            let mut file = Vec::new();
            bytes::merge(wire_type, &mut file, &mut set, DecodeContext::default())?;
            files.push(file);
        } else {
            skip_field(wire_type, tag, &mut set, DecodeContext::default())?;
        }
    }
    Ok(files)
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The reflection service of both protocol versions, over one [`Descriptors`].
#[derive(Debug, Clone)]
pub(crate) struct Reflection {
    descriptors: Arc<Descriptors>,
}

impl Reflection {
    pub(crate) fn new(descriptors: Descriptors) -> Self {
        Self {
            descriptors: Arc::new(descriptors),
        }
    }

    /// Answers each request of `requests` in turn.
    fn answer_all(
        &self,
        requests: Streaming<v1::ServerReflectionRequest>,
    ) -> impl Stream<Item = Result<v1::ServerReflectionResponse, Status>> + Send + 'static {
        let descriptors = Arc::clone(&self.descriptors);
        let mut sent = HashSet::new();
        requests.map(move |request| Ok(descriptors.answer(request?, &mut sent)))
    }
}

#[tonic::async_trait]
impl v1::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = ResponseStream<v1::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        Ok(Response::new(Box::pin(
            self.answer_all(request.into_inner()),
        )))
    }
}

#[tonic::async_trait]
impl v1alpha::server_reflection_server::ServerReflection for Reflection {
    type ServerReflectionInfoStream = ResponseStream<v1alpha::ServerReflectionResponse>;

    async fn server_reflection_info(
        &self,
        request: Request<Streaming<v1alpha::ServerReflectionRequest>>,
    ) -> Result<Response<Self::ServerReflectionInfoStream>, Status> {
        let descriptors = Arc::clone(&self.descriptors);
        let mut sent = HashSet::new();
        // v1alpha is v1 under another package name, field for field: each message is read
        // as its twin of the other version.
        let responses = request.into_inner().map(move |request| {
            let request = transcode(&request?)?;
            transcode(&descriptors.answer(request, &mut sent))
        });
        Ok(Response::new(Box::pin(responses)))
    }
}

fn transcode<T: Message + Default>(message: &impl Message) -> Result<T, Status> {
    T::decode(message.encode_to_vec().as_slice())
        .map_err(|error| Status::internal(format!("reflection message not transcoded: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use angzarr_proto::prost_types::{FileDescriptorSet, ServiceDescriptorProto};

    fn descriptors(extra: &[&[u8]]) -> Descriptors {
        let sets = [
            angzarr_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ]
        .into_iter()
        .chain(extra.iter().copied());
        Descriptors::new(sets, vec!["angzarr.v1.CommandGateway".into()]).unwrap()
    }

    fn ask(
        descriptors: &Descriptors,
        request: MessageRequest,
        sent: &mut HashSet<String>,
    ) -> MessageResponse {
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        descriptors.answer(request, sent).message_response.unwrap()
    }

    /// The names of the files in a `FileDescriptorResponse`, in order.
    fn file_names(response: MessageResponse) -> Vec<String> {
        let MessageResponse::FileDescriptorResponse(files) = response else {
            panic!("not a file: {response:?}");
        };
        files
            .file_descriptor_proto
            .iter()
            .map(|encoded| {
                FileDescriptorProto::decode(encoded.as_slice())
                    .unwrap()
                    .name()
                    .to_owned()
            })
            .collect()
    }

    fn file(name: &str, dependencies: &[&str]) -> FileDescriptorProto {
        FileDescriptorProto {
            name: Some(name.into()),
            package: Some("test.v1".into()),
            dependency: dependencies.iter().map(|d| (*d).to_owned()).collect(),
            message_type: vec![DescriptorProto {
                name: Some("Probe".into()),
                ..DescriptorProto::default()
            }],
            service: vec![ServiceDescriptorProto {
                name: Some("Unserved".into()),
                ..ServiceDescriptorProto::default()
            }],
            ..FileDescriptorProto::default()
        }
    }

    fn set(files: Vec<FileDescriptorProto>) -> Vec<u8> {
        FileDescriptorSet { file: files }.encode_to_vec()
    }

    #[test]
    fn a_symbol_comes_with_its_imports_once_per_stream() {
        let descriptors = descriptors(&[]);
        let mut sent = HashSet::new();
        let symbol = || MessageRequest::FileContainingSymbol("angzarr.v1.CommandBook".into());
        let first = file_names(ask(&descriptors, symbol(), &mut sent));
        assert_eq!(first[0], "angzarr/v1/types.proto");
        assert!(
            first.iter().any(|name| name == "google/protobuf/any.proto"),
            "{first:?}"
        );
        assert_eq!(
            file_names(ask(&descriptors, symbol(), &mut sent)),
            ["angzarr/v1/types.proto"]
        );
        let services = file_names(ask(
            &descriptors,
            MessageRequest::FileContainingSymbol("angzarr.v1.CommandGateway.Execute".into()),
            &mut sent,
        ));
        assert_eq!(services, ["angzarr/v1/services.proto"]);
    }

    #[test]
    fn fields_nested_types_and_health_resolve() {
        let descriptors = descriptors(&[]);
        for symbol in [
            "angzarr.v1.CommandBook.cover",
            "angzarr.v1.Cover",
            "grpc.health.v1.Health",
            "grpc.health.v1.HealthCheckResponse.ServingStatus",
            "grpc.health.v1.HealthCheckResponse.SERVING",
        ] {
            let response = ask(
                &descriptors,
                MessageRequest::FileContainingSymbol(symbol.into()),
                &mut HashSet::new(),
            );
            assert!(
                matches!(response, MessageResponse::FileDescriptorResponse(_)),
                "{symbol}: {response:?}"
            );
        }
    }

    #[test]
    fn failed_lookups_are_error_responses() {
        let descriptors = descriptors(&[]);
        for request in [
            MessageRequest::FileContainingSymbol("no.such.Symbol".into()),
            MessageRequest::FileByFilename("no/such.proto".into()),
            MessageRequest::AllExtensionNumbersOfType("no.such.Message".into()),
            MessageRequest::FileContainingExtension(v1::ExtensionRequest {
                containing_type: "angzarr.v1.Cover".into(),
                extension_number: 100,
            }),
        ] {
            let response = ask(&descriptors, request.clone(), &mut HashSet::new());
            let MessageResponse::ErrorResponse(error) = response else {
                panic!("{request:?} answered {response:?}");
            };
            assert_eq!(error.error_code, Code::NotFound as i32, "{request:?}");
            assert!(!error.error_message.is_empty());
        }
        let known = ask(
            &descriptors,
            MessageRequest::AllExtensionNumbersOfType("angzarr.v1.Cover".into()),
            &mut HashSet::new(),
        );
        assert!(matches!(
            known,
            MessageResponse::AllExtensionNumbersResponse(numbers) if numbers.base_type_name == "angzarr.v1.Cover"
        ));
    }

    #[test]
    fn only_the_served_services_are_listed() {
        let extra = set(vec![file("test/a.proto", &[])]);
        let descriptors = descriptors(&[&extra]);
        let MessageResponse::ListServicesResponse(list) = ask(
            &descriptors,
            MessageRequest::ListServices(String::new()),
            &mut HashSet::new(),
        ) else {
            panic!("not a service list");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["angzarr.v1.CommandGateway"]);
        // Types of unserved services stay resolvable: they are part of the contract.
        for symbol in ["test.v1.Probe", "angzarr.v1.BusinessLogic"] {
            let response = ask(
                &descriptors,
                MessageRequest::FileContainingSymbol(symbol.into()),
                &mut HashSet::new(),
            );
            assert!(
                matches!(response, MessageResponse::FileDescriptorResponse(_)),
                "{symbol}"
            );
        }
    }

    #[test]
    fn registered_bytes_are_served_as_they_are() {
        // An unknown field (a custom option, say) that prost would drop on decoding.
        let mut encoded = file("test/a.proto", &[]).encode_to_vec();
        encoded.extend_from_slice(&[0xF8, 0x3E, 0x01]); // field 999, varint 1
        let mut extra = Vec::new();
        prost::encoding::bytes::encode(1, &encoded, &mut extra);
        let descriptors = descriptors(&[&extra]);
        let MessageResponse::FileDescriptorResponse(files) = ask(
            &descriptors,
            MessageRequest::FileByFilename("test/a.proto".into()),
            &mut HashSet::new(),
        ) else {
            panic!("not a file");
        };
        assert_eq!(files.file_descriptor_proto, [encoded]);
    }

    #[test]
    fn a_set_with_a_missing_import_or_garbage_is_refused() {
        let sets = [set(vec![file("test/b.proto", &["test/missing.proto"])])];
        let error = Descriptors::new(sets.iter().map(Vec::as_slice), Vec::new()).unwrap_err();
        assert!(error.to_string().contains("test/missing.proto"), "{error}");
        assert!(Descriptors::new([&[0xFF_u8, 0xFF][..]], Vec::new()).is_err());
    }

    #[test]
    fn the_first_file_of_a_name_wins() {
        let first = set(vec![file("test/a.proto", &[])]);
        let mut other = file("test/a.proto", &[]);
        other.package = Some("other.v1".into());
        let second = set(vec![other]);
        let descriptors = descriptors(&[&first, &second]);
        let response = ask(
            &descriptors,
            MessageRequest::FileContainingSymbol("other.v1.Probe".into()),
            &mut HashSet::new(),
        );
        assert!(matches!(response, MessageResponse::ErrorResponse(_)));
    }
}
