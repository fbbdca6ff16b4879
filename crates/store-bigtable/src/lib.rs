#![doc = include_str!("../README.md")]

mod client;
mod config;
mod connect;
mod error;
mod keys;
mod store;

pub use config::BigtableConfig;
pub use error::OpenError;
pub use store::BigtableStore;
