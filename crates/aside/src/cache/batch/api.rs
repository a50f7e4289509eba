//! The public batch methods: `get_many_or_load` and its variants.

use std::collections::HashMap;

use super::super::entry::{Deps, EntryOptions};
use super::{Cache, Slot, Value};
use crate::error::Error;
use crate::loader::BatchFn;

impl Cache {
    /// Returns the values of `keys`, in the caller's order, from the cache;
    /// the misses are loaded with **one** call of `batch_loader` and cached
    /// (the bulk form of [`get_or_load`](Self::get_or_load), like Caffeine's
    /// `getAll`).
    ///
    /// The round trips do not grow with the number of keys: one read of all
    /// of them (an `MGET` on Redis, with the tag and namespace tokens they
    /// depend on; on a two-level backend, one read of L2 for the keys L1
    /// does not hold), and for the misses one request that reads their
    /// tokens and takes their leases, then one that fills them all, each
    /// entry with its own jittered TTL. Batches over
    /// [`batch_chunk_size`](crate::CacheBuilder::batch_chunk_size) keys send
    /// one request per chunk (and fills one per 4 MiB of values). Cached
    /// entries carrying tags the call did not name cost one more read, and
    /// keys another process holds the lease of cost a request per wait.
    /// (The usual fix for N+1 lookups in the textbook code still asks the
    /// cache key by key: N round trips.)
    ///
    /// `batch_loader` gets the keys to load (each once, in the order first
    /// asked) and returns the values it found by key. It is a closure, so
    /// that its parameter's type is inferred; a named
    /// [`BatchLoader`](crate::BatchLoader) is passed as one with
    /// [`into_fn`](crate::BatchLoader::into_fn). A key it leaves out
    /// does not exist: it is answered `None` and, unless
    /// [`negative_ttl`](crate::CacheBuilder::negative_ttl) is `None`,
    /// cached as a negative entry, so the next call does not ask for it
    /// again. Keys the loader returns that were not asked for are ignored,
    /// not cached: no token of theirs was read before the load, so nothing
    /// could tell whether an invalidation came in between (load them by
    /// asking for them). A key asked for several times is read and loaded
    /// once, and answered at each of its positions.
    ///
    /// # Concurrent calls
    /// Keys that another call in this process is already loading (a
    /// `get_or_load`, or another batch) are awaited, not loaded again, even
    /// when that call registered its load at the same moment as this one;
    /// the batch waits for those loads first, then loads the rest, so it may
    /// take up to their time plus its own. Its own loads are shared in turn
    /// with `get_or_load` callers and batches that ask for the same keys
    /// meanwhile. Batches never wait for each other in a cycle, whatever
    /// order they list their keys in. On a backend with leases (Redis), keys another process is
    /// loading are awaited the same way, bounded by
    /// [`lease_wait`](crate::CacheBuilder::lease_wait). Every key keeps the
    /// guarantees of `get_or_load`: its tokens are read before the loader
    /// runs and its fill is refused if it was invalidated meanwhile, and a
    /// value shared with a caller is proven current for it. The load runs in
    /// its own task: dropping the returned future does not cancel it.
    ///
    /// The batch's leases are renewed from the start of the loader to the
    /// last fill, not while their requests are being sent: a batch whose
    /// lease requests (one per chunk) take longer than
    /// [`lease_ttl`](crate::CacheBuilder::lease_ttl) loses its first leases
    /// before it loads, and their fills are refused (the values are still
    /// returned). Keep chunks times the backend's latency well under it.
    ///
    /// # Errors
    /// The whole call fails only when some key has neither a value nor a
    /// stale fallback: when the batch loader fails, panics or times out,
    /// keys with a value kept by [`fail_safe`](crate::CacheBuilder::fail_safe)
    /// are answered with it, and if every key was answered the call
    /// succeeds; otherwise it returns the loader's error (kind `Loader`,
    /// `LoaderPanicked`, `LoaderTimeout` or `CircuitOpen`, as
    /// `get_or_load`). For the answer of each key, error or not, use
    /// [`get_many_or_load_each`](Self::get_many_or_load_each). Backend
    /// failures degrade to the loader, as in `get_or_load`.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), aside::Error> {
    /// let cache = aside::Cache::builder().namespace("shop").build()?;
    /// cache.set("price:1", 100u32).await?;
    /// let prices: Vec<Option<u32>> = cache
    ///     .get_many_or_load(["price:1", "price:2", "price:404", "price:2"], |misses| async move {
    ///         // One query for every miss: SELECT ... WHERE id IN (2, 404)
    ///         assert_eq!(misses, ["price:2", "price:404"]);
    ///         Ok::<_, std::io::Error>(HashMap::from([("price:2".to_owned(), 200u32)]))
    ///     })
    ///     .await?;
    /// assert_eq!(prices, [Some(100), Some(200), None, Some(200)]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many_or_load<K, V, F>(
        &self,
        keys: impl IntoIterator<Item = K>,
        batch_loader: F,
    ) -> Result<Vec<Option<V>>, Error>
    where
        K: AsRef<str>,
        V: Value,
        F: BatchFn<V>,
    {
        self.get_many_or_load_with(keys, &EntryOptions::default(), batch_loader)
            .await
    }

    /// [`get_many_or_load`](Self::get_many_or_load) with tags and a TTL for
    /// every entry it loads, as
    /// [`get_or_load_with`](Self::get_or_load_with): a cached entry is
    /// returned only if it carries every tag asked for and none of its tags
    /// (nor the namespace) was invalidated since it was loaded.
    ///
    /// # Errors
    /// As `get_many_or_load`.
    pub async fn get_many_or_load_with<K, V, F>(
        &self,
        keys: impl IntoIterator<Item = K>,
        options: &EntryOptions,
        batch_loader: F,
    ) -> Result<Vec<Option<V>>, Error>
    where
        K: AsRef<str>,
        V: Value,
        F: BatchFn<V>,
    {
        self.get_many_or_load_each(keys, options, batch_loader)
            .await
            .into_iter()
            .collect()
    }

    /// [`get_many_or_load_with`](Self::get_many_or_load_with), answering
    /// each key on its own: when the batch loader fails, the keys with a
    /// fail-safe value get it and the others get the error.
    ///
    /// # Errors
    /// Per key, as `get_many_or_load`.
    #[tracing::instrument(level = "debug", name = "aside.get_many_or_load", skip_all, fields(namespace = %self.inner.entries.namespace))]
    pub async fn get_many_or_load_each<K, V, F>(
        &self,
        keys: impl IntoIterator<Item = K>,
        options: &EntryOptions,
        batch_loader: F,
    ) -> Vec<Result<Option<V>, Error>>
    where
        K: AsRef<str>,
        V: Value,
        F: BatchFn<V>,
    {
        // This caller's moment, before anything is read: loads that began
        // after it need no proof (see `flight`).
        let me = self.inner.flights.now();
        let deps = self.inner.entries.deps(&options.tags);
        let (mut slots, order) = self.slots(keys, &deps);
        if !slots.is_empty() {
            self.read_many(&mut slots, &deps).await;
            // Boxed: the miss path's state is large.
            Box::pin(self.load_many(&mut slots, &deps, options.ttl, me, batch_loader)).await;
        }
        answers(slots, order)
    }
}

impl Cache {
    /// One slot per distinct key, in the order first asked, and for each
    /// position of `keys` the slot that answers it. Each key is copied once
    /// (its name, which the loader may need) and hashed once; the index
    /// borrows the copies and is gone before anything is awaited.
    fn slots<K: AsRef<str>, V>(
        &self,
        keys: impl IntoIterator<Item = K>,
        deps: &Deps,
    ) -> (Vec<Slot<V>>, Vec<usize>) {
        let names: Vec<String> = keys
            .into_iter()
            .map(|key| {
                let name = key.as_ref();
                self.record_read(name);
                name.to_owned()
            })
            .collect();
        let mut order = Vec::with_capacity(names.len());
        let mut first = Vec::with_capacity(names.len());
        let mut distinct = 0;
        {
            let mut index: HashMap<&str, usize> = HashMap::with_capacity(names.len());
            for name in &names {
                let at = *index.entry(name.as_str()).or_insert(distinct);
                first.push(at == distinct);
                distinct = index.len();
                order.push(at);
            }
        }
        let mut slots = Vec::with_capacity(distinct);
        for (name, first) in names.into_iter().zip(first) {
            if first {
                slots.push(self.slot(name, deps));
            }
        }
        (slots, order)
    }
}

/// Each position's answer. A slot's value is moved to the last position
/// that asks for it and cloned only for the earlier ones (a key asked for
/// several times).
fn answers<V: Clone>(mut slots: Vec<Slot<V>>, order: Vec<usize>) -> Vec<Result<Option<V>, Error>> {
    let mut uses = vec![0u32; slots.len()];
    for &at in &order {
        uses[at] += 1;
    }
    order
        .into_iter()
        .map(|at| {
            uses[at] -= 1;
            let answer = if uses[at] == 0 {
                slots[at].answer.take()
            } else {
                slots[at].answer.clone()
            };
            answer.unwrap_or_else(|| {
                Err(Error::new(
                    crate::ErrorKind::LoaderPanicked,
                    "the load was abandoned before it finished",
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::Slot;
    use super::answers;
    use crate::ErrorKind;

    fn slot(answer: Option<Option<u32>>) -> Slot<u32> {
        Slot {
            name: String::new(),
            pk: String::new(),
            bypass: false,
            answer: answer.map(Ok),
            stale: crate::cache::entry::Fallback::None,
            refresh: None,
        }
    }

    /// A key asked for at several positions is answered at each of them;
    /// a slot left without an answer is an error at its position only.
    #[test]
    fn every_position_gets_its_slots_answer() {
        let slots = vec![slot(Some(Some(1))), slot(Some(None)), slot(None)];
        let got = answers(slots, vec![0, 1, 0, 2, 0]);
        let values: Vec<Option<Option<u32>>> = got.iter().map(|r| r.clone().ok()).collect();
        assert_eq!(
            values,
            [
                Some(Some(1)),
                Some(None),
                Some(Some(1)),
                None,
                Some(Some(1))
            ]
        );
        let err = got[3].as_ref().err().map(crate::Error::kind);
        assert_eq!(err, Some(ErrorKind::LoaderPanicked));
    }
}
