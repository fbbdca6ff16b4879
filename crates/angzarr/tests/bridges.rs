//! The real binary serving the bank written in other languages, picked by `[[domains]] logic`:
//! Python in-process (feature `python`), Go in-process (feature `go-ffi`), and Python out of
//! process over gRPC (always built in). `cargo xtask test` builds the binary with both features
//! and prepares what these need: the project's virtualenv (`ANGZARR_TEST_PYTHON_SITE_PACKAGES`) and
//! the Go bank library (`ANGZARR_TEST_GO_BANK_LIB`); without them these tests fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use angzarr_example_bank::{command, deposit, open, withdraw};
use angzarr_proto::v1::AggregateQuery;
use common::{Server, angzarr};
use uuid::Uuid;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run `cargo xtask test`, which prepares the bridges")
    })
}

/// Where the Python bank and its packages are: the virtualenv's site-packages, the `angzarr`
/// package, the bank.
fn python_path() -> Vec<PathBuf> {
    vec![
        PathBuf::from(required("ANGZARR_TEST_PYTHON_SITE_PACKAGES")),
        root().join("python"),
        root().join("examples/bank/python"),
    ]
}

/// A configuration file with the one domain `account` served by `logic`.
fn config(dir: &Path, logic: &str, python_path: &[PathBuf]) -> PathBuf {
    let paths: Vec<String> = python_path
        .iter()
        .map(|path| format!("{:?}", path.display().to_string()))
        .collect();
    let text = format!(
        "[[domains]]\nname = \"account\"\nlogic = {logic:?}\nsnapshot_every = 2\npython_path = [{}]\n",
        paths.join(", ")
    );
    let file = dir.join("angzarr.toml");
    std::fs::write(&file, text).expect("write the configuration");
    file
}

fn serve(dir: &Path, logic: &str, python_path: &[PathBuf]) -> Server {
    let file = config(dir, logic, python_path);
    let file = file.display().to_string();
    Server::start(dir, &[("ANGZARR_CONFIG", file.as_str())])
}

/// Opens an account, deposits, is refused an overdraft with the bank's own words, withdraws,
/// and reads back the three events.
async fn bank_session(server: &Server) {
    let mut gateway = server.gateway().await;
    let account = Uuid::new_v4();
    for step in [open("ada"), deposit(5)] {
        gateway
            .execute(command(account, &step))
            .await
            .expect("the bank accepts");
    }
    let refused = gateway
        .execute(command(account, &withdraw(10)))
        .await
        .expect_err("an overdraft is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("insufficient funds"),
        "{refused:?}"
    );
    gateway
        .execute(command(account, &withdraw(3)))
        .await
        .expect("the bank accepts");
    let book = server
        .query()
        .await
        .get_event_book(AggregateQuery {
            domain: "account".into(),
            root: account.to_string(),
            ..AggregateQuery::default()
        })
        .await
        .expect("the history")
        .into_inner();
    let sequences: Vec<u64> = book.pages.iter().map(|page| page.sequence).collect();
    let types: Vec<&str> = book
        .pages
        .iter()
        .map(|page| {
            page.payload
                .as_ref()
                .map_or("", |any| any.type_url.as_str())
        })
        .collect();
    // The snapshot at 2 events hides the first two from the loaded history, not the query.
    assert_eq!(sequences, [0, 1, 2]);
    assert_eq!(
        types, ["type.googleapis.com/examples.bank.v1.BankEvent"; 3],
        "events packed under the standard type URL by every language"
    );
    // The domain's `snapshot_every = 2` holds whatever the logic's own code says (the Python
    // bank module snapshots every 100 events): a snapshot at the second event.
    let from_snapshot = server
        .query()
        .await
        .get_event_book(AggregateQuery {
            domain: "account".into(),
            root: account.to_string(),
            use_snapshot: true,
            ..AggregateQuery::default()
        })
        .await
        .expect("the history from its snapshot")
        .into_inner();
    assert_eq!(
        from_snapshot.snapshot.map(|snapshot| snapshot.sequence),
        Some(1)
    );
    assert_eq!(from_snapshot.pages.len(), 1);
}

#[cfg(feature = "python")]
#[tokio::test]
async fn python_bank_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), "python:bank", &python_path());
    bank_session(&server).await;
}

#[cfg(feature = "go-ffi")]
#[tokio::test]
async fn go_bank_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let library = required("ANGZARR_TEST_GO_BANK_LIB");
    let server = serve(dir.path(), &format!("go:{library}"), &[]);
    bank_session(&server).await;
}

/// `python -m angzarr.server bank unix:...`, killed when dropped.
struct PythonServer(Child);

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn python_bank_over_grpc() {
    use std::io::{BufRead, BufReader};

    let dir = tempfile::tempdir().unwrap();
    let site_packages = PathBuf::from(required("ANGZARR_TEST_PYTHON_SITE_PACKAGES"));
    let python = site_packages
        .ancestors()
        .nth(3)
        .expect("site-packages is <venv>/lib/pythonX.Y/site-packages")
        .join("bin/python3");
    let socket = format!("unix:{}", dir.path().join("bank.sock").display());
    let mut child = std::process::Command::new(&python)
        .args(["-m", "angzarr.server", "bank", &socket])
        .env("PYTHONPATH", std::env::join_paths(python_path()).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", python.display()));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _logic = PythonServer(child);
    assert!(
        line.starts_with("serving"),
        "the Python server did not start: {line:?}"
    );

    let server = serve(dir.path(), &format!("grpc:{socket}"), &[]);
    bank_session(&server).await;
}

/// A logic the binary does not know, or a Python module that does not exist, stops `serve` at
/// start-up with an error naming the domain.
#[test]
fn unknown_logic_is_an_error_at_start_up() {
    let mut cases = vec![("java:bank", "unknown logic")];
    if cfg!(feature = "python") {
        cases.push(("python:no_such_bank_module", "no_such_bank_module"));
    }
    for (logic, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let file = config(dir.path(), logic, &[]);
        let output = angzarr()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env("ANGZARR_CONFIG", &file)
            .stdout(Stdio::null())
            .output()
            .expect("run the binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{logic}: serve started");
        assert!(
            stderr.contains("\"account\"") && stderr.contains(expected),
            "{logic}: {stderr}"
        );
    }
}
