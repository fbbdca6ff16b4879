//! `angzarr load`: a load generator for the front door, and the same workload in-process, so
//! that the cost of gRPC can be measured in one run.

use std::time::{Duration, Instant};

use angzarr_core::Gateway;
use angzarr_example_bank::{command, deposit, open};
use angzarr_proto::v1::CommandBook;
use angzarr_proto::v1::command_gateway_client::CommandGatewayClient;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tonic::transport::Channel;
use uuid::Uuid;

use crate::config::{Config, StoreKind};
use crate::wiring::{self, OpenedStore};

#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
    /// The server to load (default: http:// and the configured listen address).
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// Concurrent clients, each depositing to an account of its own.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Commands in all, after each client opened its account.
    #[arg(long, default_value_t = 2_000)]
    commands: usize,
    /// Run the same workload in this process, straight into the core over a fresh SQLite
    /// store in a temporary directory (the configured durability), without gRPC.
    #[arg(long)]
    in_process: bool,
}

#[derive(Clone)]
enum Target {
    Remote(CommandGatewayClient<Channel>),
    Local(Gateway),
}

impl Target {
    async fn execute(&mut self, book: CommandBook) -> anyhow::Result<()> {
        match self {
            Self::Remote(client) => client
                .execute(book)
                .await
                .map(drop)
                .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message())),
            Self::Local(gateway) => gateway
                .execute(book)
                .await
                .map(drop)
                .map_err(anyhow::Error::from),
        }
    }
}

pub(crate) async fn run(config: &Config, args: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut local_store = None;
    let (target, mode) = if args.in_process {
        let mut store_config = config.store.clone();
        store_config.kind = StoreKind::Sqlite;
        store_config.data_dir = scratch.path().to_owned();
        let store = OpenedStore::open(&store_config).await?;
        let gateway = wiring::gateway(config, &store)?;
        local_store = Some(store);
        (Target::Local(gateway), "in-process".to_owned())
    } else {
        let server = args
            .server
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.server.listen));
        let channel = crate::demo::connect(&server).await?;
        (
            Target::Remote(CommandGatewayClient::new(channel)),
            format!("grpc {server}"),
        )
    };

    let accounts: Vec<Uuid> = (0..args.clients).map(|_| Uuid::new_v4()).collect();
    for account in &accounts {
        target
            .clone()
            .execute(command(*account, &open("load")))
            .await
            .context("opening an account")?;
    }
    let progress = ProgressBar::new(args.commands as u64).with_style(
        ProgressStyle::with_template(
            "{spinner} {pos}/{len} commands [{elapsed}] {bar:40} {per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let tasks: Vec<_> = accounts
        .iter()
        .enumerate()
        .map(|(client, account)| {
            // Spread the remainder over the first clients.
            let share =
                args.commands / args.clients + usize::from(client < args.commands % args.clients);
            let (mut target, account, progress) = (target.clone(), *account, progress.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(share);
                for _ in 0..share {
                    let book = command(account, &deposit(1));
                    let sent = Instant::now();
                    target.execute(book).await?;
                    latencies.push(sent.elapsed());
                    progress.inc(1);
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(args.commands);
    for task in tasks {
        latencies.extend(task.await.context("a load client panicked")??);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    drop(target);
    if let Some(store) = local_store {
        store.close().await;
    }

    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
    };
    let micros = |latency: Option<&Duration>| latency.map_or(0, |latency| latency.as_micros());
    let throughput = latencies.len() as f64 / elapsed.as_secs_f64();
    println!(
        "{mode}: {} clients, {} commands in {:.2} s: {throughput:.0} commands/s, p50 {} us, p99 {} us, max {} us",
        args.clients,
        latencies.len(),
        elapsed.as_secs_f64(),
        micros(percentile(0.50)),
        micros(percentile(0.99)),
        micros(latencies.last()),
    );
    Ok(())
}
