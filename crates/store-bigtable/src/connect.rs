//! Opening: credentials, the data client, the table (through the admin API) and a probe.

use std::collections::HashMap;
use std::sync::Arc;

use bigtable_rs::bigtable::BigTableConnection;
use gcp_auth::TokenProvider;
use googleapis_tonic_google_bigtable_admin_v2::google::bigtable::admin::v2::{
    ColumnFamily, CreateTableRequest, GcRule, Table,
    bigtable_table_admin_client::BigtableTableAdminClient, gc_rule,
};
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};

use crate::config::BigtableConfig;
use crate::error::OpenError;
use crate::keys::FAMILIES;

/// The admin API of the real service.
const ADMIN_ENDPOINT: &str = "https://bigtableadmin.googleapis.com";
/// The scope the admin API needs to create a table.
const ADMIN_SCOPE: &str = "https://www.googleapis.com/auth/bigtable.admin.table";

/// Where the store connects, for messages.
pub(crate) fn endpoint_name(config: &BigtableConfig) -> String {
    match &config.endpoint {
        Some(endpoint) => endpoint.clone(),
        None => "bigtable.googleapis.com".to_owned(),
    }
}

/// The data API connection, and the credentials (none for an emulator).
pub(crate) async fn connect(
    config: &BigtableConfig,
) -> Result<(BigTableConnection, Option<Arc<dyn TokenProvider>>), OpenError> {
    let connect_error = |reason: String| OpenError::Connect {
        endpoint: endpoint_name(config),
        timeout: config.connect_timeout,
        reason,
    };
    if let Some(endpoint) = &config.endpoint {
        let connection = BigTableConnection::new_with_emulator(
            endpoint,
            &config.project,
            &config.instance,
            false,
            config.channels,
            None,
        )
        .map_err(|error| connect_error(error.to_string()))?;
        return Ok((connection, None));
    }
    // The standard chain: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials, the
    // metadata server (which can take a while to time out off Google Cloud).
    let provider = tokio::time::timeout(config.connect_timeout, gcp_auth::provider())
        .await
        .map_err(|_| {
            OpenError::Credentials(
                format!(
                    "none found within {:?} (the metadata server did not answer)",
                    config.connect_timeout
                )
                .into(),
            )
        })?
        .map_err(|error| OpenError::Credentials(Box::new(error)))?;
    let connection = BigTableConnection::new_with_token_provider(
        &config.project,
        &config.instance,
        false,
        config.channels,
        None,
        Arc::clone(&provider),
    )
    .map_err(|error| connect_error(error.to_string()))?;
    Ok((connection, Some(provider)))
}

/// Creates the table with the store's column families, each keeping one version per column;
/// a table that exists already is left as it is.
pub(crate) async fn create_table(
    config: &BigtableConfig,
    credentials: Option<&Arc<dyn TokenProvider>>,
) -> Result<(), OpenError> {
    let connect_error = |reason: String| OpenError::Connect {
        endpoint: endpoint_name(config),
        timeout: config.connect_timeout,
        reason,
    };
    let endpoint = match &config.endpoint {
        Some(endpoint) => Channel::from_shared(format!("http://{endpoint}"))
            .map_err(|error| connect_error(error.to_string()))?,
        None => Channel::from_static(ADMIN_ENDPOINT)
            .tls_config(ClientTlsConfig::new().with_native_roots())
            .map_err(|error| connect_error(error.to_string()))?,
    };
    let channel = endpoint
        .connect_timeout(config.connect_timeout)
        .timeout(config.operation_timeout)
        .connect_lazy();
    let mut admin = BigtableTableAdminClient::new(channel);
    let one_version = GcRule {
        rule: Some(gc_rule::Rule::MaxNumVersions(1)),
    };
    let column_families: HashMap<String, ColumnFamily> = FAMILIES
        .iter()
        .map(|family| {
            let family_config = ColumnFamily {
                gc_rule: Some(one_version.clone()),
                ..ColumnFamily::default()
            };
            ((*family).to_owned(), family_config)
        })
        .collect();
    let parent = format!("projects/{}/instances/{}", config.project, config.instance);
    let mut request = tonic::Request::new(CreateTableRequest {
        parent: parent.clone(),
        table_id: config.table.clone(),
        table: Some(Table {
            column_families,
            ..Table::default()
        }),
        ..CreateTableRequest::default()
    });
    let routing = format!("parent={}", parent.replace('/', "%2F"));
    if let Ok(routing) = routing.parse() {
        request
            .metadata_mut()
            .insert("x-goog-request-params", routing);
    }
    if let Some(provider) = credentials {
        let token = provider
            .token(&[ADMIN_SCOPE])
            .await
            .map_err(|error| OpenError::Credentials(Box::new(error)))?;
        let bearer = format!("Bearer {}", token.as_str())
            .parse()
            .map_err(|_| OpenError::Credentials("the access token is not a header value".into()))?;
        request.metadata_mut().insert("authorization", bearer);
    }
    let created = tokio::time::timeout(config.connect_timeout, admin.create_table(request))
        .await
        .map_err(|_| connect_error("the admin API did not answer".into()))?;
    match created {
        Ok(_) => Ok(()),
        Err(status) if status.code() == Code::AlreadyExists => Ok(()),
        Err(status) => Err(open_error(config, status)),
    }
}

/// What a failed request at open means.
pub(crate) fn open_error(config: &BigtableConfig, status: Status) -> OpenError {
    match status.code() {
        Code::NotFound => OpenError::TableNotFound(format!(
            "projects/{}/instances/{}/tables/{}",
            config.project, config.instance, config.table
        )),
        Code::Unauthenticated => OpenError::Credentials(Box::new(status)),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            OpenError::Connect {
                endpoint: endpoint_name(config),
                timeout: config.connect_timeout,
                reason: format!("{}: {}", status.code(), status.message()),
            }
        }
        _ => OpenError::Refused(status),
    }
}
