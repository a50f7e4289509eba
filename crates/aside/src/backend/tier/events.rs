//! The backplane's messages: what one instance tells the others, and what
//! other services may send or read. JSON, one object per message:
//!
//! ```json
//! {"v":1,"src":"5f0c9a7e21d4b8c3","seq":42,"op":"keys","keys":["shop:product:42"]}
//! {"v":1,"src":"5f0c9a7e21d4b8c3","seq":43,"op":"versions","keys":["shop:t:category:7"]}
//! {"v":1,"op":"clear"}
//! ```
//!
//! - `v`: the format version (1). A message of another version is not
//!   understood, and so treated as a gap (everything copied may be stale).
//! - `src`, `seq`: the sending instance and its message number. An instance
//!   ignores its own; a jump in another's numbers means a message was lost
//!   (a gap). A message without `src` comes from another service: the
//!   instances that hear it also apply it to the shared store (deleting the
//!   keys, removing the version tokens), since nobody else will.
//! - `op`: `keys` (entries were invalidated or set), `versions` (tags or
//!   namespaces were invalidated: their token names), `clear` (drop every
//!   in-process copy); between aside instances in strict mode also `ack`,
//!   `rejoin` and `rejoined` (see `strict.rs`).
//! - `ack`: `true` when the sender waits for acknowledgements (strict).
//! - `keys`: backend keys, independent of the store's layout: an entry is
//!   `namespace:key` (see "Keys" in `docs/storage.md`), a tag's token
//!   `namespace:t:<tag>`, the namespace's token `namespace:n`. (Redis stores
//!   them as `{namespace:key}`, `{namespace}:t:<tag>`, `{namespace}:n`.)

use serde::{Deserialize, Serialize};

/// The format version this crate writes and reads.
pub(super) const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Op {
    Keys,
    Versions,
    Clear,
    /// Strict invalidation: the sender applied the recipient's messages up
    /// to `seq` (sent to the recipient alone).
    Ack,
    /// Strict invalidation: the sender has just (re)subscribed and dropped
    /// every copy; what was published before this message and did not
    /// reach it cannot be in its copies.
    Rejoin,
    /// Strict invalidation: the sender heard its own `rejoin` back, so it
    /// has applied every message published before it; a writer waiting for
    /// its acknowledgement of one of those may count it given. `keys`
    /// holds the number of the `rejoin` it answers.
    Rejoined,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Message {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default)]
    pub seq: u64,
    pub op: Op,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// The sender waits for acknowledgements (strict invalidation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ack: bool,
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising these types cannot fail; an empty message would only
        // be a malformed one to its readers (a gap), never a panic.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A message this version understands, or `None`.
    pub fn decode(payload: &[u8]) -> Option<Message> {
        serde_json::from_slice::<Message>(payload)
            .ok()
            .filter(|m| m.v == VERSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_a_foreign_message() {
        let m = Message {
            v: 1,
            src: Some("ab".into()),
            seq: 3,
            op: Op::Keys,
            keys: vec!["{s:k}".into()],
            ack: true,
        };
        assert_eq!(Message::decode(&m.encode()), Some(m));
        let foreign = br#"{"v":1,"op":"versions","keys":["s:t:x"]}"#;
        let m = Message::decode(foreign);
        assert_eq!(
            m.as_ref().map(|m| (&m.op, m.src.is_none())),
            Some((&Op::Versions, true))
        );
        assert_eq!(Message::decode(br#"{"v":2,"op":"keys"}"#), None);
        assert_eq!(Message::decode(b"garbage"), None);
        assert_eq!(Message::decode(br#"{"v":1,"op":"explode"}"#), None);
    }
}
