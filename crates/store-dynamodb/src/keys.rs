//! The key layout, and DynamoDB's size limits.
//!
//! Two tables. `N` is the namespace, `D` the domain, `R` the root (lowercase hyphenated UUID,
//! whose string order is the UUID order), `h(x)` the lowercase hex SHA-256 of `x`, `s020` a
//! sequence zero-padded to 20 digits:
//!
//! | table | `pk` | sort key | item |
//! |---|---|---|---|
//! | events (`seq`: N) | `N#D#R` | `seq` = the sequence | one event: `e` = the encoded `EventPage` |
//! | events | `N#D#R` | `seq` = 2^64 ([`HEAD_SEQ`]) | the stream head: `next`, `tok` |
//! | index (`sk`: S) | `N#a#D#R` | `snapshot` | the snapshot: `s` = the encoded `Snapshot` |
//! | index | `N#a#D#R` | `req#h(id)#s020` | one append with request id `id`: `id`, `dg`, `from`, `to` |
//! | index | `N#c#h(id)` | `D#R#s020` | one append with events of correlation id `id`: `d`, `r`, `from`, `to` |
//! | index | `N#r#D` | `R` | a root of the domain with at least one event |
//! | index | `N#d` | `D` | a domain registered by a first append (listed if it has a root) |
//!
//! Domains, namespaces and tags never contain `#`, and each index partition starts with the
//! namespace then a one-letter tag, so no two families can meet. Request and correlation ids
//! (arbitrary strings) only enter keys hashed; the raw id is kept (`id`) or found in the
//! events themselves, and compared.

use std::fmt::Write as _;

use angzarr_ports::{AggregateId, Domain};
use sha2::{Digest, Sha256};

/// The events table's partition key, and the index table's.
pub(crate) const PK: &str = "pk";
/// The events table's sort key (a number).
pub(crate) const SEQ: &str = "seq";
/// The index table's sort key (a string).
pub(crate) const SK: &str = "sk";
/// An event item's encoded `EventPage`.
pub(crate) const EVENT: &str = "e";
/// The head's next sequence.
pub(crate) const NEXT: &str = "next";
/// The token of the append that wrote a head or a first event.
pub(crate) const TOKEN: &str = "tok";
/// A request item's raw request id.
pub(crate) const ID: &str = "id";
/// A request item's command digest.
pub(crate) const DIGEST: &str = "dg";
/// An index item's first sequence.
pub(crate) const FROM: &str = "from";
/// An index item's end sequence (excluded).
pub(crate) const TO: &str = "to";
/// A correlation item's domain.
pub(crate) const DOMAIN: &str = "d";
/// A correlation item's root.
pub(crate) const ROOT: &str = "r";
/// A snapshot item's encoded `Snapshot`.
pub(crate) const SNAPSHOT: &str = "s";
/// The sort key of the snapshot item.
pub(crate) const SNAPSHOT_SK: &str = "snapshot";

/// The head's sort key: 2^64, above every sequence, so that a descending query of a stream
/// reads the head before any event.
pub(crate) const HEAD_SEQ: &str = "18446744073709551616";

/// DynamoDB's largest item: 400 KB, counted as 400 KiB.
pub(crate) const MAX_ITEM_BYTES: usize = 400 * 1024;
/// DynamoDB's largest transaction: 4 MB of items, counted as 4,000,000 bytes to be safe
/// whichever megabyte AWS means.
pub(crate) const MAX_TRANSACTION_BYTES: usize = 4_000_000;
/// DynamoDB's most items in one transaction.
pub(crate) const MAX_TRANSACTION_ITEMS: usize = 100;
/// The most an event item holds besides its encoded event: key (a 64-character namespace and
/// domain, a UUID), sequence, token, attribute names.
pub(crate) const EVENT_ITEM_OVERHEAD: usize = 256;
/// The most a head, root, request (with an id of up to 256 bytes) or correlation item holds.
pub(crate) const INDEX_ITEM_BYTES: usize = 1024;

/// Whether `max_batch_len` events of `max_event_bytes` each always fit one transaction, with
/// their head, root, request and correlation items (one per event, at worst).
pub(crate) fn batch_fits(max_batch_len: usize, max_event_bytes: usize) -> Result<(), String> {
    if max_batch_len == 0 {
        return Err("max_batch_len must be at least 1".into());
    }
    let items = 2 * max_batch_len + 3;
    if items > MAX_TRANSACTION_ITEMS {
        return Err(format!(
            "max_batch_len {max_batch_len}: an append writes up to 2n + 3 items, and a \
             DynamoDB transaction holds {MAX_TRANSACTION_ITEMS}: at most 48"
        ));
    }
    if max_event_bytes + EVENT_ITEM_OVERHEAD > MAX_ITEM_BYTES {
        return Err(format!(
            "max_event_bytes {max_event_bytes}: an event item holds at most {} bytes of event",
            MAX_ITEM_BYTES - EVENT_ITEM_OVERHEAD
        ));
    }
    let bytes = max_batch_len * (max_event_bytes + EVENT_ITEM_OVERHEAD + INDEX_ITEM_BYTES)
        + 3 * INDEX_ITEM_BYTES;
    if bytes > MAX_TRANSACTION_BYTES {
        return Err(format!(
            "{max_batch_len} events of {max_event_bytes} bytes make a transaction of up to \
             {bytes} bytes, over DynamoDB's 4 MB: lower max_batch_len or max_event_bytes"
        ));
    }
    Ok(())
}

/// DynamoDB's table name rule: 3 to 255 characters of `[A-Za-z0-9_.-]`.
pub(crate) fn valid_table_name(name: &str) -> bool {
    angzarr_ports::is_key_name(name, 3..=255)
}

/// 1 to 64 characters of `[A-Za-z0-9_.-]`: no `#`, the separator.
pub(crate) fn valid_namespace(namespace: &str) -> bool {
    angzarr_ports::is_key_name(namespace, 1..=crate::DynamoDbConfig::MAX_NAMESPACE_LEN)
}

/// The lowercase hex SHA-256 of `id`: how request and correlation ids enter keys.
pub(crate) fn hashed(id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// A sequence as a sort-key component that sorts as a number.
pub(crate) fn padded(sequence: u64) -> String {
    format!("{sequence:020}")
}

/// The keys of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    namespace: String,
}

impl Keys {
    pub(crate) fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The partition of a stream's events and head, in the events table.
    pub(crate) fn stream(&self, aggregate: &AggregateId) -> String {
        format!(
            "{}#{}#{}",
            self.namespace,
            aggregate.domain(),
            aggregate.root().hyphenated()
        )
    }

    /// The partition of an aggregate's snapshot and request items, in the index table.
    pub(crate) fn aggregate(&self, aggregate: &AggregateId) -> String {
        format!(
            "{}#a#{}#{}",
            self.namespace,
            aggregate.domain(),
            aggregate.root().hyphenated()
        )
    }

    /// The partition of a domain's roots.
    pub(crate) fn roots(&self, domain: &Domain) -> String {
        format!("{}#r#{domain}", self.namespace)
    }

    /// The partition of the domain registry.
    pub(crate) fn domains(&self) -> String {
        format!("{}#d", self.namespace)
    }

    /// The partition of a correlation id's appends.
    pub(crate) fn correlation(&self, correlation_id: &str) -> String {
        format!("{}#c#{}", self.namespace, hashed(correlation_id))
    }
}

/// The sort key prefix of a request id's items in its aggregate's partition.
pub(crate) fn request_prefix(request_id: &str) -> String {
    format!("req#{}#", hashed(request_id))
}

/// The sort key of a correlation item.
pub(crate) fn correlation_sk(aggregate: &AggregateId, from: u64) -> String {
    format!(
        "{}#{}#{}",
        aggregate.domain(),
        aggregate.root().hyphenated(),
        padded(from)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use angzarr_ports::Uuid;

    #[test]
    fn roots_sort_as_uuids_and_sequences_as_numbers() {
        let mut roots: Vec<Uuid> = [1u128, 2, 0xff, 1 << 64, u128::MAX, 0xabc << 100]
            .map(Uuid::from_u128)
            .to_vec();
        let mut keys: Vec<String> = roots.iter().map(|r| r.hyphenated().to_string()).collect();
        roots.sort();
        keys.sort();
        let parsed: Vec<Uuid> = keys.iter().map(|k| Uuid::parse_str(k).unwrap()).collect();
        assert_eq!(parsed, roots);
        assert!(padded(9) < padded(10) && padded(10) < padded(u64::MAX));
        assert_eq!(padded(u64::MAX).len(), 20);
    }

    #[test]
    fn ids_are_hashed_into_keys() {
        let keys = Keys::new("ns");
        for id in ["a#b", "A#B", "", &"é".repeat(200)] {
            let partition = keys.correlation(id);
            assert_eq!(partition.len(), "ns#c#".len() + 64, "{id:?}");
        }
        assert_ne!(keys.correlation("c1"), keys.correlation("C1"));
        assert_ne!(request_prefix("a"), request_prefix("a "));
    }

    #[test]
    fn table_names_follow_dynamodb_rules() {
        assert!(valid_table_name("abc") && valid_table_name("a.b-c_D9"));
        assert!(!valid_table_name("ab") && !valid_table_name("a/b") && !valid_table_name("a b"));
        assert!(valid_table_name(&"t".repeat(255)) && !valid_table_name(&"t".repeat(256)));
    }

    #[test]
    fn the_default_limits_fit_a_transaction() {
        let config = crate::DynamoDbConfig::new();
        assert_eq!(
            batch_fits(config.max_batch_len, config.max_event_bytes),
            Ok(())
        );
        assert!(batch_fits(config.max_batch_len + 1, config.max_event_bytes).is_err());
    }
}
