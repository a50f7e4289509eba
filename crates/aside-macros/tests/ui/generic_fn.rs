static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[aside::cached(cache = CACHE)]
async fn parse<T: std::str::FromStr>(text: String) -> Option<T> {
    text.parse().ok()
}

fn main() {}
