//! The connection pool: deadpool's, with a manager that prepares every statement on each new
//! connection, so that no operation pays for preparing or looks a statement up.

use std::sync::Arc;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use tokio_postgres::NoTls;

use crate::sql::{Conn, Sql, Statements};

/// The pool of the store's connections.
pub(crate) type Pool = managed::Pool<Manager>;

/// A connection taken from the [`Pool`]; back in the pool when dropped.
pub(crate) type Pooled = managed::Object<Manager>;

/// Opens connections to one database and prepares the store's statements on them.
#[derive(Debug)]
pub(crate) struct Manager {
    config: tokio_postgres::Config,
    sql: Arc<Sql>,
}

impl Manager {
    pub(crate) fn new(config: tokio_postgres::Config, sql: Arc<Sql>) -> Self {
        Self { config, sql }
    }
}

/// Opens a connection and drives it on a task of its own, as the driver requires.
pub(crate) async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "a PostgreSQL connection ended");
        }
    });
    Ok(client)
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = tokio_postgres::Error;

    async fn create(&self) -> Result<Conn, tokio_postgres::Error> {
        let client = connect(&self.config).await?;
        let statements = Statements::prepare(&client, &self.sql).await?;
        Ok(Conn { client, statements })
    }

    async fn recycle(&self, conn: &mut Conn, _: &Metrics) -> RecycleResult<tokio_postgres::Error> {
        // The driver notices a closed socket as soon as it happens (it always reads), so a
        // connection the server or the network dropped while idle is not handed out again.
        // One dropped since costs its next operation an `Unavailable` (or an unknown
        // outcome, for an append); checking with a query each time would cost a round trip.
        if conn.client.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        Ok(())
    }
}
