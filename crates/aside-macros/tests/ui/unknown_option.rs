static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[aside::cached(cache = CACHE, time_to_live = "5m")]
async fn user(id: u64) -> Result<u64, std::io::Error> {
    Ok(id)
}

fn main() {}
