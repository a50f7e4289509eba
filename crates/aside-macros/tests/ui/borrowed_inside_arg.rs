static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[aside::cached(cache = CACHE)]
async fn first(names: Vec<&str>) -> Option<String> {
    names.first().map(|s| s.to_string())
}

fn main() {}
