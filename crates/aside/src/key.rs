//! Cache keys: joining parts without collisions, and bounding key length.
//!
//! The naive way to build a key, `format!("{prefix}:{a}:{b}")`, collides as
//! soon as a part contains the separator: `("a:b", "c")` and `("a", "b:c")`
//! give the same key. [`Key::part`] escapes the separator (and the escape
//! character) inside each part, so the encoding is injective: two different
//! lists of parts never give the same key.
//!
//! Keys longer than a limit are hashed, but unlike a 16-hex-digit (64-bit)
//! digest, aside keeps a readable prefix and appends 128 bits of SHA-256, so
//! accidental collisions are out of reach (birthday bound 2^64 keys) and the
//! key still says what it is in `redis-cli`.

use std::fmt;

use sha2::{Digest, Sha256};

/// The separator between key parts (and between namespace and key).
pub const SEPARATOR: char = ':';

/// A cache key.
///
/// Build one from parts with [`Key::new`] and [`Key::part`], or take a string
/// verbatim with `Key::from("user:42")` (then the string is yours: aside does
/// not escape it).
///
/// ```
/// use aside::Key;
///
/// let a = Key::new("order").part("a:b").part("c");
/// let b = Key::new("order").part("a").part("b:c");
/// assert_ne!(a, b); // a naive join would make both "order:a:b:c"
/// assert_eq!(a.as_str(), "order:a%3Ab:c");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Starts a key with its first part (escaped).
    pub fn new(first: impl fmt::Display) -> Self {
        let mut s = String::new();
        push_escaped(&mut s, &first.to_string());
        Key(s)
    }

    /// Appends a part (escaped), separated by `:`.
    #[must_use]
    pub fn part(mut self, part: impl fmt::Display) -> Self {
        self.0.push(SEPARATOR);
        push_escaped(&mut self.0, &part.to_string());
        self
    }

    /// Builds a key from a list of parts.
    pub fn from_parts<I, P>(parts: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: fmt::Display,
    {
        let mut s = String::new();
        for (i, p) in parts.into_iter().enumerate() {
            if i > 0 {
                s.push(SEPARATOR);
            }
            push_escaped(&mut s, &p.to_string());
        }
        Key(s)
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Percent-escapes the separator and the escape character itself, so the
/// encoding of a part never contains a bare separator.
fn push_escaped(out: &mut String, part: &str) {
    for c in part.chars() {
        match c {
            ':' => out.push_str("%3A"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(s.to_owned())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(s)
    }
}

impl From<&String> for Key {
    fn from(s: &String) -> Self {
        Key(s.clone())
    }
}

impl From<&Key> for Key {
    fn from(k: &Key) -> Self {
        k.clone()
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Hex digits of SHA-256 kept when a key is hashed: 32 hex digits = 128 bits.
const DIGEST_HEX: usize = 32;

/// Joins `namespace` and `key` into the key handed to the backend:
/// `namespace:key`, hashing the tail when it would be `max_len` bytes or more.
///
/// How a backend lays the key out in its store is its own business: the
/// Redis backend wraps it in braces (`{namespace:key}`, a Redis Cluster hash
/// tag, so that the keys it derives by suffix, the marker and the lease, hash
/// to the same slot); the memory backend keeps it as it is. Namespaces hold
/// no `:`, so the namespace is always the part before the first `:`.
///
/// A key whose `namespace:key` form is `max_len` bytes or longer is hashed:
/// `<readable prefix>#<128-bit hex digest of the full key>`, padded with more
/// `#` after the prefix (when the prefix was cut back to a char boundary) so
/// that it is always exactly `max_len` bytes. An unhashed key is therefore
/// always strictly shorter than a hashed one, and the mapping is injective
/// (short of a 128-bit digest collision): a logical key crafted to look like
/// a hashed key (`…#<digest>`) is itself hashed, never kept as is.
pub(crate) fn backend_key(namespace: &str, key: &str, max_len: usize) -> String {
    let full_len = namespace.len() + 1 + key.len();
    if full_len < max_len {
        let mut s = String::with_capacity(full_len);
        s.push_str(namespace);
        s.push(SEPARATOR);
        s.push_str(key);
        return s;
    }
    let mut hasher = Sha256::new();
    hasher.update(namespace.as_bytes());
    hasher.update([b':']);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(DIGEST_HEX);
    for byte in &digest[..DIGEST_HEX / 2] {
        hex.push_str(&format!("{byte:02x}"));
    }
    // Keep as much of the readable key as fits, cut on a char boundary.
    let budget = max_len.saturating_sub(DIGEST_HEX + 1);
    let mut readable = String::with_capacity(max_len);
    readable.push_str(namespace);
    readable.push(SEPARATOR);
    readable.push_str(key);
    let mut cut = budget.min(readable.len());
    while !readable.is_char_boundary(cut) {
        cut -= 1;
    }
    readable.truncate(cut);
    // Exactly `max_len` bytes: one `#`, plus one for each byte the cut gave
    // back to stay on a char boundary.
    readable.push('#');
    while readable.len() + DIGEST_HEX < max_len {
        readable.push('#');
    }
    readable.push_str(&hex);
    readable
}

/// Backend keys up to this many bytes are built on the stack.
const INLINE_KEY: usize = 96;

/// A backend key built without a heap allocation when it is short: a hit
/// then allocates nothing for its key (measured: the `String` was ~10% of a
/// memory hit).
pub(crate) enum KeyBuf {
    Inline { bytes: [u8; INLINE_KEY], len: usize },
    Heap(String),
}

impl KeyBuf {
    /// The same key as [`backend_key`].
    pub fn new(namespace: &str, key: &str, max_len: usize) -> Self {
        let full_len = namespace.len() + 1 + key.len();
        if full_len >= max_len || full_len > INLINE_KEY {
            return KeyBuf::Heap(backend_key(namespace, key, max_len));
        }
        let mut bytes = [0u8; INLINE_KEY];
        let mut at = 0;
        for part in [namespace.as_bytes(), b":", key.as_bytes()] {
            bytes[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        KeyBuf::Inline { bytes, len: at }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // Always valid UTF-8: whole `&str`s and ASCII were copied in, so
            // the fallback is unreachable.
            KeyBuf::Inline { bytes, len } => std::str::from_utf8(&bytes[..*len]).unwrap_or(""),
            KeyBuf::Heap(s) => s,
        }
    }
}

/// The smallest `max_key_len` aside accepts: room for the digest and a prefix.
pub(crate) const MIN_MAX_KEY_LEN: usize = DIGEST_HEX + 3 + 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_with_separators_do_not_collide() {
        let a = Key::from_parts(["a:b", "c"]);
        let b = Key::from_parts(["a", "b:c"]);
        let c = Key::from_parts(["a%3Ab", "c"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
        assert_eq!(Key::new("a:b").part("c"), a);
    }

    #[test]
    fn short_keys_are_kept_readable() {
        assert_eq!(backend_key("app", "user:1", 250), "app:user:1");
        assert_eq!(KeyBuf::new("app", "user:1", 250).as_str(), "app:user:1");
        let long = "é".repeat(60);
        assert_eq!(
            KeyBuf::new("app", &long, 250).as_str(),
            backend_key("app", &long, 250)
        );
        assert_eq!(
            KeyBuf::new("app", &long, 64).as_str(),
            backend_key("app", &long, 64)
        );
    }

    #[test]
    fn long_keys_are_hashed_with_readable_prefix_and_bounded_length() {
        let long = "x".repeat(1000);
        let k = backend_key("app", &long, 100);
        assert_eq!(k.len(), 100);
        assert!(k.starts_with("app:xxx"));
        let (_, digest) = k.split_once('#').unwrap_or_default();
        assert_eq!(digest.len(), 32);
        // Same prefix, different tail: different keys.
        let other = format!("{}y", "x".repeat(999));
        assert_ne!(k, backend_key("app", &other, 100));
    }

    #[test]
    fn hashing_cuts_on_char_boundaries() {
        let long = "é".repeat(200);
        let k = backend_key("ns", &long, 64);
        // Padded with `#` to the limit when the cut gave bytes back.
        assert_eq!(k.len(), 64);
        assert!(k.contains('#'));
        for max_len in 60..70 {
            assert_eq!(backend_key("ns", &long, max_len).len(), max_len);
        }
    }

    #[test]
    fn a_key_of_exactly_the_limit_is_hashed() {
        // `app:` + 96 bytes = 100 bytes: hashed, not kept.
        let key = "x".repeat(96);
        let k = backend_key("app", &key, 100);
        assert_eq!(k.len(), 100);
        assert!(k.contains('#'));
        assert_eq!(KeyBuf::new("app", &key, 100).as_str(), k);
        // One byte less is kept readable.
        let short = "x".repeat(95);
        assert_eq!(backend_key("app", &short, 100), format!("app:{short}"));
        assert_eq!(
            KeyBuf::new("app", &short, 100).as_str(),
            backend_key("app", &short, 100)
        );
    }

    /// The logical key whose unhashed backend key would spell `hashed`.
    fn twin_of(namespace: &str, hashed: &str) -> String {
        let prefix = format!("{namespace}:");
        hashed.strip_prefix(&prefix).unwrap_or_default().to_owned()
    }

    #[test]
    fn a_key_crafted_to_look_hashed_is_hashed_too() {
        for long in ["x".repeat(300), "é".repeat(150), "aé".repeat(100)] {
            for max_len in 50..120 {
                let hashed = backend_key("n", &long, max_len);
                let twin = twin_of("n", &hashed);
                assert!(!twin.is_empty());
                let crafted = backend_key("n", &twin, max_len);
                assert_ne!(crafted, hashed, "{long:?} at {max_len}");
                assert_eq!(KeyBuf::new("n", &twin, max_len).as_str(), crafted);
            }
        }
    }

    mod prop {
        use super::super::*;
        use super::twin_of;
        use proptest::prelude::*;

        /// Key strings rich in the characters that matter: separators,
        /// braces, escapes, the hash marker, hex digits, newlines and
        /// multi-byte chars, from empty to well past any limit.
        fn key_strategy() -> impl Strategy<Value = String> {
            prop_oneof![
                "[{}#:%\\n a-f0-9xé€😀]{0,12}",
                "[{}#:%\\n a-f0-9xé€😀]{30,140}",
                any::<String>(),
            ]
        }

        fn setup() -> impl Strategy<Value = (String, usize)> {
            ("[a-z@0-9]{1,6}", 0usize..80)
                .prop_map(|(ns, extra)| (ns.clone(), MIN_MAX_KEY_LEN + ns.len() + extra))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn different_keys_never_share_a_backend_key(
                (ns, max_len) in setup(),
                a in key_strategy(),
                b in key_strategy(),
            ) {
                prop_assume!(a != b);
                let (pa, pb) = (backend_key(&ns, &a, max_len), backend_key(&ns, &b, max_len));
                prop_assert_ne!(&pa, &pb);
                let (ka, kb) = (KeyBuf::new(&ns, &a, max_len), KeyBuf::new(&ns, &b, max_len));
                prop_assert_eq!(ka.as_str(), pa.as_str());
                prop_assert_eq!(kb.as_str(), pb.as_str());
            }

            #[test]
            fn backend_keys_are_bounded_and_hashed_ones_have_no_unhashed_twin(
                (ns, max_len) in setup(),
                key in key_strategy(),
                pad in 0usize..200,
            ) {
                // Also push the key over the limit, so that most cases hash.
                let key = format!("{key}{}", "k".repeat(pad));
                let pk = backend_key(&ns, &key, max_len);
                prop_assert!(pk.len() <= max_len);
                let buf = KeyBuf::new(&ns, &key, max_len);
                prop_assert_eq!(buf.as_str(), pk.as_str());
                let unhashed = format!("{ns}:{key}");
                if pk == unhashed {
                    prop_assert!(pk.len() < max_len);
                } else {
                    prop_assert_eq!(pk.len(), max_len);
                    // The logical key that would spell this hashed key.
                    let twin = twin_of(&ns, &pk);
                    prop_assert_ne!(&twin, &key);
                    prop_assert_ne!(backend_key(&ns, &twin, max_len), pk);
                }
            }
        }
    }
}
