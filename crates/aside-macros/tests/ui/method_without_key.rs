#[derive(Clone)]
struct Users {
    cache: aside::Cache,
}

impl Users {
    #[aside::cached(cache = self.cache)]
    async fn user(&self, id: u64) -> Result<u64, std::io::Error> {
        Ok(id)
    }
}

fn main() {}
