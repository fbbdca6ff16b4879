//! Project automation for angzarr, in the `cargo xtask` style: plain Rust, no build-tool
//! dependencies, run with `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! `cargo xtask test` is the one test command: CI runs exactly it (through `.ci/run`).

mod bench;
mod deps;
mod go;
mod lint;
mod python;
mod services;
mod test;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  test [--backend NAME]... [--no-services]
        Start the services the selected backends need, run every test of the workspace
        (`cargo test --all-targets` and the doc tests), verify that each backend's
        conformance suite really ran and passed, stop the services it started.
        --backend NAME   only that backend's crate and suite (repeatable); default: all
        --no-services    do not start/stop services (they are provided from outside)
  lint
        cargo fmt --check, cargo clippy -D warnings, and check-deps.
  check-deps
        Enforce the hexagonal dependency direction between the angzarr crates.
  services up|down|status [NAME]...
        Provision local servers on 127.0.0.1 under target/services/<name>/.
        up without names starts what the backends need; down/status without names
        cover every known service. Connection variables go to target/services/env.
  bench [CARGO_BENCH_ARGS]... [-- BENCH_ARGS]...
        cargo bench on the benchmark targets of the workspace (the pipeline figures).
  bench front-door
        The gRPC front door's figures: binary size, idle memory, latency and throughput
        through gRPC beside the same workload in-process.
  go build|generate|test
        build: the Go bridge's test libraries into target/go/ (go build -buildmode=c-shared),
        printing the variables its tests read. generate: rewrite the committed .pb.go files.
        test: go vet and go test on the Go modules.
  python
        Install the Python bridge's pinned packages into target/services/venv, regenerate
        the committed protobuf modules of python/ and examples/bank/python/, and print the
        variables the bridge's tests read.
  help, --help, -h
        This text.

backends: {backends}
services: {services}
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        eprint!("{}", usage());
        bail!("no command given");
    };
    match command.as_str() {
        "test" => test::run(rest),
        "lint" => no_args(command, rest).and_then(|()| lint::run()),
        "check-deps" => no_args(command, rest).and_then(|()| deps::run()),
        "services" => services::run(rest),
        "bench" => bench::run(rest),
        "go" => go::run(rest),
        "python" => python::run(rest),
        "help" | "--help" | "-h" => {
            print_usage();
            Ok(())
        }
        other => bail!("unknown command `{other}` (see `cargo xtask --help`)"),
    }
}

/// Prints the usage (for `--help`).
pub(crate) fn print_usage() {
    print!("{}", usage());
}

fn usage() -> String {
    let backends: Vec<&str> = test::BACKENDS.iter().map(|b| b.name).collect();
    let mut services: Vec<&str> = services::SERVICES.iter().map(|s| s.name).collect();
    // A group's name stands for its members.
    for (group, members) in services::GROUPS {
        services.retain(|name| !members.contains(name));
        services.push(group);
    }
    USAGE
        .replace("{backends}", &backends.join(", "))
        .replace("{services}", &services.join(", "))
}

fn no_args(command: &str, rest: &[String]) -> Result<()> {
    match rest.first() {
        None => Ok(()),
        Some(arg) if arg == "--help" || arg == "-h" => {
            print_usage();
            std::process::exit(0)
        }
        Some(arg) => bail!("`{command}` takes no arguments, got `{arg}`"),
    }
}

/// The workspace root: xtask lives in `<root>/xtask`.
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is one level below the workspace root")
        .to_path_buf()
}

/// The binary's opt-in features (the cloud stores, the in-process Python and Go bridges): lint
/// and tests build with them (one build for both), so that every adapter's wiring is compiled,
/// linted and tested end to end.
pub(crate) const OPTIONAL_FEATURES: &str =
    "angzarr/dynamodb,angzarr/bigtable,angzarr/spanner,angzarr/python,angzarr/go-ffi";

/// `cargo` as invoked by the user (the `CARGO` variable cargo sets), run from the root.
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(project_root());
    command
}

/// Runs a command with inherited stdio and fails if it does not exit successfully.
pub(crate) fn run_status(command: &mut Command) -> Result<()> {
    let shown = display(command);
    eprintln!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// A command line, for messages.
pub(crate) fn display(command: &Command) -> String {
    let program = Path::new(command.get_program());
    // `cargo()` runs the toolchain's cargo by its full path; show it as the user types it.
    let mut shown = if Some(command.get_program()) == std::env::var_os("CARGO").as_deref() {
        "cargo".to_owned()
    } else {
        program.to_string_lossy().into_owned()
    };
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        shown.push(' ');
        if arg.is_empty()
            || arg.contains(|c: char| c.is_whitespace() || "*?[]'\"$;&|<>()".contains(c))
        {
            shown.push_str(&format!("'{}'", arg.replace('\'', r"'\''")));
        } else {
            shown.push_str(&arg);
        }
    }
    shown
}
