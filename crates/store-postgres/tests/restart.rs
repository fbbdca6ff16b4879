//! The PostgreSQL server crashed and restarted in the middle of a load, twice: commands fail
//! with a typed error while it is down, succeed once it is back, and nothing acknowledged is
//! lost or duplicated.
//!
//! The test cannot restart the shared server of `cargo xtask services up` (other tests use
//! it), so it runs a server of its own: `initdb` in a temporary directory, then `postgres` on
//! a free loopback port, with the flags xtask uses and the durable settings spelled out
//! (`fsync = on`, `synchronous_commit = on`). As root, both run as the `postgres` OS user.
//! The programs are found with `pg_config --bindir`, in `/usr/lib/postgresql/*/bin` or on
//! `PATH`; without them the test fails, it does not skip.
//!
//! Clients deposit into a few accounts through a [`Gateway`] with the bank's logic, each
//! command with a request id of its own, and resend a failed command with the same request
//! id until it is acknowledged (for at most [`RETRY_FOR`]). The server is killed outright
//! (SIGKILL to every process: a crash, recovered from the WAL at the next start), then stopped
//! with `pg_ctl stop -m immediate` (backends end their sessions with a `FATAL`); each time it
//! stays down for [`OUTAGE`] and starts again on the same port. Finally every account's
//! stream, read through a fresh pool, is gapless and holds each acknowledged deposit exactly
//! once and nothing else, and its balance is the sum of the acknowledged deposits.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use angzarr_core::{CommandError, Gateway};
use angzarr_example_bank::proto::{BankEvent, bank_event::Kind};
use angzarr_example_bank::{DOMAIN, command, deposit, logic, open, replay};
use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt, Uuid,
};
use angzarr_store_postgres::{PostgresConfig, PostgresStore};
use prost::Message;
use tokio::task::JoinHandle;

/// Clients depositing at once, two per account.
const CLIENTS: usize = 8;
/// Accounts they deposit into.
const ACCOUNTS: usize = 4;
/// How many commands each client gets acknowledged before an outage and after a restart.
const PROGRESS: usize = 10;
/// How long the server stays down each time.
const OUTAGE: Duration = Duration::from_secs(1);
/// How long a client resends one command before the test fails.
const RETRY_FOR: Duration = Duration::from_secs(20);
/// How long the server may take to accept queries after a start, and the clients to make
/// [`PROGRESS`].
const READY_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_under_load_loses_and_duplicates_no_acknowledged_command() {
    let started = Instant::now();
    let mut server = tokio::task::block_in_place(Server::init);
    server.start();
    server.wait_ready().await;
    server.check_durable().await;

    let store = Arc::new(
        PostgresStore::open(config(&server.url()))
            .await
            .expect("open the store"),
    );
    let gateway = bank(&store);
    let roots: Vec<Uuid> = (0..ACCOUNTS).map(|_| Uuid::new_v4()).collect();
    for root in &roots {
        gateway
            .execute(command(*root, &open("restart")))
            .await
            .expect("open an account");
    }
    let mut load = Load::start(&gateway, &roots);
    load.progress(PROGRESS).await;

    let outages: [(&str, Outage); 2] = [
        ("killed (SIGKILL to every server process)", Server::crash),
        (
            "stopped with pg_ctl stop -m immediate",
            Server::stop_immediately,
        ),
    ];
    let mut refused = Vec::new();
    for (what, stop) in outages {
        let before = load.failures();
        let outage = Instant::now();
        tokio::task::block_in_place(|| stop(&mut server));
        refused.push(store_refuses(&store, what).await);
        tokio::time::sleep(OUTAGE).await;
        assert!(
            load.failures() > before,
            "no command failed while the server was {what}: the outage missed the load"
        );
        server.start();
        server.wait_ready().await;
        let back = outage.elapsed();
        load.progress(PROGRESS).await;
        eprintln!(
            "server {what}: answering again after {:.1} s; {} failed attempts, then every \
             client went on",
            back.as_secs_f64(),
            load.failures() - before
        );
    }
    let outcome = load.finish().await;
    drop(gateway);
    drop(store);

    // Everything is checked through a fresh pool and a gateway with an empty cache.
    let store = Arc::new(
        PostgresStore::open(config(&server.url()))
            .await
            .expect("reopen the store"),
    );
    for scratch in &refused {
        assert_eq!(
            store.next_sequence(scratch).await.expect("read"),
            0,
            "an append refused while the server was down was stored"
        );
    }
    let checker = bank(&store);
    for root in &roots {
        check_account(&store, &checker, *root, &outcome.acked).await;
    }
    eprintln!(
        "{} deposits acknowledged ({} of them on a resend, found stored by their request id); \
         failed attempts: {} unavailable, {} outcome unknown; {:.1} s",
        outcome.acked.len(),
        outcome.acked.iter().filter(|ack| ack.replayed).count(),
        outcome.unavailable,
        outcome.unknown,
        started.elapsed().as_secs_f64()
    );
}

/// A way of taking the server down.
type Outage = fn(&mut Server);

fn config(url: &str) -> PostgresConfig {
    PostgresConfig::new(url)
        .with_pool_size(CLIENTS)
        .with_connect_timeout(Duration::from_secs(1))
        .with_acquire_timeout(Duration::from_secs(2))
        .with_operation_timeout(Duration::from_secs(5))
}

fn bank(store: &Arc<PostgresStore>) -> Gateway {
    Gateway::builder(store.clone(), store.clone())
        .register(Domain::new(DOMAIN).expect("valid"), Arc::new(logic(0)))
        .build()
}

fn account(root: Uuid) -> AggregateId {
    AggregateId::new(Domain::new(DOMAIN).expect("valid"), root).expect("non-nil")
}

/// Straight to the store, with the server down: an append is `Unavailable` (or, on a pooled
/// connection that has not noticed yet, `OutcomeUnknown`) and a read `Unavailable`. Answers
/// the aggregate, which must stay empty.
async fn store_refuses(store: &PostgresStore, what: &str) -> AggregateId {
    let scratch =
        AggregateId::new(Domain::new("restart").expect("valid"), Uuid::new_v4()).expect("non-nil");
    let page = EventPage {
        sequence: 0,
        correlation_id: "refused".into(),
        ..EventPage::default()
    };
    let append = store.append(&scratch, Append::new(0, vec![page])).await;
    assert!(
        matches!(
            append,
            Err(EventStoreError::Unavailable(_) | EventStoreError::OutcomeUnknown(_))
        ),
        "an append with the server {what} gave {append:?}"
    );
    let read = store.read_all(&scratch).await;
    assert!(
        matches!(read, Err(EventStoreError::Unavailable(_))),
        "a read with the server {what} gave {read:?}"
    );
    scratch
}

/// The stream of `root` is gapless, holds each deposit acknowledged for it exactly once, at
/// the sequence its acknowledgement gave, and nothing else; its balance is their sum.
async fn check_account(store: &PostgresStore, checker: &Gateway, root: Uuid, acked: &[Acked]) {
    let aggregate = account(root);
    let stream = store.read_all(&aggregate).await.expect("read the stream");
    for (index, page) in stream.iter().enumerate() {
        assert_eq!(page.sequence, index as u64, "{aggregate}: a gap");
    }
    assert_eq!(
        store.next_sequence(&aggregate).await.expect("read"),
        stream.len() as u64,
        "{aggregate}: the stream's end"
    );
    let acked: Vec<&Acked> = acked.iter().filter(|ack| ack.root == root).collect();
    assert!(!acked.is_empty(), "{aggregate}: no deposit acknowledged");
    // Every amount is a different number, so comparing them sorted finds a lost deposit, a
    // duplicate and one stored without an acknowledgement.
    let mut stored: Vec<u64> = stream[1..]
        .iter()
        .map(|page| {
            deposited(page)
                .unwrap_or_else(|| panic!("{aggregate}: event {} is no deposit", page.sequence))
        })
        .collect();
    stored.sort_unstable();
    let mut expected: Vec<u64> = acked.iter().map(|ack| ack.amount).collect();
    expected.sort_unstable();
    if stored != expected {
        let (lost, extra) = difference(&expected, &stored);
        panic!(
            "{aggregate}: the stored deposits are not the acknowledged ones: acknowledged but \
             not stored (lost) {lost:?}; stored without an acknowledgement or more than once \
             {extra:?}"
        );
    }
    for ack in &acked {
        let at = usize::try_from(ack.sequence).expect("small");
        assert_eq!(
            stream.get(at).and_then(deposited),
            Some(ack.amount),
            "{}: acknowledged at {}, not stored there",
            ack.request_id,
            ack.sequence
        );
        let record = store
            .find_by_request(&aggregate, &ack.request_id)
            .await
            .expect("find by request")
            .unwrap_or_else(|| panic!("{}: not found by its request id", ack.request_id));
        let sequences: Vec<u64> = record.pages.iter().map(|page| page.sequence).collect();
        assert_eq!(sequences, [ack.sequence], "{}", ack.request_id);
    }
    let loaded = checker.load(&aggregate).await.expect("load");
    let snapshot = loaded.snapshot.and_then(|snapshot| snapshot.state);
    let state = replay(snapshot.as_ref(), &loaded.pages).expect("fold the history");
    assert_eq!(
        state.balance,
        expected.iter().sum::<u64>(),
        "{aggregate}: the balance"
    );
}

/// What each of two sorted lists has that the other has not, counting repeats.
fn difference(left: &[u64], right: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let (mut only_left, mut only_right) = (Vec::new(), Vec::new());
    let (mut left, mut right) = (left.iter().peekable(), right.iter().peekable());
    loop {
        match (left.peek(), right.peek()) {
            (Some(l), Some(r)) if l == r => {
                left.next();
                right.next();
            }
            (Some(l), Some(r)) if l < r => only_left.extend(left.next()),
            (Some(_), Some(_)) | (None, Some(_)) => only_right.extend(right.next()),
            (Some(_), None) => only_left.extend(left.next()),
            (None, None) => return (only_left, only_right),
        }
    }
}

/// The amount of a `Deposited` event.
fn deposited(page: &EventPage) -> Option<u64> {
    let payload = page.payload.as_ref()?;
    match BankEvent::decode(payload.value.as_slice()).ok()?.kind? {
        Kind::Deposited(deposited) => Some(deposited.amount),
        _ => None,
    }
}

/// An acknowledged deposit.
#[derive(Debug)]
struct Acked {
    root: Uuid,
    request_id: String,
    amount: u64,
    /// The sequence of its event, as the acknowledgement gave it.
    sequence: u64,
    /// Acknowledged by a resend that found it stored (its first outcome was unknown).
    replayed: bool,
}

/// What the clients count as they go.
struct Counters {
    /// Acknowledged commands, per client.
    acked: Vec<AtomicUsize>,
    /// Attempts that failed with `CommandError::Store(EventStoreError::Unavailable)`.
    unavailable: AtomicUsize,
    /// Attempts that failed with `CommandError::OutcomeUnknown`.
    unknown: AtomicUsize,
}

/// The clients at work.
struct Load {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<Vec<Acked>>>,
}

/// What the clients did.
struct Outcome {
    acked: Vec<Acked>,
    unavailable: usize,
    unknown: usize,
}

impl Load {
    /// [`CLIENTS`] clients, spread over the accounts.
    fn start(gateway: &Gateway, roots: &[Uuid]) -> Self {
        let counters = Arc::new(Counters {
            acked: (0..CLIENTS).map(|_| AtomicUsize::new(0)).collect(),
            unavailable: AtomicUsize::new(0),
            unknown: AtomicUsize::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|client| {
                tokio::spawn(deposits(
                    gateway.clone(),
                    roots[client % roots.len()],
                    client,
                    counters.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Self {
            counters,
            stop,
            clients,
        }
    }

    /// Failed attempts so far.
    fn failures(&self) -> usize {
        self.counters.unavailable.load(Ordering::Relaxed)
            + self.counters.unknown.load(Ordering::Relaxed)
    }

    /// Waits until every client has `more` commands acknowledged beyond those it has now.
    async fn progress(&mut self, more: usize) {
        let targets: Vec<usize> = self
            .counters
            .acked
            .iter()
            .map(|acked| acked.load(Ordering::Relaxed) + more)
            .collect();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let reached = self
                .counters
                .acked
                .iter()
                .zip(&targets)
                .all(|(acked, target)| acked.load(Ordering::Relaxed) >= *target);
            if reached {
                return;
            }
            if self.clients.iter().any(JoinHandle::is_finished) {
                // A client failed: its panic is the test's.
                self.finish().await;
                unreachable!("a client stopped on its own");
            }
            let acked: Vec<usize> = self
                .counters
                .acked
                .iter()
                .map(|acked| acked.load(Ordering::Relaxed))
                .collect();
            assert!(
                Instant::now() < deadline,
                "the clients did not get {more} more commands each acknowledged within \
                 {READY_WITHIN:?}: acknowledged {acked:?}, wanted {targets:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients (each finishes the command it is on) and collects what they did.
    async fn finish(&mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for client in self.clients.drain(..) {
            match client.await {
                Ok(done) => acked.extend(done),
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        }
        Outcome {
            acked,
            unavailable: self.counters.unavailable.load(Ordering::Relaxed),
            unknown: self.counters.unknown.load(Ordering::Relaxed),
        }
    }
}

/// One client: deposits into `root` until told to stop, each command with a request id of its
/// own and a different amount, each resent with the same request id until acknowledged.
async fn deposits(
    gateway: Gateway,
    root: Uuid,
    client: usize,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> Vec<Acked> {
    let mut acked = Vec::new();
    for n in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let amount = client as u64 * 1_000_000 + n + 1;
        let request_id = format!("client-{client}-deposit-{n}");
        let mut book = command(root, &deposit(amount));
        book.request_id.clone_from(&request_id);
        let first = Instant::now();
        let response = loop {
            match gateway.execute(book.clone()).await {
                Ok(response) => break response,
                Err(CommandError::Store(EventStoreError::Unavailable(_))) => {
                    counters.unavailable.fetch_add(1, Ordering::Relaxed);
                }
                Err(CommandError::OutcomeUnknown {
                    idempotent: true, ..
                }) => {
                    counters.unknown.fetch_add(1, Ordering::Relaxed);
                }
                Err(other) => panic!("{request_id} failed with an unexpected error: {other:?}"),
            }
            assert!(
                first.elapsed() < RETRY_FOR,
                "{request_id} was not acknowledged within {RETRY_FOR:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pages = response
            .events
            .map(|events| events.pages)
            .unwrap_or_default();
        assert_eq!(pages.len(), 1, "{request_id}: one event per deposit");
        acked.push(Acked {
            root,
            request_id,
            amount,
            sequence: pages[0].sequence,
            replayed: response.replayed,
        });
        counters.acked[client].fetch_add(1, Ordering::Relaxed);
    }
    acked
}

/// A PostgreSQL server of the test's own, in a temporary directory, stopped when dropped.
struct Server {
    /// The directory of `initdb`, `postgres` and `pg_ctl`.
    bin: PathBuf,
    /// Holds `data/` (the cluster), the socket and `postgres.log`; owned by the server's user.
    dir: tempfile::TempDir,
    port: u16,
    /// The uid and gid of the `postgres` OS user, when the test runs as root.
    user: Option<(u32, u32)>,
    /// The postmaster, while it runs.
    postmaster: Option<Child>,
}

impl Server {
    /// Finds the programs and makes a cluster with `initdb`, as xtask does: trust
    /// authentication on loopback, UTF-8, byte-order collation.
    fn init() -> Self {
        let bin = postgres_bin_dir();
        let user = if id(&["-u"]) == Some(0) {
            let uid = id(&["-u", "postgres"]);
            let gid = id(&["-g", "postgres"]);
            match uid.zip(gid) {
                Some(user) => Some(user),
                None => panic!(
                    "the restart test runs as root, so PostgreSQL must run as the `postgres` OS \
                     user, which does not exist (installing the postgresql package creates it)"
                ),
            }
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("angzarr-restart-")
            .tempdir()
            .expect("a temporary directory");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the temporary directory to the postgres user");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let server = Self {
            bin,
            dir,
            port,
            user,
            postmaster: None,
        };
        let output = server
            .command("initdb")
            .arg("-D")
            .arg(server.data())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A command for one of the programs, run as the server's user in its directory.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path()).stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Starts the postmaster on the port, with the flags of xtask's service and the durable
    /// settings spelled out; [`Self::wait_ready`] waits for it.
    fn start(&mut self) {
        assert!(self.postmaster.is_none(), "the server is running");
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open the server's log");
        let port = self.port.to_string();
        let postmaster = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
            .stdout(log.try_clone().expect("the log, twice"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.postmaster = Some(postmaster);
    }

    /// Waits until the server answers a query; fails with its log if it exits first.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let postmaster = self.postmaster.as_mut().expect("started");
            if let Some(status) = postmaster.try_wait().expect("the postmaster's status") {
                self.postmaster = None;
                panic!(
                    "postgres exited during startup ({status}):\n{}",
                    self.log_tail()
                );
            }
            let answered = tokio::time::timeout(Duration::from_secs(1), async {
                let (client, connection) =
                    tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client.simple_query("SELECT 1").await
            })
            .await;
            if let Ok(Ok(_)) = answered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not answer within {READY_WITHIN:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every acknowledged commit is flushed to disk before the answer.
    async fn check_durable(&self) {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        for setting in ["fsync", "synchronous_commit"] {
            let row = client
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .expect("show a setting");
            assert_eq!(row.get::<_, &str>(0), "on", "{setting}");
        }
    }

    /// A crash: SIGKILL to the postmaster and every process it started, at once (stopped
    /// first, so that it starts none in between). The next start recovers from the WAL.
    fn crash(&mut self) {
        if let Err(error) = self.kill_all() {
            panic!("could not kill the server: {error}\n{}", self.log_tail());
        }
    }

    fn kill_all(&mut self) -> Result<(), String> {
        let Some(mut postmaster) = self.postmaster.take() else {
            return Ok(());
        };
        let pid = postmaster.id();
        signal("STOP", &[pid])?;
        let children = children(pid);
        let mut all = children.clone();
        all.push(pid);
        signal("KILL", &all)?;
        postmaster.wait().map_err(|error| error.to_string())?;
        // They are reparented and reaped elsewhere; the next postmaster refuses to start
        // while one of them still holds the old shared memory.
        let deadline = Instant::now() + Duration::from_secs(10);
        while children.iter().any(|&child| running(child)) {
            if Instant::now() >= deadline {
                return Err(format!("server processes {children:?} survived SIGKILL"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// An immediate shutdown: backends end their sessions at once with a `FATAL`, without a
    /// checkpoint; the next start recovers from the WAL.
    fn stop_immediately(&mut self) {
        let output = self
            .command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "20"])
            .output()
            .expect("run pg_ctl");
        assert!(
            output.status.success(),
            "pg_ctl stop failed ({}):\n{}{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_tail()
        );
        let mut postmaster = self.postmaster.take().expect("running");
        postmaster.wait().expect("wait for the postmaster");
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "last lines of the server's log:\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(error) = self.kill_all() {
            eprintln!("could not stop the test's PostgreSQL server: {error}");
        }
    }
}

/// The directory of PostgreSQL's server programs: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/<major>/bin` (Debian's), else a directory of `PATH`.
fn postgres_bin_dir() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    debian.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    let path = std::env::var_os("PATH").unwrap_or_default();
    let has_programs = |dir: &Path| {
        ["initdb", "postgres", "pg_ctl"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    from_pg_config
        .into_iter()
        .chain(debian.into_iter().map(|(_, dir)| dir))
        .chain(std::env::split_paths(&path))
        .find(|dir| has_programs(dir))
        .unwrap_or_else(|| {
            panic!(
                "the restart test needs PostgreSQL's server programs (initdb, postgres, \
                 pg_ctl) and found them neither with `pg_config --bindir`, nor in \
                 /usr/lib/postgresql/*/bin, nor on PATH: install PostgreSQL 13 or later \
                 (`apt-get install postgresql`; `cargo xtask services up postgres` does it)"
            )
        })
}

/// What `id ARGS` prints, as a number.
fn id(args: &[&str]) -> Option<u32> {
    let output = Command::new("id").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}

fn signal(signal: &str, pids: &[u32]) -> Result<(), String> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .status()
        .map_err(|error| format!("could not run kill: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{signal} {pids:?} failed ({status})"))
    }
}

/// The processes whose parent is `parent` (from /proc; none where there is no /proc, and the
/// server's processes then end on their own when they see the postmaster gone).
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// Whether `pid` has not exited (a zombie has: it holds no memory any more).
fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z')
}

/// The state and parent of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`, where comm may hold spaces and parentheses.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
