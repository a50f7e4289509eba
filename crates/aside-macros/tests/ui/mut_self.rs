#[derive(Clone)]
struct Users {
    cache: aside::Cache,
    calls: u64,
}

impl Users {
    #[aside::cached(cache = self.cache, key = "user:{id}")]
    async fn user(&mut self, id: u64) -> Result<u64, std::io::Error> {
        self.calls += 1;
        Ok(id)
    }
}

fn main() {}
