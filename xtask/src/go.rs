//! `cargo xtask go build|generate|test`: the Go client-logic libraries and their generated code.
//!
//! `build` compiles, with `go build -buildmode=c-shared`, the Go libraries the Go bridge's
//! tests and benchmarks load into `target/go/` (plus two small C libraries that are broken
//! on purpose), and prints the variables that point the tests at them. The `.pb.go` files are
//! committed (a Go module is consumed from its repository), so a build needs only Go, a C
//! compiler and the module cache (filled from the Go module proxy on first use; `go.sum` is
//! committed, so later builds are reproducible offline). `generate` rewrites them from the
//! `.proto` files, with protoc from the project's virtualenv (`grpcio-tools`) and a pinned
//! `protoc-gen-go` installed into `target/go-bin/`. `test` runs `go vet` and `go test` on
//! the Go modules.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{project_root, run_status, services::venv_install};

/// The protoc-gen-go release, the same as the `google.golang.org/protobuf` runtime in the
/// `go.mod` files.
const PROTOC_GEN_GO: &str = "google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12";

/// The Go libraries: (file in `target/go/`, Go package directory, variable the tests read).
const LIBRARIES: &[(&str, &str, &str)] = &[
    ("bank.so", "examples/bank/go", "ANGZARR_TEST_GO_BANK_LIB"),
    (
        "fixture.so",
        "crates/bridge-go/tests/fixture",
        "ANGZARR_TEST_GO_FIXTURE_LIB",
    ),
];

/// The Go modules of the repository.
const MODULES: &[&str] = &["go", "examples/bank/go", "crates/bridge-go/tests/fixture"];

/// The broken C libraries: (file in `target/go/`, define, variable the tests read).
const BROKEN: &[(&str, &str, &str)] = &[
    (
        "wrong_abi.so",
        "-DWRONG_ABI",
        "ANGZARR_TEST_GO_WRONG_ABI_LIB",
    ),
    (
        "missing_symbol.so",
        "-DMISSING_SYMBOL",
        "ANGZARR_TEST_GO_MISSING_SYMBOL_LIB",
    ),
];

/// The generated Go code: (proto include dir, proto file, Go output dir, Go module path,
/// Go import path of the file's package).
const GENERATED: &[(&str, &str, &str, &str, &str)] = &[
    (
        "proto",
        "angzarr/v1/types.proto",
        "go",
        "github.com/angzarr-io/angzarr/go",
        "github.com/angzarr-io/angzarr/go/angzarrv1;angzarrv1",
    ),
    (
        "examples/bank/proto",
        "bank.proto",
        "examples/bank/go",
        "github.com/angzarr-io/angzarr/examples/bank/go",
        "github.com/angzarr-io/angzarr/examples/bank/go/bankpb;bankpb",
    ),
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["build"] => {
            for (name, value) in build()? {
                println!("export {name}={}", value.display());
            }
            Ok(())
        }
        ["generate"] => generate(),
        ["test"] => test(),
        _ => bail!("usage: cargo xtask go build|generate|test"),
    }
}

/// Builds the Go libraries and the broken C libraries into `target/go/`, and returns the
/// variables the Go bridge's tests read (each the absolute path of one library).
pub(crate) fn build() -> Result<Vec<(&'static str, PathBuf)>> {
    let root = project_root();
    let out = root.join("target").join("go");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut env = Vec::new();
    for &(file, package, variable) in LIBRARIES {
        let library = out.join(file);
        run_status(
            go()?
                .current_dir(root.join(package))
                .args([
                    "build",
                    "-buildmode=c-shared",
                    "-trimpath",
                    "-buildvcs=false",
                ])
                .arg("-o")
                .arg(&library)
                .arg("."),
        )
        .with_context(|| format!("cannot build the Go library {package}"))?;
        env.push((variable, library));
    }
    let source = root.join("crates/bridge-go/tests/c/broken.c");
    for &(file, define, variable) in BROKEN {
        let library = out.join(file);
        run_status(
            Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
                .args(["-shared", "-fPIC", define, "-o"])
                .arg(&library)
                .arg(&source),
        )
        .context("cannot build the broken C libraries of the Go bridge's tests (is a C compiler installed? cgo needs one too)")?;
        env.push((variable, library));
    }
    Ok(env)
}

/// For `cargo xtask test`: the Go modules' own tests ([`test`]), then [`build`]'s variables with
/// the paths as text.
pub(crate) fn prepare_for_tests() -> Result<Vec<(&'static str, String)>> {
    test()?;
    Ok(build()?
        .into_iter()
        .map(|(variable, path)| (variable, path.display().to_string()))
        .collect())
}

/// `go vet` and `go test` on every Go module of the repository (the Go side's own unit tests;
/// the bridge's cargo tests cover the libraries end to end).
pub(crate) fn test() -> Result<()> {
    let root = project_root();
    for module in MODULES {
        for args in [&["vet", "./..."][..], &["test", "-count=1", "./..."]] {
            run_status(go()?.current_dir(root.join(module)).args(args))
                .with_context(|| format!("`go {}` failed in {module}", args.join(" ")))?;
        }
    }
    Ok(())
}

/// Regenerates the committed `.pb.go` files from the `.proto` files.
pub(crate) fn generate() -> Result<()> {
    let root = project_root();
    let python = venv_install("go-protoc", &[crate::python::GRPCIO_TOOLS])?;
    let bin = root.join("target").join("go-bin");
    run_status(
        go()?
            .current_dir(root.join("go"))
            .env("GOBIN", &bin)
            .args(["install", PROTOC_GEN_GO]),
    )?;
    for &(include, proto, out, module, package) in GENERATED {
        run_status(
            crate::python::protoc(&python)
                .args(["-I", include])
                .arg(format!(
                    "--plugin=protoc-gen-go={}",
                    bin.join("protoc-gen-go").display()
                ))
                .arg(format!("--go_out={out}"))
                .arg(format!("--go_opt=module={module}"))
                .arg(format!("--go_opt=M{proto}={package}"))
                .arg(Path::new(include).join(proto)),
        )
        .with_context(|| format!("cannot generate the Go code of {proto}"))?;
    }
    Ok(())
}

/// `go`, or an error saying it is needed.
fn go() -> Result<Command> {
    let found = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !found {
        bail!(
            "`go` is not on PATH: the Go bridge needs Go 1.23 or later (and a C compiler for cgo)"
        );
    }
    let mut command = Command::new("go");
    // c-shared needs cgo, which a cross-compiling or minimal environment may have turned off.
    command.env("CGO_ENABLED", "1");
    Ok(command)
}
