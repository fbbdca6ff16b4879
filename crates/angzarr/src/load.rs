//! `angzarr load`: a load generator for the front door, and the same workload in-process, so
//! that the cost of gRPC can be measured in one run.

use std::sync::Arc;
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
    /// Concurrent clients, each sending one command at a time.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Commands in all, after the accounts were opened.
    #[arg(long, default_value_t = 2_000)]
    commands: usize,
    /// Accounts the clients deposit to (client i to account i mod N): 1 puts every client on one
    /// hot aggregate. Default: an account per client.
    #[arg(long, value_name = "N")]
    aggregates: Option<usize>,
    /// gRPC connections, each driven by a thread of its own with a single-threaded runtime, so
    /// that a request costs the client no wake-up across threads. Default: one per client, up
    /// to the number of cores.
    #[arg(long, value_name = "N")]
    connections: Option<usize>,
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

/// Who sends what: client `i` sends `shares[i]` deposits to `accounts[i % accounts.len()]`.
#[derive(Clone)]
struct Workload {
    accounts: Vec<Uuid>,
    shares: Vec<usize>,
    progress: ProgressBar,
}

impl Workload {
    /// One client's loop: a command at a time, each timed from send to answer.
    async fn client(&self, client: usize, mut target: Target) -> anyhow::Result<Vec<Duration>> {
        let account = self.accounts[client % self.accounts.len()];
        let mut latencies = Vec::with_capacity(self.shares[client]);
        for _ in 0..self.shares[client] {
            let book = command(account, &deposit(1));
            let sent = Instant::now();
            target.execute(book).await?;
            latencies.push(sent.elapsed());
            self.progress.inc(1);
        }
        Ok(latencies)
    }
}

pub(crate) async fn run(config: &Config, args: LoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    let aggregates = args.aggregates.unwrap_or(args.clients);
    anyhow::ensure!(aggregates > 0, "--aggregates must be at least 1");
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let connections = args.connections.unwrap_or(args.clients.min(cores));
    anyhow::ensure!(connections > 0, "--connections must be at least 1");
    let connections = connections.min(args.clients);

    let scratch = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut local_store = None;
    let server = args
        .server
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.server.listen));
    let (opener, mode) = if args.in_process {
        let mut store_config = config.store.clone();
        store_config.kind = StoreKind::Sqlite;
        store_config.data_dir = scratch.path().to_owned();
        let store = OpenedStore::open(&store_config).await?;
        let gateway = wiring::gateway(config, &store)?;
        local_store = Some(store);
        (Target::Local(gateway), "in-process".to_owned())
    } else {
        let channel = crate::demo::connect(&server).await?;
        (
            Target::Remote(CommandGatewayClient::new(channel)),
            format!("grpc {server}, {connections} connections"),
        )
    };

    let accounts: Vec<Uuid> = (0..aggregates).map(|_| Uuid::new_v4()).collect();
    for account in &accounts {
        opener
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
    // Spread the remainder over the first clients.
    let shares = (0..args.clients)
        .map(|client| {
            args.commands / args.clients + usize::from(client < args.commands % args.clients)
        })
        .collect();
    let workload = Workload {
        accounts,
        shares,
        progress: progress.clone(),
    };

    let (latencies, elapsed) = match opener {
        Target::Local(_) => {
            let started = Instant::now();
            let tasks: Vec<_> = (0..args.clients)
                .map(|client| {
                    let (workload, target) = (workload.clone(), opener.clone());
                    tokio::spawn(async move { workload.client(client, target).await })
                })
                .collect();
            let mut latencies = Vec::with_capacity(args.commands);
            for task in tasks {
                latencies.extend(task.await.context("a load client panicked")??);
            }
            let elapsed = started.elapsed();
            // The gateway holds the store: it must go before the store can be closed.
            drop(opener);
            (latencies, elapsed)
        }
        Target::Remote(_) => {
            drop(opener);
            remote(&server, connections, args.clients, &workload).await?
        }
    };
    progress.finish_and_clear();
    if let Some(store) = local_store {
        store.close().await;
    }
    report(&mode, args.clients, aggregates, latencies, elapsed);
    Ok(())
}

/// Runs the clients over `connections` connections, each with its clients on a thread of its
/// own: a single-threaded runtime keeps the client task, tonic's buffer and the HTTP/2
/// connection on one thread, where a multi-threaded one hands every request and answer
/// across threads (tens of microseconds a wake-up on a small VM: the load generator would
/// measure itself). The clock starts once every connection is up. Answers the latencies and
/// the time they took.
async fn remote(
    server: &str,
    connections: usize,
    clients: usize,
    workload: &Workload,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let connected = Arc::new(std::sync::Barrier::new(connections + 1));
    let threads: Vec<_> = (0..connections)
        .map(|connection| {
            let (server, workload) = (server.to_owned(), workload.clone());
            let connected = Arc::clone(&connected);
            std::thread::Builder::new()
                .name(format!("load-{connection}"))
                .spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start a load runtime")?;
                    runtime.block_on(async move {
                        let channel = crate::demo::connect(&server).await;
                        // Reached even on failure, so that no other thread waits forever.
                        connected.wait();
                        let target = Target::Remote(CommandGatewayClient::new(channel?));
                        let tasks: Vec<_> = (connection..clients)
                            .step_by(connections)
                            .map(|client| {
                                let (workload, target) = (workload.clone(), target.clone());
                                tokio::spawn(async move { workload.client(client, target).await })
                            })
                            .collect();
                        let mut latencies = Vec::new();
                        for task in tasks {
                            latencies.extend(task.await.context("a load client panicked")??);
                        }
                        Ok(latencies)
                    })
                })
                .context("cannot start a load thread")
        })
        .collect::<anyhow::Result<_>>()?;
    // The threads block: wait for them off the async runtime.
    tokio::task::spawn_blocking(move || {
        connected.wait();
        let started = Instant::now();
        let mut latencies = Vec::new();
        for thread in threads {
            let joined = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
            latencies.extend(joined?);
        }
        Ok((latencies, started.elapsed()))
    })
    .await
    .context("waiting for the load threads")?
}

fn report(
    mode: &str,
    clients: usize,
    aggregates: usize,
    mut latencies: Vec<Duration>,
    elapsed: Duration,
) {
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
    };
    let micros = |latency: Option<&Duration>| latency.map_or(0, |latency| latency.as_micros());
    let throughput = latencies.len() as f64 / elapsed.as_secs_f64();
    println!(
        "{mode}: {clients} clients on {aggregates} aggregates, {} commands in {:.2} s: \
         {throughput:.0} commands/s, p50 {} us, p99 {} us, max {} us",
        latencies.len(),
        elapsed.as_secs_f64(),
        micros(percentile(0.50)),
        micros(percentile(0.99)),
        micros(latencies.last()),
    );
}
