#![doc = include_str!("../README.md")]

mod config;
mod error;
mod keys;
mod schema;
mod sql;
mod store;
mod writer;

pub use config::{SqliteConfig, Synchronous};
pub use error::OpenError;
pub use store::SqliteStore;
