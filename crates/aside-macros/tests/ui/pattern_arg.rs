static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[aside::cached(cache = CACHE)]
async fn sum((a, b): (u64, u64)) -> Option<u64> {
    Some(a + b)
}

fn main() {}
