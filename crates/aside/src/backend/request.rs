//! What the cache asks a [`Backend`](super::Backend), and what it answers:
//! one request type per operation, each for any number of keys.
//!
//! Requests are `#[non_exhaustive]` structs built by the cache (and by the
//! conformance suite through their constructors): a need that comes later
//! (a per-call option of a two-level backend, say) is a new field with a
//! default, and backends that ignore it keep compiling. One request covers
//! one key or a batch: a backend answers a batch of one as it answers a
//! single key, so the cache has one path for both.

use std::time::Duration;

use super::Stored;

/// Read entries and the current tokens of version counters
/// ([`Backend::read`](super::Backend::read)). Creates nothing.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ReadRequest<'a> {
    /// The entry keys, in the order the answer lists them.
    pub keys: &'a [String],
    /// The version counters (tags, the namespace) whose tokens to read.
    pub versions: &'a [String],
}

impl<'a> ReadRequest<'a> {
    /// A read of `keys` and of the counters `versions`.
    pub fn new(keys: &'a [String], versions: &'a [String]) -> Self {
        ReadRequest { keys, versions }
    }
}

/// The answer to a [`ReadRequest`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Found {
    /// One per key asked for, in order: its entry, or `None`.
    pub entries: Vec<Option<Stored>>,
    /// One per counter asked for, in order: its token, 0 when absent.
    pub versions: Vec<u64>,
}

impl Found {
    /// An answer: entries and tokens in the order asked.
    pub fn new(entries: Vec<Option<Stored>>, versions: Vec<u64>) -> Self {
        Found { entries, versions }
    }
}

/// Before a load: read each entry, read (creating absent ones with fresh
/// tokens kept `marker_ttl`) each key's marker and the version counters,
/// and, with a `lease`, try to take each key's lease
/// ([`Backend::acquire`](super::Backend::acquire)).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct AcquireRequest<'a> {
    /// The keys about to be loaded.
    pub keys: &'a [String],
    /// The version counters the loaded entries will depend on.
    pub versions: &'a [String],
    /// How long a created marker or counter lives without a fill.
    pub marker_ttl: Duration,
    /// The lease to take on each key, on a backend with
    /// [`Leases`](super::Leases); ignored by one without.
    pub lease: Option<LeaseAsk<'a>>,
}

impl<'a> AcquireRequest<'a> {
    /// An acquisition of `keys` without a lease.
    pub fn new(keys: &'a [String], versions: &'a [String], marker_ttl: Duration) -> Self {
        AcquireRequest {
            keys,
            versions,
            marker_ttl,
            lease: None,
        }
    }

    /// The same request, also taking each key's lease.
    #[must_use]
    pub fn with_lease(mut self, lease: LeaseAsk<'a>) -> Self {
        self.lease = Some(lease);
        self
    }
}

/// A lease a load asks for: its token (random, one per load) and how long
/// it holds unless renewed.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LeaseAsk<'a> {
    /// The load's lease token.
    pub token: &'a str,
    /// How long the lease holds unless renewed.
    pub ttl: Duration,
}

impl<'a> LeaseAsk<'a> {
    /// A lease with `token` for `ttl`.
    pub fn new(token: &'a str, ttl: Duration) -> Self {
        LeaseAsk { token, ttl }
    }
}

/// One key's answer to an [`AcquireRequest`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Acquired {
    /// The entry stored now, if any: a load that finished meanwhile filled
    /// it (the cache re-checks it before loading).
    pub entry: Option<Stored>,
    /// What the load's fill must still find.
    pub token: FillToken,
}

impl Acquired {
    /// A key's answer.
    pub fn new(entry: Option<Stored>, token: FillToken) -> Self {
        Acquired { entry, token }
    }
}

/// One entry to write: its key, bytes and how long the backend keeps it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Entry {
    /// The entry key.
    pub key: String,
    /// The entry bytes.
    pub value: Stored,
    /// How long the backend keeps it.
    pub ttl: Duration,
}

impl Entry {
    /// An entry to write.
    pub fn new(key: impl Into<String>, value: Stored, ttl: Duration) -> Self {
        Entry {
            key: key.into(),
            value,
            ttl,
        }
    }
}

/// Conditional writes after loads ([`Backend::fill`](super::Backend::fill)):
/// each entry is stored only if its token still holds.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FillRequest<'a> {
    /// Each entry with the token its load read.
    pub fills: &'a [(Entry, FillToken)],
    /// The version counters every entry depends on, in the order of the
    /// tokens' [`versions`](FillToken::versions).
    pub versions: &'a [String],
}

impl<'a> FillRequest<'a> {
    /// Fills of `fills`, depending on the counters `versions`.
    pub fn new(fills: &'a [(Entry, FillToken)], versions: &'a [String]) -> Self {
        FillRequest { fills, versions }
    }
}

/// Unconditional writes ([`Backend::set`](super::Backend::set)).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct SetRequest<'a> {
    /// The entries to write.
    pub entries: &'a [Entry],
    /// The version counters every entry recorded (kept at least as long).
    pub versions: &'a [String],
}

impl<'a> SetRequest<'a> {
    /// Writes of `entries`, which recorded the counters `versions`.
    pub fn new(entries: &'a [Entry], versions: &'a [String]) -> Self {
        SetRequest { entries, versions }
    }
}

/// What a load saw when it began: the key's marker, the version counters it
/// depends on and its lease; see [`Backend::fill`](super::Backend::fill).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FillToken {
    marker: u64,
    versions: Vec<u64>,
    lease: Lease,
}

/// A load's lease on a key, as an [`AcquireRequest`] found it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Lease {
    /// No lease was asked for, or the backend has none.
    #[default]
    None,
    /// This load holds the lease, with this token: its fill writes only if
    /// the token still holds, and releases it.
    Held(String),
    /// Another load holds it; it lapses in this long unless renewed.
    Busy(Duration),
}

impl FillToken {
    /// A token for the key's `marker` and the tokens of the version
    /// counters, in the order they were asked for (0: absent, which never
    /// validates a fill).
    pub fn new(marker: u64, versions: Vec<u64>) -> Self {
        Self {
            marker,
            versions,
            lease: Lease::None,
        }
    }

    /// The same token with a lease state.
    #[must_use]
    pub fn with_lease(mut self, lease: Lease) -> Self {
        self.lease = lease;
        self
    }

    /// The load's lease.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The lease token this load holds, if it holds one.
    pub fn held_lease(&self) -> Option<&str> {
        match &self.lease {
            Lease::Held(t) => Some(t),
            _ => None,
        }
    }

    /// The key's marker token.
    pub fn marker(&self) -> u64 {
        self.marker
    }

    /// The version counters' tokens.
    pub fn versions(&self) -> &[u64] {
        &self.versions
    }

    /// Whether the token can validate a fill at all: no part of it is
    /// absent (0).
    pub fn is_complete(&self) -> bool {
        self.marker != 0 && !self.versions.contains(&0)
    }
}
