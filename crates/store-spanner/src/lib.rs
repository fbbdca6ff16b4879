#![doc = include_str!("../README.md")]

mod config;
mod error;
mod keys;
mod schema;
mod store;

pub use config::{Endpoint, SpannerConfig};
pub use error::OpenError;
pub use store::SpannerStore;
