//! The store: the ports over two DynamoDB tables.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use angzarr_ports::{
    AggregateEvents, AggregateId, Append, BoxError, CommandDigest, Domain, EventPage, EventStore,
    EventStoreError, RequestRecord, SequenceRange, Snapshot, SnapshotStore, SnapshotStoreError,
    StoreCapabilities, Uuid, async_trait, validate_append,
};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Put, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TransactWriteItem,
};
use futures_util::future::{try_join, try_join_all};
use prost::Message;

use crate::config::DynamoDbConfig;
use crate::error::{Attempt, Failure, OpenError, described, sort};
use crate::keys::{self, Keys};
use crate::schema::{self, TableSpec};

/// One DynamoDB item.
type Item = HashMap<String, AttributeValue>;

/// How many times a transaction cancelled by another transaction on the same items
/// (`TransactionConflict`, not a sequence conflict) is tried again.
const TRANSACTION_CONFLICT_RETRIES: u32 = 10;
/// How many times a read that finds a committed append not yet wholly visible reads again.
const INCOMPLETE_READ_RETRIES: u32 = 8;

/// An [`EventStore`] and [`SnapshotStore`] over two DynamoDB tables: one transaction
/// (`TransactWriteItems`) per append, strongly consistent reads. Cheap to clone: clones share
/// the client.
#[derive(Clone)]
pub struct DynamoDbStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    keys: Keys,
    events_table: String,
    index_table: String,
    capabilities: StoreCapabilities,
    max_attempts: u32,
    /// Domains this process has registered: registering is idempotent, and the registry is
    /// never pruned, so each needs it once.
    registered: Mutex<HashSet<Domain>>,
}

impl std::fmt::Debug for DynamoDbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoDbStore")
            .field("events_table", &self.inner.events_table)
            .field("index_table", &self.inner.index_table)
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

/// A stream's head: its next sequence, and the token of the append that wrote it.
struct Head {
    next: u64,
    token: Option<String>,
}

impl DynamoDbStore {
    /// Connects, checks the credentials and the tables (creating them if configured to), and
    /// fails within the connect and operation timeouts when DynamoDB cannot be reached.
    pub async fn open(config: DynamoDbConfig) -> Result<Self, OpenError> {
        config.validate()?;
        let endpoint = config.endpoint.clone().unwrap_or_else(|| "AWS".to_owned());
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout)
                    .operation_attempt_timeout(config.operation_timeout)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts));
        if let Some(url) = &config.endpoint {
            loader = loader.endpoint_url(url);
        }
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(static_credentials) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &static_credentials.access_key_id,
                &static_credentials.secret_access_key,
                static_credentials.session_token.clone(),
                None,
                "angzarr-static",
            ));
        }
        // Resolving the region may ask instance metadata, which is not there off AWS.
        let budget = config.connect_timeout + config.operation_timeout;
        let sdk = tokio::time::timeout(budget, loader.load())
            .await
            .map_err(|_| OpenError::Connect {
                endpoint: endpoint.clone(),
                reason: format!("resolving the region and credentials took over {budget:?}"),
            })?;
        if sdk.region().is_none() {
            return Err(OpenError::NoRegion);
        }
        let client = Client::new(&sdk);
        schema::probe(&client, &config, &endpoint).await?;
        let tables = [
            TableSpec {
                name: &config.events_table,
                sort_key: keys::SEQ,
                sort_type: ScalarAttributeType::N,
                stream: config.create_with_stream,
            },
            TableSpec {
                name: &config.index_table,
                sort_key: keys::SK,
                sort_type: ScalarAttributeType::S,
                stream: false,
            },
        ];
        for table in &tables {
            schema::ensure(&client, &config, &endpoint, table).await?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                keys: Keys::new(&config.namespace),
                events_table: config.events_table.clone(),
                index_table: config.index_table.clone(),
                capabilities: StoreCapabilities::UNLIMITED
                    .with_max_batch_len(config.max_batch_len)
                    .with_max_event_bytes(config.max_event_bytes)
                    .with_max_snapshot_bytes(config.max_snapshot_bytes),
                max_attempts: config.max_attempts,
                registered: Mutex::new(HashSet::new()),
            }),
        })
    }
}

impl Inner {
    // ----- appends -----

    async fn append(&self, aggregate: &AggregateId, append: Append) -> Result<u64, Failure> {
        let expected = append.expected_sequence;
        // Never past u64::MAX + 32: a stream cannot be there, so such an append conflicts.
        let end = u128::from(expected) + append.events.len() as u128;
        if expected == 0 {
            self.register_domain(aggregate.domain()).await?;
        }
        let token = Uuid::new_v4().hyphenated().to_string();
        let end = self.commit(aggregate, &append, end, &token).await?;
        u64::try_from(end).map_err(|_| {
            Failure::Internal(format!("the stream of {aggregate} went past u64::MAX").into())
        })
    }

    /// Adds the domain to the registry before its first append (outside the transaction, so
    /// that first appends of one domain do not conflict on one item).
    async fn register_domain(&self, domain: &Domain) -> Result<(), Failure> {
        let known = |registered: &Mutex<HashSet<Domain>>| {
            registered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(domain)
        };
        if known(&self.registered) {
            return Ok(());
        }
        self.client
            .put_item()
            .table_name(&self.index_table)
            .item(keys::PK, s(self.keys.domains()))
            .item(keys::SK, s(domain.as_str()))
            .send()
            .await
            .map_err(Failure::of_read)?;
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(domain.clone());
        Ok(())
    }

    /// The items of one append: the head (conditional on the expected sequence), the events,
    /// and the index items. Refuses a transaction over DynamoDB's limits.
    fn transaction(
        &self,
        aggregate: &AggregateId,
        append: &Append,
        end: u128,
        token: &str,
    ) -> Result<Vec<TransactWriteItem>, Failure> {
        let expected = append.expected_sequence;
        let stream = self.keys.stream(aggregate);
        let mut puts: Vec<(&str, Item)> = Vec::with_capacity(2 * append.events.len() + 3);
        puts.push((
            &self.events_table,
            HashMap::from([
                (keys::PK.to_owned(), s(stream.clone())),
                (keys::SEQ.to_owned(), n(keys::HEAD_SEQ)),
                (keys::NEXT.to_owned(), n(end)),
                (keys::TOKEN.to_owned(), s(token)),
            ]),
        ));
        for (index, page) in append.events.iter().enumerate() {
            let mut item = HashMap::from([
                (keys::PK.to_owned(), s(stream.clone())),
                (keys::SEQ.to_owned(), n(page.sequence)),
                (keys::EVENT.to_owned(), b(page.encode_to_vec())),
            ]);
            if index == 0 {
                item.insert(keys::TOKEN.to_owned(), s(token));
            }
            puts.push((&self.events_table, item));
        }
        if expected == 0 {
            puts.push((
                &self.index_table,
                HashMap::from([
                    (keys::PK.to_owned(), s(self.keys.roots(aggregate.domain()))),
                    (
                        keys::SK.to_owned(),
                        s(aggregate.root().hyphenated().to_string()),
                    ),
                ]),
            ));
        }
        if let Some(request) = &append.request {
            let sk = keys::request_prefix(&request.id) + &keys::padded(expected);
            puts.push((
                &self.index_table,
                HashMap::from([
                    (keys::PK.to_owned(), s(self.keys.aggregate(aggregate))),
                    (keys::SK.to_owned(), s(sk)),
                    (keys::ID.to_owned(), s(request.id.as_str())),
                    (keys::DIGEST.to_owned(), b(request.digest.to_vec())),
                    (keys::FROM.to_owned(), n(expected)),
                    (keys::TO.to_owned(), n(end)),
                ]),
            ));
        }
        let correlations: BTreeSet<&str> = append
            .events
            .iter()
            .map(|page| page.correlation_id.as_str())
            .filter(|id| !id.is_empty())
            .collect();
        for id in correlations {
            puts.push((
                &self.index_table,
                HashMap::from([
                    (keys::PK.to_owned(), s(self.keys.correlation(id))),
                    (
                        keys::SK.to_owned(),
                        s(keys::correlation_sk(aggregate, expected)),
                    ),
                    (keys::DOMAIN.to_owned(), s(aggregate.domain().as_str())),
                    (
                        keys::ROOT.to_owned(),
                        s(aggregate.root().hyphenated().to_string()),
                    ),
                    (keys::FROM.to_owned(), n(expected)),
                    (keys::TO.to_owned(), n(end)),
                ]),
            ));
        }
        check_transaction_size(&puts)?;
        let mut items = Vec::with_capacity(puts.len());
        for (index, (table, item)) in puts.into_iter().enumerate() {
            let mut put = Put::builder().table_name(table).set_item(Some(item));
            if index == 0 {
                put = put
                    .expression_attribute_names("#next", keys::NEXT)
                    .return_values_on_condition_check_failure(
                        ReturnValuesOnConditionCheckFailure::AllOld,
                    );
                put = if expected == 0 {
                    put.condition_expression("attribute_not_exists(#next)")
                } else {
                    put.condition_expression("#next = :expected")
                        .expression_attribute_values(":expected", n(expected))
                };
            }
            let put = put
                .build()
                .map_err(|error| Failure::Internal(error.into()))?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        Ok(items)
    }

    /// Sends the transaction until it is answered, with one idempotency token for every
    /// attempt, and sorts the answer.
    async fn commit(
        &self,
        aggregate: &AggregateId,
        append: &Append,
        end: u128,
        token: &str,
    ) -> Result<u128, Failure> {
        let expected = append.expected_sequence;
        // Whether an attempt may have been applied: from then on, a conflict may be our own
        // earlier attempt, and a failure leaves the outcome unknown.
        let mut maybe_applied = false;
        let (mut attempts, mut conflicts) = (0u32, 0u32);
        loop {
            attempts += 1;
            // Built again for each attempt rather than copied for all: the first usually
            // succeeds, and a copy of every event's bytes would be wasted.
            let send = self.transaction(aggregate, append, end, token)?;
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(send))
                .client_request_token(token)
                .customize()
                .config_override(
                    aws_sdk_dynamodb::config::Builder::default()
                        .retry_config(RetryConfig::disabled()),
                )
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(end),
                Err(error) => error,
            };
            let attempt = match cancellation(&error) {
                Some(reasons) => {
                    let code = |index: usize| reasons.get(index).and_then(CancellationReason::code);
                    if code(0) == Some("ConditionalCheckFailed") {
                        let old = reasons.first().and_then(|reason| reason.item().cloned());
                        return self
                            .conflict(aggregate, expected, end, token, maybe_applied, old)
                            .await;
                    }
                    let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).collect();
                    let message: BoxError = described(&error).into();
                    if codes.contains(&"TransactionConflict") {
                        conflicts += 1;
                        if conflicts <= TRANSACTION_CONFLICT_RETRIES {
                            tracing::debug!(%aggregate, "transaction conflict, trying again");
                            pause(conflicts).await;
                            attempts -= 1;
                            continue;
                        }
                        Attempt::Throttled(message)
                    } else if codes
                        .iter()
                        .any(|code| code.contains("Throughput") || code.contains("Throttl"))
                    {
                        Attempt::Throttled(message)
                    } else {
                        Attempt::Failed(message)
                    }
                }
                None => sort(error),
            };
            let last = match attempt {
                Attempt::Failed(error) => {
                    return Err(if maybe_applied {
                        Failure::Unknown(error)
                    } else {
                        Failure::Internal(error)
                    });
                }
                Attempt::NotSent(error) | Attempt::Throttled(error) => error,
                Attempt::Unknown(error) => {
                    maybe_applied = true;
                    error
                }
            };
            if attempts >= self.max_attempts {
                return Err(if maybe_applied {
                    Failure::Unknown(last)
                } else {
                    Failure::Unavailable(last)
                });
            }
            tracing::debug!(%aggregate, attempts, error = %last, "append failed, trying again");
            pause(attempts).await;
        }
    }

    /// A cancelled transaction whose head condition failed: a conflict, unless it is our own
    /// earlier attempt, applied without us hearing of it.
    async fn conflict(
        &self,
        aggregate: &AggregateId,
        expected: u64,
        end: u128,
        token: &str,
        maybe_applied: bool,
        old: Option<Item>,
    ) -> Result<u128, Failure> {
        // Once an attempt may have landed, failing to tell whose write this is leaves the
        // outcome unknown: never "nothing written".
        let unknown = |failure: Failure| match failure {
            Failure::Unavailable(error) | Failure::Internal(error) if maybe_applied => {
                Failure::Unknown(error)
            }
            Failure::Corrupt(message) if maybe_applied => Failure::Unknown(message.into()),
            other => other,
        };
        let head = match old {
            Some(item) => head_of(&item),
            None => self.head(aggregate).await,
        }
        .map_err(unknown)?;
        let actual = head.as_ref().map_or(0, |head| head.next);
        if maybe_applied && let Some(head) = &head {
            if head.token.as_deref() == Some(token) {
                return Ok(end);
            }
            if head.next > expected
                && self
                    .first_event_token(aggregate, expected)
                    .await
                    .map_err(unknown)?
                    == Some(token.to_owned())
            {
                return Ok(end);
            }
        }
        Err(Failure::Conflict { expected, actual })
    }

    async fn first_event_token(
        &self,
        aggregate: &AggregateId,
        sequence: u64,
    ) -> Result<Option<String>, Failure> {
        let output = self
            .client
            .get_item()
            .table_name(&self.events_table)
            .key(keys::PK, s(self.keys.stream(aggregate)))
            .key(keys::SEQ, n(sequence))
            .consistent_read(true)
            .send()
            .await
            .map_err(Failure::of_read)?;
        Ok(output
            .item
            .as_ref()
            .and_then(|item| item.get(keys::TOKEN))
            .and_then(|token| token.as_s().ok())
            .cloned())
    }

    // ----- reads -----

    async fn head(&self, aggregate: &AggregateId) -> Result<Option<Head>, Failure> {
        let output = self
            .client
            .get_item()
            .table_name(&self.events_table)
            .key(keys::PK, s(self.keys.stream(aggregate)))
            .key(keys::SEQ, n(keys::HEAD_SEQ))
            .consistent_read(true)
            .send()
            .await
            .map_err(Failure::of_read)?;
        match output.item {
            Some(item) => head_of(&item),
            None => Ok(None),
        }
    }

    /// Every page of a query, strongly consistent.
    async fn query_all(&self, request: QueryFluentBuilder) -> Result<Vec<Item>, Failure> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let output = request
                .clone()
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(Failure::of_read)?;
            items.extend(output.items.unwrap_or_default());
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    fn events_query(&self, aggregate: &AggregateId) -> QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.events_table)
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_names("#seq", keys::SEQ)
            .expression_attribute_values(":pk", s(self.keys.stream(aggregate)))
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, Failure> {
        let from = range.from;
        let end = match range.to {
            Some(to) if to <= from => return Ok(Vec::new()),
            Some(to) => {
                // The head and the events at once: those below the head's next sequence are
                // wholly committed, so those found below it are kept. Found whole, that is
                // the answer; else (the query ran before an append the head shows was
                // complete) they are read again, below.
                let (head, mut pages) =
                    try_join(self.head(aggregate), self.events_in(aggregate, from, to)).await?;
                let end = to.min(head.map_or(0, |head| head.next));
                pages.retain(|page| page.sequence < end);
                if is_whole(&pages, from, end) {
                    return Ok(pages);
                }
                end
            }
            None => {
                // One query, descending: the head (above every sequence) is read first, then
                // the events; those from its next sequence on belong to appends not yet
                // committed when the head was read, and are left out.
                let request = self
                    .events_query(aggregate)
                    .key_condition_expression("#pk = :pk AND #seq >= :from")
                    .expression_attribute_values(":from", n(from))
                    .scan_index_forward(false);
                let mut items = self.query_all(request).await?.into_iter();
                let next = match items.next() {
                    Some(item) if is_head(&item) => head_of(&item)?.map_or(0, |head| head.next),
                    // No head: the stream has no committed append.
                    _ => return Ok(Vec::new()),
                };
                let mut pages = items
                    .map(|item| event_of(&item))
                    .collect::<Result<Vec<_>, _>>()?;
                pages.retain(|page| page.sequence < next);
                pages.reverse();
                if is_whole(&pages, from, next) {
                    return Ok(pages);
                }
                next
            }
        };
        self.events_between(aggregate, from, end).await
    }

    /// The events found in `from..end` (not empty), ascending: those of committed appends,
    /// and perhaps some of one being applied.
    async fn events_in(
        &self,
        aggregate: &AggregateId,
        from: u64,
        end: u64,
    ) -> Result<Vec<EventPage>, Failure> {
        let request = self
            .events_query(aggregate)
            .key_condition_expression("#pk = :pk AND #seq BETWEEN :from AND :last")
            .expression_attribute_values(":from", n(from))
            .expression_attribute_values(":last", n(end - 1));
        self.query_all(request)
            .await?
            .iter()
            .map(event_of)
            .collect()
    }

    /// The events `from..end` of a committed part of the stream: all must be there. One not
    /// visible yet belongs to a transaction still being applied: read again, briefly.
    async fn events_between(
        &self,
        aggregate: &AggregateId,
        from: u64,
        end: u64,
    ) -> Result<Vec<EventPage>, Failure> {
        if end <= from {
            return Ok(Vec::new());
        }
        for retry in 0..=INCOMPLETE_READ_RETRIES {
            let pages = self.events_in(aggregate, from, end).await?;
            if is_whole(&pages, from, end) {
                return Ok(pages);
            }
            pause(retry + 1).await;
        }
        Err(Failure::Internal(
            format!(
                "events {from}..{end} of {aggregate} are committed (their head or index says \
                 so) but some stayed invisible"
            )
            .into(),
        ))
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, Failure> {
        let mut roots = Vec::new();
        let mut start = None;
        while roots.len() < limit {
            let page = i32::try_from(limit - roots.len()).unwrap_or(i32::MAX);
            let mut request = self
                .client
                .query()
                .table_name(&self.index_table)
                .expression_attribute_names("#pk", keys::PK)
                .expression_attribute_values(":pk", s(self.keys.roots(domain)))
                .consistent_read(true)
                .limit(page)
                .set_exclusive_start_key(start);
            request = match after {
                Some(after) => request
                    .key_condition_expression("#pk = :pk AND #sk > :after")
                    .expression_attribute_names("#sk", keys::SK)
                    .expression_attribute_values(":after", s(after.hyphenated().to_string())),
                None => request.key_condition_expression("#pk = :pk"),
            };
            let output = request.send().await.map_err(Failure::of_read)?;
            for item in output.items.unwrap_or_default() {
                let key = string(&item, keys::SK)?;
                roots.push(
                    Uuid::try_parse(key)
                        .map_err(|_| Failure::corrupt(format!("a root entry {key:?}")))?,
                );
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        roots.truncate(limit);
        Ok(roots)
    }

    async fn has_root(&self, domain: &Domain) -> Result<bool, Failure> {
        let output = self
            .client
            .query()
            .table_name(&self.index_table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_values(":pk", s(self.keys.roots(domain)))
            .consistent_read(true)
            .limit(1)
            .send()
            .await
            .map_err(Failure::of_read)?;
        Ok(!output.items.unwrap_or_default().is_empty())
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, Failure> {
        let request = self
            .client
            .query()
            .table_name(&self.index_table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_values(":pk", s(self.keys.domains()));
        let mut registered = Vec::new();
        for item in self.query_all(request).await? {
            let name = string(&item, keys::SK)?;
            registered.push(
                Domain::new(name).map_err(|_| Failure::corrupt(format!("a domain {name:?}")))?,
            );
        }
        // A domain is registered before its first append, which may have failed: it counts
        // once one of its roots has an event.
        let live = try_join_all(registered.iter().map(|domain| self.has_root(domain))).await?;
        let mut domains: Vec<Domain> = registered
            .into_iter()
            .zip(live)
            .filter_map(|(domain, live)| live.then_some(domain))
            .collect();
        domains.sort();
        domains.dedup();
        Ok(domains)
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, Failure> {
        if correlation_id.is_empty() {
            return Ok(Vec::new());
        }
        let request = self
            .client
            .query()
            .table_name(&self.index_table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_values(":pk", s(self.keys.correlation(correlation_id)));
        let mut appends = Vec::new();
        for item in self.query_all(request).await? {
            let (domain, root) = (string(&item, keys::DOMAIN)?, string(&item, keys::ROOT)?);
            let aggregate = AggregateId::parse(domain, root).map_err(|_| {
                Failure::corrupt(format!("a correlation entry for {domain:?}/{root:?}"))
            })?;
            appends.push((
                aggregate,
                number(&item, keys::FROM)?,
                number(&item, keys::TO)?,
            ));
        }
        let read = appends
            .iter()
            .map(|(aggregate, from, to)| self.events_between(aggregate, *from, *to));
        let batches = try_join_all(read).await?;
        let mut groups: BTreeMap<AggregateId, Vec<EventPage>> = BTreeMap::new();
        for ((aggregate, _, _), pages) in appends.into_iter().zip(batches) {
            // The hash of the id is the key: the events themselves hold the id to compare.
            let matching = pages
                .into_iter()
                .filter(|page| page.correlation_id == correlation_id);
            groups.entry(aggregate).or_default().extend(matching);
        }
        Ok(groups
            .into_iter()
            .filter(|(_, pages)| !pages.is_empty())
            .map(|(aggregate, mut pages)| {
                pages.sort_by_key(|page| page.sequence);
                pages.dedup_by_key(|page| page.sequence);
                AggregateEvents { aggregate, pages }
            })
            .collect())
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, Failure> {
        let request = self
            .client
            .query()
            .table_name(&self.index_table)
            .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_names("#sk", keys::SK)
            .expression_attribute_values(":pk", s(self.keys.aggregate(aggregate)))
            .expression_attribute_values(":prefix", s(keys::request_prefix(request_id)));
        let mut appends = Vec::new();
        for item in self.query_all(request).await? {
            // The hash of the id is the key: compare the id itself.
            if string(&item, keys::ID)? != request_id {
                continue;
            }
            appends.push((
                number(&item, keys::FROM)?,
                number(&item, keys::TO)?,
                bytes(&item, keys::DIGEST)?.to_vec(),
            ));
        }
        // The sort key ends with the first sequence: ascending, so the first is the first.
        appends.sort_by_key(|(from, _, _)| *from);
        let Some((_, _, first_digest)) = appends.first() else {
            return Ok(None);
        };
        let digest = CommandDigest::try_from(first_digest.as_slice())
            .map_err(|_| Failure::corrupt(format!("a request digest of {aggregate}")))?;
        let read = appends
            .iter()
            .map(|(from, to, _)| self.events_between(aggregate, *from, *to));
        let pages = try_join_all(read).await?.concat();
        Ok(Some(RequestRecord {
            digest: Some(digest),
            pages,
        }))
    }

    // ----- snapshots -----

    async fn get_snapshot(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, Failure> {
        let output = self
            .client
            .get_item()
            .table_name(&self.index_table)
            .key(keys::PK, s(self.keys.aggregate(aggregate)))
            .key(keys::SK, s(keys::SNAPSHOT_SK))
            .consistent_read(true)
            .send()
            .await
            .map_err(Failure::of_read)?;
        let Some(item) = output.item else {
            return Ok(None);
        };
        let encoded = bytes(&item, keys::SNAPSHOT)?;
        Snapshot::decode(encoded)
            .map(Some)
            .map_err(|error| Failure::corrupt(format!("the snapshot of {aggregate}: {error}")))
    }

    async fn put_snapshot(
        &self,
        aggregate: &AggregateId,
        snapshot: &Snapshot,
    ) -> Result<(), Failure> {
        self.client
            .put_item()
            .table_name(&self.index_table)
            .item(keys::PK, s(self.keys.aggregate(aggregate)))
            .item(keys::SK, s(keys::SNAPSHOT_SK))
            .item(keys::SNAPSHOT, b(snapshot.encode_to_vec()))
            .send()
            .await
            .map_err(Failure::of_read)?;
        Ok(())
    }

    async fn delete_snapshot(&self, aggregate: &AggregateId) -> Result<(), Failure> {
        self.client
            .delete_item()
            .table_name(&self.index_table)
            .key(keys::PK, s(self.keys.aggregate(aggregate)))
            .key(keys::SK, s(keys::SNAPSHOT_SK))
            .send()
            .await
            .map_err(Failure::of_read)?;
        Ok(())
    }
}

/// The reasons of a cancelled transaction, if that is what `error` is.
fn cancellation<R>(error: &SdkError<TransactWriteItemsError, R>) -> Option<&[CancellationReason]> {
    match error {
        SdkError::ServiceError(service) => match service.err() {
            TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                Some(cancelled.cancellation_reasons())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Refuses a transaction DynamoDB would refuse: over 100 items, an item over 400 KB, over
/// 4 MB in all. The declared limits keep appends within these; only ids far longer than the
/// port allows can break them.
fn check_transaction_size(puts: &[(&str, Item)]) -> Result<(), Failure> {
    if puts.len() > keys::MAX_TRANSACTION_ITEMS {
        return Err(Failure::Invalid(format!(
            "the append needs {} items, over DynamoDB's {} per transaction",
            puts.len(),
            keys::MAX_TRANSACTION_ITEMS
        )));
    }
    let mut total = 0;
    for (_, item) in puts {
        let size = item_size(item);
        if size > keys::MAX_ITEM_BYTES {
            return Err(Failure::Invalid(format!(
                "an item of the append would be {size} bytes, over DynamoDB's {} (is a \
                 request id over 256 bytes?)",
                keys::MAX_ITEM_BYTES
            )));
        }
        total += size;
    }
    if total > keys::MAX_TRANSACTION_BYTES {
        return Err(Failure::Invalid(format!(
            "the append would write {total} bytes, over DynamoDB's {} per transaction (is a \
             request id over 256 bytes?)",
            keys::MAX_TRANSACTION_BYTES
        )));
    }
    Ok(())
}

/// An item's size as DynamoDB counts it (attribute names and values), rounded up.
fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(text) => text.len(),
                    AttributeValue::N(number) => number.len() / 2 + 2,
                    AttributeValue::B(blob) => blob.as_ref().len(),
                    _ => 64,
                }
        })
        .sum()
}

/// Whether `pages` are exactly the sequences `from..end`.
fn is_whole(pages: &[EventPage], from: u64, end: u64) -> bool {
    end.checked_sub(from) == Some(pages.len() as u64)
        && (from..end)
            .zip(pages)
            .all(|(sequence, page)| page.sequence == sequence)
}

fn is_head(item: &Item) -> bool {
    item.get(keys::SEQ)
        .and_then(|seq| seq.as_n().ok())
        .is_some_and(|seq| seq == keys::HEAD_SEQ)
}

fn head_of(item: &Item) -> Result<Option<Head>, Failure> {
    if item.is_empty() {
        return Ok(None);
    }
    Ok(Some(Head {
        next: number(item, keys::NEXT)?,
        token: item
            .get(keys::TOKEN)
            .and_then(|token| token.as_s().ok())
            .cloned(),
    }))
}

fn event_of(item: &Item) -> Result<EventPage, Failure> {
    let sequence: u64 = number(item, keys::SEQ)?;
    let page = angzarr_ports::decode_event_page(bytes(item, keys::EVENT)?)
        .map_err(|error| Failure::corrupt(format!("the event at {sequence}: {error}")))?;
    if page.sequence != sequence {
        return Err(Failure::corrupt(format!(
            "the event stored at {sequence} says it is {}",
            page.sequence
        )));
    }
    Ok(page)
}

fn string<'a>(item: &'a Item, name: &str) -> Result<&'a str, Failure> {
    item.get(name)
        .and_then(|value| value.as_s().ok())
        .map(String::as_str)
        .ok_or_else(|| Failure::corrupt(format!("an item without the string {name:?}")))
}

fn number(item: &Item, name: &str) -> Result<u64, Failure> {
    item.get(name)
        .and_then(|value| value.as_n().ok())
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| Failure::corrupt(format!("an item without the number {name:?}")))
}

fn bytes<'a>(item: &'a Item, name: &str) -> Result<&'a [u8], Failure> {
    item.get(name)
        .and_then(|value| value.as_b().ok())
        .map(Blob::as_ref)
        .ok_or_else(|| Failure::corrupt(format!("an item without the bytes {name:?}")))
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl std::fmt::Display) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn b(value: Vec<u8>) -> AttributeValue {
    AttributeValue::B(Blob::new(value))
}

/// Waits before trying again: exponential from 10 ms, capped at 640 ms, with jitter so that
/// racing writers spread out.
async fn pause(attempt: u32) {
    let base = 10u64 << attempt.min(6);
    let jitter = (Uuid::new_v4().as_u128() % u128::from(base)) as u64;
    tokio::time::sleep(Duration::from_millis(base / 2 + jitter / 2)).await;
}

#[async_trait]
impl EventStore for DynamoDbStore {
    fn capabilities(&self) -> StoreCapabilities {
        self.inner.capabilities.clone()
    }

    async fn append(
        &self,
        aggregate: &AggregateId,
        append: Append,
    ) -> Result<u64, EventStoreError> {
        validate_append(&append, &self.inner.capabilities)?;
        Ok(self.inner.append(aggregate, append).await?)
    }

    async fn read(
        &self,
        aggregate: &AggregateId,
        range: SequenceRange,
    ) -> Result<Vec<EventPage>, EventStoreError> {
        Ok(self.inner.read(aggregate, range).await?)
    }

    async fn next_sequence(&self, aggregate: &AggregateId) -> Result<u64, EventStoreError> {
        Ok(self
            .inner
            .head(aggregate)
            .await?
            .map_or(0, |head| head.next))
    }

    async fn list_roots(
        &self,
        domain: &Domain,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Uuid>, EventStoreError> {
        Ok(self.inner.list_roots(domain, after, limit).await?)
    }

    async fn list_domains(&self) -> Result<Vec<Domain>, EventStoreError> {
        Ok(self.inner.list_domains().await?)
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Vec<AggregateEvents>, EventStoreError> {
        Ok(self.inner.find_by_correlation(correlation_id).await?)
    }

    async fn find_by_request(
        &self,
        aggregate: &AggregateId,
        request_id: &str,
    ) -> Result<Option<RequestRecord>, EventStoreError> {
        Ok(self.inner.find_by_request(aggregate, request_id).await?)
    }
}

#[async_trait]
impl SnapshotStore for DynamoDbStore {
    async fn get(&self, aggregate: &AggregateId) -> Result<Option<Snapshot>, SnapshotStoreError> {
        Ok(self.inner.get_snapshot(aggregate).await?)
    }

    async fn put(
        &self,
        aggregate: &AggregateId,
        snapshot: Snapshot,
    ) -> Result<(), SnapshotStoreError> {
        self.inner.capabilities.check_snapshot(&snapshot)?;
        Ok(self.inner.put_snapshot(aggregate, &snapshot).await?)
    }

    async fn delete(&self, aggregate: &AggregateId) -> Result<(), SnapshotStoreError> {
        Ok(self.inner.delete_snapshot(aggregate).await?)
    }
}
