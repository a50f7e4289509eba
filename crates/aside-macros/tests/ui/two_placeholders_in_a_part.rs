static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[aside::cached(cache = CACHE, key = "user:{org}-{id}")]
async fn user(org: String, id: u64) -> Result<u64, std::io::Error> {
    let _ = org;
    Ok(id)
}

fn main() {}
