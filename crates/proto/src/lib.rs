#![doc = include_str!("../README.md")]
// Generated code is not ours to document or lint.
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Version 1 of the contract: package `angzarr.v1`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/angzarr.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every angzarr `.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/angzarr_descriptor.bin"));

mod page;

pub use page::decode_event_page;
pub use prost;
pub use prost_types;
