#[aside::cached(key = "user:{id}")]
async fn user(id: u64) -> Result<u64, std::io::Error> {
    Ok(id)
}

fn main() {}
