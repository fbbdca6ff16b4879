//! A faster decoding of [`EventPage`], the message every store reads back for every event.
//!
//! prost decodes a `bytes` field held in a `Vec<u8>` (as `google.protobuf.Any.value` is) by
//! copying it into a `Bytes` first and then into the `Vec`: two allocations, two copies and a
//! free per event. On a rebuild of 100,000 events that is a sizeable share of the decoding.
//! This decoder reads the encoding prost (and every other protobuf library) writes, each field
//! once and in field order, with one copy of each string and bytes field. Anything else (unknown
//! fields, repeated or out-of-order fields, a malformed varint) is left to prost, so the result
//! is always what `EventPage::decode` answers.
#![warn(missing_docs, unreachable_pub, clippy::all)]

use prost::Message;
use prost_types::{Any, Timestamp};

use crate::v1::EventPage;

/// Decodes an encoded [`EventPage`]: the same answer as [`EventPage::decode`], faster.
pub fn decode_event_page(bytes: &[u8]) -> Result<EventPage, prost::DecodeError> {
    match canonical_page(bytes) {
        Some(page) => Ok(page),
        None => EventPage::decode(bytes),
    }
}

/// A wire type of the protobuf encoding.
const VARINT: u64 = 0;
const LENGTH_DELIMITED: u64 = 2;

/// The page, if `bytes` holds only its known fields, each once and in field order.
fn canonical_page(mut bytes: &[u8]) -> Option<EventPage> {
    let mut page = EventPage::default();
    let mut previous = 0;
    while !bytes.is_empty() {
        let (field, wire_type) = key(&mut bytes, &mut previous)?;
        match (field, wire_type) {
            (1, VARINT) => page.sequence = varint(&mut bytes)?,
            (2, LENGTH_DELIMITED) => page.created_at = Some(timestamp(delimited(&mut bytes)?)?),
            (3, LENGTH_DELIMITED) => page.payload = Some(payload(delimited(&mut bytes)?)?),
            (4, LENGTH_DELIMITED) => page.correlation_id = string(delimited(&mut bytes)?)?,
            _ => return None,
        }
    }
    Some(page)
}

fn timestamp(mut bytes: &[u8]) -> Option<Timestamp> {
    let mut timestamp = Timestamp::default();
    let mut previous = 0;
    while !bytes.is_empty() {
        match key(&mut bytes, &mut previous)? {
            // Truncated to the field's width, as prost does.
            (1, VARINT) => timestamp.seconds = varint(&mut bytes)? as i64,
            (2, VARINT) => timestamp.nanos = varint(&mut bytes)? as i32,
            _ => return None,
        }
    }
    Some(timestamp)
}

fn payload(mut bytes: &[u8]) -> Option<Any> {
    let mut any = Any::default();
    let mut previous = 0;
    while !bytes.is_empty() {
        match key(&mut bytes, &mut previous)? {
            (1, LENGTH_DELIMITED) => any.type_url = string(delimited(&mut bytes)?)?,
            (2, LENGTH_DELIMITED) => any.value = delimited(&mut bytes)?.to_vec(),
            _ => return None,
        }
    }
    Some(any)
}

/// A field's key: its number and wire type. `None` unless the number is above `previous`.
fn key(bytes: &mut &[u8], previous: &mut u64) -> Option<(u64, u64)> {
    let key = varint(bytes)?;
    let field = key >> 3;
    if field <= *previous {
        return None;
    }
    *previous = field;
    Some((field, key & 7))
}

/// A length-delimited field's contents.
fn delimited<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(bytes)?).ok()?;
    if len > bytes.len() {
        return None;
    }
    let (contents, rest) = bytes.split_at(len);
    *bytes = rest;
    Some(contents)
}

fn string(bytes: &[u8]) -> Option<String> {
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// A varint of at most 10 bytes whose value fits 64 bits.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().copied().enumerate().take(10) {
        if index == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte < 0x80 {
            *bytes = &bytes[index + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn any_page() -> impl Strategy<Value = EventPage> {
        (
            any::<u64>(),
            proptest::option::of((any::<i64>(), any::<i32>())),
            proptest::option::of((".{0,40}", proptest::collection::vec(any::<u8>(), 0..64))),
            ".{0,40}",
        )
            .prop_map(
                |(sequence, created_at, payload, correlation_id)| EventPage {
                    sequence,
                    created_at: created_at.map(|(seconds, nanos)| Timestamp { seconds, nanos }),
                    payload: payload.map(|(type_url, value)| Any { type_url, value }),
                    correlation_id,
                },
            )
    }

    proptest! {
        /// What prost writes, this decoder reads itself, to the same page.
        #[test]
        fn reads_back_what_prost_encodes(page in any_page()) {
            let bytes = page.encode_to_vec();
            prop_assert_eq!(canonical_page(&bytes), Some(page));
        }

        /// On any bytes at all (a page cut short, altered, or followed by more), the answer is
        /// prost's, page or error.
        #[test]
        fn answers_as_prost_does_on_any_bytes(
            page in any_page(),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut bytes = page.encode_to_vec();
            for (at, flip) in flips {
                if !bytes.is_empty() {
                    let at = at.index(bytes.len());
                    bytes[at] ^= flip;
                }
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend(tail);
            let ours = decode_event_page(&bytes).map_err(|error| error.to_string());
            let prost = EventPage::decode(bytes.as_slice()).map_err(|error| error.to_string());
            prop_assert_eq!(ours, prost);
        }
    }

    /// Encodings no prost encoder writes but every decoder reads, which random pages rarely
    /// give: read here, to prost's page.
    #[test]
    fn reads_unusual_but_valid_encodings_as_prost_does() {
        let cases: [&[u8]; 6] = [
            // A field at its default value, written anyway.
            &[0x08, 0x00],
            // Empty nested messages and an empty string.
            &[0x12, 0x00],
            &[0x1a, 0x00],
            &[0x22, 0x00],
            // An overlong key (field 1, varint, in two bytes).
            &[0x88, 0x00, 0x01],
            // A ten-byte varint: the largest sequence.
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ];
        for bytes in cases {
            let prost = EventPage::decode(bytes).unwrap();
            assert_eq!(canonical_page(bytes), Some(prost), "{bytes:02x?}");
        }
    }

    #[test]
    fn leaves_what_it_does_not_read_to_prost() {
        let page = EventPage {
            sequence: 7,
            correlation_id: "c".into(),
            ..EventPage::default()
        };
        let canonical = page.encode_to_vec();
        // The sequence again after the correlation id: prost keeps the last one.
        let mut repeated = canonical.clone();
        repeated.extend([0x08, 0x09]);
        assert_eq!(canonical_page(&repeated), None);
        assert_eq!(decode_event_page(&repeated).unwrap().sequence, 9);
        // An unknown field is skipped.
        let mut unknown = canonical.clone();
        unknown.extend([0x28, 0x01]);
        assert_eq!(canonical_page(&unknown), None);
        assert_eq!(decode_event_page(&unknown).unwrap(), page);
        // A varint of more than 64 bits is an error.
        let overlong = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ];
        assert!(decode_event_page(&overlong).is_err());
    }
}
