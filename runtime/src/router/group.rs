//! Event groups: event handlers that share a topic and an explicit consumer group read it as one
//! subscription, each message dispatched by its type (`millstream.type`) to the handler of that
//! type, in the order the topic delivers them (Watermill's `EventGroupProcessor`).

use std::borrow::Cow;
use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};

use futures_core::future::BoxFuture;

use super::route::Route;
use crate::context::{MessageCx, RouteInfo};
use crate::error::Error;
use crate::handler::{HandlerResult, OutputSpec, Outputs};
use crate::message::Message;
use crate::middleware::{layer_facts, Chain, Endpoint, Middleware};
use crate::topic::MessageType;

/// What an event group does with a message of a type none of its handlers takes (or of no stated
/// type): set per group with [`App::unknown_events`](crate::App::unknown_events).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownEvents {
    /// A permanent error: the message goes to the poison queue, with the reason. The default:
    /// an event the group should know but does not is a deployment mistake to see.
    #[default]
    Poison,
    /// Acked without running anything (a group that reads only some of a stream's types).
    Ignore,
}

/// One handler of a group: the type it takes, and its route.
pub(crate) struct Member {
    pub(crate) type_name: &'static str,
    pub(crate) route: Route,
}

/// The one route of the event group `group` on `topic` (named `group@topic`, reading in
/// `group`): it dispatches each message to the member of its type, through the member's own
/// middleware.
pub(crate) fn event_group(group: &str, topic: &str, members: Vec<Member>, unknown: UnknownEvents) -> Route {
    // The lowest of its handlers' concurrency: a handler that asks for one message at a time,
    // in order, gets it.
    let concurrency = members.iter().map(|m| m.route.concurrency).min().unwrap_or(NonZeroUsize::MIN);
    let order_by_key = members.iter().any(|m| m.route.order_by_key);
    let location = members.first().and_then(|m| m.route.location);
    // (The members share their pub/sub: the app gives each the group's.)
    let publisher = members.first().and_then(|m| m.route.publisher.clone());
    let subscriber = members.first().and_then(|m| m.route.subscriber.clone());
    let names: Vec<String> = members.iter().map(|m| m.route.name.clone()).collect();
    let group_name: Arc<str> = Arc::from(group);
    // Named `group@topic`: one group name may serve event groups on several topics.
    let mut route =
        Route::with_codec(format!("{group}@{topic}"), topic, placeholder, crate::codec::JsonCodec);
    route.group = Some(group.to_owned());
    route.concurrency = concurrency;
    route.order_by_key = order_by_key;
    route.location = location;
    route.publisher = publisher;
    route.subscriber = subscriber;
    route.output = OutputSpec::Nothing;
    // (Each member's state was checked on its own route.)
    route.check_state = |_| Ok(());
    route.build = Box::new(move |state| {
        let mut errors = Vec::new();
        let mut built = Vec::with_capacity(members.len());
        for Member { type_name, route } in members {
            match (route.build)(state) {
                Ok(endpoint) => built.push(Built {
                    type_name,
                    name: Arc::from(route.name.as_str()),
                    publish: route.publish.as_deref().map(Arc::from),
                    output: route.output,
                    layers: route.middleware,
                    encoder: route.encoder,
                    endpoint,
                }),
                Err(mut problems) => errors.append(&mut problems),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        built.sort_by_key(|b| b.type_name);
        let endpoint: Arc<dyn Endpoint> =
            Arc::new(GroupEndpoint { group: group_name, members: built, unknown, chains: OnceLock::new() });
        Ok(endpoint)
    });
    tracing::debug!(group, topic, members = ?names, "event group");
    route
}

/// Never called: the group's route is built by its own `build`.
async fn placeholder(_: Message) {}

struct Built {
    type_name: &'static str,
    name: Arc<str>,
    publish: Option<Arc<str>>,
    output: OutputSpec,
    layers: Vec<Arc<dyn Middleware>>,
    encoder: Arc<dyn crate::codec::DynEncoder>,
    endpoint: Arc<dyn Endpoint>,
}

struct GroupEndpoint {
    group: Arc<str>,
    /// Sorted by type name.
    members: Vec<Built>,
    unknown: UnknownEvents,
    /// Each member's chain, made at the first message (it needs the group's running route).
    chains: OnceLock<Vec<Arc<Chain>>>,
}

impl GroupEndpoint {
    fn chains(&self, group: &RouteInfo) -> &[Arc<Chain>] {
        self.chains.get_or_init(|| {
            self.members
                .iter()
                .map(|member| {
                    let facts = layer_facts(&member.layers);
                    let info = Arc::new(RouteInfo {
                        name: member.name.clone(),
                        handler: member.name.clone(),
                        group: group.group.clone(),
                        topic: group.topic.clone(),
                        publish: member.publish.clone(),
                        publisher: group.publisher.clone(),
                        encoder: member.encoder.clone(),
                        shutdown: group.shutdown.clone(),
                        correlates: group.correlates || facts.correlates,
                    });
                    Arc::new(Chain::new(member.layers.clone(), member.endpoint.clone(), info))
                })
                .collect()
        })
    }

    /// The member of `message`'s type, or what to do without one.
    fn member(&self, message: &Message) -> Result<Option<usize>, Error> {
        let name = MessageType::name_of(message);
        if let Some(index) =
            name.and_then(|name| self.members.binary_search_by_key(&name, |m| m.type_name).ok())
        {
            return Ok(Some(index));
        }
        match self.unknown {
            UnknownEvents::Ignore => {
                tracing::debug!(group = %self.group, r#type = ?name, "event group: no handler of this type; acked");
                Ok(None)
            }
            UnknownEvents::Poison => {
                let known: Vec<&str> = self.members.iter().map(|m| m.type_name).collect();
                Err(Error::permanent(match name {
                    Some(name) => format!(
                        "event group `{}` has no handler of type `{name}` (it handles {})",
                        self.group,
                        known.join(", ")
                    ),
                    None => format!(
                        "event group `{}` got a message without a type (`millstream.type` metadata); it handles {}",
                        self.group,
                        known.join(", ")
                    ),
                }))
            }
        }
    }

    /// Gives the member's outputs without a topic its publish topic (the group has none).
    fn resolve(member: &Built, outcome: HandlerResult) -> HandlerResult {
        let mut outputs: Outputs = outcome?;
        if let (Some(publish), OutputSpec::PublishTopic) = (&member.publish, member.output) {
            for output in outputs.iter_mut().filter(|o| o.topic.is_none()) {
                output.topic = Some(Cow::Owned(publish.to_string()));
            }
        }
        Ok(outputs)
    }
}

impl Endpoint for GroupEndpoint {
    fn call<'a>(&'a self, message: Message, cx: MessageCx<'a>) -> BoxFuture<'a, HandlerResult> {
        Box::pin(async move {
            let Some(index) = self.member(&message)? else { return Ok(Outputs::new()) };
            let chain = &self.chains(cx.route)[index];
            Self::resolve(&self.members[index], chain.call(message, cx.attempt).await)
        })
    }

    fn call_owned(
        self: Arc<Self>,
        chain: Arc<Chain>,
        message: Message,
        attempt: u32,
    ) -> BoxFuture<'static, HandlerResult> {
        Box::pin(async move {
            let Some(index) = self.member(&message)? else { return Ok(Outputs::new()) };
            let member_chain = self.chains(&chain.route)[index].clone();
            Self::resolve(&self.members[index], member_chain.call(message, attempt).await)
        })
    }
}
