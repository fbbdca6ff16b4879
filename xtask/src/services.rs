//! `cargo xtask services up|down|status [NAME]...`: the servers some backends test against.
//!
//! Each service is a row of [`SERVICES`]: the executable it needs (installed with apt-get or
//! pip when missing), the arguments that run it in the foreground on `127.0.0.1:<port>`, and
//! the connection variables it exports. xtask detaches the server itself (own process group,
//! output to `target/services/<name>/<name>.log`, pid in `target/services/<name>/<name>.pid`),
//! waits until its port accepts connections, and stops it with SIGTERM (SIGKILL after a
//! timeout). The variables of the running services are written to `target/services/env`:
//!
//! ```sh
//! set -a; . target/services/env; set +a
//! ```
//!
//! Adding a service (PostgreSQL, the Bigtable or Spanner emulator, moto for DynamoDB) is one
//! more row; a backend that needs it lists its name in `test::BACKENDS`, and from then on
//! `cargo xtask test` starts it before the tests and stops it after.

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
    /// Python packages, installed in a virtualenv at `target/services/venv` (whose `bin/`
    /// is searched before `PATH`). For moto (DynamoDB); no row uses it yet.
    #[allow(
        dead_code,
        reason = "the pattern for the pip-installed services to come"
    )]
    Pip { packages: &'static [&'static str] },
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
    /// The fixed loopback port.
    pub(crate) port: u16,
    /// The arguments of `binary` that run the server in the foreground, bound to 127.0.0.1.
    pub(crate) args: fn(&Layout) -> Vec<OsString>,
    /// The connection variables tests read.
    pub(crate) env: fn(&Layout) -> Vec<(&'static str, String)>,
    /// How long the port may take to accept connections.
    pub(crate) ready_timeout: Duration,
}

/// Every service xtask knows. Which ones `cargo xtask test` starts is decided by the
/// `services` of `test::BACKENDS` (today: none).
pub(crate) const SERVICES: &[Service] = &[Service {
    name: "redis",
    binary: "redis-server",
    install: Install::Apt {
        packages: &["redis-server"],
        system_service: Some("redis-server"),
    },
    port: 6379,
    args: |layout| {
        let mut args: Vec<OsString> = [
            "--port",
            &layout.port.to_string(),
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
            "--dir",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        args.push(layout.data.clone().into());
        args
    },
    env: |layout| {
        vec![(
            "ANGZARR_REDIS_URL",
            format!("redis://127.0.0.1:{}", layout.port),
        )]
    },
    ready_timeout: Duration::from_secs(30),
}];

/// How long a server has to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

impl Service {
    fn layout(&self) -> Layout {
        let dir = services_dir().join(self.name);
        Layout {
            data: dir.join("data"),
            log: dir.join(format!("{}.log", self.name)),
            pidfile: dir.join(format!("{}.pid", self.name)),
            port: self.port,
            dir,
        }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
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
        .collect::<Result<Vec<_>>>()?;
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

fn find(name: &str) -> Result<&'static Service> {
    SERVICES.iter().find(|s| s.name == name).with_context(|| {
        let known: Vec<_> = SERVICES.iter().map(|s| s.name).collect();
        format!("unknown service `{name}`; known: {}", known.join(", "))
    })
}

fn all() -> Vec<&'static Service> {
    SERVICES.iter().collect()
}

/// The services the given backend names need, deduplicated, in table order.
pub(crate) fn for_backends(names: &[&str]) -> Result<Vec<&'static Service>> {
    for backend in BACKENDS.iter().filter(|b| names.contains(&b.name)) {
        for service in backend.services {
            find(service).with_context(|| format!("backend {} needs it", backend.name))?;
        }
    }
    Ok(SERVICES
        .iter()
        .filter(|s| {
            BACKENDS
                .iter()
                .any(|b| names.contains(&b.name) && b.services.contains(&s.name))
        })
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
        let layout = service.layout();
        let outcome = match running_pid(service)? {
            Some(pid) => {
                eprintln!(
                    "services: {} already running (pid {pid}, {})",
                    service.name,
                    service.address()
                );
                Ok(())
            }
            None => start(service, &layout).map(|()| provisioned.started.push(service)),
        };
        if let Err(error) = outcome {
            if let Err(stop_error) = stop_started(&provisioned) {
                eprintln!("services: {stop_error:#}");
            }
            return Err(error);
        }
        provisioned.env.extend((service.env)(&layout));
    }
    write_env_file()?;
    Ok(provisioned)
}

/// Stops the services `up` started (not those that were already running).
pub(crate) fn stop_started(provisioned: &Provisioned) -> Result<()> {
    down(&provisioned.started)
}

fn start(service: &Service, layout: &Layout) -> Result<()> {
    let binary = ensure_installed(service)?;
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
            if !alive(pid, service.binary) {
                let _ = signal("TERM", pid);
                bail!(
                    "{} is listening, but pid {pid} does not run {}: cannot manage it",
                    service.address(),
                    service.binary
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
            let _ = signal("TERM", pid);
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
    signal("TERM", pid)?;
    let deadline = Instant::now() + STOP_TIMEOUT;
    while alive(pid, service.binary) {
        if Instant::now() >= deadline {
            eprintln!(
                "services: {} did not exit within {STOP_TIMEOUT:?}, killing it",
                service.name
            );
            signal("KILL", pid)?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(pid, service.binary) {
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
        let installed = match find_binary(service.binary) {
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
    Ok(pid.filter(|&pid| alive(pid, service.binary)))
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

/// Whether `pid` is a live (not zombie) process running `binary`. On Linux the process is
/// identified through /proc, so a recycled pid is not mistaken for the server.
fn alive(pid: u32, binary: &str) -> bool {
    if !exists(pid) {
        return false;
    }
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains(binary),
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

fn find_binary(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(venv_dir().join("bin"))
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn ensure_installed(service: &Service) -> Result<PathBuf> {
    if let Some(path) = find_binary(service.binary) {
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
            let venv = venv_dir();
            if !venv.join("bin").join("python").is_file() {
                run_status(Command::new("python3").arg("-m").arg("venv").arg(&venv))
                    .context("could not create the services virtualenv")?;
            }
            run_status(
                Command::new(venv.join("bin").join("python"))
                    .stdout(std::io::stderr())
                    .args(["-m", "pip", "install", "--quiet"])
                    .args(*packages),
            )
            .with_context(|| format!("could not pip install {}", packages.join(" ")))?;
        }
    }
    find_binary(service.binary).with_context(|| {
        format!(
            "{} is still not found after installing it (PATH and {})",
            service.binary,
            venv_dir().join("bin").display()
        )
    })
}
