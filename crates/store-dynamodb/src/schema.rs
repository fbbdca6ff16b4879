//! The two tables: checked at open, created when configured to.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ProvisionedThroughput,
    ScalarAttributeType, StreamSpecification, StreamViewType, TableDescription, TableStatus,
};

use crate::config::{Billing, DynamoDbConfig};
use crate::error::{OpenError, described, has_code, is_not_found, open_error};
use crate::keys;

/// One table's key schema: a string partition key and a sort key of `sort_type`.
pub(crate) struct TableSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) sort_key: &'a str,
    pub(crate) sort_type: ScalarAttributeType,
    /// Whether to turn on DynamoDB Streams (new images) when creating it.
    pub(crate) stream: bool,
}

/// Checks that the table exists with the store's key schema, creating it first if it is
/// missing and `config.create_if_missing`, and waits until it is active.
pub(crate) async fn ensure(
    client: &Client,
    config: &DynamoDbConfig,
    endpoint: &str,
    spec: &TableSpec<'_>,
) -> Result<(), OpenError> {
    let description = match describe(client, spec.name).await {
        Ok(description) => description,
        Err(error) if is_not_found(&error) => {
            if !config.create_if_missing {
                return Err(OpenError::MissingTable(spec.name.to_owned()));
            }
            create(client, config, endpoint, spec).await?;
            wait_until_active(client, config, endpoint, spec.name).await?
        }
        Err(error) => return Err(open_error(endpoint, error)),
    };
    check_keys(&description, spec)?;
    if description.table_status() != Some(&TableStatus::Active) {
        wait_until_active(client, config, endpoint, spec.name).await?;
    }
    Ok(())
}

async fn describe(
    client: &Client,
    table: &str,
) -> Result<
    TableDescription,
    aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::describe_table::DescribeTableError,
        aws_sdk_dynamodb::config::http::HttpResponse,
    >,
> {
    let output = client.describe_table().table_name(table).send().await?;
    Ok(output
        .table
        .unwrap_or_else(|| TableDescription::builder().build()))
}

async fn create(
    client: &Client,
    config: &DynamoDbConfig,
    endpoint: &str,
    spec: &TableSpec<'_>,
) -> Result<(), OpenError> {
    let build = |what: &str, error: aws_sdk_dynamodb::error::BuildError| {
        OpenError::InvalidConfig(format!("{what}: {error}"))
    };
    let key = |name: &str, key_type: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(key_type)
            .build()
            .map_err(|error| build("key schema", error))
    };
    let attribute = |name: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .map_err(|error| build("attribute definition", error))
    };
    let mut request = client
        .create_table()
        .table_name(spec.name)
        .key_schema(key(keys::PK, KeyType::Hash)?)
        .key_schema(key(spec.sort_key, KeyType::Range)?)
        .attribute_definitions(attribute(keys::PK, ScalarAttributeType::S)?)
        .attribute_definitions(attribute(spec.sort_key, spec.sort_type.clone())?);
    request = match config.billing {
        Billing::OnDemand => request.billing_mode(BillingMode::PayPerRequest),
        Billing::Provisioned {
            read_capacity,
            write_capacity,
        } => request
            .billing_mode(BillingMode::Provisioned)
            .provisioned_throughput(
                ProvisionedThroughput::builder()
                    .read_capacity_units(i64::from(read_capacity))
                    .write_capacity_units(i64::from(write_capacity))
                    .build()
                    .map_err(|error| build("provisioned throughput", error))?,
            ),
    };
    if spec.stream {
        request = request.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewImage)
                .build()
                .map_err(|error| build("stream specification", error))?,
        );
    }
    match request.send().await {
        Ok(_) => {
            tracing::info!(table = spec.name, "created the DynamoDB table");
            Ok(())
        }
        // Another process created it meanwhile.
        Err(error) if has_code(&error, "ResourceInUseException") => Ok(()),
        Err(error) => Err(open_error(endpoint, error)),
    }
}

async fn wait_until_active(
    client: &Client,
    config: &DynamoDbConfig,
    endpoint: &str,
    table: &str,
) -> Result<TableDescription, OpenError> {
    let deadline = tokio::time::Instant::now() + config.table_ready_timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        match describe(client, table).await {
            Ok(description) if description.table_status() == Some(&TableStatus::Active) => {
                return Ok(description);
            }
            // Creating, or not yet visible to this endpoint.
            Ok(_) => {}
            Err(error) if is_not_found(&error) => {}
            Err(error) => return Err(open_error(endpoint, error)),
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(OpenError::TableNotReady(table.to_owned()));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Refuses a table whose keys are not the store's: writing into it would fail item by item,
/// or worse, mix with someone else's data.
fn check_keys(description: &TableDescription, spec: &TableSpec<'_>) -> Result<(), OpenError> {
    let wrong = |reason: String| {
        Err(OpenError::WrongTable {
            table: spec.name.to_owned(),
            reason,
        })
    };
    let key_of = |key_type: KeyType| {
        description
            .key_schema()
            .iter()
            .find(|key| key.key_type() == &key_type)
            .map(|key| key.attribute_name().to_owned())
    };
    let type_of = |name: &str| {
        description
            .attribute_definitions()
            .iter()
            .find(|attribute| attribute.attribute_name() == name)
            .map(|attribute| attribute.attribute_type().clone())
    };
    let expected = [
        (KeyType::Hash, keys::PK, ScalarAttributeType::S),
        (KeyType::Range, spec.sort_key, spec.sort_type.clone()),
    ];
    for (key_type, name, kind) in expected {
        let found = key_of(key_type.clone());
        if found.as_deref() != Some(name) {
            return wrong(format!(
                "its {key_type:?} key is {found:?}, the store's is {name:?}"
            ));
        }
        let found_type = type_of(name);
        if found_type.as_ref() != Some(&kind) {
            return wrong(format!(
                "its key {name:?} is of type {found_type:?}, the store's is {kind:?}"
            ));
        }
    }
    Ok(())
}

/// Checks the connection and the credentials with one cheap request, within the connect and
/// operation timeouts: a wrong endpoint or missing credentials fail here, clearly.
pub(crate) async fn probe(
    client: &Client,
    config: &DynamoDbConfig,
    endpoint: &str,
) -> Result<(), OpenError> {
    let budget = config.connect_timeout + config.operation_timeout;
    let request = client
        .describe_table()
        .table_name(&config.events_table)
        .customize()
        .config_override(
            aws_sdk_dynamodb::config::Builder::default()
                .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled()),
        )
        .send();
    match tokio::time::timeout(budget, request).await {
        Err(_) => Err(OpenError::Connect {
            endpoint: endpoint.to_owned(),
            reason: format!("no answer within {budget:?}"),
        }),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if is_not_found(&error) => Ok(()),
        Ok(Err(error)) => {
            tracing::debug!(error = %described(&error), "probing DynamoDB failed");
            Err(open_error(endpoint, error))
        }
    }
}
