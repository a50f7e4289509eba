//! Codecs turn values into payload bytes and back, and compression shrinks
//! large payloads.
//!
//! aside never uses a language-specific object format (no `pickle`-like
//! formats): MessagePack and JSON are readable from any language, cannot run
//! code when decoded, and tolerate added optional fields. MessagePack is
//! encoded with field names (`to_vec_named`), so adding a field with
//! `#[serde(default)]` keeps old entries readable, and a removed or retyped
//! field shows up as a decode error (then aside reloads) rather than as a
//! silently wrong value.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};

/// How values are serialised into the payload of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// MessagePack with named fields (`rmp-serde`). Compact and fast.
    #[default]
    MessagePack,
    /// JSON (`serde_json`). Larger and slower, readable in `redis-cli`.
    Json,
}

impl Codec {
    pub(crate) fn id(self) -> u8 {
        match self {
            Codec::MessagePack => 1,
            Codec::Json => 2,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Codec::MessagePack),
            2 => Some(Codec::Json),
            _ => None,
        }
    }

    pub(crate) fn encode<V: Serialize>(self, value: &V, out: &mut Vec<u8>) -> Result<(), Error> {
        match self {
            Codec::MessagePack => rmp_serde::encode::write_named(out, value).map_err(|e| {
                Error::with_source(ErrorKind::Encode, "MessagePack encoding failed", e)
            }),
            Codec::Json => serde_json::to_writer(out, value)
                .map_err(|e| Error::with_source(ErrorKind::Encode, "JSON encoding failed", e)),
        }
    }

    pub(crate) fn decode<V: DeserializeOwned>(self, bytes: &[u8]) -> Result<V, String> {
        match self {
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// Whether and when payloads are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Never compress.
    None,
    /// LZ4 (`lz4_flex`) for payloads of at least `min_bytes`. Small values are
    /// left alone: compressing them costs time and rarely saves space.
    #[cfg(feature = "lz4")]
    Lz4 {
        /// The smallest payload that is compressed.
        min_bytes: usize,
    },
}

// Derivable only without `lz4`, where `None` is the sole default.
#[allow(clippy::derivable_impls)]
impl Default for Compression {
    fn default() -> Self {
        #[cfg(feature = "lz4")]
        {
            Compression::Lz4 { min_bytes: 1024 }
        }
        #[cfg(not(feature = "lz4"))]
        {
            Compression::None
        }
    }
}

impl Compression {
    /// Compresses `payload` if this setting asks for it; returns `None` when
    /// the payload is to be stored as is.
    pub(crate) fn compress(self, payload: &[u8]) -> Option<Vec<u8>> {
        // Without `lz4` there is nothing to compress with.
        #[cfg(not(feature = "lz4"))]
        let _ = payload;
        match self {
            Compression::None => None,
            #[cfg(feature = "lz4")]
            Compression::Lz4 { min_bytes } => {
                if payload.len() < min_bytes {
                    return None;
                }
                let compressed = lz4_flex::compress_prepend_size(payload);
                // Incompressible data: keep the original, it is smaller.
                (compressed.len() < payload.len()).then_some(compressed)
            }
        }
    }
}

/// Decompresses an LZ4 payload, refusing to allocate more than `max_bytes`:
/// the size prefix of a foreign or corrupt value could otherwise ask for
/// gigabytes.
pub(crate) fn decompress(payload: &[u8], max_bytes: usize) -> Result<Vec<u8>, String> {
    #[cfg(feature = "lz4")]
    {
        let Some((size, body)) = payload.split_first_chunk::<4>() else {
            return Err("compressed payload shorter than its size prefix".into());
        };
        let size = u32::from_le_bytes(*size) as usize;
        if size > max_bytes {
            return Err(format!(
                "compressed payload claims {size} bytes, over the {max_bytes}-byte limit"
            ));
        }
        lz4_flex::decompress(body, size).map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "lz4"))]
    {
        let _ = (payload, max_bytes);
        Err("entry is LZ4-compressed but aside was built without the `lz4` feature".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_ids_round_trip() {
        for c in [Codec::MessagePack, Codec::Json] {
            assert_eq!(Codec::from_id(c.id()), Some(c));
        }
        assert_eq!(Codec::from_id(0), None);
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn lz4_round_trips_and_respects_limits() {
        let data = vec![7u8; 10_000];
        let c = Compression::Lz4 { min_bytes: 100 };
        let packed = c.compress(&data).unwrap_or_default();
        assert!(packed.len() < data.len());
        assert_eq!(decompress(&packed, 10_000).ok(), Some(data.clone()));
        assert!(decompress(&packed, 9_999).is_err());
        assert!(c.compress(&data[..50]).is_none());
        // A foreign "size prefix" of 4 GiB is refused before allocating.
        assert!(decompress(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3], 1 << 20).is_err());
    }
}
