//! What the tests of the real binary share: starting it as a separate process.

#![allow(dead_code, reason = "each test file uses part of it")]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use angzarr_proto::v1::command_gateway_client::CommandGatewayClient;
use angzarr_proto::v1::event_query_client::EventQueryClient;
use tonic::transport::Channel;

/// The binary under test.
pub(crate) const BINARY: &str = env!("CARGO_BIN_EXE_angzarr");

/// The binary, run with none of the developer's own `ANGZARR_*` settings.
pub(crate) fn angzarr() -> Command {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("ANGZARR_")) {
        command.env_remove(name);
    }
    command
}

/// A server process on a free loopback port; killed when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    /// `host:port`.
    pub(crate) address: String,
}

impl Server {
    pub(crate) fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = angzarr()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the angzarr binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the first line");
        let address = line
            .trim()
            .strip_prefix("angzarr listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self { child, address }
    }

    pub(crate) async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub(crate) async fn gateway(&self) -> CommandGatewayClient<Channel> {
        CommandGatewayClient::new(self.channel().await)
    }

    pub(crate) async fn query(&self) -> EventQueryClient<Channel> {
        EventQueryClient::new(self.channel().await)
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit by itself.
    pub(crate) fn wait(mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the server did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
