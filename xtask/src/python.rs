//! The Python side of the Python bridge: the pinned packages in the project's virtualenv, and
//! the generated protobuf modules of `python/angzarr` and `examples/bank/python`.
//!
//! `cargo xtask python` runs [`prepare`] and prints the variables the bridge's tests read.
//!
//! The generated modules are committed: `pip install` of `python/` (from a checkout or a git
//! URL) then needs no code generator, and every user gets the code of the pinned protoc
//! (grpcio-tools' bundled one, so no system `protoc`). [`prepare`] regenerates them and says
//! when that changed a file, so a stale commit shows up in `git status`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{project_root, run_status, services};

/// The packages of the bridge's Python side, pinned to the tested versions (the same
/// protobuf and grpcio as the Python client of the end-to-end tests, which shares the
/// virtualenv). protobuf must be at least the version of the generated code (7.35 for
/// grpcio-tools 1.85's protoc).
pub(crate) const PACKAGES: &[&str] = &["protobuf==7.36.2", "grpcio==1.85.3", GRPCIO_TOOLS];

/// protoc, run as `python -m grpc_tools.protoc` ([`protoc`]) for the Python and the Go code:
/// one pin, since both install into the one project virtualenv.
pub(crate) const GRPCIO_TOOLS: &str = "grpcio-tools==1.85.1";

/// grpcio-tools' protoc, run by `python` from the project root: the caller adds the
/// include path, the outputs and the `.proto` files.
pub(crate) fn protoc(python: &Path) -> Command {
    let mut command = Command::new(python);
    command
        .current_dir(project_root())
        .args(["-m", "grpc_tools.protoc"]);
    command
}

/// The variable naming the virtualenv's `site-packages`, which the bridge's tests and bench
/// add to the embedded interpreter's `sys.path`.
pub(crate) const SITE_PACKAGES_VARIABLE: &str = "ANGZARR_TEST_PYTHON_SITE_PACKAGES";

/// One protoc run: `.proto` files under an include directory, generated into a directory.
struct Generation {
    include: &'static str,
    protos: &'static [&'static str],
    out: &'static str,
    /// Whether to generate gRPC stubs (`*_pb2_grpc.py`) for the files that have services.
    grpc: &'static [&'static str],
}

const GENERATIONS: &[Generation] = &[
    Generation {
        include: "proto",
        protos: &["angzarr/v1/types.proto", "angzarr/v1/services.proto"],
        out: "python",
        grpc: &["angzarr/v1/services.proto"],
    },
    Generation {
        include: "examples/bank/proto",
        protos: &["bank.proto"],
        out: "examples/bank/python",
        grpc: &[],
    },
];

/// Installs the pinned packages into `target/services/venv`, regenerates the protobuf
/// modules, and answers the variables the bridge's tests need.
pub(crate) fn prepare() -> Result<Vec<(&'static str, String)>> {
    let python = services::venv_install("python-bridge", PACKAGES)
        .context("could not install the Python bridge's packages")?;
    for generation in GENERATIONS {
        generate(&python, generation)?;
    }
    Ok(vec![(SITE_PACKAGES_VARIABLE, site_packages(&python)?)])
}

/// `cargo xtask python`: [`prepare`], then the variables as `export KEY=value` lines (for
/// `eval`).
pub(crate) fn run(args: &[String]) -> Result<()> {
    crate::no_args("python", args)?;
    for (key, value) in prepare()? {
        println!("export {key}={value}");
    }
    Ok(())
}

fn site_packages(python: &Path) -> Result<String> {
    let output = Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .with_context(|| format!("could not run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "{} could not tell its site-packages: {}",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Runs grpcio-tools' protoc into a scratch directory, then copies the files that changed,
/// so that an unchanged checkout is left untouched (file times included).
fn generate(python: &Path, generation: &Generation) -> Result<()> {
    let root = project_root();
    let scratch = root.join("target").join("python-gen").join(generation.out);
    if scratch.exists() {
        fs::remove_dir_all(&scratch)
            .with_context(|| format!("could not empty {}", scratch.display()))?;
    }
    fs::create_dir_all(&scratch)
        .with_context(|| format!("could not create {}", scratch.display()))?;
    let protoc = |extra: &[String], protos: &[&str]| {
        let mut command = protoc(python);
        command
            .arg(format!("-I{}", generation.include))
            .args(extra)
            .args(
                protos
                    .iter()
                    .map(|proto| Path::new(generation.include).join(proto)),
            );
        run_status(&mut command)
    };
    let out = |flag: &str| format!("--{flag}={}", scratch.display());
    protoc(&[out("python_out"), out("pyi_out")], generation.protos)?;
    if !generation.grpc.is_empty() {
        protoc(&[out("grpc_python_out")], generation.grpc)?;
    }
    for generated in files(&scratch)? {
        let relative = generated
            .strip_prefix(&scratch)
            .expect("under the scratch dir");
        let target = root.join(generation.out).join(relative);
        let text = fs::read(&generated)
            .with_context(|| format!("could not read {}", generated.display()))?;
        if fs::read(&target).is_ok_and(|current| current == text) {
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("could not create {}", parent.display()))?;
        }
        fs::write(&target, text)
            .with_context(|| format!("could not write {}", target.display()))?;
        eprintln!(
            "xtask python: regenerated {}",
            target.strip_prefix(&root).unwrap_or(&target).display()
        );
    }
    Ok(())
}

/// The files under `dir`, recursively.
fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            found.extend(files(&path)?);
        } else {
            found.push(path);
        }
    }
    Ok(found)
}
