#![doc = include_str!("../README.md")]

mod config;
mod error;
mod keys;
mod pool;
mod schema;
mod sql;
mod store;

pub use config::PostgresConfig;
pub use error::OpenError;
pub use store::PostgresStore;
