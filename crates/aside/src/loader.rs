//! What a miss calls: [`Loader`] for one key, [`BatchLoader`] for many.
//!
//! Both are implemented for the closures every call site passes
//! (`|| async { ... }`, `|keys| async move { ... }`), and can be implemented
//! on a type of your own. The blanket implementations do not conflict with
//! yours: the `Fn*` traits are `#[fundamental]`, so the compiler knows that
//! your type, which does not implement `FnOnce`, is not covered by them.
//!
//! The future is an associated type rather than an `async fn`, so that a
//! type of your own can name it: [`LoadFuture`] (a boxed `async` block) or
//! a future type of its own. The methods taking a loader name only the
//! value type and the loader (`get_or_load::<V, _>`).
//!
//! The batch methods take a [`BatchFn`]: any closure from the keys to load
//! to a future of the values found. Their parameter is a closure rather
//! than a [`BatchLoader`] so that the closure's parameter type is inferred
//! (`|misses| async move { ... }`); a named `BatchLoader` is passed as one
//! with [`BatchLoader::into_fn`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

/// The error type a loader may fail with: anything that converts into a
/// boxed error (the source of an [`Error`](crate::Error) of kind
/// [`Loader`](crate::ErrorKind::Loader)).
pub type LoaderError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A boxed load, the [`Loader::Future`] of a loader written with an `async`
/// block: `Box::pin(async move { ... })`.
pub type LoadFuture<V, E> = Pin<Box<dyn Future<Output = Result<Option<V>, E>> + Send + 'static>>;

/// A boxed batch load, the [`BatchLoader::Future`] of a batch loader
/// written with an `async` block.
pub type BatchLoadFuture<V, E> =
    Pin<Box<dyn Future<Output = Result<HashMap<String, V>, E>> + Send + 'static>>;

/// Loads one key's value from the source of truth, on a miss of
/// [`Cache::get_or_load`](crate::Cache::get_or_load) (and `_with`).
///
/// It is called at most once, in a task of its own (so it must be `Send`
/// and `'static`): `Ok(Some(v))` is cached and returned, `Ok(None)` (no
/// such row) is cached as a negative entry, `Err(e)` is never cached.
///
/// Every `FnOnce() -> impl Future<Output = Result<Option<V>, E>>` closure
/// is a loader; implement it on a type of your own to give a load a name
/// and its own state (a connection pool, the row's id).
///
/// # Errors
/// [`load`](Self::load) fails with [`Self::Error`], anything convertible
/// into a boxed error: the caller gets an [`Error`](crate::Error) of kind
/// [`Loader`](crate::ErrorKind::Loader) with it as the source (or the
/// stale value, where fail-safe allows). A panic in `load` or its future is
/// caught and answered with kind `LoaderPanicked`.
///
/// ```
/// use aside::{Cache, LoadFuture, Loader};
///
/// /// A repository with its connection pool (a stand-in here).
/// #[derive(Clone)]
/// struct Products { pool: std::sync::Arc<Vec<(i64, String)>> }
///
/// /// "Load the name of product `id`", named and testable on its own.
/// struct ProductName { repo: Products, id: i64 }
///
/// impl Loader<String> for ProductName {
///     type Error = std::io::Error;
///     type Future = LoadFuture<String, std::io::Error>;
///
///     fn load(self) -> Self::Future {
///         Box::pin(async move {
///             // SELECT name FROM products WHERE id = $1
///             Ok(self.repo.pool.iter().find(|(id, _)| *id == self.id).map(|(_, n)| n.clone()))
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// let cache = Cache::builder().namespace("shop").build()?;
/// let repo = Products { pool: std::sync::Arc::new(vec![(42, "lamp".to_owned())]) };
/// let name = cache
///     .get_or_load("product:42", ProductName { repo: repo.clone(), id: 42 })
///     .await?;
/// assert_eq!(name.as_deref(), Some("lamp"));
/// // Closures are loaders too.
/// let price: Option<u32> = cache
///     .get_or_load("price:42", || async { Ok::<_, std::io::Error>(Some(1999)) })
///     .await?;
/// assert_eq!(price, Some(1999));
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a loader of `{V}` values",
    label = "expected a loader returning `Result<Option<{V}>, E>`",
    note = "a loader is a `FnOnce() -> impl Future<Output = Result<Option<V>, E>>` closure \
            (or a type implementing `aside::Loader<V>`) that is `Send + 'static`, with \
            `E: Into<Box<dyn std::error::Error + Send + Sync>>`"
)]
pub trait Loader<V>: Send + 'static {
    /// What the load fails with.
    type Error: Into<LoaderError> + Send + 'static;
    /// The load's future ([`LoadFuture`] for an `async` block).
    type Future: Future<Output = Result<Option<V>, Self::Error>> + Send + 'static;

    /// Loads the value: `Ok(None)` when it does not exist.
    fn load(self) -> Self::Future;
}

impl<V, F, Fut, E> Loader<V> for F
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
    E: Into<LoaderError> + Send + 'static,
{
    type Error = E;
    type Future = Fut;

    fn load(self) -> Fut {
        self()
    }
}

/// Loads the misses of a batch from the source of truth, on
/// [`Cache::get_many_or_load`](crate::Cache::get_many_or_load) (and its
/// variants, through [`into_fn`](Self::into_fn)): one call for every key
/// the batch loads.
///
/// It gets the keys (each once, in the order first asked) and returns the
/// values it found by key; a key it leaves out does not exist (a negative
/// entry), keys it returns that were not asked for are ignored. It is
/// called at most once, in a task of its own.
///
/// Every `FnOnce(Vec<String>) -> impl Future<Output = Result<HashMap<String,
/// V>, E>>` closure is a batch loader; implement it on a type of your own
/// to name it, and pass it as [`into_fn`](Self::into_fn). (The batch
/// methods take the closure itself: bound by this trait instead, a
/// closure's `keys` parameter would no longer have its type inferred, and
/// `|keys| async move { keys.len() ... }` would need `|keys: Vec<String>|`.)
///
/// # Errors
/// As [`Loader`]: [`Self::Error`] becomes an [`Error`](crate::Error) of
/// kind [`Loader`](crate::ErrorKind::Loader) for every key of the call
/// without a fail-safe value.
///
/// ```
/// use std::collections::HashMap;
/// use aside::{BatchLoadFuture, BatchLoader, Cache};
///
/// /// Prices by id, one query for all of them.
/// struct Prices;
///
/// impl BatchLoader<u32> for Prices {
///     type Error = std::io::Error;
///     type Future = BatchLoadFuture<u32, std::io::Error>;
///
///     fn load(self, keys: Vec<String>) -> Self::Future {
///         Box::pin(async move {
///             // SELECT id, price FROM prices WHERE id IN (...)
///             Ok(keys.into_iter().filter(|k| k != "price:404").map(|k| (k, 100)).collect())
///         })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), aside::Error> {
/// let cache = Cache::builder().namespace("shop").build()?;
/// let prices = cache.get_many_or_load(["price:1", "price:404"], Prices.into_fn()).await?;
/// assert_eq!(prices, [Some(100), None]);
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a batch loader of `{V}` values",
    label = "expected a batch loader returning `Result<HashMap<String, {V}>, E>`",
    note = "a batch loader is a `FnOnce(Vec<String>) -> impl Future<Output = \
            Result<HashMap<String, V>, E>>` closure (or a type implementing \
            `aside::BatchLoader<V>`) that is `Send + 'static`, with \
            `E: Into<Box<dyn std::error::Error + Send + Sync>>`"
)]
pub trait BatchLoader<V>: Send + 'static {
    /// What the load fails with.
    type Error: Into<LoaderError> + Send + 'static;
    /// The load's future ([`BatchLoadFuture`] for an `async` block).
    type Future: Future<Output = Result<HashMap<String, V>, Self::Error>> + Send + 'static;

    /// Loads the values of `keys` that exist.
    fn load(self, keys: Vec<String>) -> Self::Future;

    /// This loader as the closure `get_many_or_load` takes.
    fn into_fn(self) -> impl FnOnce(Vec<String>) -> Self::Future + Send + 'static
    where
        Self: Sized,
    {
        move |keys| self.load(keys)
    }
}

impl<V, F, Fut, E> BatchLoader<V> for F
where
    F: FnOnce(Vec<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<HashMap<String, V>, E>> + Send + 'static,
    E: Into<LoaderError> + Send + 'static,
{
    type Error = E;
    type Future = Fut;

    fn load(self, keys: Vec<String>) -> Fut {
        self(keys)
    }
}

/// What the batch methods ([`Cache::get_many_or_load`](crate::Cache::get_many_or_load)
/// and its variants) take: a closure `FnOnce(Vec<String>) -> impl Future<Output
/// = Result<HashMap<String, V>, E>>` that is `Send + 'static`, with `E:
/// Into<Box<dyn std::error::Error + Send + Sync>>`. Implemented for every
/// such closure (and for [`BatchLoader::into_fn`]); you never implement it.
///
/// Written as a trait so that those bounds are written once, and so that the
/// closure's parameter type is still inferred from it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a batch loader of `{V}` values",
    label = "expected a closure returning a future of `Result<HashMap<String, {V}>, E>`",
    note = "a batch loader is a `FnOnce(Vec<String>) -> impl Future<Output = \
            Result<HashMap<String, V>, E>>` closure that is `Send + 'static`, with \
            `E: Into<Box<dyn std::error::Error + Send + Sync>>`; pass a named \
            `aside::BatchLoader` with `.into_fn()`"
)]
pub trait BatchFn<V>: FnOnce(Vec<String>) -> <Self as BatchFn<V>>::Future + Send + 'static {
    /// The error the loader may return.
    type Error: Into<LoaderError> + Send + 'static;
    /// The future the closure returns.
    type Future: Future<Output = Result<HashMap<String, V>, <Self as BatchFn<V>>::Error>>
        + Send
        + 'static;
}

impl<V, F, Fut, E> BatchFn<V> for F
where
    F: FnOnce(Vec<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<HashMap<String, V>, E>> + Send + 'static,
    E: Into<LoaderError> + Send + 'static,
{
    type Error = E;
    type Future = Fut;
}
