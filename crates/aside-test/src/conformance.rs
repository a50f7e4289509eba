//! The backend conformance suite: checks that an [`aside::backend::Backend`] keeps the
//! contract written on the trait, so that a [`Cache`](aside::Cache) on it
//! keeps the consistency promise.
//!
//! ```no_run
//! use aside::backend::MemoryBackend;
//!
//! // In a test: `#[tokio::test(flavor = "multi_thread")] async fn conforms() { .. }`
//! # async fn conforms() {
//! // A factory: one fresh backend (or handle) per check.
//! aside_test::conformance::run(MemoryBackend::new).await;
//! // And, for a backend whose `leases()` is `Some`:
//! // aside_test::conformance::run_leases(|| MyBackend::connect(..)).await;
//! # }
//! ```
//!
//! # How it works
//! [`run`] calls `make` once per check and runs the check against that
//! backend; [`run_leases`] does the same for the [`Leases`]
//! checks. Every check uses keys and version counter names of its own,
//! unique to the run (`aside-conformance.<run>.<check>:<name>`, counters
//! `aside-conformance.<run>.<check>:t:<name>`), so `make` may hand out
//! fresh empty backends or handles to one shared store (a Redis server, a
//! table) that other runs use at the same time; the suite never touches
//! other keys and never flushes anything. What it writes expires within a
//! minute.
//!
//! Run it inside a tokio runtime: the race checks spawn tasks (a
//! multi-threaded runtime races them in parallel). Each operation is given
//! 10 s; the whole suite takes a few seconds (it sleeps to let TTLs lapse).
//!
//! # Failures are panics
//! Like `assert!`, a failed check **panics**: that panic is the suite's
//! report, naming the check, the contract clause it enforces and what the
//! backend did instead. A backend operation that returns an error or does not
//! complete in time is a failure too (the suite needs a healthy backend). This
//! is the one place in this crate where fallible paths panic on purpose; the
//! suite stops at the first failure.
//!
//! The checks are listed in [`CHECKS`] and [`LEASE_CHECKS`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aside::backend::{
    AcquireRequest, Acquired, Backend, BackendError, Entry, FillRequest, FillToken, Found,
    LeaseAsk, Leases, ReadRequest, SetRequest, Stored,
};

mod batch;
mod leases;
mod race;
mod storage;
mod ttl;

/// How long one backend operation may take before the check fails.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the core checks (the [`Backend`] contract, [`CHECKS`]) against
/// backends made by `make`, one per check. Panics at the first check that
/// fails; see the [module documentation](self).
pub async fn run<B: Backend>(make: impl Fn() -> B) {
    run_checks(&RunId::new(), &make).await;
}

/// Runs the [`Leases`] checks ([`LEASE_CHECKS`]) against backends made by
/// `make`, one per check. For backends whose [`Backend::leases`] is `Some`
/// (the suite fails at once if it is `None`); run [`run`] as well. Panics at
/// the first check that fails; see the [module documentation](self).
pub async fn run_leases<B: Backend>(make: impl Fn() -> B) {
    run_lease_checks(&RunId::new(), &make).await;
}

/// Defines a runner that runs `checks` in order, each against a backend of
/// its own, and the list of their names.
macro_rules! suite {
    ($(#[$doc:meta])* $names:ident, $runner:ident: $($module:ident::$check:ident),* $(,)?) => {
        $(#[$doc])*
        pub const $names: &[&str] = &[$(stringify!($check)),*];

        async fn $runner<B: Backend>(run: &RunId, make: &impl Fn() -> B) {
            $( $module::$check(&run.ctx(stringify!($check), make())).await; )*
        }
    };
}

suite!(
    /// The checks [`run`] runs, in order (the names its failures report).
    CHECKS, run_checks:
    storage::profile_is_consistent,
    storage::missing_key_reads_none,
    storage::acquire_creates_fresh_tokens,
    storage::read_creates_nothing,
    storage::fill_stores_exact_bytes,
    storage::marker_is_stable_while_it_exists,
    storage::fill_after_invalidate_is_refused,
    storage::fill_after_set_is_refused,
    storage::recreated_tokens_differ,
    storage::set_is_unconditional_and_removes_the_marker,
    storage::fill_after_remove_versions_is_refused,
    storage::absent_tokens_never_validate,
    storage::invalidate_and_remove_of_missing_are_ok,
    batch::a_batch_read_answers_like_single_reads,
    batch::batch_writes_keep_the_fill_contract,
    ttl::versions_outlive_the_marker_ttl,
    ttl::lapsed_tokens_stay_gone,
    ttl::entries_expire_after_their_ttl,
    race::fill_racing_invalidate_is_refused,
    race::no_stale_read_after_invalidate,
);

suite!(
    /// The checks [`run_leases`] runs, in order.
    LEASE_CHECKS, run_lease_checks:
    leases::first_caller_holds_second_is_busy,
    leases::renew_only_by_the_holder,
    leases::release_by_the_holder_frees_the_lease,
    leases::fill_with_the_held_lease_releases_it,
    leases::fill_whose_lease_was_lost_is_refused,
    leases::watch_fires_after_fill_or_release,
);

/// The contract clauses the checks enforce (quoted in failure reports).
mod clause {
    pub const PROFILE: &str = "`profile` describes the backend and does not change; \
         `inspect().ping()`, where implemented, answers (a remote backend must be reachable)";
    pub const GET_NOW: &str = "`get_now` and `read_one`, where implemented, answer exactly as \
         a `read` of that one key would";
    pub const GET: &str = "`read` returns exactly the bytes of the last stored value of each \
         key that has not expired or been invalidated, or `None`";
    pub const ACQUIRE: &str = "`acquire` reads the entry, creates the absent marker and \
         counters with fresh tokens (never 0), and returns the tokens, in the order asked";
    pub const SAME_MARKER: &str = "a token is created only when absent: while the key's marker \
         (or a counter) exists, every `acquire` returns the same token";
    pub const READ_VERSIONS: &str = "`read` returns the counters' current tokens (0 for an \
         absent counter), and creates nothing";
    pub const READ_MANY: &str = "`read` of many keys returns, in order, what a read of each key \
         returns, and the counters' tokens; it creates nothing";
    pub const BATCH: &str = "`acquire`, `fill` and `set` of many keys answer as they would for \
         each key alone, key by key, in order";
    pub const FILL: &str = "`fill` stores only if the key's marker and every listed counter still \
         hold the token's values, and returns whether it stored";
    pub const FILL_AFTER_INVALIDATE: &str = "`invalidate` removes the key and its marker: a fill \
         with a token read before it is refused and stores nothing";
    pub const FILL_AFTER_SET: &str = "`set` removes the key's marker: a fill with a token read \
         before it is refused and stores nothing";
    pub const SET: &str = "`set` stores unconditionally and removes the key's marker";
    pub const FRESH: &str = "tokens are only ever created absent-to-fresh (never incremented): \
         a re-created token never equals one a load or an entry recorded";
    pub const REMOVE: &str = "`remove_versions` removes the counters: a fill with a token that \
         recorded them is refused, and they read as 0 until a load re-creates them";
    pub const ABSENT: &str = "token 0 means absent and never validates a fill";
    pub const INVALIDATE: &str = "`invalidate` removes every listed key and its marker; \
         invalidating a missing key (or removing a missing counter) is not an error";
    pub const KEEP_VERSIONS: &str = "`fill` and `set` keep the counters they list at least as \
         long as the entry they store (a counter created with a short `marker_ttl` outlives it)";
    pub const NO_RECREATE: &str = "`fill` and `set` never re-create a token: a counter that \
         lapsed stays absent until a load creates a fresh one";
    pub const EXPIRY: &str = "an entry is returned until its TTL and never after it";
    pub const RACE: &str = "a fill with a token read before an invalidation that completed \
         before the fill began is refused, under any concurrency";
    pub const NO_STALE: &str = "after `invalidate` returns, no read returns a value whose load \
         began before it (conditional fills are atomic with invalidations)";
    pub const LEASE_TAKE: &str = "`acquire` with a lease takes the key's lease for the first \
         caller (`Lease::Held`) and reports `Lease::Busy` with the time left (> 0) to others";
    pub const LEASE_RENEW: &str = "`Leases::renew` extends a lease only for its holder: `true` \
         for the holder, `false` for any other token";
    pub const LEASE_RELEASE: &str = "`Leases::release` by the holder frees the lease (the next \
         caller takes it); by another token it changes nothing";
    pub const LEASE_FILL: &str = "a fill whose token holds the lease stores only while the lease \
         is that token's, and releases it; a refused fill never releases another's lease";
    pub const LEASE_WATCH: &str = "a reliable `FillWatch` from `watch_fills` fires after the \
         holder's fill or release of the key";
}

/// One run of the suite: names keys so that runs and checks never share one.
struct RunId(String);

impl RunId {
    fn new() -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        RunId(format!("{:x}.{nanos:x}.{n}", std::process::id()))
    }

    fn ctx<B: Backend>(&self, check: &'static str, backend: B) -> Ctx<B> {
        Ctx {
            backend: Arc::new(backend),
            check,
            prefix: Arc::from(format!("aside-conformance.{}.{check}", self.0)),
        }
    }
}

/// A check's backend, names and reporting. Cheap to clone (for spawned
/// tasks).
struct Ctx<B> {
    backend: Arc<B>,
    check: &'static str,
    prefix: Arc<str>,
}

impl<B> Clone for Ctx<B> {
    fn clone(&self) -> Self {
        Ctx {
            backend: Arc::clone(&self.backend),
            check: self.check,
            prefix: Arc::clone(&self.prefix),
        }
    }
}

/// Fails the check unless `cond`: `ensure!(ctx, cond, clause, "what happened {}", x)`.
macro_rules! ensure {
    ($ctx:expr, $cond:expr, $clause:expr, $($detail:tt)+) => {
        if !$cond {
            $ctx.fail($clause, format_args!($($detail)+))
        }
    };
}
use ensure;

/// Entry bytes as the checks compare them.
type Bytes = Vec<u8>;

fn bytes(s: Option<Stored>) -> Option<Bytes> {
    s.map(|s| s.bytes().to_vec())
}

impl<B: Backend> Ctx<B> {
    /// A data key of this check, shaped as the cache shapes them
    /// (`namespace:key`; the prefix is the namespace).
    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// A version counter of this check (`namespace:t:<tag>`).
    fn version(&self, name: &str) -> String {
        format!("{}:t:{name}", self.prefix)
    }

    /// A lease token (or any unique string) of this check.
    fn unique(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Reports a failed check: the panic is the report.
    fn fail(&self, clause: &str, detail: fmt::Arguments<'_>) -> ! {
        panic!(
            "aside conformance check `{}` failed\n  contract: {clause}\n  found: {detail}",
            self.check
        )
    }

    /// Awaits a backend operation; an error or a hang fails the check.
    async fn op<T>(&self, what: &str, fut: impl Future<Output = Result<T, BackendError>>) -> T {
        match tokio::time::timeout(OP_TIMEOUT, fut).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => panic!(
                "aside conformance check `{}` failed: `{what}` returned an error: {e:?} \
                 (the suite needs a healthy backend; errors must be returned, never panicked)",
                self.check
            ),
            Err(_) => panic!(
                "aside conformance check `{}` failed: `{what}` did not complete within {OP_TIMEOUT:?}",
                self.check
            ),
        }
    }

    /// A read of one key, its bytes.
    async fn get(&self, key: &str) -> Option<Bytes> {
        self.read(key, &[]).await.0
    }

    /// An acquisition of one key without a lease.
    async fn acquire(
        &self,
        key: &str,
        versions: &[String],
        marker_ttl: Duration,
    ) -> (Option<Bytes>, FillToken) {
        let keys = [key.to_owned()];
        let got = self
            .acquire_many(AcquireRequest::new(&keys, versions, marker_ttl))
            .await;
        let Some(got) = got.into_iter().next() else {
            panic!(
                "aside conformance check `{}` failed: `acquire` of one key gave no answer",
                self.check
            )
        };
        (bytes(got.entry), got.token)
    }

    /// A read of one key and the counters `versions`.
    async fn read(&self, key: &str, versions: &[String]) -> (Option<Bytes>, Vec<u64>) {
        let keys = [key.to_owned()];
        let found = self.read_many(&keys, versions).await;
        let Some(entry) = found.entries.into_iter().next() else {
            panic!(
                "aside conformance check `{}` failed: `read` of one key gave no answer",
                self.check
            )
        };
        (bytes(entry), found.versions)
    }

    /// A read of `keys` and `versions`, checked for the number of answers.
    async fn read_many(&self, keys: &[String], versions: &[String]) -> Found {
        let request = ReadRequest::new(keys, versions);
        let found = self.op("read", self.backend.read(&request)).await;
        ensure!(
            self,
            found.entries.len() == keys.len() && found.versions.len() == versions.len(),
            clause::READ_MANY,
            "`read` of {} keys and {} counters answered {} entries and {} tokens",
            keys.len(),
            versions.len(),
            found.entries.len(),
            found.versions.len()
        );
        found
    }

    /// An acquisition, checked for the number of answers.
    async fn acquire_many(&self, request: AcquireRequest<'_>) -> Vec<Acquired> {
        let got = self.op("acquire", self.backend.acquire(&request)).await;
        ensure!(
            self,
            got.len() == request.keys.len(),
            clause::ACQUIRE,
            "`acquire` of {} keys returned {} answers",
            request.keys.len(),
            got.len()
        );
        got
    }

    /// A fill of one key.
    async fn fill(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        token: &FillToken,
        versions: &[String],
    ) -> bool {
        let fills = [(
            Entry::new(key, Stored::new(value.to_vec()), ttl),
            token.clone(),
        )];
        self.fill_many(&fills, versions).await[0]
    }

    /// Fills, checked for the number of answers.
    async fn fill_many(&self, fills: &[(Entry, FillToken)], versions: &[String]) -> Vec<bool> {
        let request = FillRequest::new(fills, versions);
        let stored = self.op("fill", self.backend.fill(&request)).await;
        ensure!(
            self,
            stored.len() == fills.len(),
            clause::FILL,
            "`fill` of {} entries returned {} answers",
            fills.len(),
            stored.len()
        );
        stored
    }

    /// A write of one key.
    async fn set(&self, key: &str, value: &[u8], ttl: Duration, versions: &[String]) {
        let entries = [Entry::new(key, Stored::new(value.to_vec()), ttl)];
        self.set_many(&entries, versions).await;
    }

    async fn set_many(&self, entries: &[Entry], versions: &[String]) {
        let request = SetRequest::new(entries, versions);
        self.op("set", self.backend.set(&request)).await;
    }

    async fn invalidate(&self, keys: &[String]) {
        self.op("invalidate", self.backend.invalidate(keys)).await;
    }

    async fn remove_versions(&self, versions: &[String]) {
        self.op("remove_versions", self.backend.remove_versions(versions))
            .await;
    }

    /// An acquisition of one key taking its lease with `token` for `ttl`.
    async fn acquire_leased(
        &self,
        key: &str,
        versions: &[String],
        token: &str,
        ttl: Duration,
    ) -> (Option<Bytes>, FillToken) {
        let keys = [key.to_owned()];
        let request = AcquireRequest::new(&keys, versions, Duration::from_secs(60))
            .with_lease(LeaseAsk::new(token, ttl));
        let got = self.acquire_many(request).await;
        let Some(got) = got.into_iter().next() else {
            panic!(
                "aside conformance check `{}` failed: `acquire` of one key gave no answer",
                self.check
            )
        };
        (bytes(got.entry), got.token)
    }

    /// The backend's leases; fails the check if it has none.
    fn leases(&self) -> &dyn Leases {
        match self.backend.leases() {
            Some(l) => l,
            None => panic!(
                "aside conformance check `{}` failed: `run_leases` needs a backend whose \
                 `leases()` is `Some` (this one has none: run only `run`)",
                self.check
            ),
        }
    }
}

/// Awaits a task the check spawned, passing its panic (a failed check) on.
async fn join<T>(ctx_check: &str, handle: tokio::task::JoinHandle<T>) -> T {
    match handle.await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(e) => panic!(
                "aside conformance check `{ctx_check}` failed: a task of the check was \
                 cancelled ({e}); is the runtime shutting down?"
            ),
        },
    }
}
