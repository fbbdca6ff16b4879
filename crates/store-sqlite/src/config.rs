//! How to open a [`SqliteStore`](crate::SqliteStore).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::OpenError;

/// How long a commit waits for the disk: SQLite's `synchronous` setting, in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// Every commit reaches the disk (fsync) before its appends are acknowledged: an
    /// acknowledged append survives a crash of the process, of the OS, and a power failure.
    #[default]
    Full,
    /// Commits reach the OS before their appends are acknowledged, and the disk only at WAL
    /// checkpoints: an acknowledged append survives a crash of the process, but the latest ones
    /// may be lost (whole, never in part) to an OS crash or a power failure. Faster when there
    /// are many small groups.
    Normal,
}

impl Synchronous {
    /// Whether every commit waits for an fsync.
    pub(crate) fn commit_syncs(self) -> bool {
        match self {
            Self::Full => true,
            Self::Normal => false,
        }
    }

    /// The value of SQLite's `synchronous` pragma.
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Self::Full => "FULL",
            Self::Normal => "NORMAL",
        }
    }
}

/// Where and how a [`SqliteStore`](crate::SqliteStore) keeps its data.
///
/// ```
/// use std::time::Duration;
/// use angzarr_store_sqlite::{SqliteConfig, Synchronous};
///
/// let config = SqliteConfig::in_dir("/var/lib/angzarr")
///     .with_synchronous(Synchronous::Normal)
///     .with_busy_timeout(Duration::from_secs(1));
/// assert!(config.path.ends_with("angzarr.sqlite3"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file, created if missing (its directory must exist). SQLite keeps two more
    /// files next to it while the store is open: `<path>-wal` and `<path>-shm`.
    pub path: PathBuf,
    /// Whether acknowledged appends are fsynced. Default: [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// The most writes (appends, snapshot puts and deletes) committed in one transaction.
    /// At least 1. Default: [`SqliteConfig::DEFAULT_MAX_GROUP_SIZE`].
    pub max_group_size: usize,
    /// How many idle read connections are kept open. More concurrent reads open more
    /// connections, closed after use. Default: [`SqliteConfig::DEFAULT_READ_POOL_SIZE`].
    pub read_pool_size: usize,
    /// How long an operation waits for a lock held by another process (another store on the
    /// same file, a backup, the `sqlite3` shell) before failing with `Unavailable`.
    /// Default: [`SqliteConfig::DEFAULT_BUSY_TIMEOUT`].
    pub busy_timeout: Duration,
}

impl SqliteConfig {
    /// The file name [`SqliteConfig::in_dir`] uses.
    pub const DEFAULT_FILE_NAME: &str = "angzarr.sqlite3";
    /// The default [`SqliteConfig::max_group_size`].
    pub const DEFAULT_MAX_GROUP_SIZE: usize = 256;
    /// The default [`SqliteConfig::read_pool_size`].
    pub const DEFAULT_READ_POOL_SIZE: usize = 4;
    /// The default [`SqliteConfig::busy_timeout`].
    pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

    /// The database file `path`, with the default settings.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::default(),
            max_group_size: Self::DEFAULT_MAX_GROUP_SIZE,
            read_pool_size: Self::DEFAULT_READ_POOL_SIZE,
            busy_timeout: Self::DEFAULT_BUSY_TIMEOUT,
        }
    }

    /// The file [`SqliteConfig::DEFAULT_FILE_NAME`] in `dir`, with the default settings.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        Self::new(dir.as_ref().join(Self::DEFAULT_FILE_NAME))
    }

    /// Sets [`Self::synchronous`].
    pub fn with_synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets [`Self::max_group_size`].
    pub fn with_max_group_size(mut self, max_group_size: usize) -> Self {
        self.max_group_size = max_group_size;
        self
    }

    /// Sets [`Self::read_pool_size`].
    pub fn with_read_pool_size(mut self, read_pool_size: usize) -> Self {
        self.read_pool_size = read_pool_size;
        self
    }

    /// Sets [`Self::busy_timeout`].
    pub fn with_busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }

    /// Refuses settings that cannot work.
    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        let path = self.path.as_os_str();
        if path.is_empty() || path == ":memory:" {
            // Every connection would get a private database of its own.
            return Err(OpenError::InvalidConfig(format!(
                "{path:?} is not a file: the store needs one that all its connections share"
            )));
        }
        if self.max_group_size == 0 {
            return Err(OpenError::InvalidConfig(
                "max_group_size must be at least 1".into(),
            ));
        }
        // SQLite takes the timeout in milliseconds, as a C int.
        if self.busy_timeout.as_millis() > i32::MAX as u128 {
            return Err(OpenError::InvalidConfig(format!(
                "busy_timeout {:?} is longer than SQLite accepts",
                self.busy_timeout
            )));
        }
        Ok(())
    }
}
