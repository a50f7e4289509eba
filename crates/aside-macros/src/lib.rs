//! The `#[cached]` attribute of aside: use it as
//! `aside::cached`, with aside's `macros` feature. The documentation is on
//! [`cached`].

use proc_macro::TokenStream;
use quote::ToTokens;

mod expand;
mod options;
mod template;

/// Caches an async function's results in an `aside::Cache`.
///
/// ```
/// use aside::Cache;
/// use serde::{Deserialize, Serialize};
/// use std::sync::LazyLock;
///
/// static CACHE: LazyLock<Cache> =
///     LazyLock::new(|| Cache::builder().namespace("app").build().expect("valid options"));
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// struct User { id: u64, name: String }
///
/// #[derive(Debug, thiserror::Error)]
/// enum DbError {
///     #[error("database unreachable")]
///     Unreachable,
///     #[error(transparent)]
///     Cache(#[from] aside::Error),
/// }
///
/// /// `None`: no such user (cached too, for the negative TTL).
/// #[aside::cached(cache = CACHE, key = "user:{id}", ttl = "5m", tags = ["users"])]
/// async fn user(id: u64) -> Result<Option<User>, DbError> {
///     // SELECT id, name FROM users WHERE id = $1
///     Ok(Some(User { id, name: "ada".into() }))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), DbError> {
/// assert_eq!(user(7).await?.map(|u| u.name), Some("ada".to_owned()));
/// // After `UPDATE users ...` commits:
/// CACHE.invalidate(aside::Key::new("user").part(7)).await?;
/// # let _ = DbError::Unreachable;
/// # Ok(()) }
/// ```
///
/// Every call goes through `Cache::get_or_load_with`, with the function's
/// body as the loader: concurrent misses of a key run the body once
/// (single-flight, and leases across processes on Redis), and
/// stale-while-revalidate, fail-safe, timeouts and breakers configured on
/// the cache apply. A cache or backend failure never makes the function
/// fail: it degrades to running the body.
///
/// # Options
/// - `cache = EXPR` (required): any expression that derefs to
///   `aside::Cache`: a `static CACHE: LazyLock<Cache>`, a `Cache`,
///   `&Cache` or `Arc<Cache>` field (`self.cache`), a function call. It is
///   evaluated on every call, borrowed for the call (`&(EXPR)`).
/// - `key = "user:{id}"`: the key template (see *Keys*). Required on
///   methods.
/// - `ttl = "5m"`: this function's TTL instead of the cache's: a number
///   and a unit, `ms`, `s`, `m`, `h` or `d`, or several (`"1h30m"`).
///   Checked at compile time.
/// - `tags = ["users", "org:{org}"]`: tags for
///   `Cache::invalidate_tag`, string literals or templates built like keys.
/// - `version = 2`: the schema version in a derived key (default 1). Bump
///   it when the return type changes, so the new code never reads entries of
///   the old shape. With `key = ...`, put a version in the template instead.
///
/// # Return types
/// | return type | cached | not cached |
/// | --- | --- | --- |
/// | `Result<T, E>` | `Ok(v)` | `Err(e)` |
/// | `Result<Option<T>, E>` | `Ok(Some(v))`, `Ok(None)` (negative entry) | `Err(e)` |
/// | `Option<T>` | `Some(v)`, `None` (negative entry) | |
///
/// The shape is read from the last path segment, so aliases such as
/// `io::Result<T>` and `anyhow::Result<Option<T>>` work. `T` is an
/// `aside::Value` (`Serialize + DeserializeOwned + Clone + Send + Sync`).
/// Other return types (`i32`, `()`) are a compile error: wrap them in
/// `Option` or `Result`.
///
/// **Errors.** `E` must be `From<aside::Error> + Display + Send + 'static`
/// (a `thiserror` enum with a `#[from] aside::Error` variant,
/// `anyhow::Error`, `Box<dyn Error + Send + Sync>`, `std::io::Error`). When
/// the body ran in this call and failed, the function returns the body's
/// own error, unchanged and by value, and nothing is cached. aside keeps a
/// loader's error behind an `Arc` shared with every caller of the load, from
/// which it cannot be moved, so the other outcomes are `E::from(error)`:
/// - the call joined a load started by a concurrent call, and that load
///   failed: an `aside::Error` of kind `Loader` whose `source()` displays
///   the body's error message;
/// - the body panicked (`LoaderPanicked`), or a hard loader timeout or the
///   loader circuit breaker configured on the cache stopped it with no stale
///   value to serve (`LoaderTimeout`, `CircuitOpen`).
///
/// `?` in the body converts into `E` as usual: the body is the function's
/// body, with its return type. An `Option<T>` function has no error to
/// return: it panics in those cases.
///
/// # Keys
/// **With `key = "..."`** the template is split on `:` and each part
/// becomes one `aside::Key` part, escaped: `key = "user:{org}:{id}"` is
/// `Key::new("user").part(&org).part(&id)`, so `("a:b", "c")` and
/// `("a", "b:c")` make different keys, and
/// `cache.invalidate(Key::new("user").part(org).part(id))` names the same
/// entry. A placeholder names an argument, a field of one (`{user.id}`), or
/// of the receiver (`{self.tenant}`), and is formatted with `Display` (so
/// make sure two values never display alike, as for any key part). A
/// part holds at most one placeholder (`"{a}{b}"` is a compile error: it
/// could not tell `("ab", "c")` from `("a", "bc")`); literal text around it
/// is fine (`"v{n}"`). A placeholder naming no argument is a compile error.
///
/// **Without `key`** the key is made of the function's path, the version
/// and **every argument, serialised in full as JSON** (`serde_json`; never
/// hashed or truncated, so no two argument lists share a key), each an
/// escaped part: `my_app.users.user_by_email:v1:"ada@example.com"`.
/// Arguments must then be `Serialize`. A map argument should have a stable
/// order (`BTreeMap`): a `HashMap`'s order varies, making equal maps miss
/// each other's entries (never collide). An argument that fails to
/// serialise makes that call run the body uncached. The path is
/// `module_path!()`: two `#[cached]` functions of one name declared inside
/// different function bodies of one module would share keys, so give such
/// functions distinct names (or a `key`). Keys longer than the
/// cache's `max_key_len` are hashed by the cache behind a readable prefix
/// (128 bits of SHA-256).
///
/// # Arguments and methods
/// The body runs as aside's loader, in a task of its own, so it owns what it
/// uses: arguments by value are moved into it (after the key is built), an
/// argument `&T` is copied with `ToOwned` (a `&str` becomes a `String`
/// inside, seen by the body as `&str` again) on every call, hits included,
/// when the body uses it. The body's future must be `Send`. Other borrowed
/// types (`&mut T`, `Option<&T>`, lifetimes),
/// `impl Trait` arguments, patterns in argument position, generic
/// functions and `unsafe fn` are compile errors.
///
/// Methods take `&self`: the receiver is cloned into the load (`Self:
/// Clone + Send + Sync + 'static`, so keep services cheap to clone, with an
/// `Arc` inside) on every call when the body uses `self`; `self::` paths
/// are left alone. The receiver is **never part of
/// a derived key**, so a method must have a `key` template, naming what
/// identifies the receiver when it matters (`key = "user:{self.tenant}:{id}"`);
/// without one it does not compile.
///
/// ```
/// use aside::Cache;
///
/// #[derive(Clone)]
/// struct Users { cache: Cache, tenant: String }
///
/// impl Users {
///     #[aside::cached(cache = self.cache, key = "user:{self.tenant}:{id}")]
///     async fn name(&self, id: u64) -> std::io::Result<String> {
///         Ok(format!("{} #{id}", self.tenant))
///     }
/// }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let users = Users { cache: Cache::builder().build()?, tenant: "acme".into() };
/// assert_eq!(users.name(1).await?, "acme #1");
/// # Ok(()) }
/// ```
///
/// # What it expands to
/// ```text
/// #[aside::cached(cache = CACHE, key = "user:{id}", ttl = "5m", tags = ["users"])]
/// async fn user(id: u64, name: &str) -> Result<Option<User>, DbError> { BODY }
/// ```
/// becomes (paths shortened)
/// ```text
/// async fn user(id: u64, name: &str) -> Result<Option<User>, DbError> {
///     let __aside_cache: &aside::Cache = &(CACHE);
///     let __aside_key = Some(aside::Key::new("user").part(&id));
///     let __aside_options = aside::EntryOptions::new()
///         .ttl(Duration::from_millis(300000))
///         .tag("users");
///     let owned_name = ToOwned::to_owned(name);      // only if BODY uses `name`
///     aside::__private::result_option(__aside_cache, __aside_key, &__aside_options, move || {
///         // `body` only fixes the future's output type, for `?` in BODY.
///         aside::__private::body::<Result<Option<User>, DbError>, _>(async move {
///             let name: &str = Borrow::borrow(&owned_name);
///             BODY
///         })
///     })
///     .await
/// }
/// ```
/// `result_option` (or `result`, `option`) calls `get_or_load_with` with a
/// loader that runs the closure, keeping the body's error for this caller
/// (see *Errors*). Without `key`, the key line is
/// `FnKey::new(module_path!(), "user", 1).arg(&id).arg(&name).finish()`
/// (`None` if an argument fails to serialise). In a method, `self` in the
/// body is rewritten to a borrow of the clone of the receiver.
///
/// The expanded code names the crate `::aside`: depend on it under that
/// name (not renamed in `Cargo.toml`).
///
/// # Compared with the `cached` crate
/// - **No key collisions.** Key parts are escaped (a `:` in an argument
///   cannot shift a boundary) and derived keys hold every argument in full,
///   never a truncated hash.
/// - **`&self` is never silently ignored**: a method without a `key`
///   naming what identifies its receiver does not compile.
/// - **Stampede protection**: concurrent misses of a key run the body once
///   (and once across processes, with Redis leases); waiters are woken, not
///   polling.
/// - **No whole-cache lock**: a hit reads a concurrent map (or Redis) and
///   takes no cache-wide lock; a miss takes the single-flight table's mutex only for
///   the moment it registers or joins its load, never while a body runs, so
///   calls for different keys never wait for each other's loads.
/// - Entries are typed and versioned, negative results are cached on
///   purpose, invalidation by key or tag is consistent (a load racing an
///   invalidation is not stored), and a failing backend degrades to the
///   body instead of failing the call.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.into();
    let func = match syn::parse2::<syn::ItemFn>(item2.clone()) {
        Ok(f) => f,
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(item2);
            return out.into();
        }
    };
    let expanded = options::Options::parse(args.into())
        .and_then(|options| expand::expand(options, func.clone()));
    match expanded {
        Ok(tokens) => tokens.into(),
        Err(e) => {
            // The function as written, beside the error: uses of it do not
            // add "not found" errors to the one that matters.
            let mut out = e.to_compile_error();
            out.extend(func.into_token_stream());
            out.into()
        }
    }
}
