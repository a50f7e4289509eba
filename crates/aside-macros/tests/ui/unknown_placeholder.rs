static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[aside::cached(cache = CACHE, key = "user:{user_id}")]
async fn user(id: u64, name: String) -> Result<u64, std::io::Error> {
    let _ = name;
    Ok(id)
}

fn main() {}
