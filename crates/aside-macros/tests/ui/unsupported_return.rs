static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[aside::cached(cache = CACHE)]
async fn answer(id: u64) -> i32 {
    id as i32
}

fn main() {}
