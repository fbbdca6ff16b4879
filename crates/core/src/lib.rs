#![doc = include_str!("../README.md")]

mod cache;
mod error;
mod gateway;
mod locks;
pub mod native;
mod snapshot_every;

pub use error::CommandError;
pub use gateway::{Gateway, GatewayBuilder, GatewayConfig, LoadedAggregate};
pub use native::{Aggregate, NativeLogic, UnpackError, Unpacker, reject};
pub use snapshot_every::SnapshotEvery;
