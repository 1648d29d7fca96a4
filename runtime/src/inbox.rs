//! Effectively-once processing: a handler that takes a [`Tx`] runs in one database transaction
//! with the transactional inbox ([`SqlInbox`]) and the outbox. See [`SqlInbox`] for what commits
//! together and when the delivery is acked.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError};

use futures_core::future::BoxFuture;

use crate::context::MessageCx;
use crate::error::{Error, ErrorKind, Result};
use crate::extract::FromMessage;
use crate::message::Message;
use crate::pubsub::sql::{InboxDatabase, InboxKey, SqlInbox};
use crate::state::StateMap;
use crate::unit::{take_current, UnitOfWork, UnitOfWorkFn, Work};

/// Where a unit's transaction is kept while the handler does not hold it.
type Home<DB> = Mutex<Option<sqlx::Transaction<'static, DB>>>;

/// The handler's database transaction: the argument that makes a handler transactional.
///
/// A handler taking `Tx<sqlx::Postgres>` (or `Tx<sqlx::Sqlite>`, `Tx<sqlx::MySql>`) runs each
/// message in one transaction of the [`SqlInbox`]'s database (provided with
/// `.state(SqlInbox::new(&pubsub))`; a handler without it fails to build): the inbox key, the
/// handler's own writes (`.execute(&mut *tx)`) and its return values (the outbox) commit together,
/// and the delivery is acked after the commit. A message whose transaction committed before is
/// acked without running the handler again.
///
/// Messages published with [`Ctx::publish`](crate::Ctx::publish) from inside the handler go out
/// at once, outside the transaction: return them instead. A handler takes one `Tx`; it must not
/// keep it past its return (the transaction is committed after the handler returns).
pub struct Tx<DB: InboxDatabase> {
    tx: Option<sqlx::Transaction<'static, DB>>,
    home: Arc<Home<DB>>,
}

impl<DB: InboxDatabase> Deref for Tx<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        self.tx.as_ref().expect("a Tx holds its transaction until dropped")
    }
}

impl<DB: InboxDatabase> DerefMut for Tx<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        self.tx.as_mut().expect("a Tx holds its transaction until dropped")
    }
}

impl<DB: InboxDatabase> Drop for Tx<DB> {
    fn drop(&mut self) {
        // Given back for the commit (or dropped with the unit: rolled back).
        *self.home.lock().unwrap_or_else(PoisonError::into_inner) = self.tx.take();
    }
}

impl<DB: InboxDatabase> fmt::Debug for Tx<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx").field("database", &DB::DIALECT).finish()
    }
}

fn inbox_of<DB: InboxDatabase>(state: &StateMap) -> Result<SqlInbox> {
    let inbox = state.get::<SqlInbox>().ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            format!(
                "Tx<{}> is used but the app has no transactional inbox; add one with `.state(SqlInbox::new(&pubsub))`",
                std::any::type_name::<DB>()
            ),
        )
    })?;
    if inbox.dialect() != DB::DIALECT {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "Tx<{}> is used but the SqlInbox is in a {:?} database",
                std::any::type_name::<DB>(),
                inbox.dialect()
            ),
        ));
    }
    Ok(inbox.clone())
}

fn open<DB: InboxDatabase>(state: &StateMap) -> Result<Arc<dyn UnitOfWork>> {
    Ok(Arc::new(SqlUnit::<DB> { inbox: inbox_of::<DB>(state)?, db: PhantomData }))
}

impl<DB: InboxDatabase> FromMessage for Tx<DB> {
    type Prepared = ();
    const UNIT_OF_WORK: Option<UnitOfWorkFn> = Some(open::<DB>);

    fn prepare(state: &StateMap) -> Result<()> {
        inbox_of::<DB>(state).map(drop)
    }

    fn from_message(_: &(), _: &Message, cx: MessageCx<'_>) -> Result<Self> {
        let home = take_current().and_then(|work| work.downcast::<Home<DB>>().ok()).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "handler `{}`: a Tx is only given to a handler run by a router, once per call",
                    cx.handler_name()
                ),
            )
            .into_permanent()
        })?;
        let tx = home.lock().unwrap_or_else(PoisonError::into_inner).take();
        Ok(Tx { tx: Some(tx.expect("a begun unit holds its transaction")), home })
    }
}

/// The unit of work of a `Tx<DB>` handler: a transaction of the inbox's database.
struct SqlUnit<DB> {
    inbox: SqlInbox,
    db: PhantomData<fn() -> DB>,
}

impl<DB: InboxDatabase> UnitOfWork for SqlUnit<DB> {
    fn begin<'a>(&'a self, message: &'a Message, cx: MessageCx<'a>) -> BoxFuture<'a, Result<Option<Work>>> {
        Box::pin(async move {
            let id = message.id().to_boxed_str();
            let route = &cx.route;
            let key = InboxKey {
                group: &route.group,
                handler: &route.handler,
                message_id: &id,
                publish: route.publish.as_deref(),
            };
            let Some(tx) = DB::begin(&self.inbox, key).await? else { return Ok(None) };
            let home: Arc<Home<DB>> = Arc::new(Mutex::new(Some(tx)));
            Ok(Some(home as Work))
        })
    }

    fn commit(&self, work: Work, outputs: Vec<(Cow<'static, str>, Message)>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let home = work.downcast::<Home<DB>>().map_err(|_| unit_lost())?;
            let tx = home.lock().unwrap_or_else(PoisonError::into_inner).take().ok_or_else(unit_lost)?;
            if let Some((topic, _)) =
                outputs.iter().find(|(_, m)| m.metadata().get(crate::keys::DELIVER_AT).is_some())
            {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("a transactional handler's output to `{topic}` has a delivery time; the outbox cannot delay it"),
                )
                .into_permanent());
            }
            DB::commit(&self.inbox, tx, outputs).await
        })
    }
}

fn unit_lost() -> Error {
    Error::new(
        ErrorKind::Config,
        "the handler's transaction was not given back: a Tx must not outlive the handler call (rolled back)",
    )
    .into_permanent()
}
