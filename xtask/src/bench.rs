//! `cargo xtask bench [CARGO_BENCH_ARGS]... [-- BENCH_ARGS]...`: the benchmark targets.
//!
//! `--benches` keeps the libtest harnesses of libraries out of the run, so criterion
//! arguments after `--` (`--save-baseline main`, a filter, ...) reach only criterion
//! benchmarks; crates without a `benches/` target are simply not involved. Without a
//! `-p`/`--package` argument the whole workspace is benchmarked.

use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, run_status};

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

    let mut command = cargo();
    command.args(["bench", "--locked", "--benches"]);
    if !selects_packages {
        command.arg("--workspace");
    }
    command.args(cargo_args);
    if !bench_args.is_empty() {
        command.arg("--").args(bench_args);
    }
    run_status(&mut command)
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
