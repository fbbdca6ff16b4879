//! How identities and sequences become SQLite values and back, in one place.
//!
//! Roots are stored as lowercase hyphenated UUID text: the hex digits `0-9` sort before `a-f`
//! in ASCII and the hyphens sit at the same places in every root, so SQLite's byte-wise text
//! order (the default `BINARY` collation) is the order of [`Uuid`]'s bytes, which is the order
//! the ports promise for `list_roots`. Domains are ASCII ([`Domain`] validates them), so their
//! byte-wise order is [`Domain`]'s `Ord`.

use angzarr_ports::{AggregateId, Domain, Uuid};

use crate::error::Failure;

/// How an aggregate is keyed in both tables: the `domain` and `root` columns.
#[derive(Debug)]
pub(crate) struct AggregateKey<'a> {
    /// The `domain` column.
    pub(crate) domain: &'a str,
    /// The `root` column.
    pub(crate) root: String,
}

/// The key of `aggregate`.
pub(crate) fn aggregate(aggregate: &AggregateId) -> AggregateKey<'_> {
    AggregateKey {
        domain: aggregate.domain().as_str(),
        root: root(aggregate.root()),
    }
}

/// The text of `root` in the `root` columns.
pub(crate) fn root(root: Uuid) -> String {
    root.hyphenated().to_string()
}

/// A stored `root`.
pub(crate) fn parse_root(text: &str) -> Result<Uuid, Failure> {
    Uuid::try_parse(text)
        .map_err(|_| Failure::corrupt(format_args!("stored root {text:?} is not a UUID")))
}

/// A stored `domain`.
pub(crate) fn parse_domain(text: &str) -> Result<Domain, Failure> {
    Domain::new(text).map_err(Failure::corrupt)
}

/// An event sequence as an SQLite `INTEGER`, which is signed: `None` beyond `i64::MAX`.
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
    sequence.cast_signed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_text_order_is_uuid_order() {
        let mut roots: Vec<Uuid> = (0..2000).map(|_| Uuid::new_v4()).collect();
        // Edge bytes: every nibble boundary between digits and letters.
        roots.extend([
            Uuid::from_u128(0x9),
            Uuid::from_u128(0xa),
            Uuid::from_u128(0x9f << 64),
            Uuid::from_u128(0xa0 << 64),
            Uuid::max(),
        ]);
        let mut by_text = roots.clone();
        by_text.sort_by_key(|uuid| root(*uuid));
        roots.sort();
        assert_eq!(by_text, roots);
        assert!(
            by_text
                .iter()
                .all(|uuid| parse_root(&root(*uuid)).ok() == Some(*uuid))
        );
        assert_eq!(root(Uuid::max()), "ffffffff-ffff-ffff-ffff-ffffffffffff");
    }

    #[test]
    fn sequences_beyond_sqlite_integers_are_refused() {
        assert_eq!(sequence(i64::MAX as u64), Some(i64::MAX));
        assert_eq!(sequence(i64::MAX as u64 + 1), None);
        assert!(parse_sequence(-1).is_err());
        assert_eq!(snapshot_sequence(u64::MAX), -1);
    }
}
