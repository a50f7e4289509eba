static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[derive(Debug)]
struct DbError;

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("database error")
    }
}

// `E` needs `From<aside::Error>`: a failed load shared with another call
// (or a panic, a loader timeout) must become a `DbError`.
#[aside::cached(cache = CACHE, key = "user:{id}")]
async fn user(id: u64) -> Result<u64, DbError> {
    Ok(id)
}

fn main() {}
