use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

mod errors {
    /// A `Result` alias with an error type that does not convert into `millstream::Error`.
    pub type Result<T> = std::result::Result<T, String>;
}

#[millstream::handler]
async fn bill(order: Order) -> errors::Result<()> {
    if order.id == 0 {
        return Err("no order".to_owned());
    }
    Ok(())
}

fn main() {}
