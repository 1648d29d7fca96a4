//! Commands, events, their handlers and buses, in every form the attributes accept.
use millstream::prelude::*;
use millstream::{MessageKind, Topic};

#[derive(Serialize, Deserialize)]
#[millstream::command]
struct PlaceOrder {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::command(topic = "billing.commands", name = "Charge", version = 3, crate = ::millstream)]
struct ChargeCard {
    cents: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event(topic = "orders")]
struct OrderPlaced {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event(topic = "orders", version = 2)]
enum OrderChanged {
    Cancelled { id: u64 },
    Paid(u64),
}

#[millstream::command_handler]
async fn place(order: PlaceOrder, commands: CommandBus) -> Result<OrderPlaced> {
    commands.send(&ChargeCard { cents: order.id }).await?;
    Ok(OrderPlaced { id: order.id })
}

#[millstream::command_handler(group = "billing", concurrency = 2)]
async fn charge(card: ChargeCard, events: EventBus, ctx: Ctx) -> Result<()> {
    let _ = (card.cents, ctx.attempt());
    events.publish(&OrderChanged::Paid(1)).await
}

#[millstream::event_handler]
async fn on_placed(event: OrderPlaced) {
    let _ = event.id;
}

#[millstream::event_handler(name = "audit.changes")]
async fn on_changed(event: OrderChanged, meta: Metadata) -> Option<OrderPlaced> {
    let _ = meta;
    match event {
        OrderChanged::Cancelled { id } | OrderChanged::Paid(id) => Some(OrderPlaced { id }),
    }
}

fn main() {
    assert_eq!(PlaceOrder::NAME, "commands.PlaceOrder");
    assert_eq!(OrderPlaced::NAME, "orders");
    let charge = ChargeCard::MESSAGE_TYPE.unwrap();
    assert_eq!((charge.kind, charge.name, charge.version), (MessageKind::Command, "Charge", 3));
    assert_eq!(ChargeCard::NAME, "billing.commands");
    assert_eq!(OrderChanged::MESSAGE_TYPE.unwrap().version_text, "2");
}
