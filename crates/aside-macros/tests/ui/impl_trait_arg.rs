static CACHE: std::sync::LazyLock<aside::Cache> =
    std::sync::LazyLock::new(|| aside::Cache::builder().build().unwrap());

#[aside::cached(cache = CACHE)]
async fn length(text: impl AsRef<str>) -> Option<usize> {
    Some(text.as_ref().len())
}

fn main() {}
