//! How identities become key columns, in one place.

use angzarr_ports::{AggregateId, Uuid};
use sha2::{Digest, Sha256};

/// The longest namespace.
pub(crate) const MAX_NAMESPACE_LEN: usize = 64;

/// A namespace is 1 to 64 characters of `[A-Za-z0-9_.-]`: it is a bound parameter, never
/// spliced into SQL, but it is shown in logs and typed by operators.
pub(crate) fn valid_namespace(namespace: &str) -> bool {
    angzarr_ports::is_key_name(namespace, 1..=MAX_NAMESPACE_LEN)
}

/// A root as stored: its 16 bytes, which `BYTES` compares in the order of [`Uuid`].
pub(crate) fn root(aggregate: &AggregateId) -> Vec<u8> {
    aggregate.root().as_bytes().to_vec()
}

/// A stored root back as a UUID; `None` if it is not 16 bytes.
pub(crate) fn parse_root(bytes: &[u8]) -> Option<Uuid> {
    Uuid::from_slice(bytes).ok()
}

/// A sequence as an `INT64`; `None` beyond `i64::MAX`, where no event is ever stored.
pub(crate) fn sequence(sequence: u64) -> Option<i64> {
    i64::try_from(sequence).ok()
}

/// The key an id (a correlation or request id, up to anything a string holds) has in an
/// index: its SHA-256, 32 bytes whatever the id's length or characters, so no id can exceed
/// Spanner's key size or collide with another through escaping.
pub(crate) fn id_hash(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_beyond_i64_have_no_column_value() {
        assert_eq!(sequence(0), Some(0));
        assert_eq!(sequence(i64::MAX as u64), Some(i64::MAX));
        assert_eq!(sequence(1 << 63), None);
        assert_eq!(sequence(u64::MAX), None);
    }

    #[test]
    fn roots_keep_uuid_order_and_ids_hash_to_32_bytes() {
        let low = Uuid::from_u128(1);
        let high = Uuid::from_u128(u128::MAX - 1);
        assert!(low.as_bytes() < high.as_bytes());
        assert_eq!(parse_root(high.as_bytes()), Some(high));
        assert_eq!(parse_root(&[1, 2]), None);
        assert_eq!(id_hash("").len(), 32);
        assert_ne!(id_hash("a"), id_hash("A"));
        assert!(valid_namespace("ns_1.a-b"));
        assert!(!valid_namespace("a b"));
    }
}
