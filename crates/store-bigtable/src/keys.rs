//! Row keys, column families and qualifiers, and the values of the index cells.
//!
//! `N` is the namespace, `D` the domain, `R` the root as 32 lowercase hexadecimal digits (byte
//! order = UUID order), `H(x)` the SHA-256 of `x` as 64 lowercase hexadecimal digits:
//!
//! | row key | what |
//! |---|---|
//! | `N#e#D#R` | the stream: events, head, request and correlation index |
//! | `N#s#D#R` | the snapshot |
//! | `N#c#H(id)#D#R` | "`D/R` may have events with correlation id `id`" (an intent) |
//!
//! Namespaces and domains are `[A-Za-z0-9_.-]`, roots and hashes hexadecimal: no part holds a
//! `#`, so every key has one parse, and `#` (0x23) sorts before every character a part may
//! hold, so keys sort as (domain, root) and a domain's rows are one contiguous range.

use angzarr_ports::{AggregateId, CommandDigest, Domain, Uuid};
use sha2::{Digest, Sha256};

use crate::error::Failure;

/// The family of the events: qualifier = sequence (8 bytes, big-endian), value = the encoded
/// `EventPage`.
pub(crate) const EVENTS: &str = "e";
/// The family of the head: one cell, [`NEXT`].
pub(crate) const HEAD: &str = "h";
/// The qualifier of the head cell: the stream's next sequence (8 bytes, big-endian).
pub(crate) const NEXT: &[u8] = b"n";
/// The family of the request index: qualifier = SHA-256 of the id ++ first sequence, value =
/// digest ++ end sequence ++ the id.
pub(crate) const REQUESTS: &str = "r";
/// The family of the correlation index (in the stream row): qualifier = SHA-256 of the id ++
/// first sequence of a run of events of one append carrying it, value = end sequence ++ the
/// id. In an intent row: one cell [`INTENT`].
pub(crate) const CORRELATIONS: &str = "c";
/// The qualifier of an intent row's only cell.
pub(crate) const INTENT: &[u8] = b"i";
/// The family of the snapshot row: one cell, [`SNAPSHOT`].
pub(crate) const SNAPSHOTS: &str = "s";
/// The qualifier of the snapshot cell: the encoded `Snapshot`.
pub(crate) const SNAPSHOT: &[u8] = b"v";
/// Every column family of the table.
pub(crate) const FAMILIES: [&str; 5] = [EVENTS, HEAD, REQUESTS, CORRELATIONS, SNAPSHOTS];

/// The separator between key parts.
const SEPARATOR: u8 = b'#';
/// The byte right after [`SEPARATOR`]: `prefix ++ AFTER` bounds every key starting `prefix#`.
const AFTER: u8 = SEPARATOR + 1;

/// Whether `name` is 1 to `max` characters of `[A-Za-z0-9_.-]`.
pub(crate) fn valid_name(name: &str, max: usize) -> bool {
    angzarr_ports::is_key_name(name, 1..=max)
}

/// The SHA-256 of an id.
pub(crate) fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
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

    /// The row of `aggregate`'s stream.
    pub(crate) fn stream(&self, aggregate: &AggregateId) -> Vec<u8> {
        format!(
            "{}#e#{}#{}",
            self.namespace,
            aggregate.domain(),
            aggregate.root().simple()
        )
        .into_bytes()
    }

    /// The row of `aggregate`'s snapshot.
    pub(crate) fn snapshot(&self, aggregate: &AggregateId) -> Vec<u8> {
        format!(
            "{}#s#{}#{}",
            self.namespace,
            aggregate.domain(),
            aggregate.root().simple()
        )
        .into_bytes()
    }

    /// What every stream row of the namespace starts with.
    pub(crate) fn streams(&self) -> Vec<u8> {
        format!("{}#e#", self.namespace).into_bytes()
    }

    /// What every stream row of `domain` starts with.
    pub(crate) fn domain_streams(&self, domain: &Domain) -> Vec<u8> {
        format!("{}#e#{domain}#", self.namespace).into_bytes()
    }

    /// The stream row of `domain` and `root`.
    pub(crate) fn root_stream(&self, domain: &Domain, root: Uuid) -> Vec<u8> {
        format!("{}#e#{domain}#{}", self.namespace, root.simple()).into_bytes()
    }

    /// What every intent row of correlation id `id` starts with.
    pub(crate) fn intents(&self, id: &str) -> Vec<u8> {
        format!("{}#c#{}#", self.namespace, hex(&hash(id))).into_bytes()
    }

    /// The intent row of correlation id `id` for `aggregate`.
    pub(crate) fn intent(&self, id: &str, aggregate: &AggregateId) -> Vec<u8> {
        let mut key = self.intents(id);
        key.extend_from_slice(
            format!("{}#{}", aggregate.domain(), aggregate.root().simple()).as_bytes(),
        );
        key
    }

    /// The aggregate a stream row or intent row is about: its last two parts.
    pub(crate) fn aggregate_of(key: &[u8]) -> Result<AggregateId, Failure> {
        let corrupt = || {
            Failure::corrupt(format!(
                "malformed row key {:?}",
                String::from_utf8_lossy(key)
            ))
        };
        let text = std::str::from_utf8(key).map_err(|_| corrupt())?;
        let mut parts = text.rsplitn(3, '#');
        let root = parts.next().ok_or_else(corrupt)?;
        let domain = parts.next().ok_or_else(corrupt)?;
        if root.len() != 32 {
            return Err(corrupt());
        }
        let root = Uuid::try_parse(root).map_err(|_| corrupt())?;
        let domain = Domain::new(domain).map_err(|_| corrupt())?;
        AggregateId::new(domain, root).map_err(|_| corrupt())
    }

    /// The domain of a stream row.
    pub(crate) fn domain_of(&self, key: &[u8]) -> Result<Domain, Failure> {
        Ok(Self::aggregate_of(key)?.domain().clone())
    }
}

/// The first key after every key that starts with `prefix` (which ends with the separator).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = AFTER;
    }
    end
}

/// A sequence as a qualifier or head value.
pub(crate) fn sequence(sequence: u64) -> Vec<u8> {
    sequence.to_be_bytes().to_vec()
}

/// A qualifier or value holding one sequence.
pub(crate) fn parse_sequence(bytes: &[u8]) -> Result<u64, Failure> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| Failure::corrupt(format!("a sequence of {} bytes", bytes.len())))
}

/// The qualifier of an index cell: the id's hash ++ the first sequence of its range.
pub(crate) fn index_qualifier(id: &str, first: u64) -> Vec<u8> {
    [&hash(id)[..], &first.to_be_bytes()].concat()
}

/// The qualifiers of every index cell of `id`: `hash(id)` followed by any 8 bytes.
pub(crate) fn index_qualifiers(id: &str) -> (Vec<u8>, Vec<u8>) {
    let hash = hash(id);
    (
        [&hash[..], &[0u8; 8]].concat(),
        [&hash[..], &[0xffu8; 8]].concat(),
    )
}

/// A range of events of an index cell of id `id`, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) first: u64,
    pub(crate) end: u64,
    pub(crate) digest: Option<CommandDigest>,
}

/// The value of a request index cell.
pub(crate) fn request_value(digest: &CommandDigest, end: u64, id: &str) -> Vec<u8> {
    [&digest[..], &end.to_be_bytes(), id.as_bytes()].concat()
}

/// The value of a correlation index cell.
pub(crate) fn correlation_value(end: u64, id: &str) -> Vec<u8> {
    [&end.to_be_bytes(), id.as_bytes()].concat()
}

/// Parses an index cell; `None` if it is another id's (a hash collision, or a neighbour in the
/// qualifier range).
pub(crate) fn parse_index(
    qualifier: &[u8],
    value: &[u8],
    id: &str,
    with_digest: bool,
) -> Result<Option<IndexEntry>, Failure> {
    let corrupt = || Failure::corrupt("malformed index cell");
    let (hash, first) = qualifier.split_at_checked(32).ok_or_else(corrupt)?;
    let first = parse_sequence(first)?;
    let (digest, rest) = if with_digest {
        let (digest, rest) = value.split_at_checked(32).ok_or_else(corrupt)?;
        let digest: CommandDigest = digest.try_into().map_err(|_| corrupt())?;
        (Some(digest), rest)
    } else {
        (None, value)
    };
    let (end, stored_id) = rest.split_at_checked(8).ok_or_else(corrupt)?;
    let end = parse_sequence(end)?;
    if hash != self::hash(id) || stored_id != id.as_bytes() {
        return Ok(None);
    }
    if end <= first {
        return Err(corrupt());
    }
    Ok(Some(IndexEntry { first, end, digest }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate(domain: &str, root: u128) -> AggregateId {
        AggregateId::new(Domain::new(domain).unwrap(), Uuid::from_u128(root)).unwrap()
    }

    #[test]
    fn keys_sort_by_domain_then_root_and_parse_back() {
        let keys = Keys::new("ns");
        let ordered = [
            aggregate("a", 1),
            aggregate("a", 2),
            aggregate("a", u128::MAX),
            aggregate("a-b", 1),
            aggregate("a.b", 1),
            aggregate("a0", 1),
            aggregate("aB", 1),
            aggregate("a_", 1),
            aggregate("b", 1),
        ];
        let rows: Vec<_> = ordered.iter().map(|a| keys.stream(a)).collect();
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(rows, sorted);
        for (aggregate, row) in ordered.iter().zip(&rows) {
            assert_eq!(&Keys::aggregate_of(row).unwrap(), aggregate);
            assert_eq!(
                &Keys::aggregate_of(&keys.intent("any # id", aggregate)).unwrap(),
                aggregate
            );
            let domain = keys.domain_streams(aggregate.domain());
            assert!(row.starts_with(&domain) && row.as_slice() < prefix_end(&domain).as_slice());
        }
        // A domain's range holds no other domain's rows.
        let a = keys.domain_streams(&Domain::new("a").unwrap());
        assert!(rows[3].as_slice() >= prefix_end(&a).as_slice());
        // Snapshot rows are outside the stream rows.
        let streams = keys.streams();
        let snapshot = keys.snapshot(&ordered[0]);
        assert!(!snapshot.starts_with(&streams));
    }

    #[test]
    fn index_cells_of_another_id_are_ignored() {
        let qualifier = index_qualifier("id", 3);
        let value = request_value(&[9; 32], 5, "id");
        let entry = parse_index(&qualifier, &value, "id", true).unwrap();
        assert_eq!(
            entry,
            Some(IndexEntry {
                first: 3,
                end: 5,
                digest: Some([9; 32])
            })
        );
        assert_eq!(parse_index(&qualifier, &value, "ID", true).unwrap(), None);
        let value = correlation_value(4, "c");
        let qualifier = index_qualifier("c", 3);
        assert!(
            parse_index(&qualifier, &value, "c", false)
                .unwrap()
                .is_some()
        );
        assert!(parse_index(&qualifier[..10], &value, "c", false).is_err());
        let (low, high) = index_qualifiers("c");
        assert!(low <= qualifier && qualifier <= high);
    }
}
