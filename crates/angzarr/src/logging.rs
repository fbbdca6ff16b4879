//! Structured logs on stderr, filtered like `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// `RUST_LOG` wins over the configured filter.
pub(crate) fn init(config: &Log) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => EnvFilter::try_new(&filter)
            .map_err(|error| anyhow::anyhow!("invalid RUST_LOG {filter:?}: {error}"))?,
        _ => EnvFilter::try_new(&config.filter)
            .map_err(|error| anyhow::anyhow!("invalid log.filter {:?}: {error}", config.filter))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|error| anyhow::anyhow!("cannot install the logger: {error}"))
}
