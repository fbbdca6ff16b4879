//! `cargo xtask bench [CARGO_BENCH_ARGS]... [-- BENCH_ARGS]...`: the benchmark targets.
//!
//! `--benches` keeps the libtest harnesses of libraries out of the run, so criterion
//! arguments after `--` (`--save-baseline main`, a filter, ...) reach only criterion
//! benchmarks; crates without a `benches/` target are simply not involved. Without a
//! `-p`/`--package` argument the whole workspace is benchmarked.

use anyhow::Result;

use crate::{cargo, run_status};

pub(crate) fn run(args: &[String]) -> Result<()> {
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
