//! Every supported handler signature: payload or not, each extractor, each return shape.
use millstream::prelude::*;

#[derive(Serialize, Deserialize)]
#[millstream::topic("orders")]
struct Order {
    id: u64,
}

#[derive(Serialize, Deserialize)]
#[millstream::topic("invoices")]
struct Invoice {
    order: u64,
}

#[derive(Serialize)]
struct Plain {
    n: u64,
}
impl Publishable for Plain {}

#[derive(Clone)]
struct Prices;

#[derive(Debug)]
struct MyError;
impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("my error")
    }
}
impl std::error::Error for MyError {}

#[millstream::handler]
async fn payload_only(_order: Order) {}

#[millstream::handler]
async fn every_extractor(
    _order: Order,
    State(_prices): State<Prices>,
    _ctx: Ctx,
    _meta: Metadata,
    _id: MessageId,
    _raw: Bytes,
    _json: Json<serde_json::Value>,
    _message: Message,
    Attempt(_attempt): Attempt,
) {
}

#[millstream::handler(topic = "audit")]
async fn extractors_only(_event: Json<serde_json::Value>, _meta: Metadata) {}

#[millstream::handler(topic = "nothing")]
async fn no_parameters() {}

#[millstream::handler]
async fn result_unit(_order: Order) -> Result<()> {
    Ok(())
}

#[millstream::handler]
async fn typed_value(order: Order) -> Invoice {
    Invoice { order: order.id }
}

#[millstream::handler]
async fn optional(order: Order) -> Option<Invoice> {
    (order.id > 0).then_some(Invoice { order: order.id })
}

#[millstream::handler]
async fn several(order: Order) -> Vec<Invoice> {
    vec![Invoice { order: order.id }]
}

#[millstream::handler]
async fn fallible_with_own_error(order: Order) -> std::result::Result<Vec<Invoice>, MyError> {
    if order.id == 0 {
        return Err(MyError);
    }
    Ok(vec![Invoice { order: order.id }])
}

#[millstream::handler(publish = "plain")]
async fn publishable_to_publish_topic(order: Order) -> Result<Plain> {
    Ok(Plain { n: order.id })
}

#[millstream::handler(publish = "json")]
async fn json_value(order: Order) -> Json<u64> {
    Json(order.id)
}

#[millstream::handler(topic = "numbers")]
async fn primitive_payload(n: u64) -> Result<Option<Json<u64>>> {
    Ok(Some(Json(n))).map(|v: Option<Json<u64>>| v.filter(|_| false))
}

/// A type alias of a whole return type is checked as a whole.
type Billed = Result<Vec<Invoice>>;

#[millstream::handler]
async fn aliased_return(order: Order) -> Billed {
    Ok(vec![Invoice { order: order.id }])
}

#[millstream::handler]
async fn qualified_result(order: Order) -> millstream::Result<Option<Invoice>> {
    Ok(Some(Invoice { order: order.id }))
}

#[millstream::handler]
async fn unit_with_own_error(_order: Order) -> std::result::Result<(), MyError> {
    Ok(())
}

#[millstream::handler(publish = Invoice)]
async fn typed_publish_in_result(order: Order) -> Result<Vec<Invoice>> {
    Ok(vec![Invoice { order: order.id }])
}

/// The most parameters a handler takes: the payload and 11 extractors.
#[millstream::handler]
#[allow(clippy::too_many_arguments)]
async fn widest_with_payload(
    _order: Order,
    _a: Metadata,
    _b: Metadata,
    _c: Metadata,
    _d: Metadata,
    _e: Metadata,
    _f: Metadata,
    _g: Metadata,
    _h: Metadata,
    _i: Metadata,
    _j: Metadata,
    _k: Metadata,
) {
}

/// Or 11 extractors without a payload.
#[millstream::handler(topic = "wide")]
#[allow(clippy::too_many_arguments)]
async fn widest_without_payload(
    _a: Metadata,
    _b: Metadata,
    _c: Metadata,
    _d: Metadata,
    _e: Metadata,
    _f: Metadata,
    _g: Metadata,
    _h: Metadata,
    _i: Metadata,
    _j: Metadata,
    _k: Metadata,
) {
}

// Values published later (an app with a delay store): `Delayed<T>` in each shape.
#[millstream::handler]
async fn delayed(order: Order) -> Delayed<Invoice> {
    Delayed::after(std::time::Duration::from_secs(60), Invoice { order: order.id })
}

#[millstream::handler]
async fn delayed_in_result(order: Order) -> Result<Delayed<Invoice>> {
    Ok(Delayed::at(std::time::SystemTime::now(), Invoice { order: order.id }))
}

#[millstream::handler(topic = "later")]
async fn delayed_options(order: Json<Order>) -> Option<Delayed<Invoice>> {
    Some(Delayed::after(std::time::Duration::ZERO, Invoice { order: order.0.id }))
}

#[millstream::handler(topic = "later-many")]
async fn delayed_many(order: Json<Order>) -> millstream::Result<Vec<Delayed<Invoice>>> {
    Ok(vec![Delayed::after(std::time::Duration::ZERO, Invoice { order: order.0.id })])
}

fn main() {
    let names: Vec<_> = millstream::registry::handlers().iter().map(|d| d.info().fn_name).collect();
    assert_eq!(names.len(), 22, "{names:?}");
}
