//! Every key and sorted-set member the store writes, built and parsed here and nowhere else.
//! The crate documentation has the layout.
//!
//! Hash tags: Redis Cluster places a key by the text between its first `{` and the next `}`.
//! The prefix and domains are validated (`[A-Za-z0-9_.-]`), roots are UUIDs and correlation ids
//! are escaped to the same characters plus `%`, so no part can open or close a tag, and no
//! part can contain the `:` that separates them: each key has exactly one parse.

use angzarr_ports::{AggregateId, CommandDigest, Domain, EventPage, Uuid};
use prost::Message;

use crate::error::Failure;

/// The bytes stored before each encoded event in its member: its sequence and the token of
/// the append that wrote it, 8 bytes each.
pub(crate) const EVENT_HEADER_LEN: usize = 16;
/// The bytes after the id in a request member: first and end sequence, then the digest.
pub(crate) const REQUEST_TAIL_LEN: usize = 16 + 32;
/// The bytes after the id in a correlation member: first and end sequence.
pub(crate) const CORRELATION_TAIL_LEN: usize = 16;
/// Sequences are scores, which are doubles: exact below 2^53. No stream reaches it.
pub(crate) const SEQUENCE_LIMIT: u64 = 1 << 53;

/// Whether `prefix` can start every key: 1 to 64 characters that cannot open or close a hash
/// tag or separate key parts.
pub(crate) fn valid_prefix(prefix: &str) -> bool {
    angzarr_ports::is_key_name(prefix, 1..=crate::RedisConfig::MAX_KEY_PREFIX_LEN)
}

/// The keys of one store (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// The keys of one aggregate, all in the slot of the tag `{prefix:domain:root}`.
#[derive(Debug)]
pub(crate) struct AggregateKeys {
    /// Sorted set: score = sequence, member = [`event_member`].
    pub(crate) events: String,
    /// Sorted set, all scores 0: [`request_member`] per append that had a request id.
    pub(crate) requests: String,
    /// Sorted set, all scores 0: [`correlation_member`] per run of events with the same
    /// non-empty correlation id in an append.
    pub(crate) correlations: String,
    /// String: the encoded snapshot.
    pub(crate) snapshot: String,
}

impl Keys {
    /// The keys under `prefix` (validated by the configuration).
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The keys of `aggregate`.
    pub(crate) fn aggregate(&self, aggregate: &AggregateId) -> AggregateKeys {
        let tag = format!(
            "{{{}:{}:{}}}",
            self.prefix,
            aggregate.domain(),
            root(aggregate.root())
        );
        AggregateKeys {
            events: format!("{tag}:e"),
            requests: format!("{tag}:q"),
            correlations: format!("{tag}:c"),
            snapshot: format!("{tag}:s"),
        }
    }

    /// Sorted set of every domain with an aggregate, all scores 0.
    pub(crate) fn domains(&self) -> String {
        format!("{{{}}}:domains", self.prefix)
    }

    /// Sorted set of the roots of `domain`, all scores 0, as [`root`] text.
    pub(crate) fn roots(&self, domain: &Domain) -> String {
        format!("{{{}:{domain}}}:roots", self.prefix)
    }

    /// Set of the aggregates ([`aggregate_member`]) that have, or were about to have, events
    /// with `correlation_id`. Each id gets its own slot.
    pub(crate) fn correlation(&self, correlation_id: &str) -> String {
        format!("{{{}:{}}}:corr", self.prefix, escape(correlation_id))
    }
}

/// A correlation id as key text: bytes of `[A-Za-z0-9_.-]` as they are, every other byte as
/// `%XX`. Injective, and free of `{`, `}` and `:`.
pub(crate) fn escape(id: &str) -> String {
    let mut escaped = String::with_capacity(id.len());
    for byte in id.bytes() {
        // A byte that stands for itself in keys; every other byte is escaped.
        if angzarr_ports::is_key_char(byte) {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    escaped
}

/// A root as text: lowercase and hyphenated, whose byte order is the UUIDs' order (digits
/// sort before `a-f`, hyphens sit at the same places), so `ZRANGEBYLEX` lists roots in the
/// order the port promises.
pub(crate) fn root(root: Uuid) -> String {
    root.hyphenated().to_string()
}

/// A stored root.
pub(crate) fn parse_root(text: &[u8]) -> Result<Uuid, Failure> {
    Uuid::try_parse_ascii(text).map_err(|_| {
        Failure::corrupt(format_args!(
            "stored root {:?} is not a UUID",
            String::from_utf8_lossy(text)
        ))
    })
}

/// A stored domain.
pub(crate) fn parse_domain(text: &[u8]) -> Result<Domain, Failure> {
    let text = std::str::from_utf8(text).map_err(Failure::corrupt)?;
    Domain::new(text).map_err(Failure::corrupt)
}

/// An aggregate as a member of a correlation set: `domain root`.
pub(crate) fn aggregate_member(aggregate: &AggregateId) -> String {
    format!("{} {}", aggregate.domain(), root(aggregate.root()))
}

/// A stored [`aggregate_member`].
pub(crate) fn parse_aggregate_member(member: &[u8]) -> Result<AggregateId, Failure> {
    let split = member.iter().position(|byte| *byte == b' ');
    let Some((domain, root)) = split.map(|at| (&member[..at], &member[at + 1..])) else {
        return Err(Failure::corrupt(format_args!(
            "stored aggregate {:?} has no space",
            String::from_utf8_lossy(member)
        )));
    };
    AggregateId::new(parse_domain(domain)?, parse_root(root)?).map_err(Failure::corrupt)
}

/// The member of the event at `sequence`: the sequence (8 bytes, big-endian, so that members
/// are unique whatever the page holds), the append's `token` (8 bytes, which tells a re-sent
/// append from another writer's), then the encoded page.
pub(crate) fn event_member(
    sequence: u64,
    token: [u8; 8],
    page: &EventPage,
) -> Result<Vec<u8>, Failure> {
    let mut member = Vec::with_capacity(EVENT_HEADER_LEN + page.encoded_len());
    member.extend_from_slice(&sequence.to_be_bytes());
    member.extend_from_slice(&token);
    page.encode(&mut member)
        .map_err(|error| Failure::Internal(error.into()))?;
    Ok(member)
}

/// The page of a stored [`event_member`], checked against the sequence before it.
pub(crate) fn parse_event_member(member: &[u8]) -> Result<EventPage, Failure> {
    let Some((sequence, rest)) = member.split_first_chunk::<8>() else {
        return Err(Failure::corrupt(format_args!(
            "a stored event of {} bytes is shorter than its header",
            member.len()
        )));
    };
    let sequence = u64::from_be_bytes(*sequence);
    let Some((_token, encoded)) = rest.split_first_chunk::<8>() else {
        return Err(Failure::corrupt(format_args!(
            "a stored event of {} bytes is shorter than its header",
            member.len()
        )));
    };
    let page = angzarr_ports::decode_event_page(encoded).map_err(Failure::corrupt)?;
    if page.sequence != sequence {
        return Err(Failure::corrupt(format_args!(
            "the event stored at sequence {sequence} says it is {}",
            page.sequence
        )));
    }
    Ok(page)
}

/// An id as the first part of an index member: its length (4 bytes, big-endian), then its
/// bytes. No encoded id is a prefix of another, so one id's members are exactly those that
/// start with its encoding.
fn encoded_id(id: &str, tail: usize) -> Result<Vec<u8>, Failure> {
    let len = u32::try_from(id.len())
        .map_err(|_| Failure::invalid(format_args!("an id of {} bytes is too long", id.len())))?;
    let mut member = Vec::with_capacity(4 + id.len() + tail);
    member.extend_from_slice(&len.to_be_bytes());
    member.extend_from_slice(id.as_bytes());
    Ok(member)
}

/// The member of an append with request id `id` that wrote sequences `from..to`.
pub(crate) fn request_member(
    id: &str,
    from: u64,
    to: u64,
    digest: &CommandDigest,
) -> Result<Vec<u8>, Failure> {
    let mut member = encoded_id(id, REQUEST_TAIL_LEN)?;
    member.extend_from_slice(&from.to_be_bytes());
    member.extend_from_slice(&to.to_be_bytes());
    member.extend_from_slice(digest);
    Ok(member)
}

/// The member of the events `from..to` of an append, which all have correlation id `id`.
pub(crate) fn correlation_member(id: &str, from: u64, to: u64) -> Result<Vec<u8>, Failure> {
    let mut member = encoded_id(id, CORRELATION_TAIL_LEN)?;
    member.extend_from_slice(&from.to_be_bytes());
    member.extend_from_slice(&to.to_be_bytes());
    Ok(member)
}

/// The `ZRANGEBYLEX` bounds of every member of `id` in an index whose members have `tail`
/// bytes after the id: from the bare encoding to the encoding followed by `tail` bytes 0xff.
pub(crate) fn id_range(id: &str, tail: usize) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let encoded = encoded_id(id, tail)?;
    let mut min = Vec::with_capacity(1 + encoded.len());
    min.push(b'[');
    min.extend_from_slice(&encoded);
    let mut max = min.clone();
    max.resize(min.len() + tail, 0xff);
    Ok((min, max))
}

/// The digest at the end of a stored [`request_member`].
pub(crate) fn request_digest(member: &[u8]) -> Result<CommandDigest, Failure> {
    member
        .len()
        .checked_sub(32)
        .filter(|_| member.len() >= 4 + REQUEST_TAIL_LEN)
        .and_then(|at| member[at..].try_into().ok())
        .ok_or_else(|| {
            Failure::corrupt(format_args!(
                "a stored request entry of {} bytes is too short",
                member.len()
            ))
        })
}

/// The text of a sequence as a score.
pub(crate) fn score(sequence: u64) -> String {
    sequence.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_text_order_is_uuid_order() {
        let mut roots: Vec<Uuid> = (0..2000).map(|_| Uuid::new_v4()).collect();
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
            roots
                .iter()
                .all(|uuid| parse_root(root(*uuid).as_bytes()).ok() == Some(*uuid))
        );
    }

    #[test]
    fn escaped_ids_are_distinct_and_cannot_break_a_tag() {
        let ids = [
            "",
            "c1",
            "C1",
            "c:2#{x}/y",
            "c:2#{X}/y",
            "a%b",
            "a%25b",
            "a_b",
            "*",
            "ünï",
            "%",
            "%25",
            "a b",
            "a\0b",
            "}",
        ];
        let escaped: std::collections::BTreeSet<String> = ids.iter().map(|id| escape(id)).collect();
        assert_eq!(escaped.len(), ids.len());
        for text in &escaped {
            assert!(
                text.bytes()
                    .all(|b| angzarr_ports::is_key_char(b) || b == b'%'),
                "{text}"
            );
        }
        assert_eq!(escape("a:{b}%"), "a%3A%7Bb%7D%25");
    }

    #[test]
    fn keys_of_different_things_never_collide() {
        let keys = Keys::new("ns");
        let domain = Domain::new("a").unwrap();
        let aggregate = AggregateId::new(domain.clone(), Uuid::from_u128(1)).unwrap();
        let aggregate_keys = keys.aggregate(&aggregate);
        assert_eq!(
            aggregate_keys.events,
            "{ns:a:00000000-0000-0000-0000-000000000001}:e"
        );
        let all = [
            aggregate_keys.events,
            aggregate_keys.requests,
            aggregate_keys.correlations,
            aggregate_keys.snapshot,
            keys.domains(),
            keys.roots(&domain),
            keys.correlation("a"),
            keys.correlation("domains"),
        ];
        let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
    }

    #[test]
    fn members_round_trip() {
        let page = EventPage {
            sequence: 7,
            correlation_id: "c".into(),
            ..EventPage::default()
        };
        let member = event_member(7, [1; 8], &page).unwrap();
        assert_eq!(parse_event_member(&member).unwrap(), page);
        assert!(parse_event_member(&event_member(8, [1; 8], &page).unwrap()).is_err());
        assert!(parse_event_member(&member[..10]).is_err());

        let aggregate = AggregateId::parse("a.b", "67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
        assert_eq!(
            parse_aggregate_member(aggregate_member(&aggregate).as_bytes()).unwrap(),
            aggregate
        );

        let digest = [9; 32];
        let member = request_member("r", 3, 5, &digest).unwrap();
        assert_eq!(request_digest(&member).unwrap(), digest);
        let (min, max) = id_range("r", REQUEST_TAIL_LEN).unwrap();
        assert!(min[1..] <= member[..] && member[..] <= max[1..]);
        // A longer id that starts the same is outside the range.
        let other = request_member("r2", 3, 5, &digest).unwrap();
        assert!(other[..] > max[1..]);
    }
}
