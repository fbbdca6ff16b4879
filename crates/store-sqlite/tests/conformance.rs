//! The conformance suite against real SQLite files: one file per namespace, reopened to check
//! persistence, and opened twice at once for two instances (the default
//! `Harness::open_another`), as two processes would.

use angzarr_conformance::Harness;
use angzarr_ports::async_trait;
use angzarr_store_sqlite::{SqliteConfig, SqliteStore};

struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn config(&self, namespace: &str) -> SqliteConfig {
        SqliteConfig::new(self.dir.path().join(format!("{namespace}.sqlite3")))
    }
}

#[async_trait]
impl Harness for Sqlite {
    type Store = SqliteStore;

    async fn open(&self, namespace: &str) -> SqliteStore {
        let config = self.config(namespace);
        tokio::task::spawn_blocking(move || SqliteStore::open(config))
            .await
            .expect("open did not panic")
            .expect("open the SQLite store")
    }

    fn persistent(&self) -> bool {
        true
    }

    async fn cleanup(&self, namespace: &str) {
        let path = self.config(namespace).path;
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

angzarr_conformance::store_suite!(Sqlite::new());
