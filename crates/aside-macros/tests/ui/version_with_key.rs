static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[aside::cached(cache = CACHE, key = "user:{id}", version = 2)]
async fn user(id: u64) -> Result<u64, std::io::Error> {
    Ok(id)
}

fn main() {}
