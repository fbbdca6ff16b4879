//! The network, the server and other writers failing at the worst moments:
//!
//! - through a fault-injecting proxy, an append whose acknowledgement is lost is an unknown
//!   outcome (and was applied whole or not at all), one whose request is lost writes nothing,
//!   and the store reconnects by itself;
//! - in a cluster, whose client re-sends a request after a lost connection, the re-sent
//!   append recognises its own first copy and answers success, never a conflict; and when the
//!   node dies right after running the first copy, the re-sent copies' errors leave the append
//!   unknown, never `Unavailable`;
//! - the index entries a cluster writer leaves when it dies before its append are invisible;
//! - appends follow a slot moved between masters while they run (`ASK`, `TRYAGAIN`, `MOVED`);
//! - a key of the wrong type fails an append before it writes anything, a definite failure in
//!   a cluster too;
//! - a server out of memory refuses appends with a clear error and loses nothing;
//! - a server killed (SIGKILL) and restarted in the middle of a load, with `appendfsync
//!   always`: typed errors while it is down, success after, nothing acknowledged lost.
//!
//! Most use the servers of `cargo xtask services up redis redis-cluster`; the last two start
//! private `redis-server` processes.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use angzarr_conformance::faults::FaultyProxy;
use angzarr_ports::{
    AggregateId, Append, Domain, EventPage, EventStore, EventStoreError, EventStoreExt, RequestKey,
    Uuid,
};
use angzarr_store_redis::{RedisConfig, RedisStore};
use prost_types::Any;
use tokio::sync::watch;

fn aggregate() -> AggregateId {
    AggregateId::new(Domain::new("faults").expect("valid"), Uuid::new_v4()).expect("non-nil")
}

/// `len` events from `first`, without correlation id (so that a cluster append needs no index
/// write before its script: the script is the only request).
fn pages(first: u64, len: u64, label: &str) -> Vec<EventPage> {
    (first..first + len)
        .map(|sequence| EventPage {
            sequence,
            payload: Some(Any {
                type_url: "type.example/Fault".into(),
                value: format!("{label} #{sequence}").into_bytes(),
            }),
            ..EventPage::default()
        })
        .collect()
}

fn socket(url: &str) -> SocketAddr {
    common::address(url)
        .parse()
        .expect("the test servers are at numeric loopback addresses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_server_lost_acknowledgement_is_an_unknown_outcome() {
    let url = common::single_url();
    let proxy = FaultyProxy::start(socket(&url))
        .await
        .expect("start a proxy");
    let namespace = angzarr_conformance::namespace();
    let config = |url: String| RedisConfig::single(url).with_key_prefix(&namespace);
    let through = RedisStore::open(config(format!("redis://{}", proxy.addr())))
        .await
        .expect("open through the proxy");
    let direct = RedisStore::open(config(url.clone()))
        .await
        .expect("open directly");
    let aggregate = aggregate();
    let mut stream = pages(0, 2, "before");
    through
        .append(&aggregate, Append::new(0, stream.clone()))
        .await
        .expect("append through a healthy proxy");

    // The request reaches the server, its reply is lost.
    proxy.cut_after_next_request();
    let batch = pages(2, 3, "lost reply");
    let append = Append::new(2, batch.clone()).with_request(RequestKey::new("lost reply", [1; 32]));
    match through.append(&aggregate, append).await {
        Err(EventStoreError::OutcomeUnknown(_)) => {}
        other => panic!("an append whose reply was lost gave {other:?}"),
    }
    assert_eq!(proxy.cuts(), 1, "the proxy cut the append");
    let stored = direct.read_all(&aggregate).await.expect("read directly");
    let with_batch = [stream.clone(), batch.clone()].concat();
    assert!(
        stored == stream || stored == with_batch,
        "a lost reply left part of a batch: {} events",
        stored.len()
    );
    // The script ran before the reply was lost: the whole batch is there.
    assert_eq!(stored, with_batch);
    stream = stored;

    // The store reconnects by itself.
    let next = stream.len() as u64;
    let after = pages(next, 1, "after the lost reply");
    through
        .append(&aggregate, Append::new(next, after.clone()))
        .await
        .expect("an append after a lost reply reconnects");
    stream.extend(after);

    // The request never reaches the server.
    proxy.cut_before_next_request();
    let next = stream.len() as u64;
    match through
        .append(
            &aggregate,
            Append::new(next, pages(next, 2, "lost request")),
        )
        .await
    {
        Err(EventStoreError::OutcomeUnknown(_) | EventStoreError::Unavailable(_)) => {}
        other => panic!("an append whose request was lost gave {other:?}"),
    }
    assert_eq!(
        direct.read_all(&aggregate).await.expect("read directly"),
        stream,
        "a lost request wrote something"
    );

    // Every connection closed while idle: a read reconnects (and is sent again) by itself.
    proxy.cut_all();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        through
            .read_all(&aggregate)
            .await
            .expect("a read reconnects"),
        stream
    );
    let next = stream.len() as u64;
    through
        .append(&aggregate, Append::new(next, pages(next, 1, "healed")))
        .await
        .expect("appends work again");
    common::cleanup(&[url], &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resent_append_recognises_its_own_first_copy() {
    let urls = common::cluster_urls();
    // One proxy per master; the client is told to reach each master through its proxy.
    let mut proxies = Vec::new();
    for url in &urls {
        proxies.push(
            FaultyProxy::start(socket(url))
                .await
                .expect("start a proxy"),
        );
    }
    let mut config = RedisConfig::cluster([format!("redis://{}", proxies[0].addr())]);
    for (url, proxy) in urls.iter().zip(&proxies) {
        config = config.with_cluster_address(common::address(url), proxy.addr().to_string());
    }
    let namespace = angzarr_conformance::namespace();
    let through = RedisStore::open(config.with_key_prefix(&namespace))
        .await
        .expect("open the cluster through the proxies");
    let direct = RedisStore::open(RedisConfig::cluster(urls.clone()).with_key_prefix(&namespace))
        .await
        .expect("open the cluster directly");
    let aggregate = aggregate();
    let mut stream = pages(0, 2, "before");
    through
        .append(&aggregate, Append::new(0, stream.clone()))
        .await
        .expect("append through healthy proxies");
    let owner = &proxies[owner_of(&urls, &events_key(&namespace, &aggregate)).await];

    for (lost, arm) in [
        (
            "reply",
            FaultyProxy::cut_after_next_request as fn(&FaultyProxy),
        ),
        ("request", FaultyProxy::cut_before_next_request),
    ] {
        let cuts = owner.cuts();
        arm(owner);
        let next = stream.len() as u64;
        let batch = pages(next, 3, lost);
        // The client re-sends the script on a new connection; a re-sent copy whose first copy
        // ran finds its own events and answers success, not a conflict.
        let new_next = through
            .append(&aggregate, Append::new(next, batch.clone()))
            .await
            .unwrap_or_else(|error| panic!("an append whose {lost} was lost gave {error}"));
        assert_eq!(owner.cuts(), cuts + 1, "the proxy cut the append's {lost}");
        assert_eq!(new_next, next + 3);
        stream.extend(batch);
        assert_eq!(
            direct.read_all(&aggregate).await.expect("read directly"),
            stream,
            "the batch whose {lost} was lost is not stored exactly once"
        );
    }
    common::cleanup(&urls, &namespace).await;
}

/// The events key of `aggregate`, as the crate documentation spells it.
fn events_key(namespace: &str, aggregate: &AggregateId) -> String {
    format!(
        "{{{namespace}:{}:{}}}:e",
        aggregate.domain(),
        aggregate.root().hyphenated()
    )
}

/// The index in `urls` of the master that holds `key` (the others answer `MOVED`).
async fn owner_of(urls: &[String], key: &str) -> usize {
    for (index, url) in urls.iter().enumerate() {
        let client = redis::Client::open(url.as_str()).expect("a URL");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to a master");
        let exists: redis::RedisResult<i64> = redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut connection)
            .await;
        if exists == Ok(1) {
            return index;
        }
    }
    panic!("no master holds {key}");
}

/// A proxy in front of one cluster master that plays the master dying at the worst moment: it
/// forwards the next request that carries `marker`, waits for the first byte of the reply (the
/// server has run the request), then closes its port and every connection before that reply
/// gets through. The client's re-sent copies find the node gone (a connection refused, or
/// another node's `MOVED` back to it), as if it had been killed right after applying the
/// request. Until armed, it forwards everything.
struct DyingProxy {
    addr: SocketAddr,
    shared: Arc<DyingShared>,
    task: tokio::task::JoinHandle<()>,
}

struct DyingShared {
    marker: &'static [u8],
    /// Set to die after the next request that carries the marker.
    armed: AtomicBool,
    /// Set when the node dies: every connection closes, and the port.
    dead: watch::Sender<bool>,
    /// Set once the port is closed.
    closed: watch::Sender<bool>,
}

impl DyingProxy {
    async fn start(upstream: SocketAddr, marker: &'static [u8]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr = listener.local_addr().expect("an address");
        let shared = Arc::new(DyingShared {
            marker,
            armed: AtomicBool::new(false),
            dead: watch::channel(false).0,
            closed: watch::channel(false).0,
        });
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut dead = accepting.dead.subscribe();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { break };
                        let shared = Arc::clone(&accepting);
                        tokio::spawn(async move {
                            if let Ok(server) = tokio::net::TcpStream::connect(upstream).await {
                                shared.relay(client, server).await;
                            }
                        });
                    }
                    () = set(&mut dead) => break,
                }
            }
            drop(listener);
            accepting.closed.send_replace(true);
        });
        Self { addr, shared, task }
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Dies after the next request that carries the marker.
    fn die_after_next_marked_request(&self) {
        self.shared.armed.store(true, Ordering::SeqCst);
    }

    fn is_dead(&self) -> bool {
        *self.shared.closed.borrow()
    }
}

impl Drop for DyingProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.dead.send_replace(true);
    }
}

/// Waits until `flag` is set (or its sender is gone).
async fn set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}

impl DyingShared {
    async fn relay(&self, mut client: tokio::net::TcpStream, mut server: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut dead = self.dead.subscribe();
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let (mut from_client, mut from_server) = (vec![0; 64 * 1024], vec![0; 64 * 1024]);
        let mut dying = false;
        loop {
            tokio::select! {
                read = client_read.read(&mut from_client) => {
                    let len = match read {
                        Ok(len) if len > 0 => len,
                        _ => return,
                    };
                    let chunk = &from_client[..len];
                    if chunk.windows(self.marker.len()).any(|window| window == self.marker)
                        && self.armed.swap(false, Ordering::SeqCst)
                    {
                        dying = true;
                    }
                    if server_write.write_all(chunk).await.is_err() {
                        return;
                    }
                }
                read = server_read.read(&mut from_server) => {
                    let len = match read {
                        Ok(len) if len > 0 => len,
                        _ => return,
                    };
                    if dying {
                        // The server ran the request: die before the reply gets out, and let
                        // the client see the port closed before it can reconnect.
                        self.dead.send_replace(true);
                        set(&mut self.closed.subscribe()).await;
                        return;
                    }
                    if client_write.write_all(&from_server[..len]).await.is_err() {
                        return;
                    }
                }
                () = set(&mut dead) => return,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_append_applied_before_its_node_died_is_never_unavailable() {
    // The cluster client re-sends a request whose connection broke; when the first copy ran and
    // the re-sent copies then fail (here: the node gone, so a connection refused or another
    // node's `MOVED` to it), the error the store gets comes from a later copy and says nothing
    // about the first. The append must be reported applied or unknown, never `Unavailable`
    // ("nothing was written"). With no retry, the lost connection itself is the error.
    let urls = common::cluster_urls();
    let namespace = angzarr_conformance::namespace();
    let direct = RedisStore::open(RedisConfig::cluster(urls.clone()).with_key_prefix(&namespace))
        .await
        .expect("open the cluster directly");
    let aggregate = aggregate();
    let mut stream = pages(0, 2, "before");
    direct
        .append(&aggregate, Append::new(0, stream.clone()))
        .await
        .expect("append directly");
    let owner = owner_of(&urls, &events_key(&namespace, &aggregate)).await;

    for retries in [0, 1, 3] {
        let mut proxies = Vec::new();
        for url in &urls {
            proxies.push(DyingProxy::start(socket(url), b"EVALSHA").await);
        }
        let mut config = RedisConfig::cluster([format!("redis://{}", proxies[0].addr())])
            .with_key_prefix(&namespace)
            .with_cluster_retries(retries)
            .with_connection_timeout(Duration::from_millis(500))
            .with_response_timeout(Duration::from_secs(8));
        for (url, proxy) in urls.iter().zip(&proxies) {
            config = config.with_cluster_address(common::address(url), proxy.addr().to_string());
        }
        let through = RedisStore::open(config)
            .await
            .expect("open the cluster through the proxies");
        let next = stream.len() as u64;
        let warm = pages(next, 1, "through healthy proxies");
        through
            .append(&aggregate, Append::new(next, warm.clone()))
            .await
            .expect("append through healthy proxies");
        stream.extend(warm);

        proxies[owner].die_after_next_marked_request();
        let next = stream.len() as u64;
        let batch = pages(next, 3, "applied, then the node died");
        let outcome = through
            .append(&aggregate, Append::new(next, batch.clone()))
            .await;
        assert!(proxies[owner].is_dead(), "the owner's proxy did not die");
        eprintln!("with {retries} retries, the node dying after the append gave {outcome:?}");
        match outcome {
            Ok(new_next) => assert_eq!(new_next, next + 3),
            Err(EventStoreError::OutcomeUnknown(_)) => {}
            Err(error) => panic!(
                "with {retries} retries, an append applied before its node died gave {error:?}"
            ),
        }
        stream.extend(batch);
        assert_eq!(
            direct.read_all(&aggregate).await.expect("read directly"),
            stream,
            "the append did not run whole before the node died"
        );
    }
    common::cleanup(&urls, &namespace).await;
}

/// A `redis-server` of this test's own, on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        let child = Self::spawn(port, &args, dir.path());
        Self {
            child,
            port,
            args,
            dir,
        }
    }

    fn spawn(port: u16, args: &[String], dir: &Path) -> Child {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (`cargo xtask services up redis` installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no chance to flush anything.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again, on the same port and data directory.
    fn restart(&mut self) {
        self.child = Self::spawn(self.port, &self.args, self.dir.path());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_refuses_appends_and_loses_nothing() {
    let server = Server::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let store = RedisStore::open(RedisConfig::single(server.url()))
        .await
        .expect("open");
    let aggregate = aggregate();
    let mut stream: Vec<EventPage> = Vec::new();
    let refusal = loop {
        let next = stream.len() as u64;
        let mut batch = pages(next, 4, "fill");
        for page in &mut batch {
            if let Some(payload) = page.payload.as_mut() {
                payload.value.resize(16 * 1024, 7);
            }
        }
        match store
            .append(&aggregate, Append::new(next, batch.clone()))
            .await
        {
            Ok(_) => stream.extend(batch),
            Err(error) => break error,
        }
        assert!(stream.len() < 10_000, "4 MB never ran out");
    };
    assert!(
        matches!(refusal, EventStoreError::Unavailable(_)),
        "out of memory gave {refusal:?}"
    );
    assert!(
        refusal.to_string().contains("out of memory"),
        "the error does not say what is wrong: {refusal}"
    );
    assert!(!stream.is_empty(), "nothing fit in 4 MB");
    // Nothing acknowledged is lost and nothing refused is there.
    assert_eq!(store.read_all(&aggregate).await.expect("read"), stream);
    // Near the limit a small append may fit again; it is whole, or refused whole.
    let next = stream.len() as u64;
    let small = pages(next, 2, "again");
    match store
        .append(&aggregate, Append::new(next, small.clone()))
        .await
    {
        Ok(_) => stream.extend(small),
        Err(EventStoreError::Unavailable(_)) => {}
        Err(error) => panic!("an append near the memory limit gave {error}"),
    }
    assert_eq!(store.read_all(&aggregate).await.expect("read"), stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_load_loses_nothing_acknowledged() {
    const EVENTS: u64 = 300;
    let mut server = Server::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let store = RedisStore::open(
        RedisConfig::single(server.url())
            .with_connection_timeout(Duration::from_millis(500))
            .with_response_timeout(Duration::from_secs(2)),
    )
    .await
    .expect("open");
    let aggregate = aggregate();
    let writer = {
        let (store, aggregate) = (store.clone(), aggregate.clone());
        tokio::spawn(async move {
            let (mut acknowledged, mut unavailable, mut unknown) = (0u64, 0u64, 0u64);
            let mut next = 0;
            while next < EVENTS {
                let batch = pages(next, 1, "load");
                match store
                    .append(&aggregate, Append::new(next, batch.clone()))
                    .await
                {
                    Ok(new_next) => {
                        assert_eq!(new_next, next + 1);
                        acknowledged += 1;
                        next = new_next;
                    }
                    Err(EventStoreError::Unavailable(_)) => {
                        unavailable += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // Sent again: if the first copy was applied, it conflicts at its end.
                    Err(EventStoreError::OutcomeUnknown(_)) => unknown += 1,
                    Err(EventStoreError::Conflict { expected, actual })
                        if unknown > 0 && expected == next && actual == next + 1 =>
                    {
                        let found = store.read_from(&aggregate, next).await.expect("read");
                        assert_eq!(found, batch, "the unknown append was applied, whole");
                        next = actual;
                    }
                    Err(error) => {
                        panic!("an append failed with {error} while the server restarted")
                    }
                }
            }
            (acknowledged, unavailable, unknown)
        })
    };
    while store.next_sequence(&aggregate).await.unwrap_or(0) < EVENTS / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    let (acknowledged, unavailable, unknown) = writer.await.expect("the writer did not panic");
    eprintln!(
        "while the server restarted: {acknowledged} appends acknowledged, {unavailable} \
         unavailable, {unknown} unknown and resolved"
    );
    assert!(
        unavailable + unknown > 0,
        "no append saw the server down ({acknowledged} acknowledged)"
    );
    assert_eq!(
        store
            .read_all(&aggregate)
            .await
            .expect("read after the restart"),
        pages(0, EVENTS, "load"),
        "the stream lost or duplicated an event ({acknowledged} acknowledged, {unavailable} \
         unavailable, {unknown} unknown)"
    );
}

/// Writes index entries in the cluster as a writer does before its append script, without the
/// append: what a writer that dies in between leaves.
async fn plant(urls: &[String], commands: &[redis::Cmd]) {
    let client = redis::cluster::ClusterClient::new(urls.to_vec()).expect("cluster URLs");
    let mut connection = client.get_async_connection().await.expect("connect");
    for command in commands {
        let _: redis::Value = command
            .query_async(&mut connection)
            .await
            .expect("plant an index entry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_index_entries_of_a_dead_writer_are_invisible() {
    let urls = common::cluster_urls();
    let namespace = angzarr_conformance::namespace();
    let store = RedisStore::open(RedisConfig::cluster(urls.clone()).with_key_prefix(&namespace))
        .await
        .expect("open");
    let correlation = "a b";
    let live =
        AggregateId::new(Domain::new("live").expect("valid"), Uuid::from_u128(5)).expect("non-nil");
    let mut events = pages(0, 2, "live");
    for page in &mut events {
        page.correlation_id = correlation.into();
    }
    store
        .append(&live, Append::new(0, events.clone()))
        .await
        .expect("append");
    // Dead writers: one on a root before the live one, one on a domain of its own.
    let before = AggregateId::new(live.domain().clone(), Uuid::from_u128(1)).expect("non-nil");
    let ghost = AggregateId::new(Domain::new("ghost").expect("valid"), Uuid::from_u128(9))
        .expect("non-nil");
    let mut commands = Vec::new();
    for dead in [&before, &ghost] {
        let (domain, root) = (dead.domain().as_str(), dead.root().hyphenated().to_string());
        commands.push(
            redis::cmd("ZADD")
                .arg(format!("{{{namespace}}}:domains"))
                .arg(0)
                .arg(domain)
                .clone(),
        );
        commands.push(
            redis::cmd("ZADD")
                .arg(format!("{{{namespace}:{domain}}}:roots"))
                .arg(0)
                .arg(&root)
                .clone(),
        );
        commands.push(
            redis::cmd("SADD")
                .arg(format!("{{{namespace}:a%20b}}:corr"))
                .arg(format!("{domain} {root}"))
                .clone(),
        );
    }
    plant(&urls, &commands).await;

    let only_live = |what: &str, roots: Vec<Uuid>| assert_eq!(roots, [live.root()], "{what}");
    only_live(
        "a page of one root",
        store
            .list_roots(live.domain(), None, 1)
            .await
            .expect("list"),
    );
    only_live(
        "a page of ten roots",
        store
            .list_roots(live.domain(), None, 10)
            .await
            .expect("list"),
    );
    assert!(
        store
            .list_roots(ghost.domain(), None, 10)
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        store.list_domains().await.expect("list"),
        [live.domain().clone()]
    );
    let found = store
        .find_by_correlation(correlation)
        .await
        .expect("find by correlation");
    assert_eq!(found.len(), 1);
    assert_eq!((&found[0].aggregate, &found[0].pages), (&live, &events));

    // A writer that was only slow completes its append: from then on it is listed.
    let mut late = pages(0, 1, "late");
    late[0].correlation_id = correlation.into();
    store
        .append(&ghost, Append::new(0, late))
        .await
        .expect("append");
    assert_eq!(
        store.list_domains().await.expect("list"),
        [ghost.domain().clone(), live.domain().clone()]
    );
    assert_eq!(
        store
            .find_by_correlation(correlation)
            .await
            .expect("find")
            .len(),
        2
    );
    common::cleanup(&urls, &namespace).await;
}

/// A command to one node of the cluster, outside the cluster client.
async fn node(url: &str, command: &redis::Cmd) -> redis::Value {
    let client = redis::Client::open(url).expect("a URL");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to a node");
    command
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("{url}: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_follows_a_slot_moved_between_masters() {
    let urls = common::cluster_urls();
    let namespace = angzarr_conformance::namespace();
    let store = RedisStore::open(RedisConfig::cluster(urls.clone()).with_key_prefix(&namespace))
        .await
        .expect("open");
    let aggregate = aggregate();
    store
        .append(&aggregate, Append::new(0, pages(0, 5, "before")))
        .await
        .expect("append");
    let key = events_key(&namespace, &aggregate);
    let source = owner_of(&urls, &key).await;
    let target = (source + 1) % urls.len();
    let slot: i64 = redis::from_redis_value(
        node(&urls[0], redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key)).await,
    )
    .expect("a slot");
    let id = |index: usize| {
        let url = urls[index].clone();
        async move {
            let id: String =
                redis::from_redis_value(node(&url, redis::cmd("CLUSTER").arg("MYID")).await)
                    .expect("a node id");
            id
        }
    };
    let (source_id, target_id) = (id(source).await, id(target).await);

    // Appends go on while the slot migrates (ASK and TRYAGAIN replies), and after (MOVED).
    let moved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, aggregate, moved) = (store.clone(), aggregate.clone(), moved.clone());
        tokio::spawn(async move {
            let (mut next, mut after_move) = (5, 0);
            while after_move < 20 {
                if moved.load(std::sync::atomic::Ordering::SeqCst) {
                    after_move += 1;
                }
                next = store
                    .append(&aggregate, Append::new(next, pages(next, 1, "moving")))
                    .await
                    .unwrap_or_else(|error| panic!("append {next} while the slot moved: {error}"));
            }
            next
        })
    };
    while store.next_sequence(&aggregate).await.expect("next") < 10 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let setslot = |state: &str, to: &str| {
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(to)
            .clone()
    };
    let before_move = store.next_sequence(&aggregate).await.expect("next");
    node(&urls[target], &setslot("IMPORTING", &source_id)).await;
    node(&urls[source], &setslot("MIGRATING", &target_id)).await;
    let target_address = common::address(&urls[target]);
    let (host, port) = target_address.rsplit_once(':').expect("host:port");
    loop {
        let keys: Vec<String> = redis::from_redis_value(
            node(
                &urls[source],
                redis::cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(slot)
                    .arg(100),
            )
            .await,
        )
        .expect("keys");
        if keys.is_empty() {
            break;
        }
        for key in keys {
            node(
                &urls[source],
                redis::cmd("MIGRATE")
                    .arg(host)
                    .arg(port)
                    .arg(&key)
                    .arg(0)
                    .arg(5000),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for url in &urls {
        node(url, &setslot("NODE", &target_id)).await;
    }
    let during_move = store.next_sequence(&aggregate).await.expect("next") - before_move;
    moved.store(true, std::sync::atomic::Ordering::SeqCst);
    let end = writer.await.expect("the writer did not panic");
    assert!(during_move > 0, "no append ran while the slot moved");
    assert_eq!(owner_of(&urls, &key).await, target, "the slot moved");
    let mut expected = pages(0, 5, "before");
    expected.extend(pages(5, end - 5, "moving"));
    assert_eq!(
        store
            .read_all(&aggregate)
            .await
            .expect("read after the move"),
        expected
    );
    common::cleanup(&urls, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_fails_the_append_whole() {
    // A script's writes are not undone when it fails: it must fail before its first write. The
    // script answers that refusal itself, after finding the stream at its expected sequence: in
    // a cluster too it is a definite failure, not an unknown outcome.
    let single = common::single_url();
    let cluster = common::cluster_urls();
    for (urls, config) in [
        (vec![single.clone()], RedisConfig::single(single)),
        (cluster.clone(), RedisConfig::cluster(cluster)),
    ] {
        let namespace = angzarr_conformance::namespace();
        let store = RedisStore::open(config.with_key_prefix(&namespace))
            .await
            .expect("open");
        let aggregate = aggregate();
        let requests = events_key(&namespace, &aggregate).replace("}:e", "}:q");
        let set = redis::cmd("SET")
            .arg(&requests)
            .arg("not a sorted set")
            .clone();
        if store.is_cluster() {
            plant(&urls, &[set]).await;
        } else {
            node(&urls[0], &set).await;
        }
        let append =
            Append::new(0, pages(0, 3, "typed")).with_request(RequestKey::new("r", [2; 32]));
        match store.append(&aggregate, append).await {
            Err(EventStoreError::Internal(error)) => {
                assert!(error.to_string().contains("WRONGTYPE"), "{error}")
            }
            other => panic!("an append over a key of the wrong type gave {other:?}"),
        }
        assert_eq!(store.next_sequence(&aggregate).await.expect("next"), 0);
        assert!(store.list_domains().await.expect("list").is_empty());
        common::cleanup(&urls, &namespace).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_addresses_and_passwords_fail_at_open_within_the_timeouts() {
    // A server that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_url = format!("redis://{}", silent.local_addr().expect("an address"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let refused = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let wrong_password = common::single_url().replace("redis://", "redis://:wrong@");
    for url in [
        silent_url,
        format!("redis://{refused}"),
        wrong_password,
        "redis://no such host".to_owned(),
    ] {
        let started = Instant::now();
        let config = RedisConfig::single(url.clone())
            .with_connection_timeout(Duration::from_millis(500))
            .with_response_timeout(Duration::from_millis(500));
        let opened = RedisStore::open(config).await;
        assert!(opened.is_err(), "{url} opened");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{url} took {:?} to fail",
            started.elapsed()
        );
    }
    // A single server given as a cluster, and a cluster node given as a single server.
    assert!(
        RedisStore::open(RedisConfig::cluster([common::single_url()]))
            .await
            .is_err()
    );
    let opened = RedisStore::open(RedisConfig::single(common::cluster_urls()[0].clone())).await;
    assert!(
        matches!(
            opened,
            Err(angzarr_store_redis::OpenError::WrongTopology(_))
        ),
        "{opened:?}"
    );
}
