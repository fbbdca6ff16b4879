//! `cargo xtask bench [CARGO_BENCH_ARGS]... [-- BENCH_ARGS]...`: the benchmark targets.
//!
//! `--benches` keeps the libtest harnesses of libraries out of the run, so criterion
//! arguments after `--` (`--save-baseline main`, a filter, ...) reach only criterion
//! benchmarks; crates without a `benches/` target are simply not involved. Without a
//! `-p`/`--package` argument the whole workspace is benchmarked. `--bench NAME` runs that
//! target alone (`--benches` would add every other).
//!
//! The PostgreSQL, Redis, Bigtable, DynamoDB and Spanner benchmarks (`--bench postgres`,
//! `redis`, `bigtable`, `dynamodb`, `spanner` of `angzarr-example-bank`) need servers: when such
//! a benchmark is among the selected targets and a variable that points it at a server is not
//! set (`ANGZARR_TEST_POSTGRES_URL`; `ANGZARR_TEST_REDIS_URL`,
//! `ANGZARR_TEST_REDIS_CLUSTER_URLS`; `ANGZARR_TEST_BIGTABLE_EMULATOR_HOST`;
//! `ANGZARR_TEST_DYNAMODB_ENDPOINT`; `ANGZARR_TEST_SPANNER_EMULATOR_HOST`), the service behind
//! that variable is started first (as `services up postgres`, `services up redis
//! redis-cluster`, ...) and, if this run started it, stopped after. See [`SERVICE_BENCHES`].

use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, run_status, services};

pub(crate) fn run(args: &[String]) -> Result<()> {
    if args.first().map(String::as_str) == Some("front-door") {
        return front_door();
    }
    let (cargo_args, bench_args) = match args.iter().position(|a| a == "--") {
        Some(split) => (&args[..split], &args[split + 1..]),
        None => (args, &[][..]),
    };
    if cargo_args.iter().any(|a| a == "--help" || a == "-h") {
        crate::print_usage();
        return Ok(());
    }
    let selects_packages = cargo_args
        .iter()
        .any(|a| a == "-p" || a.starts_with("--package") || a.starts_with("-p"));
    let targets = values_of(cargo_args, "--bench", None);

    let mut command = cargo();
    command.args(["bench", "--locked"]);
    if targets.is_empty() {
        command.arg("--benches");
    }
    if !selects_packages {
        command.arg("--workspace");
    }
    command.args(cargo_args);
    if !bench_args.is_empty() {
        command.arg("--").args(bench_args);
    }

    let needed = needed_services(cargo_args, |var| std::env::var_os(var).is_some());
    let provisioned = if needed.is_empty() {
        services::Provisioned::default()
    } else {
        services::up(&needed)?
    };
    command.envs(provisioned.env.iter().map(|(key, value)| (key, value)));
    let result = run_status(&mut command);
    let stopped = services::stop_started(&provisioned);
    result.and(stopped)
}

/// A benchmark that needs servers: its package and target, and each variable that points it
/// at a server with the service (a row or a group of `services`) started when it is not set.
struct ServiceBench {
    package: &'static str,
    target: &'static str,
    servers: &'static [(&'static str, &'static str)],
}

/// The benchmarks that need servers.
const SERVICE_BENCHES: &[ServiceBench] = &[
    ServiceBench {
        package: "angzarr-example-bank",
        target: "postgres",
        servers: &[("ANGZARR_TEST_POSTGRES_URL", "postgres")],
    },
    ServiceBench {
        package: "angzarr-example-bank",
        target: "redis",
        servers: &[
            ("ANGZARR_TEST_REDIS_URL", "redis"),
            ("ANGZARR_TEST_REDIS_CLUSTER_URLS", "redis-cluster"),
        ],
    },
    ServiceBench {
        package: "angzarr-example-bank",
        target: "bigtable",
        servers: &[("ANGZARR_TEST_BIGTABLE_EMULATOR_HOST", "bigtable")],
    },
    ServiceBench {
        package: "angzarr-example-bank",
        target: "dynamodb",
        servers: &[("ANGZARR_TEST_DYNAMODB_ENDPOINT", "dynamodb")],
    },
    ServiceBench {
        package: "angzarr-example-bank",
        target: "spanner",
        servers: &[("ANGZARR_TEST_SPANNER_EMULATOR_HOST", "spanner")],
    },
];

/// The services to start for the benchmarks these `cargo bench` arguments run, in table
/// order: those behind each variable of a selected benchmark that is not `set`.
fn needed_services(
    cargo_args: &[String],
    set: impl Fn(&str) -> bool,
) -> Vec<&'static services::Service> {
    let names: Vec<&str> = SERVICE_BENCHES
        .iter()
        .filter(|bench| selects_bench(cargo_args, bench))
        .flat_map(|bench| bench.servers)
        .filter(|(var, _)| !set(var))
        .map(|(_, service)| *service)
        .collect();
    services::SERVICES
        .iter()
        .filter(|service| {
            names.iter().any(|name| {
                *name == service.name
                    || services::GROUPS
                        .iter()
                        .any(|(group, members)| group == name && members.contains(&service.name))
            })
        })
        .collect()
}

/// Whether `bench` is among the targets these `cargo bench` arguments run: named with
/// `--bench`, or, without one, in a selected package (all without `-p`).
fn selects_bench(cargo_args: &[String], bench: &ServiceBench) -> bool {
    let targets = values_of(cargo_args, "--bench", None);
    if !targets.is_empty() {
        return targets.contains(&bench.target);
    }
    let packages = values_of(cargo_args, "--package", Some("-p"));
    packages.is_empty() || packages.contains(&bench.package)
}

/// The values given to `long` (`long VALUE`, `long=VALUE`) or `short` (`short VALUE`,
/// `shortVALUE`) in `args`.
fn values_of<'a>(args: &'a [String], long: &str, short: Option<&str>) -> Vec<&'a str> {
    let mut values = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == long || Some(arg.as_str()) == short {
            values.extend(args.next().map(String::as_str));
        } else if let Some(value) = arg.strip_prefix(long).and_then(|v| v.strip_prefix('=')) {
            values.push(value);
        } else if let Some(value) = short.and_then(|short| arg.strip_prefix(short)) {
            values.push(value.trim_start_matches('='));
        }
    }
    values
}

/// `cargo xtask bench front-door`: the figures of the gRPC front door. Builds the release
/// binary, measures its stripped size, starts `angzarr serve` on a scratch directory, reads its
/// idle resident memory, then runs `angzarr load` against it and the same workload in-process
/// (`--in-process`), with 1 and with 64 clients. Prints a Markdown table.
pub(crate) fn front_door() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let root = crate::project_root();
    run_status(cargo().args(["build", "--release", "--locked", "-p", "angzarr"]))?;
    let binary = root.join("target/release/angzarr");
    let scratch = root.join("target/bench-front-door");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let stripped = scratch.join("angzarr-stripped");
    run_status(Command::new("strip").arg("-o").arg(&stripped).arg(&binary))?;
    let size = std::fs::metadata(&stripped)?.len();

    let mut server = Command::new(&binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("start angzarr serve")?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().context("server stdout")?).read_line(&mut line)?;
    let address = line
        .trim()
        .strip_prefix("angzarr listening on ")
        .context("no listening line")?
        .to_owned();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.id()))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")?;

    let load = |args: &[&str]| -> Result<String> {
        let output = Command::new(&binary)
            .arg("load")
            .args(args)
            .env("RUST_LOG", "warn")
            .output()?;
        anyhow::ensure!(output.status.success(), "angzarr load {args:?} failed");
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let server_url = format!("http://{address}");
    let mut rows = Vec::new();
    for (clients, commands) in [("1", "2000"), ("64", "20000")] {
        let remote = load(&[
            "--server",
            &server_url,
            "--clients",
            clients,
            "--commands",
            commands,
        ]);
        let local = load(&["--in-process", "--clients", clients, "--commands", commands]);
        rows.push((clients, remote, local));
    }
    let _ = server.kill();
    let _ = server.wait();

    println!("| figure | value |\n|---|---|");
    println!("| stripped release binary | {:.1} MB |", size as f64 / 1e6);
    println!(
        "| resident memory, idle server | {:.1} MB |",
        rss_kb as f64 / 1e3
    );
    for (clients, remote, local) in rows {
        let (remote, local) = (remote?, local?);
        println!("| {clients} client(s), gRPC | {remote} |");
        println!("| {clients} client(s), in-process | {local} |");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needed(args: &[&str], set: &[&str]) -> Vec<&'static str> {
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        needed_services(&args, |var| set.contains(&var))
            .iter()
            .map(|service| service.name)
            .collect()
    }

    const POSTGRES: &[&str] = &["postgres"];
    const REDIS: &[&str] = &[
        "redis",
        "redis-cluster-1",
        "redis-cluster-2",
        "redis-cluster-3",
    ];

    #[test]
    fn the_postgres_benchmark_is_selected_by_target_or_package() {
        let selects = |args: &[&str]| needed(args, &[]).contains(&"postgres");
        assert!(selects(&[]));
        assert!(selects(&["-p", "angzarr-example-bank"]));
        assert!(selects(&["-pangzarr-example-bank"]));
        assert!(selects(&[
            "--package=angzarr-example-bank",
            "--bench",
            "postgres"
        ]));
        assert!(selects(&["--bench=postgres", "--bench", "pipeline"]));
        assert!(!selects(&[
            "-p",
            "angzarr-example-bank",
            "--bench",
            "pipeline"
        ]));
        assert!(!selects(&["--package", "angzarr-store-sqlite"]));
        assert!(!selects(&["--bench", "pipeline"]));
        assert!(!selects(&["--bench", "redis"]));
    }

    #[test]
    fn the_redis_benchmark_starts_the_server_and_the_cluster_unless_set() {
        assert_eq!(needed(&["--bench", "redis"], &[]), REDIS);
        assert_eq!(
            needed(&["-p", "angzarr-example-bank", "--bench", "redis"], &[]),
            REDIS
        );
        assert_eq!(
            needed(&["--bench", "redis"], &["ANGZARR_TEST_REDIS_URL"]),
            &REDIS[1..]
        );
        assert_eq!(
            needed(&["--bench", "redis"], &["ANGZARR_TEST_REDIS_CLUSTER_URLS"]),
            &REDIS[..1]
        );
        assert!(
            needed(
                &["--bench", "redis"],
                &["ANGZARR_TEST_REDIS_URL", "ANGZARR_TEST_REDIS_CLUSTER_URLS"]
            )
            .is_empty()
        );
        assert!(needed(&["--bench", "pipeline"], &[]).is_empty());
        assert!(needed(&["--bench", "postgres"], &["ANGZARR_TEST_POSTGRES_URL"]).is_empty());
        assert_eq!(needed(&["--bench", "postgres"], &[]), POSTGRES);
        let all = needed(&["-p", "angzarr-example-bank"], &[]);
        assert_eq!(
            all,
            [
                "redis",
                "redis-cluster-1",
                "redis-cluster-2",
                "redis-cluster-3",
                "postgres",
                "dynamodb",
                "bigtable",
                "spanner"
            ]
        );
        assert_eq!(needed(&["--bench", "bigtable"], &[]), ["bigtable"]);
        assert_eq!(needed(&["--bench", "dynamodb"], &[]), ["dynamodb"]);
        assert_eq!(needed(&["--bench=spanner"], &[]), ["spanner"]);
        assert!(
            needed(
                &["--bench", "dynamodb", "--bench", "spanner"],
                &[
                    "ANGZARR_TEST_DYNAMODB_ENDPOINT",
                    "ANGZARR_TEST_SPANNER_EMULATOR_HOST"
                ]
            )
            .is_empty()
        );
    }
}
