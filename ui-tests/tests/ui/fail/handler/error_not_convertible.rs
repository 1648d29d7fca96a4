use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[millstream::handler]
async fn bill(order: Order) -> std::result::Result<(), String> {
    if order.id == 0 {
        return Err("no order".to_owned());
    }
    Ok(())
}

fn main() {}
