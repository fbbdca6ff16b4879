//! The Python package's gRPC server (`angzarr.server.serve`), checked by a Python script run
//! with the virtualenv's interpreter: the same logic out of process, its errors as statuses.

mod common;

#[test]
fn the_python_grpc_server_serves_the_logic_and_maps_errors_to_statuses() {
    let site_packages = common::site_packages();
    // <venv>/lib/python3.x/site-packages → <venv>/bin/python3
    let python = site_packages
        .ancestors()
        .nth(3)
        .expect("site-packages is three levels below the virtualenv")
        .join("bin/python3");
    let paths = std::env::join_paths(common::paths()).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_server.py");
    let output = std::process::Command::new(&python)
        .arg(&script)
        .env("PYTHONPATH", paths)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", python.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("server checks passed"),
        "{} failed ({}):\n{stdout}\n{stderr}",
        script.display(),
        output.status
    );
}
