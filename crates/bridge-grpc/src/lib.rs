#![doc = include_str!("../README.md")]

mod client;
mod codec;
mod serve;
mod status;
mod target;

pub use client::{GrpcConfig, GrpcLogic};
pub use serve::{LogicListener, ServeConfig, ServeError, serve_logic};
pub use status::{INVALID_PART_TRAILER, error_status, status_error};
pub use target::{Target, TargetError};
