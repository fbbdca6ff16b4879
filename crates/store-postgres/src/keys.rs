//! How identities, ids and sequences become PostgreSQL values and back, in one place.
//!
//! - Roots are `uuid` values, which PostgreSQL compares as 16 bytes in order: the order of
//!   [`Uuid`](angzarr_ports::Uuid)'s bytes, the one the ports promise for `list_roots`.
//! - Domains are `text COLLATE "C"`: compared byte by byte, and [`Domain`] validates them to
//!   ASCII, so their order is [`Domain`]'s `Ord`, in any database encoding.
//! - Correlation and request ids are `bytea`: their UTF-8 bytes, compared byte by byte. A
//!   `text` value cannot hold U+0000, which the ports allow in an id.
//! - Sequences are `bigint`, which is signed: values beyond `i64::MAX` never reach the server.

use angzarr_ports::Domain;

use crate::error::Failure;

/// An event sequence as a `bigint`: `None` beyond `i64::MAX`.
pub(crate) fn sequence(sequence: u64) -> Option<i64> {
    i64::try_from(sequence).ok()
}

/// A stored event sequence.
pub(crate) fn parse_sequence(stored: i64) -> Result<u64, Failure> {
    u64::try_from(stored)
        .map_err(|_| Failure::corrupt(format_args!("stored sequence {stored} is negative")))
}

/// A snapshot's sequence for the informational `snapshots.sequence` column. The encoded
/// snapshot is authoritative and the port accepts any `u64`, so values beyond `i64::MAX` are
/// kept bit for bit and show as negative numbers.
pub(crate) fn snapshot_sequence(sequence: u64) -> i64 {
    i64::from_ne_bytes(sequence.to_ne_bytes())
}

/// A stored `domain`.
pub(crate) fn parse_domain(text: &str) -> Result<Domain, Failure> {
    Domain::new(text).map_err(Failure::corrupt)
}

/// `name` as a quoted SQL identifier, for the schema that every statement names.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_beyond_bigint_are_refused_and_snapshot_sequences_keep_their_bits() {
        assert_eq!(sequence(i64::MAX as u64), Some(i64::MAX));
        assert_eq!(sequence(i64::MAX as u64 + 1), None);
        assert_eq!(sequence(u64::MAX), None);
        assert!(parse_sequence(-1).is_err());
        assert_eq!(parse_sequence(7).ok(), Some(7));
        assert_eq!(snapshot_sequence(u64::MAX), -1);
        assert_eq!(snapshot_sequence(1 << 63), i64::MIN);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_identifier("ns_1"), "\"ns_1\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
    }
}
