//! `angzarr serve`: the front door, until a signal, then a clean stop.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::Config;
use crate::wiring::{self, OpenedStore};

pub(crate) async fn run(config: Config, demo: bool) -> anyhow::Result<()> {
    // Read first: a wrong file stops start-up before anything is opened.
    let descriptor_sets = wiring::descriptor_sets(&config)?;
    let store = OpenedStore::open(&config.store).await?;
    let gateway = wiring::gateway(&config, &store)?;
    let listen = config.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = angzarr_server::local_addr(&listener)?;
    if !address.ip().is_loopback() {
        tracing::warn!(%address, "listening beyond loopback: anyone who can reach this address can send commands");
    }
    tracing::info!(%address, store = %store.describe(), "serving");
    // A line tools and tests can wait for.
    println!("angzarr listening on {address}");

    let stop = Arc::new(Notify::new());
    let mut server = tokio::spawn({
        let (stop, gateway) = (Arc::clone(&stop), gateway.clone());
        let mut server_config = angzarr_server::ServerConfig::default();
        server_config.max_message_bytes = config.server.max_message_bytes;
        server_config.request_timeout = config.server.request_timeout();
        server_config.descriptor_sets = descriptor_sets;
        async move { angzarr_server::serve(listener, gateway, &server_config, stop.notified()).await }
    });
    drop(gateway);
    if demo {
        tokio::spawn(async move {
            if let Err(error) = crate::demo::run(address).await {
                eprintln!("the demo failed: {error:#}");
            }
        });
    }

    tokio::select! {
        finished = &mut server => {
            finished.context("the server task panicked")??;
            anyhow::bail!("the server stopped on its own");
        }
        signal = shutdown_signal() => signal?,
    }
    tracing::info!("shutting down: refusing new requests, finishing those in flight");
    stop.notify_one();
    let grace = config.server.shutdown_grace();
    match tokio::time::timeout(grace, &mut server).await {
        Ok(finished) => finished.context("the server task panicked")??,
        Err(_) => {
            tracing::warn!(
                ?grace,
                "requests still in flight after the grace period; stopping anyway"
            );
            server.abort();
            // Wait for the abort, so that the server's handles on the store are released.
            let _ = server.await;
        }
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot listen for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
