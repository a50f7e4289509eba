//! The backend conformance suite (`aside_test::conformance`) against the
//! memory backend, a real redis-server, the two-level backend, the
//! fault-injecting wrapper (`aside_test::FaultyBackend`) with nothing
//! switched on, and a third-party style backend written here on a
//! `Mutex<HashMap>`, which shows that the suite depends on nothing but the
//! `Backend` trait. The same backend with one defect switched on must fail
//! the suite, naming the clause it breaks, and so must the wrapper with a
//! fault switched on: the suite can fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, FillRequest, FillToken, Found, MemoryBackend,
    Profile, ReadRequest, RedisBackend, SetRequest, Stored, TieredBackend,
};
use aside_test::fixtures::redis_server;
use aside_test::{Failure, FaultControl, FaultyBackend, Op, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_conforms() {
    conformance::run(MemoryBackend::new).await;
    assert!(MemoryBackend::new().leases().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_conforms() {
    // One server for every check: the suite gives each check keys of its own.
    let redis = redis_server();
    let url = redis.url();
    let make = || RedisBackend::new(&url).expect("a valid URL");
    conformance::run(make).await;
    conformance::run_leases(make).await;
}

/// The two-level backend over Redis, with its backplane, and over the memory
/// backend (any backend can be L2): its copies must keep the same contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_backend_conforms() {
    let redis = redis_server();
    let l2 = RedisBackend::new(&redis.url()).expect("a valid URL");
    let backplane = l2.backplane("aside:events").expect("a client");
    let tiered = TieredBackend::builder(l2)
        .backplane(backplane)
        .build()
        .expect("a tiered backend");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tiered.stats().gaps == 0 {
        assert!(Instant::now() < deadline, "the backplane never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    conformance::run(|| tiered.clone()).await;
    conformance::run_leases(|| tiered.clone()).await;
    assert!(tiered.stats().l1_hits > 0, "the suite never read a copy");
    conformance::run(|| {
        TieredBackend::builder(MemoryBackend::new())
            .build()
            .expect("a tiered backend")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_map_backend_conforms() {
    conformance::run(|| MapBackend::new(None)).await;
}

/// With nothing switched on, the fault-injecting wrapper passes every call
/// through: it keeps the contract exactly when the backend it wraps does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_memory_backend_without_faults_conforms() {
    let control = FaultControl::new();
    conformance::run(|| FaultyBackend::with_control(MemoryBackend::new(), control.clone())).await;
    assert!(FaultyBackend::new(MemoryBackend::new()).leases().is_none());
    assert_passed_through(&control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_redis_backend_without_faults_conforms() {
    let redis = redis_server();
    let url = redis.url();
    let control = FaultControl::new();
    let make = || {
        let inner = RedisBackend::new(&url).expect("a valid URL");
        FaultyBackend::with_control(inner, control.clone())
    };
    conformance::run(make).await;
    conformance::run_leases(make).await;
    assert_passed_through(&control);
    assert!(
        control.calls(Op::Lease) > 0,
        "the lease checks went through"
    );
}

/// The suite's calls went through the wrapper, and none was failed.
fn assert_passed_through(control: &FaultControl) {
    for op in [Op::Read, Op::Acquire, Op::Fill, Op::Set, Op::Invalidate] {
        assert!(control.calls(op) > 0, "no {op:?} call went through");
    }
    assert!(Op::ALL.iter().all(|op| control.injected(*op) == 0));
}

/// The wrapper with a fault switched on fails the suite: a fill applied but
/// reported failed (the ambiguous outcome), and reads failing now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_fails_a_faulty_backend() {
    let message = suite_panic(|| {
        let backend = FaultyBackend::new(MemoryBackend::new());
        let faults = backend.control();
        faults.failure(Op::Fill, Failure::AppliedThenError);
        faults.fail_always(Op::Fill);
        backend
    })
    .await
    .expect("the suite fails a fill applied but reported failed");
    assert!(
        message.contains("`fill` returned an error") && message.contains("applied: true"),
        "{message}"
    );
    let message = suite_panic(|| {
        let backend = FaultyBackend::new(MemoryBackend::new());
        backend.control().fail_with_probability(Op::Read, 0.2);
        backend
    })
    .await
    .expect("the suite fails reads that fail now and then");
    assert!(
        message.contains("returned an error") && message.contains("InjectedFault"),
        "{message}"
    );
}

/// Each defect fails the suite, in the check of the clause it breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_fails_broken_backends() {
    for (flaw, check) in [
        (
            Flaw::InvalidateKeepsMarker,
            "fill_after_invalidate_is_refused",
        ),
        (Flaw::CounterTokens, "recreated_tokens_differ"),
        (
            Flaw::FillIgnoresVersions,
            "fill_after_remove_versions_is_refused",
        ),
        (Flaw::NoExpiry, "entries_expire_after_their_ttl"),
        (Flaw::FillNotAtomic, "no_stale_read_after_invalidate"),
        (
            Flaw::ManyKeysReadWithoutTokens,
            "a_batch_read_answers_like_single_reads",
        ),
    ] {
        let message = suite_failure(flaw).await;
        assert!(
            message.contains(&format!("check `{check}` failed")),
            "{flaw:?} should fail `{check}`; the suite reported: {message}"
        );
        assert!(message.contains("contract: "), "{message}");
    }
}

/// Runs the suite on a flawed backend in its own task; returns its panic
/// message (and fails if it passed).
async fn suite_failure(flaw: Flaw) -> String {
    suite_panic(move || MapBackend::new(Some(flaw)))
        .await
        .unwrap_or_else(|| panic!("the conformance suite passed a backend with the flaw {flaw:?}"))
}

/// Runs the suite on backends made by `make` in its own task; returns its
/// panic message, or `None` if it passed.
async fn suite_panic<B: Backend>(make: impl Fn() -> B + Send + Sync + 'static) -> Option<String> {
    let Err(e) = tokio::spawn(conformance::run(make)).await else {
        return None;
    };
    let payload = e.into_panic();
    Some(
        match (
            payload.downcast_ref::<String>(),
            payload.downcast_ref::<&str>(),
        ) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => (*s).to_owned(),
            (None, None) => String::new(),
        },
    )
}

/// A deliberate defect of [`MapBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// `invalidate` deletes the entry but leaves the marker: a load that
    /// began before the invalidation still fills (the classic stale set).
    InvalidateKeepsMarker,
    /// Tokens are per-key counters that start again at 1 when created, like
    /// `INCR` on a missing key: a removed token comes back equal.
    CounterTokens,
    /// `fill` checks the marker but not the version counters.
    FillIgnoresVersions,
    /// Entries never expire.
    NoExpiry,
    /// `fill` checks the tokens, then writes in a second step: an
    /// invalidation landing between them is lost (caught by the race check).
    FillNotAtomic,
    /// A read of several keys reads the entries but reports every counter
    /// absent.
    ManyKeysReadWithoutTokens,
}

/// A third-party backend: entries and tokens in `HashMap`s behind one
/// `Mutex` (so every operation is atomic), expiry checked on access, no
/// eviction (a test backend: expired items stay until overwritten).
///
/// Profile: `in_process()`. There is no network, so nothing for the
/// cache to time or guard (`remote: false`), and it hands back the very
/// `Stored` it was given and never returns an entry past its TTL, which is
/// what `shares_stored: true` promises.
#[derive(Debug)]
struct MapBackend {
    state: Mutex<State>,
    flaw: Option<Flaw>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, (Stored, Instant)>,
    markers: HashMap<String, (u64, Instant)>,
    versions: HashMap<String, (u64, Instant)>,
}

/// Fresh tokens: a process-wide counter never repeats within the process,
/// which is all an in-process store needs (a shared store would use 63
/// random bits). Never 0 (absent).
fn fresh_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The live token of `name`, created (fresh) if absent, kept at least `ttl`.
fn token_of(
    tokens: &mut HashMap<String, (u64, Instant)>,
    name: &str,
    ttl: Duration,
    flaw: Option<Flaw>,
) -> u64 {
    let now = Instant::now();
    let until = now + ttl;
    match tokens.get_mut(name) {
        Some((t, u)) if *u > now => {
            *u = (*u).max(until);
            *t
        }
        _ => {
            let t = if flaw == Some(Flaw::CounterTokens) {
                1
            } else {
                fresh_token()
            };
            tokens.insert(name.to_owned(), (t, until));
            t
        }
    }
}

/// The live token of `name`, or 0.
fn read(tokens: &HashMap<String, (u64, Instant)>, name: &str) -> u64 {
    match tokens.get(name) {
        Some((t, until)) if *until > Instant::now() => *t,
        _ => 0,
    }
}

/// Keeps a live token at least `ttl`; never creates one (nor revives a
/// lapsed one: it would validate the loads that recorded it).
fn extend(tokens: &mut HashMap<String, (u64, Instant)>, name: &str, ttl: Duration) {
    let now = Instant::now();
    if let Some((_, until)) = tokens.get_mut(name).filter(|(_, until)| *until > now) {
        *until = (*until).max(now + ttl);
    }
}

impl MapBackend {
    fn new(flaw: Option<Flaw>) -> Self {
        MapBackend {
            state: Mutex::new(State::default()),
            flaw,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live entry of `key`.
    fn entry(&self, state: &State, key: &str) -> Option<Stored> {
        let (stored, until) = state.entries.get(key)?;
        (*until > Instant::now() || self.flaw == Some(Flaw::NoExpiry)).then(|| stored.clone())
    }

    /// Whether the key's marker and the counters still hold `token`'s values
    /// (an absent token, 0, matches nothing).
    fn valid(&self, state: &State, key: &str, token: &FillToken, versions: &[String]) -> bool {
        let marker_ok = token.marker() != 0 && read(&state.markers, key) == token.marker();
        let versions_ok = self.flaw == Some(Flaw::FillIgnoresVersions)
            || (versions.len() == token.versions().len()
                && versions
                    .iter()
                    .zip(token.versions())
                    .all(|(name, &t)| t != 0 && read(&state.versions, name) == t));
        marker_ok && versions_ok
    }

    fn store(state: &mut State, key: &str, value: Stored, ttl: Duration, versions: &[String]) {
        state
            .entries
            .insert(key.to_owned(), (value, Instant::now() + ttl));
        state.markers.remove(key);
        for name in versions {
            extend(&mut state.versions, name, ttl);
        }
    }
}

#[async_trait::async_trait]
impl Backend for MapBackend {
    fn profile(&self) -> Profile {
        Profile::in_process()
    }

    fn get_now(&self, key: &str) -> Option<Result<Option<Stored>, BackendError>> {
        Some(Ok(self.entry(&self.state(), key)))
    }

    async fn read(&self, request: &ReadRequest<'_>) -> Result<Found, BackendError> {
        // One lock: every entry and counter in one atomic read.
        let state = self.state();
        let entries = request.keys.iter().map(|k| self.entry(&state, k)).collect();
        let many = request.keys.len() > 1;
        let tokens = request
            .versions
            .iter()
            .map(|v| match self.flaw {
                Some(Flaw::ManyKeysReadWithoutTokens) if many => 0,
                _ => read(&state.versions, v),
            })
            .collect();
        Ok(Found::new(entries, tokens))
    }

    async fn acquire(&self, request: &AcquireRequest<'_>) -> Result<Vec<Acquired>, BackendError> {
        // One lock: the entries and the tokens are read in one atomic step.
        let mut state = self.state();
        let ttl = request.marker_ttl;
        Ok(request
            .keys
            .iter()
            .map(|key| {
                let entry = self.entry(&state, key);
                let marker = token_of(&mut state.markers, key, ttl, self.flaw);
                let tokens = request
                    .versions
                    .iter()
                    .map(|v| token_of(&mut state.versions, v, ttl, self.flaw))
                    .collect();
                Acquired::new(entry, FillToken::new(marker, tokens))
            })
            .collect())
    }

    async fn fill(&self, request: &FillRequest<'_>) -> Result<Vec<bool>, BackendError> {
        let versions = request.versions;
        let mut stored = Vec::with_capacity(request.fills.len());
        for (entry, token) in request.fills {
            let (key, value, ttl) = (&entry.key, entry.value.clone(), entry.ttl);
            if self.flaw == Some(Flaw::FillNotAtomic) {
                let valid = self.valid(&self.state(), key, token, versions);
                tokio::task::yield_now().await; // an invalidation may land here
                if valid {
                    Self::store(&mut self.state(), key, value, ttl, versions);
                }
                stored.push(valid);
                continue;
            }
            // One lock for the check and the write: atomic with `invalidate`.
            let mut state = self.state();
            let valid = self.valid(&state, key, token, versions);
            if valid {
                Self::store(&mut state, key, value, ttl, versions);
            }
            stored.push(valid);
        }
        Ok(stored)
    }

    async fn set(&self, request: &SetRequest<'_>) -> Result<(), BackendError> {
        let mut state = self.state();
        for entry in request.entries {
            let value = entry.value.clone();
            Self::store(&mut state, &entry.key, value, entry.ttl, request.versions);
        }
        Ok(())
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), BackendError> {
        let mut state = self.state();
        for key in keys {
            state.entries.remove(key);
            if self.flaw != Some(Flaw::InvalidateKeepsMarker) {
                state.markers.remove(key);
            }
        }
        Ok(())
    }

    async fn remove_versions(&self, versions: &[String]) -> Result<(), BackendError> {
        let mut state = self.state();
        for name in versions {
            state.versions.remove(name);
        }
        Ok(())
    }
}
