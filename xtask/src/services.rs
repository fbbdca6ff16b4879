//! `cargo xtask services up|down|status [NAME]...`: the servers some backends test against.
//!
//! Each service is a row of [`SERVICES`]: the executable it needs (installed with apt-get or
//! pip when missing, or named in the error when it cannot be), the arguments that run it in
//! the foreground on `127.0.0.1:<port>` (a fixed port, or a free one chosen at each start),
//! and the connection variables it exports. xtask detaches the server itself (own process group,
//! output to `target/services/<name>/<name>.log`, pid in `target/services/<name>/<name>.pid`),
//! waits until its port accepts connections, and stops it with SIGTERM (SIGKILL after a
//! timeout). A row's [`Setup`] adds what a server needs beyond that (PostgreSQL: `initdb`, a
//! non-root user, a database created once it runs). The variables of the running services
//! are written to `target/services/env`:
//!
//! ```sh
//! set -a; . target/services/env; set +a
//! ```
//!
//! Adding a service is one more row; a
//! backend that needs it lists its name in `test::BACKENDS`, and from then on
//! `cargo xtask test` starts it before the tests and stops it after. A service of several
//! processes (the Redis Cluster's three masters) is a row per process and an entry in
//! [`GROUPS`], whose name stands for all of them.

use std::ffi::OsString;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{display, project_root, run_status, test::BACKENDS};

/// How a missing executable is installed.
pub(crate) enum Install {
    /// Debian/Ubuntu packages (`apt-get update` then `apt-get install`, through sudo when
    /// not root). `system_service` is the init service the package may start by itself on
    /// the same port; it is stopped right after the installation.
    Apt {
        packages: &'static [&'static str],
        system_service: Option<&'static str>,
    },
    /// Python packages, installed in a virtualenv at `target/services/venv`, the only place
    /// the executable is looked for (a copy installed by hand elsewhere does not count: the
    /// pinned versions are the tested ones).
    Pip { packages: &'static [&'static str] },
    /// Not installable from the machine's registries (Google's emulators come from the Google
    /// Cloud CLI's own apt repository): a missing executable fails the run with `how`.
    Manual { how: &'static str },
}

/// Which loopback port a service listens on.
#[derive(Clone, Copy)]
pub(crate) enum Port {
    /// Always this one (the Redis Cluster's masters know each other's ports).
    Fixed(u16),
    /// A free port chosen at each start, recorded in `target/services/<name>/<name>.port`.
    Free,
}

/// The files of one service, under `target/services/<name>/`.
pub(crate) struct Layout {
    /// `target/services/<name>/`: the working directory of the server.
    pub(crate) dir: PathBuf,
    /// `target/services/<name>/data/`: its data directory.
    pub(crate) data: PathBuf,
    /// `target/services/<name>/<name>.log`: its stdout and stderr.
    pub(crate) log: PathBuf,
    /// `target/services/<name>/<name>.pid`: the pid of the running server.
    pub(crate) pidfile: PathBuf,
    /// The loopback port it listens on.
    pub(crate) port: u16,
}

/// One server that tests can run against.
pub(crate) struct Service {
    /// The name used on the command line and in `test::BACKENDS`.
    pub(crate) name: &'static str,
    /// The executable, looked up in `target/services/venv/bin` and on `PATH`.
    pub(crate) binary: &'static str,
    /// How to install `binary` when it is missing.
    pub(crate) install: Install,
    /// The loopback port.
    pub(crate) port: Port,
    /// The arguments of `binary` that run the server in the foreground, bound to 127.0.0.1.
    pub(crate) args: fn(&Layout) -> Vec<OsString>,
    /// The connection variables tests read.
    pub(crate) env: fn(&Layout) -> Vec<(&'static str, String)>,
    /// How long the port may take to accept connections.
    pub(crate) ready_timeout: Duration,
    /// What the service needs beyond that; [`Setup::NONE`] for most.
    pub(crate) setup: Setup,
}

/// The steps of a service that is more than one executable run as xtask's user (PostgreSQL:
/// binaries off `PATH`, a data directory made by `initdb`, a non-root user, a database to
/// create once it runs).
pub(crate) struct Setup {
    /// Directories searched for `binary` (and its companion tools) before `PATH`.
    pub(crate) bin_dirs: fn() -> Vec<PathBuf>,
    /// The OS user that runs the server (and `init`) when xtask runs as root; it then owns
    /// `target/services/<name>/`. `None`: xtask's own user.
    pub(crate) user: Option<&'static str>,
    /// Runs before every start (as `user`), to prepare the data directory if needed.
    pub(crate) init: Option<fn(&Step<'_>) -> Result<()>>,
    /// Runs once the port accepts connections, again and again until it succeeds or the
    /// ready timeout ends: the server is ready when it does (PostgreSQL accepts connections
    /// before it serves them, and the test database is created here).
    pub(crate) ready: Option<fn(&Step<'_>) -> Result<()>>,
    /// The signal that stops the server (`kill -<signal>`), SIGKILL after a timeout.
    pub(crate) stop_signal: &'static str,
}

impl Setup {
    /// Nothing beyond the row: `binary` on `PATH`, run as xtask's user, stopped by SIGTERM.
    pub(crate) const NONE: Self = Self {
        bin_dirs: Vec::new,
        user: None,
        init: None,
        ready: None,
        stop_signal: "TERM",
    };
}

/// What a [`Setup`] step works with.
pub(crate) struct Step<'a> {
    /// The service's files.
    pub(crate) layout: &'a Layout,
    /// The server's executable: companion tools are beside it.
    pub(crate) binary: &'a Path,
    /// The uid and gid of [`Setup::user`], when xtask runs as root.
    user: Option<(u32, u32)>,
}

impl Step<'_> {
    /// A command for `tool` (beside the server's executable), run as the service's user in
    /// the service's directory.
    pub(crate) fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.binary.with_file_name(tool));
        command.current_dir(&self.layout.dir);
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }
}

/// Every service xtask knows. Which ones `cargo xtask test` starts is decided by the
/// `services` of `test::BACKENDS`.
pub(crate) const SERVICES: &[Service] = &[
    Service {
        name: "redis",
        binary: "redis-server",
        install: Install::Apt {
            packages: &["redis-server"],
            system_service: Some("redis-server"),
        },
        // Not 6379, where a system Redis may run.
        port: Port::Fixed(16379),
        args: |layout| redis_args(layout, &[]),
        env: |layout| {
            vec![(
                "ANGZARR_TEST_REDIS_URL",
                format!("redis://127.0.0.1:{}", layout.port),
            )]
        },
        ready_timeout: Duration::from_secs(30),
        setup: REDIS_LOADED,
    },
    // The three masters of `redis-cluster` (see `GROUPS`); the last one joins them.
    redis_cluster_node("redis-cluster-1", REDIS_CLUSTER_PORTS[0], REDIS_LOADED),
    redis_cluster_node("redis-cluster-2", REDIS_CLUSTER_PORTS[1], REDIS_LOADED),
    redis_cluster_node(
        "redis-cluster-3",
        REDIS_CLUSTER_PORTS[2],
        Setup {
            ready: Some(redis_cluster_ready),
            ..Setup::NONE
        },
    ),
    Service {
        name: "postgres",
        binary: "postgres",
        install: Install::Apt {
            packages: &["postgresql"],
            system_service: Some("postgresql"),
        },
        // Not 5432, where a system cluster may run.
        port: Port::Fixed(55432),
        args: |layout| {
            let mut args: Vec<OsString> = vec!["-D".into(), layout.data.clone().into()];
            args.extend(["-k".into(), layout.dir.clone().into()]);
            args.extend(
                [
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &layout.port.to_string(),
                    // Test binaries run in parallel, each with pools of its own.
                    "-c",
                    "max_connections=300",
                ]
                .map(OsString::from),
            );
            args
        },
        env: |layout| {
            vec![(
                "ANGZARR_TEST_POSTGRES_URL",
                format!(
                    "postgres://postgres@127.0.0.1:{}/{POSTGRES_DATABASE}",
                    layout.port
                ),
            )]
        },
        ready_timeout: Duration::from_secs(60),
        setup: Setup {
            bin_dirs: postgres_bin_dirs,
            user: Some("postgres"),
            init: Some(postgres_init),
            ready: Some(postgres_ready),
            // A fast shutdown: SIGTERM would wait for every client to disconnect.
            stop_signal: "INT",
        },
    },
    Service {
        name: "dynamodb",
        // moto in server mode: an open-source DynamoDB API (AWS's DynamoDB Local is not open
        // source), through `xtask/services/moto_serialized.py`, which serves one request at a
        // time as `moto_server` does not (its transactions are not atomic across threads).
        // Pinned: the suite's expectations of the emulator are these versions'.
        binary: "python3",
        install: Install::Pip {
            packages: &["moto[dynamodb]==5.2.1", "flask==3.1.3", "flask-cors==6.0.2"],
        },
        port: Port::Free,
        args: |layout| {
            let script = project_root().join("xtask/services/moto_serialized.py");
            let port = layout.port.to_string();
            vec![
                script.into(),
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.into(),
            ]
        },
        env: |layout| {
            vec![(
                "ANGZARR_TEST_DYNAMODB_ENDPOINT",
                format!("http://127.0.0.1:{}", layout.port),
            )]
        },
        ready_timeout: Duration::from_secs(60),
        setup: Setup::NONE,
    },
    Service {
        name: "bigtable",
        binary: "cbtemulator",
        install: Install::Manual {
            how: "install the Debian package google-cloud-cli-bigtable-emulator (from the \
                  Google Cloud CLI's apt repository), or `gcloud components install \
                  bigtable`, and put cbtemulator on PATH",
        },
        port: Port::Free,
        args: |layout| {
            ["-host", "127.0.0.1", "-port", &layout.port.to_string()]
                .map(OsString::from)
                .to_vec()
        },
        env: |layout| {
            vec![(
                "ANGZARR_TEST_BIGTABLE_EMULATOR_HOST",
                format!("127.0.0.1:{}", layout.port),
            )]
        },
        ready_timeout: Duration::from_secs(30),
        setup: Setup {
            bin_dirs: || {
                google_cloud_sdk_dirs()
                    .map(|sdk| sdk.join("platform/bigtable-emulator"))
                    .collect()
            },
            ..Setup::NONE
        },
    },
    Service {
        name: "spanner",
        // The emulator itself: `gateway_main` (what `gcloud emulators spanner start` runs)
        // leaves this child running when it is stopped.
        binary: "emulator_main",
        install: Install::Manual {
            how: "install the Debian package google-cloud-cli-spanner-emulator (from the \
                  Google Cloud CLI's apt repository), or `gcloud components install \
                  cloud-spanner-emulator`, and put emulator_main on PATH",
        },
        port: Port::Free,
        args: |layout| {
            vec![
                "--host_port".into(),
                format!("127.0.0.1:{}", layout.port).into(),
            ]
        },
        env: |layout| {
            vec![(
                "ANGZARR_TEST_SPANNER_EMULATOR_HOST",
                format!("127.0.0.1:{}", layout.port),
            )]
        },
        ready_timeout: Duration::from_secs(30),
        setup: Setup {
            bin_dirs: || {
                google_cloud_sdk_dirs()
                    .map(|sdk| sdk.join("bin/cloud_spanner_emulator"))
                    .collect()
            },
            ..Setup::NONE
        },
    },
];

/// Where the Google Cloud CLI's components live: the Debian packages' directory, and the
/// SDK of a `gcloud` on PATH (`<sdk>/bin/gcloud`).
fn google_cloud_sdk_dirs() -> impl Iterator<Item = PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let from_path: Vec<PathBuf> = std::env::split_paths(&path)
        .map(|dir| dir.join("gcloud"))
        .filter(|gcloud| gcloud.is_file())
        .filter_map(|gcloud| fs::canonicalize(gcloud).ok())
        .filter_map(|gcloud| Some(gcloud.parent()?.parent()?.to_path_buf()))
        .collect();
    std::iter::once(PathBuf::from("/usr/lib/google-cloud-sdk")).chain(from_path)
}

/// Services that run as several processes, each a row of [`SERVICES`]: the group's name, on
/// the command line and in `test::BACKENDS`, stands for all its rows, started in table order
/// and stopped together.
pub(crate) const GROUPS: &[(&str, &[&str])] = &[(
    "redis-cluster",
    &["redis-cluster-1", "redis-cluster-2", "redis-cluster-3"],
)];

/// The ports of the Redis Cluster's masters; each also listens on its port + 10000 (the
/// cluster bus), so they stay below 55536.
const REDIS_CLUSTER_PORTS: [u16; 3] = [17001, 17002, 17003];

/// `redis-server` in the foreground on `127.0.0.1`, with `extra` arguments. Durability as the
/// store's README recommends for tests: the append-only file on, fsynced every second
/// (`everysec`), no RDB snapshots.
fn redis_args(layout: &Layout, extra: &[&str]) -> Vec<OsString> {
    let port = layout.port.to_string();
    let mut args: Vec<OsString> = [
        "--port",
        &port,
        "--bind",
        "127.0.0.1",
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ]
    .iter()
    .chain(extra)
    .map(OsString::from)
    .collect();
    args.push("--dir".into());
    args.push(layout.data.clone().into());
    args
}

/// One master of the test Redis Cluster, its cluster state in `data/nodes.conf`.
const fn redis_cluster_node(name: &'static str, port: u16, setup: Setup) -> Service {
    Service {
        name,
        binary: "redis-server",
        install: Install::Apt {
            packages: &["redis-server"],
            system_service: Some("redis-server"),
        },
        port: Port::Fixed(port),
        args: |layout| {
            redis_args(
                layout,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
        },
        env: |layout| {
            if layout.port != REDIS_CLUSTER_PORTS[2] {
                return Vec::new();
            }
            let urls: Vec<String> = REDIS_CLUSTER_PORTS
                .iter()
                .map(|port| format!("redis://127.0.0.1:{port}"))
                .collect();
            vec![("ANGZARR_TEST_REDIS_CLUSTER_URLS", urls.join(","))]
        },
        ready_timeout: Duration::from_secs(30),
        setup,
    }
}

/// A Redis accepts connections while it is still loading its append-only file, and answers
/// `LOADING` to every command until it is done: ready once it answers `PING`.
const REDIS_LOADED: Setup = Setup {
    ready: Some(redis_loaded),
    ..Setup::NONE
};

fn redis_loaded(step: &Step<'_>) -> Result<()> {
    let port = step.layout.port.to_string();
    let output = step
        .command("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "ping"])
        .output()
        .context("could not run redis-cli")?;
    let reply = String::from_utf8_lossy(&output.stdout);
    if reply.trim() != "PONG" {
        bail!("redis answers {:?} (still loading its data?)", reply.trim());
    }
    Ok(())
}

/// Ready once every master reports `cluster_state:ok`. Fresh masters (no slot assigned
/// anywhere) are first joined into a cluster by `redis-cli --cluster create`; masters that
/// were a cluster before (their `nodes.conf` kept) find each other again by themselves.
fn redis_cluster_ready(step: &Step<'_>) -> Result<()> {
    redis_loaded(step)?;
    let info = |port: u16| -> Result<String> {
        let output = step
            .command("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "cluster",
                "info",
            ])
            .output()
            .context("could not run redis-cli")?;
        if !output.status.success() {
            bail!(
                "redis-cli: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    let field = |info: &str, name: &str| -> String {
        info.lines()
            .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_default()
            .to_owned()
    };
    let infos = REDIS_CLUSTER_PORTS
        .iter()
        .map(|port| info(*port))
        .collect::<Result<Vec<_>>>()?;
    if infos
        .iter()
        .all(|info| field(info, "cluster_state") == "ok")
    {
        return Ok(());
    }
    if infos
        .iter()
        .all(|info| field(info, "cluster_slots_assigned") == "0")
    {
        let mut create = step.command("redis-cli");
        create
            .arg("--cluster")
            .arg("create")
            .args(REDIS_CLUSTER_PORTS.map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(std::io::stderr());
        run_status(&mut create).context("redis-cli --cluster create failed")?;
    }
    bail!(
        "the cluster is not ok yet (cluster_state:{}); if this lasts, remove \
         target/services/redis-cluster-* and start it afresh",
        field(&infos[0], "cluster_state")
    )
}

/// The database the tests use.
const POSTGRES_DATABASE: &str = "angzarr_test";

/// Debian installs PostgreSQL's programs in `/usr/lib/postgresql/<major>/bin`, off `PATH`:
/// the newest first.
fn postgres_bin_dirs() -> Vec<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    majors.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    majors.into_iter().map(|(_, dir)| dir).collect()
}

/// Makes the data directory with `initdb` unless it holds a cluster already: trust
/// authentication (the server listens on loopback only), UTF-8, byte-order collation.
fn postgres_init(step: &Step<'_>) -> Result<()> {
    if step.layout.data.join("PG_VERSION").is_file() {
        return Ok(());
    }
    let mut initdb = step.command("initdb");
    initdb
        .arg("-D")
        .arg(&step.layout.data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .stdout(std::io::stderr());
    run_status(&mut initdb).context("initdb failed")
}

/// Creates the test database unless it exists; fails while the server is still starting.
fn postgres_ready(step: &Step<'_>) -> Result<()> {
    let psql = |sql: &str| -> Result<String> {
        let output = step
            .command("psql")
            .args(["-h", "127.0.0.1", "-p", &step.layout.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XtAq",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", sql])
            .output()
            .context("could not run psql")?;
        if !output.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let exists = psql(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{POSTGRES_DATABASE}'"
    ))?;
    if exists.is_empty() {
        psql(&format!("CREATE DATABASE {POSTGRES_DATABASE}"))?;
    }
    Ok(())
}

/// How long a server has to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

impl Service {
    /// The service's files and port: for a [`Port::Free`] service, the port of its last
    /// start (0 if it never started).
    fn layout(&self) -> Layout {
        let dir = services_dir().join(self.name);
        let port = match self.port {
            Port::Fixed(port) => port,
            Port::Free => fs::read_to_string(self.portfile())
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(0),
        };
        Layout {
            data: dir.join("data"),
            log: dir.join(format!("{}.log", self.name)),
            pidfile: dir.join(format!("{}.pid", self.name)),
            port,
            dir,
        }
    }

    fn portfile(&self) -> PathBuf {
        services_dir()
            .join(self.name)
            .join(format!("{}.port", self.name))
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.layout().port))
    }
}

/// A loopback port nothing listens on now: the kernel's pick for a socket bound to port 0.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .context("could not find a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// What `up` did: the variables of the requested services, and which ones it started
/// (the others were already running and are left alone by [`stop_started`]).
#[derive(Default)]
pub(crate) struct Provisioned {
    pub(crate) env: Vec<(&'static str, String)>,
    pub(crate) started: Vec<&'static Service>,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let Some((action, names)) = args.split_first() else {
        bail!("usage: cargo xtask services up|down|status [NAME]...");
    };
    let named = names
        .iter()
        .map(|name| find(name))
        .collect::<Result<Vec<_>>>()?
        .concat();
    match action.as_str() {
        "up" => {
            let services = if named.is_empty() {
                let backends: Vec<&str> = BACKENDS.iter().map(|b| b.name).collect();
                for_backends(&backends)?
            } else {
                named
            };
            if services.is_empty() {
                eprintln!(
                    "services: no backend needs a service today; start one by name: {}",
                    SERVICES
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let provisioned = up(&services)?;
            for (key, value) in &provisioned.env {
                println!("{key}={value}");
            }
            Ok(())
        }
        "down" => down(&if named.is_empty() { all() } else { named }),
        "status" => status(&if named.is_empty() { all() } else { named }),
        "--help" | "-h" => {
            crate::print_usage();
            Ok(())
        }
        other => bail!("unknown services action `{other}`: expected up, down or status"),
    }
}

/// The rows a service name stands for: its own, or those of its group.
fn find(name: &str) -> Result<Vec<&'static Service>> {
    let alone = [name];
    let members = GROUPS
        .iter()
        .find(|(group, _)| *group == name)
        .map_or(&alone[..], |(_, members)| members);
    members
        .iter()
        .map(|member| {
            SERVICES
                .iter()
                .find(|s| s.name == *member)
                .with_context(|| {
                    let known: Vec<_> = GROUPS
                        .iter()
                        .map(|(group, _)| *group)
                        .chain(SERVICES.iter().map(|s| s.name))
                        .collect();
                    format!("unknown service `{member}`; known: {}", known.join(", "))
                })
        })
        .collect()
}

fn all() -> Vec<&'static Service> {
    SERVICES.iter().collect()
}

/// The services the given backend names need, deduplicated, in table order.
pub(crate) fn for_backends(names: &[&str]) -> Result<Vec<&'static Service>> {
    let mut needed = Vec::new();
    for backend in BACKENDS.iter().filter(|b| names.contains(&b.name)) {
        for service in backend.services {
            needed.extend(
                find(service).with_context(|| format!("backend {} needs it", backend.name))?,
            );
        }
    }
    Ok(SERVICES
        .iter()
        .filter(|s| needed.iter().any(|needed| needed.name == s.name))
        .collect())
}

fn services_dir() -> PathBuf {
    project_root().join("target").join("services")
}

/// Starts the services that are not running yet, waits until they accept connections and
/// rewrites `target/services/env`. On failure, stops what it started.
pub(crate) fn up(services: &[&'static Service]) -> Result<Provisioned> {
    let mut provisioned = Provisioned::default();
    for &service in services {
        let outcome = match running_pid(service)? {
            Some(pid) => {
                eprintln!(
                    "services: {} already running (pid {pid}, {})",
                    service.name,
                    service.address()
                );
                Ok(())
            }
            None => start(service).map(|()| provisioned.started.push(service)),
        };
        if let Err(error) = outcome {
            if let Err(stop_error) = stop_started(&provisioned) {
                eprintln!("services: {stop_error:#}");
            }
            return Err(error);
        }
        provisioned.env.extend((service.env)(&service.layout()));
    }
    write_env_file()?;
    Ok(provisioned)
}

/// Stops the services `up` started (not those that were already running).
pub(crate) fn stop_started(provisioned: &Provisioned) -> Result<()> {
    down(&provisioned.started)
}

fn start(service: &Service) -> Result<()> {
    let binary = ensure_installed(service)?;
    if let Port::Free = service.port {
        let portfile = service.portfile();
        fs::create_dir_all(services_dir().join(service.name))
            .with_context(|| format!("could not create the directory of {}", service.name))?;
        fs::write(&portfile, free_port()?.to_string())
            .with_context(|| format!("could not write {}", portfile.display()))?;
    }
    let layout = &service.layout();
    // An emulator that binds with SO_REUSEPORT (Spanner's) would start beside another one on
    // the same port and split the requests with it: the port must be free.
    if TcpStream::connect_timeout(&service.address(), Duration::from_millis(500)).is_ok() {
        bail!(
            "cannot start {}: {} is already in use by a process xtask did not start \
             (a system {} service?); stop it and retry",
            service.name,
            service.address(),
            service.name
        );
    }
    fs::create_dir_all(&layout.data)
        .with_context(|| format!("could not create {}", layout.data.display()))?;
    let _ = fs::remove_file(&layout.pidfile);
    fs::write(&layout.log, "")
        .with_context(|| format!("could not create {}", layout.log.display()))?;
    let step = Step {
        layout,
        binary: &binary,
        user: service_user(service)?,
    };
    if let Some((uid, gid)) = step.user {
        for path in [&layout.dir, &layout.data, &layout.log] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("could not hand {} to its user", path.display()))?;
        }
    }
    if let Some(init) = service.setup.init {
        init(&step).with_context(|| format!("could not prepare {}", service.name))?;
    }

    // `sh` starts the server in the background with its output in the log and writes its
    // pid, then exits: the server is reparented to init and outlives xtask. The new process
    // group keeps a Ctrl-C in the terminal away from it.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"log=$1; pidfile=$2; shift 2; "$@" </dev/null >>"$log" 2>&1 & echo $! >"$pidfile""#)
        .arg("sh")
        .arg(&layout.log)
        .arg(&layout.pidfile)
        .arg(&binary)
        .args((service.args)(layout))
        .current_dir(&layout.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0);
    if let Some((uid, gid)) = step.user {
        command.uid(uid).gid(gid);
    }
    let mut shown = Command::new(&binary);
    shown.args((service.args)(layout));
    eprintln!(
        "services: starting {} on {}: {}",
        service.name,
        service.address(),
        display(&shown)
    );
    let status = command
        .status()
        .with_context(|| format!("could not run sh to start {}", service.name))?;
    if !status.success() {
        bail!("could not start {} ({status})", service.name);
    }
    let pid = read_pid(&layout.pidfile)?
        .with_context(|| format!("{} was started but wrote no pid", service.name))?;

    // Until it has exec'd, the process is still `sh`: only its existence counts here.
    let deadline = Instant::now() + service.ready_timeout;
    loop {
        if !exists(pid) {
            let _ = fs::remove_file(&layout.pidfile);
            bail!(
                "{} exited during startup; last lines of {}:\n{}",
                service.name,
                layout.log.display(),
                log_tail(&layout.log)
            );
        }
        if TcpStream::connect_timeout(&service.address(), Duration::from_millis(250)).is_ok() {
            if !alive(pid, service) {
                let _ = signal(service.setup.stop_signal, pid);
                bail!(
                    "{} is listening, but pid {pid} does not run {}: cannot manage it",
                    service.address(),
                    service.binary
                );
            }
            let ready = service.setup.ready.map_or(Ok(()), |ready| ready(&step));
            if let Err(error) = ready {
                if Instant::now() < deadline {
                    sleep(Duration::from_millis(100));
                    continue;
                }
                let _ = signal(service.setup.stop_signal, pid);
                let _ = fs::remove_file(&layout.pidfile);
                bail!(
                    "{} accepts connections but is not ready within {:?}: {error:#}; \
                     last lines of {}:\n{}",
                    service.name,
                    service.ready_timeout,
                    layout.log.display(),
                    log_tail(&layout.log)
                );
            }
            eprintln!(
                "services: {} ready on {} (pid {pid}, log {})",
                service.name,
                service.address(),
                layout.log.display()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let tail = log_tail(&layout.log);
            let _ = signal(service.setup.stop_signal, pid);
            let _ = fs::remove_file(&layout.pidfile);
            bail!(
                "{} did not accept connections on {} within {:?}; last lines of {}:\n{tail}",
                service.name,
                service.address(),
                service.ready_timeout,
                layout.log.display()
            );
        }
        sleep(Duration::from_millis(100));
    }
}

/// Stops the given services (those not running are skipped) and rewrites the env file.
pub(crate) fn down(services: &[&'static Service]) -> Result<()> {
    let mut failed = Vec::new();
    for service in services {
        if let Err(error) = stop(service) {
            eprintln!("services: {error:#}");
            failed.push(service.name);
        }
    }
    write_env_file()?;
    if !failed.is_empty() {
        bail!("could not stop: {}", failed.join(", "));
    }
    Ok(())
}

fn stop(service: &Service) -> Result<()> {
    let layout = service.layout();
    let Some(pid) = running_pid(service)? else {
        let _ = fs::remove_file(&layout.pidfile);
        return Ok(());
    };
    eprintln!("services: stopping {} (pid {pid})", service.name);
    signal(service.setup.stop_signal, pid)?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid, service) {
        if Instant::now() >= deadline {
            eprintln!(
                "services: {} did not exit within {STOP_TIMEOUT:?}, killing it",
                service.name
            );
            signal("KILL", pid)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid, service) {
                if Instant::now() >= deadline {
                    bail!("{} (pid {pid}) survived SIGKILL", service.name);
                }
                sleep(Duration::from_millis(50));
            }
            break;
        }
        sleep(Duration::from_millis(50));
    }
    fs::remove_file(&layout.pidfile)
        .with_context(|| format!("could not remove {}", layout.pidfile.display()))?;
    eprintln!("services: {} stopped", service.name);
    Ok(())
}

fn status(services: &[&'static Service]) -> Result<()> {
    for service in services {
        let layout = service.layout();
        let installed = match find_binary(service) {
            Some(path) => path.display().to_string(),
            None => "not installed".to_owned(),
        };
        let state = match running_pid(service)? {
            Some(pid) => {
                let ready =
                    TcpStream::connect_timeout(&service.address(), Duration::from_millis(500))
                        .is_ok();
                let ready = if ready {
                    "accepting connections"
                } else {
                    "NOT accepting connections"
                };
                format!("running (pid {pid}), {ready}")
            }
            None => "stopped".to_owned(),
        };
        let env: Vec<String> = (service.env)(&layout)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<8} {:<9} {state}; {}; {}; {installed}",
            service.name,
            service.address(),
            env.join(" "),
            layout.dir.display(),
        );
    }
    Ok(())
}

/// The pid of the service if it is running (a stale pid file does not count).
fn running_pid(service: &Service) -> Result<Option<u32>> {
    let pid = read_pid(&service.layout().pidfile)?;
    Ok(pid.filter(|&pid| alive(pid, service)))
}

fn read_pid(pidfile: &Path) -> Result<Option<u32>> {
    match fs::read_to_string(pidfile) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{} does not hold a pid", pidfile.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("could not read {}", pidfile.display())),
    }
}

/// Whether `pid` is a live (not zombie) process running `service`: its binary, with its port
/// among the arguments. On Linux the process is identified through /proc, so a recycled pid
/// (a stale pid file after a reboot, another `python3`) is not mistaken for the server, and
/// never signalled.
fn alive(pid: u32, service: &Service) -> bool {
    if !exists(pid) {
        return false;
    }
    let port = service.layout().port.to_string();
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let cmdline = String::from_utf8_lossy(&cmdline);
            // Arguments are NUL-separated, or one line when the server retitles itself
            // (`redis-server 127.0.0.1:16379 [cluster]`).
            let mut words = cmdline.split(['\0', ' ']);
            cmdline.contains(service.binary)
                && words.any(|word| word == port || word.ends_with(&format!(":{port}")))
        }
        Err(_) => !Path::new("/proc/self").exists(),
    }
}

/// Whether `pid` is a process that has not exited (zombies count as exited).
fn exists(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            state != Some('Z')
        }
        Err(_) if Path::new("/proc/self").exists() => false,
        Err(_) => Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

fn signal(signal: &str, pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .context("could not run kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed ({status})");
    }
    Ok(())
}

fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|e| format!("(cannot read log: {e})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Rewrites `target/services/env` with the variables of every running service.
fn write_env_file() -> Result<()> {
    let mut text = String::from(
        "# Connection variables of the services started by `cargo xtask services up`.\n\
         # Load them with: set -a; . target/services/env; set +a\n",
    );
    for service in SERVICES {
        if running_pid(service)?.is_some() {
            for (key, value) in (service.env)(&service.layout()) {
                text.push_str(&format!("{key}={value}\n"));
            }
        }
    }
    let path = services_dir().join("env");
    fs::create_dir_all(services_dir())
        .with_context(|| format!("could not create {}", services_dir().display()))?;
    fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))
}

fn venv_dir() -> PathBuf {
    services_dir().join("venv")
}

/// The project's virtualenv's Python, after `pip install`ing `args` into it unless the same
/// install (the arguments, and the contents of any `-r` file) is recorded there as done. Pinned
/// versions are the tested ones: a changed pin installs again. Never the system Python, which
/// Debian and Ubuntu refuse to let pip change (PEP 668).
pub(crate) fn venv_install(name: &str, args: &[&str]) -> Result<PathBuf> {
    let venv = venv_dir();
    let python = venv.join("bin").join("python3");
    if !python.is_file() {
        run_status(Command::new("python3").arg("-m").arg("venv").arg(&venv))
            .context("could not create the project's virtualenv (python3 -m venv)")?;
    }
    let mut wanted = args.join(" ");
    for pair in args.windows(2).filter(|pair| pair[0] == "-r") {
        let file = project_root().join(pair[1]);
        wanted += &fs::read_to_string(&file)
            .with_context(|| format!("could not read {}", file.display()))?;
    }
    let stamp = venv.join(format!("angzarr-{name}.installed"));
    if fs::read_to_string(&stamp).is_ok_and(|done| done == wanted) {
        return Ok(python);
    }
    run_status(
        Command::new(&python)
            .current_dir(project_root())
            .args(["-m", "pip", "install", "--quiet"])
            .args(args)
            .stdout(std::io::stderr()),
    )
    .with_context(|| format!("could not pip install {}", args.join(" ")))?;
    fs::write(&stamp, wanted).with_context(|| format!("could not write {}", stamp.display()))?;
    Ok(python)
}

fn find_binary(service: &Service) -> Option<PathBuf> {
    if let Install::Pip { .. } = service.install {
        // Only the project's virtualenv counts, once its install is recorded as done.
        let candidate = venv_dir().join("bin").join(service.binary);
        let installed = venv_dir()
            .join(format!("angzarr-{}.installed", service.name))
            .is_file();
        return (candidate.is_file() && installed).then_some(candidate);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    (service.setup.bin_dirs)()
        .into_iter()
        .chain(std::iter::once(venv_dir().join("bin")))
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(service.binary))
        .find(|candidate| candidate.is_file())
}

/// The uid and gid of the service's [`Setup::user`] if xtask runs as root (and so must not
/// run the server as itself); `None` otherwise.
fn service_user(service: &Service) -> Result<Option<(u32, u32)>> {
    let Some(user) = service.setup.user else {
        return Ok(None);
    };
    let id = |flag: &str, of: Option<&str>| -> Result<u32> {
        let output = Command::new("id")
            .arg(flag)
            .args(of)
            .output()
            .context("could not run id")?;
        if !output.status.success() {
            bail!(
                "{} runs as the OS user `{user}`, which does not exist: {}",
                service.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .context("id printed no number")
    };
    if id("-u", None)? != 0 {
        return Ok(None);
    }
    Ok(Some((id("-u", Some(user))?, id("-g", Some(user))?)))
}

fn ensure_installed(service: &Service) -> Result<PathBuf> {
    if let Some(path) = find_binary(service) {
        return Ok(path);
    }
    match &service.install {
        Install::Apt {
            packages,
            system_service,
        } => {
            eprintln!(
                "services: {} not found, installing {} with apt-get",
                service.binary,
                packages.join(" ")
            );
            let root = Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
            let privileged = |program: &str| {
                let mut command = if root {
                    Command::new(program)
                } else {
                    let mut sudo = Command::new("sudo");
                    sudo.arg(program);
                    sudo
                };
                command
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(std::io::stderr());
                command
            };
            run_status(privileged("apt-get").arg("update")).context("apt-get update failed")?;
            run_status(
                privileged("apt-get")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(*packages),
            )
            .with_context(|| format!("could not install {}", packages.join(" ")))?;
            if let Some(system_service) = system_service {
                // The package may have started its own instance on our port.
                if TcpStream::connect_timeout(&service.address(), Duration::from_millis(500))
                    .is_ok()
                {
                    eprintln!(
                        "services: stopping the {system_service} service the package started"
                    );
                    let _ = run_status(privileged("service").args([*system_service, "stop"]));
                }
            }
        }
        Install::Pip { packages } => {
            venv_install(service.name, packages)?;
        }
        Install::Manual { how } => bail!(
            "{} is needed by {} and is not installed: {how}",
            service.binary,
            service.name
        ),
    }
    find_binary(service).with_context(|| {
        format!(
            "{} is still not found after installing it (PATH and {})",
            service.binary,
            venv_dir().join("bin").display()
        )
    })
}
