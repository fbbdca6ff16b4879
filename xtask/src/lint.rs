//! `cargo xtask lint`: formatting, clippy with warnings denied, and the dependency rules.
//! Every check runs even if an earlier one fails, so one run reports everything.

use anyhow::{Result, bail};

use crate::{cargo, deps, run_status};

pub(crate) fn run() -> Result<()> {
    let mut failed = Vec::new();

    if let Err(error) = run_status(cargo().args(["fmt", "--all", "--check"])) {
        eprintln!("lint: {error:#} (run `cargo fmt --all` to fix)");
        failed.push("fmt");
    }
    if let Err(error) = run_status(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--features",
        crate::OPTIONAL_FEATURES,
        "--locked",
        "--",
        "-D",
        "warnings",
    ])) {
        eprintln!("lint: {error:#}");
        failed.push("clippy");
    }
    // Optional adapters must build when left out, too.
    if let Err(error) = run_status(cargo().args([
        "clippy",
        "--package",
        "angzarr",
        "--no-default-features",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])) {
        eprintln!("lint: {error:#}");
        failed.push("clippy --no-default-features");
    }
    eprintln!("$ cargo xtask check-deps");
    if let Err(error) = deps::run() {
        eprintln!("lint: {error:#}");
        failed.push("check-deps");
    }

    if failed.is_empty() {
        eprintln!("lint: ok (fmt, clippy, clippy without default features, check-deps)");
        Ok(())
    } else {
        bail!("lint failed: {}", failed.join(", "))
    }
}
