//! The entry envelope: the bytes aside stores under a key.
//!
//! ```text
//! offset size field
//!      0    2 magic 0xA5 0x1D         (tells aside's entries from foreign values)
//!      2    1 format version (2)
//!      3    1 codec id (low 4 bits)   (1 MessagePack, 2 JSON)
//!             and flags (high 4 bits) (0x10: LZ4-compressed, 0x20: negative entry;
//!                                      0x40, 0x80 reserved, e.g. for a validator)
//!      4    6 written at, Unix ms     (big endian, as are all numbers here)
//!     10    5 hard TTL, ms            (the entry is gone after it)
//!     15    5 soft TTL, ms            (fresh until then; 0 = same as hard TTL)
//!     20    3 load duration, µs       (how long the loader took: XFetch's delta)
//!     23    1 dependency count n
//!     24    … n × (1-byte name length, name, 8-byte version)
//!      …    … payload                 (empty for a negative entry)
//! ```
//!
//! Every field is at a fixed offset, and the header (24 bytes without
//! dependencies) is as small as the allocator of a Redis value rewards:
//! format 1 spent 34 bytes on the same fields (8-byte times and TTLs); an
//! entry of a 99-byte value now takes 1.135x the memory of a plain `SETEX`
//! of it, against 1.24-1.27x (BENCHMARKS.md, "The entry header, format 2"). Fields saturate rather than
//! wrap: a TTL over 2^40 ms (34 years) is stored as 34 years, a load over
//! 2^24 µs (16.7 s) as 16.7 s. An entry of another format version (format
//! 1, written by an older aside) is an [`DecodeError::UnknownVersion`]: a
//! miss, reloaded and overwritten in this format.
//!
//! Dependencies are the versions the entry was loaded under: one per tag
//! (named by the tag) and, when namespace invalidation is on, the namespace's
//! (the empty name). A read compares them with the current versions; a
//! mismatch means a tag or the namespace was invalidated since, and the entry
//! is a miss.
//!
//! The header is fixed-size so a read checks it with a few comparisons and no
//! allocation. Anything that does not parse (foreign bytes, truncation, an
//! unknown version or codec) is a [`DecodeError`]: the caller counts it and
//! treats the key as a miss, never as a panic or an error to the user.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, Codec, Compression};
use crate::error::{Error, ErrorKind};

const MAGIC: [u8; 2] = [0xA5, 0x1D];
/// The envelope format this build writes and reads.
pub(crate) const FORMAT_VERSION: u8 = 2;
/// The fixed part of the header, before the dependency count.
pub(crate) const HEADER_LEN: usize = 23;

const FLAG_COMPRESSED: u8 = 0x10;
const FLAG_NEGATIVE: u8 = 0x20;
const CODEC_MASK: u8 = 0x0F;

/// The widths of the header's numbers, in bytes.
const WRITTEN_BYTES: usize = 6;
const TTL_BYTES: usize = 5;
const LOAD_BYTES: usize = 3;

/// Timing metadata written into every entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub written_at_ms: u64,
    pub ttl: Duration,
    pub soft_ttl: Option<Duration>,
    pub load_duration: Duration,
}

/// A parsed header, borrowing the dependencies and the payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Envelope<'a> {
    pub codec: Codec,
    pub compressed: bool,
    pub negative: bool,
    pub meta: Meta,
    deps: &'a [u8],
    dep_count: u8,
    pub payload: &'a [u8],
}

/// A dependency: a tag (or the namespace, named "") and its version.
pub(crate) type Dep<'a> = (&'a str, u64);

/// Why stored bytes could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("not an aside entry (foreign bytes)")]
    Foreign,
    #[error("entry shorter than its header")]
    Truncated,
    #[error("unknown envelope format version {0}")]
    UnknownVersion(u8),
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    #[error("payload could not be decompressed: {0}")]
    Decompress(String),
    #[error("payload does not deserialize into the requested type: {0}")]
    Deserialize(String),
}

/// Encodes a value (or a negative entry when `value` is `None`).
pub(crate) fn encode<V: Serialize>(
    value: Option<&V>,
    meta: Meta,
    deps: &[(String, u64)],
    codec: Codec,
    compression: Compression,
    max_bytes: usize,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(codec.id() & CODEC_MASK); // flags added below
    push_be(&mut out, meta.written_at_ms, WRITTEN_BYTES);
    push_be(&mut out, millis(meta.ttl), TTL_BYTES);
    push_be(&mut out, meta.soft_ttl.map_or(0, millis), TTL_BYTES);
    let load_us = u64::try_from(meta.load_duration.as_micros()).unwrap_or(u64::MAX);
    push_be(&mut out, load_us, LOAD_BYTES);
    debug_assert_eq!(out.len(), HEADER_LEN);
    let count = u8::try_from(deps.len())
        .map_err(|_| Error::config("an entry can depend on at most 255 tags"))?;
    out.push(count);
    for (name, version) in deps {
        let len = u8::try_from(name.len())
            .map_err(|_| Error::config(format!("tag {name:?} is longer than 255 bytes")))?;
        out.push(len);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&version.to_be_bytes());
    }
    let payload_at = out.len();

    let mut flags = 0;
    match value {
        None => flags |= FLAG_NEGATIVE,
        Some(v) => {
            codec.encode(v, &mut out)?;
            if let Some(packed) = compression.compress(&out[payload_at..]) {
                out.truncate(payload_at);
                out.extend_from_slice(&packed);
                flags |= FLAG_COMPRESSED;
            }
        }
    }
    out[3] |= flags;
    if out.len() > max_bytes {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!(
                "encoded entry is {} bytes, over the {max_bytes}-byte limit",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// Parses the header. Cheap: no allocation, no payload decoding.
pub(crate) fn parse(bytes: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    if bytes.len() < 2 || bytes[..2] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    if bytes.len() < 3 {
        return Err(DecodeError::Truncated);
    }
    if bytes[2] != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion(bytes[2]));
    }
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Truncated);
    };
    let Some((&dep_count, rest)) = rest.split_first() else {
        return Err(DecodeError::Truncated);
    };
    // Walk the dependencies once to find where the payload starts.
    let mut at = 0usize;
    for _ in 0..dep_count {
        let len = *rest.get(at).ok_or(DecodeError::Truncated)? as usize;
        at += 1 + len + 8;
        if at > rest.len() {
            return Err(DecodeError::Truncated);
        }
        if std::str::from_utf8(&rest[at - 8 - len..at - 8]).is_err() {
            return Err(DecodeError::Foreign);
        }
    }
    let (deps, payload) = rest.split_at(at);
    let id = header[3] & CODEC_MASK;
    let codec = Codec::from_id(id).ok_or(DecodeError::UnknownCodec(id))?;
    let flags = header[3] & !CODEC_MASK;
    let soft = be_at(header, 15, TTL_BYTES);
    Ok(Envelope {
        codec,
        compressed: flags & FLAG_COMPRESSED != 0,
        negative: flags & FLAG_NEGATIVE != 0,
        meta: Meta {
            written_at_ms: be_at(header, 4, WRITTEN_BYTES),
            ttl: Duration::from_millis(be_at(header, 10, TTL_BYTES)),
            soft_ttl: (soft != 0).then(|| Duration::from_millis(soft)),
            load_duration: Duration::from_micros(be_at(header, 20, LOAD_BYTES)),
        },
        deps,
        dep_count,
        payload,
    })
}

/// When the entry in `bytes` expires (written at + hard TTL, Unix ms), if
/// the bytes are an entry: what [`Stored::expires_at_ms`] tells backends.
///
/// [`Stored::expires_at_ms`]: crate::backend::Stored::expires_at_ms
pub(crate) fn expires_at_ms(bytes: &[u8]) -> Option<u64> {
    let meta = parse(bytes).ok()?.meta;
    Some(
        meta.written_at_ms
            .saturating_add(u64::try_from(meta.ttl.as_millis()).unwrap_or(u64::MAX)),
    )
}

impl<'a> Envelope<'a> {
    /// The versions this entry was loaded under. Validated by `parse`.
    pub(crate) fn deps(&self) -> impl Iterator<Item = Dep<'a>> + 'a {
        let mut rest = self.deps;
        (0..self.dep_count).filter_map(move |_| {
            let (&len, tail) = rest.split_first()?;
            let len = len as usize;
            let name = std::str::from_utf8(tail.get(..len)?).ok()?;
            let version = u64::from_be_bytes(tail.get(len..len + 8)?.try_into().ok()?);
            rest = tail.get(len + 8..)?;
            Some((name, version))
        })
    }

    /// [`deps`](Self::deps) with the names as bytes: no UTF-8 check on
    /// each pass (`parse` checked them once), for the comparisons of a hit.
    pub(crate) fn deps_raw(&self) -> impl Iterator<Item = (&'a [u8], u64)> + 'a {
        let mut rest = self.deps;
        (0..self.dep_count).filter_map(move |_| {
            let (&len, tail) = rest.split_first()?;
            let len = len as usize;
            let name = tail.get(..len)?;
            let version = u64::from_be_bytes(tail.get(len..len + 8)?.try_into().ok()?);
            rest = tail.get(len + 8..)?;
            Some((name, version))
        })
    }

    pub(crate) fn has_deps(&self) -> bool {
        self.dep_count > 0
    }

    /// Decodes the payload into `V`.
    pub(crate) fn decode<V: DeserializeOwned>(&self, max_bytes: usize) -> Result<V, DecodeError> {
        if self.compressed {
            let raw =
                codec::decompress(self.payload, max_bytes).map_err(DecodeError::Decompress)?;
            self.codec.decode(&raw).map_err(DecodeError::Deserialize)
        } else {
            self.codec
                .decode(self.payload)
                .map_err(DecodeError::Deserialize)
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Appends the low `width` bytes of `n`, big endian, saturated: a number
/// that does not fit is stored as the largest that does.
fn push_be(out: &mut Vec<u8>, n: u64, width: usize) {
    let max = u64::MAX >> (64 - 8 * width);
    out.extend_from_slice(&n.min(max).to_be_bytes()[8 - width..]);
}

/// The `width`-byte big-endian number at `at` of `header`.
fn be_at(header: &[u8; HEADER_LEN], at: usize, width: usize) -> u64 {
    header[at..at + width]
        .iter()
        .fold(0, |n, &b| (n << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
    struct Product {
        id: u64,
        name: String,
    }

    fn meta() -> Meta {
        Meta {
            written_at_ms: 1_700_000_000_000,
            ttl: Duration::from_secs(60),
            soft_ttl: Some(Duration::from_secs(30)),
            load_duration: Duration::from_micros(1234),
        }
    }

    #[test]
    fn round_trip_every_codec_and_compression() {
        let p = Product {
            id: 7,
            name: "widget".repeat(500),
        };
        for codec in [Codec::MessagePack, Codec::Json] {
            for compression in [Compression::None, Compression::default()] {
                let bytes = encode(Some(&p), meta(), &[], codec, compression, 1 << 20)
                    .unwrap_or_else(|e| panic!("{e}"));
                let env = parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(env.meta, meta());
                assert!(!env.negative);
                assert_eq!(env.decode::<Product>(1 << 20), Ok(p.clone()));
            }
        }
    }

    #[test]
    fn negative_entries_have_no_payload() {
        let bytes = encode::<Product>(
            None,
            meta(),
            &[],
            Codec::MessagePack,
            Compression::None,
            1024,
        )
        .unwrap_or_default();
        let env = parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(env.negative);
        assert!(env.payload.is_empty());
    }

    #[test]
    fn foreign_truncated_and_unknown_bytes_are_errors_not_panics() {
        assert_eq!(parse(b"").err(), Some(DecodeError::Foreign));
        assert_eq!(parse(b"hello world").err(), Some(DecodeError::Foreign));
        assert_eq!(
            parse(&[0xA5, 0x1D, FORMAT_VERSION, 1]).err(),
            Some(DecodeError::Truncated)
        );
        assert_eq!(
            parse(&[0xA5, 0x1D, 9, 1]).err(),
            Some(DecodeError::UnknownVersion(9))
        );
        let mut bytes = encode(
            Some(&1u8),
            meta(),
            &[],
            Codec::Json,
            Compression::None,
            1024,
        )
        .unwrap_or_default();
        bytes[3] = 0x0D;
        assert_eq!(parse(&bytes).err(), Some(DecodeError::UnknownCodec(13)));
    }

    /// An entry an older aside wrote (format 1: the same fields, 8-byte
    /// times and TTLs) is not read as this format: a miss, reloaded.
    #[test]
    fn a_format_1_entry_is_an_unknown_version() {
        let mut v1 = vec![0xA5, 0x1D, 1, 1, 0];
        v1.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        v1.extend_from_slice(&60_000u64.to_be_bytes());
        v1.extend_from_slice(&0u64.to_be_bytes());
        v1.extend_from_slice(&1_000u32.to_be_bytes());
        v1.push(0);
        v1.push(0x05);
        assert_eq!(parse(&v1).err(), Some(DecodeError::UnknownVersion(1)));
    }

    #[test]
    fn numbers_too_large_for_their_fields_saturate() {
        let huge = Meta {
            written_at_ms: u64::MAX,
            ttl: Duration::MAX,
            soft_ttl: Some(Duration::from_secs(3_600)),
            load_duration: Duration::from_secs(60),
        };
        let bytes = encode(
            Some(&1u8),
            huge,
            &[],
            Codec::MessagePack,
            Compression::None,
            1024,
        )
        .unwrap_or_default();
        assert_eq!(bytes.len(), HEADER_LEN + 1 + 1);
        let env = parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(env.meta.written_at_ms, (1 << 48) - 1);
        assert_eq!(env.meta.ttl, Duration::from_millis((1 << 40) - 1));
        assert_eq!(env.meta.soft_ttl, Some(Duration::from_secs(3_600)));
        assert_eq!(env.meta.load_duration, Duration::from_micros((1 << 24) - 1));
        assert_eq!(env.decode::<u8>(1024), Ok(1));
    }

    #[test]
    fn dependencies_round_trip_and_truncation_is_caught() {
        let deps = vec![(String::new(), 3), ("category:7".to_owned(), 11)];
        let bytes = encode(
            Some(&5u32),
            meta(),
            &deps,
            Codec::MessagePack,
            Compression::None,
            1024,
        )
        .unwrap_or_default();
        let env = parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(String, u64)> = env.deps().map(|(n, v)| (n.to_owned(), v)).collect();
        assert_eq!(got, deps);
        assert_eq!(env.decode::<u32>(1024), Ok(5));
        for cut in HEADER_LEN + 1..HEADER_LEN + 20 {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn type_change_is_a_decode_error() {
        let bytes = encode(
            Some(&"text"),
            meta(),
            &[],
            Codec::MessagePack,
            Compression::None,
            1024,
        )
        .unwrap_or_default();
        let env = parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            env.decode::<Product>(1024),
            Err(DecodeError::Deserialize(_))
        ));
    }

    #[test]
    fn oversized_values_are_refused() {
        let big = "x".repeat(2000);
        let err = encode(
            Some(&big),
            meta(),
            &[],
            Codec::Json,
            Compression::None,
            1000,
        )
        .err()
        .map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::TooLarge));
    }

    #[test]
    fn a_declared_size_over_the_limit_is_refused_before_allocating() {
        let mut bytes = encode(
            Some(&1u8),
            meta(),
            &[],
            Codec::MessagePack,
            Compression::None,
            1024,
        )
        .unwrap_or_default();
        bytes.truncate(HEADER_LEN + 1);
        bytes[3] |= FLAG_COMPRESSED;
        // A 4 GiB claim in front of a few bytes.
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&[0x1f, 0, 0, 0]);
        let env = parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            env.decode::<u8>(1 << 20),
            Err(DecodeError::Decompress(_))
        ));
    }

    /// Whatever the bytes, parsing and decoding return, never panic (and
    /// allocate within the limit they are given: a run under a small limit
    /// that tried to allocate a declared 4 GiB would abort the test).
    mod fuzz {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn exercise(bytes: &[u8]) {
            if let Ok(env) = parse(bytes) {
                let _ = env.deps().count();
                let _ = env.decode::<Product>(1 << 16);
                let _ = env.decode::<String>(1 << 16);
                let _ = env.decode::<Vec<u64>>(1 << 16);
                let _ = env.decode::<std::collections::HashMap<String, Vec<u8>>>(1 << 16);
            }
        }

        fn valid(name_len: usize, codec: Codec, compression: Compression) -> Vec<u8> {
            let p = Product {
                id: 7,
                name: "n".repeat(name_len),
            };
            let deps = [("tag".to_owned(), 5u64), (String::new(), 9u64)];
            encode(Some(&p), meta(), &deps, codec, compression, 1 << 20).unwrap_or_default()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes(bytes in vec(any::<u8>(), 0..600)) {
                exercise(&bytes);
            }

            /// A valid header (so parsing gets past the magic and version)
            /// followed by anything: dependency counts, lengths and
            /// payloads that lie.
            #[test]
            fn a_valid_header_then_anything(
                json in any::<bool>(),
                compressed in any::<bool>(),
                negative in any::<bool>(),
                tail in vec(any::<u8>(), 0..600),
            ) {
                let codec = if json { Codec::Json } else { Codec::MessagePack };
                let mut bytes = valid(1, codec, Compression::None);
                bytes.truncate(HEADER_LEN);
                if compressed {
                    bytes[3] |= FLAG_COMPRESSED;
                }
                if negative {
                    bytes[3] |= FLAG_NEGATIVE;
                }
                bytes.extend_from_slice(&tail);
                exercise(&bytes);
            }

            /// A valid entry with bytes overwritten, or cut short.
            #[test]
            fn a_valid_entry_mutated(
                name_len in 0usize..3000,
                json in any::<bool>(),
                compress in any::<bool>(),
                edits in vec((any::<proptest::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<proptest::sample::Index>(),
                truncate in any::<bool>(),
            ) {
                let codec = if json { Codec::Json } else { Codec::MessagePack };
                let compression = if compress { Compression::default() } else { Compression::None };
                let mut bytes = valid(name_len, codec, compression);
                prop_assume!(!bytes.is_empty());
                for (at, b) in &edits {
                    let i = at.index(bytes.len());
                    bytes[i] = *b;
                }
                if truncate {
                    bytes.truncate(cut.index(bytes.len()));
                }
                exercise(&bytes);
            }
        }
    }
}
