// Only expanded, not compiled: the serde derives the real code needs are left out to keep the
// snapshot short (the compiled forms are in ui-tests/tests/ui/pass/saga_forms.rs).
use millstream::prelude::*;
use millstream::Saga;

#[millstream::event]
struct OrderPlaced {
    paid: bool,
}

#[millstream::saga]
struct Checkout {
    paid: bool,
}

#[millstream::saga_handler(start)]
async fn placed(saga: &mut Saga<Checkout>, event: OrderPlaced, meta: Metadata) -> Result<()> {
    saga.paid = event.paid && meta.is_empty();
    Ok(())
}

fn main() {}
