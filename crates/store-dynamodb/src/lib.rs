#![doc = include_str!("../README.md")]

mod config;
mod error;
mod keys;
mod schema;
mod store;

pub use config::{Billing, DynamoDbConfig};
pub use error::OpenError;
pub use store::DynamoDbStore;
