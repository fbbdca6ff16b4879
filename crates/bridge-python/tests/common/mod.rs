//! What the bridge's tests share: where the Python side is, and loading a module through the
//! bridge.

#![allow(dead_code, unreachable_pub)] // Each test file uses a part.

use std::path::{Path, PathBuf};
use std::time::Duration;

use angzarr_bridge_python::{LoadError, PythonConfig, PythonLogic};

/// The variable `cargo xtask python` prints, naming the virtualenv's site-packages.
pub const SITE_PACKAGES: &str = "ANGZARR_TEST_PYTHON_SITE_PACKAGES";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The virtualenv's site-packages: the variable, else the project's virtualenv once
/// `cargo xtask python` has installed into it. Never skips: a missing environment fails the
/// test, saying how to make it.
pub fn site_packages() -> PathBuf {
    if let Some(path) = std::env::var_os(SITE_PACKAGES) {
        return PathBuf::from(path);
    }
    let venv = root().join("target/services/venv");
    let installed = venv.join("angzarr-python-bridge.installed").is_file();
    let found = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("site-packages"))
        .find(|path| path.is_dir());
    match (installed, found) {
        (true, Some(path)) => path,
        _ => panic!(
            "the Python environment of the bridge is missing: run `cargo xtask python` \
             (it installs protobuf and grpcio into target/services/venv and prints \
             {SITE_PACKAGES}), or set {SITE_PACKAGES} to a site-packages that has them"
        ),
    }
}

/// Every `sys.path` entry the tests need: the packages, the `angzarr` package, the bank,
/// the fixtures, and the generated per-snapshot modules.
pub fn paths() -> Vec<PathBuf> {
    let root = root();
    vec![
        site_packages(),
        root.join("python"),
        root.join("examples/bank/python"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python"),
        generated_dir(),
    ]
}

fn generated_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("angzarr-bridge-python");
    std::fs::create_dir_all(&dir).expect("cannot create the generated modules' directory");
    dir
}

/// A module serving the bank (and the faults) with `snapshot_every`: the module-level
/// `handle` is one fixed function, so each interval gets a module of its own.
pub fn bank_module(snapshot_every: u64) -> String {
    let name = format!("bank_fixture_every_{snapshot_every}");
    let path = generated_dir().join(format!("{name}.py"));
    let text = format!("from bank_fixture import fixture\n\nhandle = fixture({snapshot_every})\n");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        // Written whole then renamed: tests in parallel may write the same module.
        let partial = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&partial, &text).expect("cannot write a generated module");
        std::fs::rename(&partial, &path).expect("cannot write a generated module");
    }
    name
}

/// `module` through the bridge, with `deadline`.
pub fn try_load(module: &str, deadline: Duration) -> Result<PythonLogic, LoadError> {
    PythonLogic::load(PythonConfig::new(module).paths(paths()).deadline(deadline))
}

/// `module` through the bridge, with `deadline`; panics if it does not load.
pub fn load(module: &str, deadline: Duration) -> PythonLogic {
    try_load(module, deadline).unwrap_or_else(|error| panic!("cannot load {module}: {error}"))
}
