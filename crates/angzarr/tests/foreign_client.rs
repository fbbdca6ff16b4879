//! The real binary driven by a client in another language: Python's grpcio, which finds every
//! type through server reflection and packs payloads with protobuf's own `Any.Pack`
//! (`tests/python/foreign_client.py`). A server that only understood its own Rust client
//! (an unusual type URL prefix, reflection in one protocol version only) fails here.
//!
//! Python 3 with `grpcio`, `grpcio-reflection` and `protobuf` is required: without them the
//! test fails, saying how to install them (`cargo xtask test` installs them itself).

use std::process::Command;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/foreign_client.py"
);
const REQUIREMENTS: &str = "crates/angzarr/tests/python/requirements.txt";

mod common;

use common::Server;

/// The Python to run: the project's virtualenv's, which `cargo xtask test` prepares and names
/// in `ANGZARR_TEST_PYTHON`, else `python3` on PATH.
fn python() -> String {
    std::env::var("ANGZARR_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Fails, saying how to install them, unless Python 3 and the client's modules are there.
fn require_python() {
    let install = format!(
        "`pip install -r {REQUIREMENTS}` into a virtualenv named by ANGZARR_TEST_PYTHON \
         (`cargo xtask test` does that itself)"
    );
    let probe = Command::new(python())
        .args(["-c", "import grpc, grpc_reflection, google.protobuf"])
        .output();
    match probe {
        Err(error) => panic!(
            "this test drives the server with a Python gRPC client, and python3 cannot be run \
             ({error}): install Python 3, then {install}"
        ),
        Ok(output) if !output.status.success() => panic!(
            "this test drives the server with a Python gRPC client, and python3 lacks its \
             modules (grpcio, grpcio-reflection, protobuf): install them with {install}\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Ok(_) => {}
    }
}

#[test]
fn a_python_client_works_through_reflection_and_standard_any_packing() {
    require_python();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let output = Command::new(python())
        .arg(SCRIPT)
        .arg(&server.address)
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("foreign client: all checks passed"),
        "the Python client did not finish its checks:\n{stdout}\n{stderr}"
    );
}
