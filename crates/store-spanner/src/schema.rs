//! The schema, and creating the instance, the database and the schema when they are missing.

use gcloud_gax::conn::Environment;
use gcloud_gax::grpc::{Code, Status};
use gcloud_googleapis::spanner::admin::database::v1::{
    CreateDatabaseRequest, GetDatabaseDdlRequest, UpdateDatabaseDdlRequest,
};
use gcloud_googleapis::spanner::admin::instance::v1::{
    CreateInstanceRequest, GetInstanceRequest, Instance,
};
use gcloud_spanner::admin::AdminClientConfig;
use gcloud_spanner::admin::client::Client as AdminClient;

use crate::config::SpannerConfig;
use crate::error::OpenError;

/// The store's tables and indexes, by name, in creation order (parents first).
pub(crate) const OBJECTS: [(&str, &str); 6] = [
    (
        "streams",
        "CREATE TABLE streams (
            namespace     STRING(64) NOT NULL,
            domain        STRING(64) NOT NULL,
            root          BYTES(16)  NOT NULL,
            next_sequence INT64      NOT NULL,
        ) PRIMARY KEY (namespace, domain, root)",
    ),
    (
        "events",
        "CREATE TABLE events (
            namespace        STRING(64) NOT NULL,
            domain           STRING(64) NOT NULL,
            root             BYTES(16)  NOT NULL,
            sequence         INT64      NOT NULL,
            correlation_hash BYTES(32),
            request_hash     BYTES(32),
            request_id       BYTES(MAX),
            request_digest   BYTES(32),
            page             BYTES(MAX) NOT NULL,
            committed_at     TIMESTAMP  NOT NULL OPTIONS (allow_commit_timestamp = true),
        ) PRIMARY KEY (namespace, domain, root, sequence),
          INTERLEAVE IN PARENT streams ON DELETE NO ACTION",
    ),
    (
        "events_by_correlation",
        "CREATE NULL_FILTERED INDEX events_by_correlation
            ON events (namespace, correlation_hash, domain, root, sequence)",
    ),
    (
        "events_by_request",
        "CREATE NULL_FILTERED INDEX events_by_request
            ON events (namespace, domain, root, request_hash, sequence)
            STORING (request_id, request_digest)",
    ),
    (
        "domains",
        "CREATE TABLE domains (
            namespace STRING(64) NOT NULL,
            domain    STRING(64) NOT NULL,
        ) PRIMARY KEY (namespace, domain)",
    ),
    (
        "snapshots",
        "CREATE TABLE snapshots (
            namespace  STRING(64) NOT NULL,
            domain     STRING(64) NOT NULL,
            root       BYTES(16)  NOT NULL,
            snapshot   BYTES(MAX) NOT NULL,
            written_at TIMESTAMP  NOT NULL OPTIONS (allow_commit_timestamp = true),
        ) PRIMARY KEY (namespace, domain, root)",
    ),
];

/// Makes sure the instance, the database and every object of [`OBJECTS`] exist, creating
/// what is missing. Several processes may do this at once: whoever loses a race to create
/// something finds it made.
pub(crate) async fn ensure(
    config: &SpannerConfig,
    environment: Environment,
) -> Result<(), OpenError> {
    let database = config.database_path();
    let refused = |source: Status| OpenError::Refused {
        database: database.clone(),
        source: Box::new(source),
    };
    let admin = AdminClient::new(AdminClientConfig {
        environment,
        timeout: config.operation_timeout,
        connect_timeout: config.connect_timeout,
        http2_keep_alive_interval: None,
        keep_alive_timeout: None,
        keep_alive_while_idle: None,
    })
    .await
    .map_err(|source| OpenError::Connect {
        endpoint: crate::store::describe(&config.endpoint),
        source: Box::new(source),
    })?;

    ensure_instance(config, &admin).await.map_err(refused)?;

    let existing = match admin
        .database()
        .get_database_ddl(
            GetDatabaseDdlRequest {
                database: database.clone(),
            },
            None,
        )
        .await
    {
        Ok(response) => Some(response.into_inner().statements),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => return Err(refused(status)),
    };
    let Some(existing) = existing else {
        let request = CreateDatabaseRequest {
            parent: config.instance_path(),
            create_statement: format!("CREATE DATABASE `{}`", config.database),
            extra_statements: OBJECTS.iter().map(|(_, ddl)| (*ddl).to_owned()).collect(),
            ..Default::default()
        };
        return match admin.database().create_database(request, None).await {
            Ok(mut operation) => operation.wait(None).await.map(drop).map_err(refused),
            // Another process created it first, with the same statements.
            Err(status) if status.code() == Code::AlreadyExists => Ok(()),
            Err(status) => Err(refused(status)),
        };
    };
    let missing: Vec<String> = OBJECTS
        .iter()
        .filter(|(name, _)| !defines(&existing, name))
        .map(|(_, ddl)| if_not_exists(ddl))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let request = UpdateDatabaseDdlRequest {
        database: database.clone(),
        statements: missing,
        ..Default::default()
    };
    let mut operation = admin
        .database()
        .update_database_ddl(request, None)
        .await
        .map_err(refused)?;
    operation.wait(None).await.map(drop).map_err(refused)
}

async fn ensure_instance(config: &SpannerConfig, admin: &AdminClient) -> Result<(), Status> {
    let name = config.instance_path();
    let request = GetInstanceRequest {
        name: name.clone(),
        ..Default::default()
    };
    match admin.instance().get_instance(request, None).await {
        Ok(_) => return Ok(()),
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => return Err(status),
    }
    let instance_config = match (&config.instance_config, &config.endpoint) {
        (Some(instance_config), _) => instance_config.clone(),
        (None, crate::Endpoint::Emulator(_)) => "emulator-config".to_owned(),
        (None, _) => {
            return Err(Status::new(
                Code::NotFound,
                format!(
                    "the instance {name} does not exist; create it, or set instance_config to \
                     have the store create it"
                ),
            ));
        }
    };
    let request = CreateInstanceRequest {
        parent: format!("projects/{}", config.project),
        instance_id: config.instance.clone(),
        instance: Some(Instance {
            name,
            config: format!(
                "projects/{}/instanceConfigs/{instance_config}",
                config.project
            ),
            display_name: config.instance.clone(),
            processing_units: config.processing_units,
            ..Default::default()
        }),
    };
    match admin.instance().create_instance(request, None).await {
        Ok(mut operation) => operation.wait(None).await.map(drop),
        Err(status) if status.code() == Code::AlreadyExists => Ok(()),
        Err(status) => Err(status),
    }
}

/// Whether one of `statements` (as `GetDatabaseDdl` returns them) creates the table or index
/// `name`.
pub(crate) fn defines(statements: &[String], name: &str) -> bool {
    statements.iter().any(|statement| {
        let mut words = statement.split_whitespace();
        if words.next() != Some("CREATE") {
            return false;
        }
        let mut words = words.skip_while(|word| !matches!(*word, "TABLE" | "INDEX"));
        words.next();
        words.next().map(|word| word.trim_matches('`')) == Some(name)
    })
}

/// `statement` with `IF NOT EXISTS`, so that racing processes all succeed.
fn if_not_exists(statement: &str) -> String {
    for kind in ["TABLE ", "INDEX "] {
        if let Some(at) = statement.find(kind) {
            let (head, tail) = statement.split_at(at + kind.len());
            return format!("{head}IF NOT EXISTS {tail}");
        }
    }
    statement.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_objects_are_recognised_and_missing_ones_made_idempotent() {
        let existing = vec![
            "CREATE TABLE streams (\n  namespace STRING(64) NOT NULL,\n) PRIMARY KEY(namespace)"
                .to_owned(),
            "CREATE NULL_FILTERED INDEX events_by_correlation ON events(namespace)".to_owned(),
        ];
        assert!(defines(&existing, "streams"));
        assert!(defines(&existing, "events_by_correlation"));
        assert!(!defines(&existing, "events"));
        assert!(!defines(&existing, "snapshots"));
        assert!(if_not_exists(OBJECTS[0].1).starts_with("CREATE TABLE IF NOT EXISTS streams"));
        assert!(
            if_not_exists(OBJECTS[2].1)
                .starts_with("CREATE NULL_FILTERED INDEX IF NOT EXISTS events_by_correlation")
        );
    }
}
