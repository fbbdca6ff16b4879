//! `angzarr`: the composition root. It reads the configuration, builds the chosen store and
//! client logic, wires them into the core, and serves the gRPC front door. No business rule
//! lives here.

mod config;
mod demo;
mod load;
mod logging;
mod logic;
mod serve;
mod wiring;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, StoreKind};

/// A polyglot CQRS / event-sourcing server.
#[derive(Debug, Parser)]
#[command(name = "angzarr", version, propagate_version = true)]
struct Cli {
    /// A TOML configuration file; `ANGZARR_<SECTION>_<KEY>` variables and flags override it.
    #[arg(long, global = true, env = "ANGZARR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve CommandGateway and EventQuery over gRPC until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Show the effective configuration (file, environment and defaults), secrets masked.
    Config {
        /// Print it as TOML.
        #[arg(long)]
        print: bool,
    },
    /// Drive bank commands at a server (or in-process) and report latency and throughput.
    Load(load::LoadArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:50051; port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Directory of the SQLite store (default ./angzarr-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Event store: sqlite or memory.
    #[arg(long, value_enum)]
    store: Option<StoreArg>,
    /// After starting, drive a short scripted session through the front door and print it.
    #[arg(long)]
    demo: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StoreArg {
    Sqlite,
    Memory,
}

/// Exit codes: 0 success, 1 failure while running, 2 bad usage or configuration.
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Command::Config { print } = &cli.command {
        if !print {
            eprintln!("nothing to do: use `angzarr config --print`");
            return ExitCode::from(EXIT_CONFIG);
        }
        return match config.to_masked_toml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(EXIT_RUNTIME)
            }
        };
    }
    if let Err(error) = logging::init(&config.log) {
        eprintln!("error: {error:#}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(config, args.demo).await,
            Command::Load(args) => load::run(&config, args).await,
            Command::Config { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Command::Serve(args) = &cli.command {
        if let Some(listen) = args.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &args.data_dir {
            config.store.data_dir.clone_from(dir);
        }
        match args.store {
            Some(StoreArg::Sqlite) => config.store.kind = StoreKind::Sqlite,
            Some(StoreArg::Memory) => config.store.kind = StoreKind::Memory,
            None => {}
        }
    }
    Ok(config)
}
