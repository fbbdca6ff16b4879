#![doc = include_str!("../README.md")]

mod config;
mod connection;
mod error;
mod keys;
mod script;
mod store;

pub use config::{RedisConfig, Topology};
pub use error::OpenError;
pub use store::RedisStore;
