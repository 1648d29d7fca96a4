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

/// Version 1 of `OrderChanged`: only cancellations.
#[derive(Deserialize)]
struct OrderCancelledV1 {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::event(topic = "orders", version = 2, upcast(1 = OrderCancelledV1))]
enum OrderChanged {
    Cancelled { id: u64 },
    Paid(u64),
}

impl From<OrderCancelledV1> for OrderChanged {
    fn from(old: OrderCancelledV1) -> Self {
        OrderChanged::Cancelled { id: old.id }
    }
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
    let upcast = <OrderChanged as millstream::Topic>::upcast(&millstream::JsonCodec, 1, br#"{"id":4}"#);
    assert_eq!(&upcast.unwrap().unwrap()[..], br#"{"Cancelled":{"id":4}}"#);
    assert!(<OrderChanged as millstream::Topic>::upcast(&millstream::JsonCodec, 2, b"{}").is_none());
}
