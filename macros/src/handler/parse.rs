//! `#[handler(..)]`: reading the attribute's keys and the fn, without judging them yet.

use proc_macro2::TokenStream;
use syn::parse::ParseStream;
use syn::punctuated::Punctuated;
use syn::{Expr, LitStr, Token, Type};

use crate::attr::{self, Slot};
use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(topic);
    syn::custom_keyword!(publish);
    syn::custom_keyword!(group);
    syn::custom_keyword!(concurrency);
    syn::custom_keyword!(order);
    syn::custom_keyword!(name);
    syn::custom_keyword!(pubsub);
    syn::custom_keyword!(codec);
    syn::custom_keyword!(middleware);
    syn::custom_keyword!(service);
    syn::custom_keyword!(external);
    syn::custom_keyword!(start);
    syn::custom_keyword!(id);
    syn::custom_keyword!(retry_topics);
    syn::custom_keyword!(dead_letter);
    syn::custom_keyword!(batch);
    syn::custom_keyword!(linger);
}

/// Every key, for the "did you mean" of an unknown one.
const KEYS: &[&str] = &[
    "topic",
    "publish",
    "group",
    "concurrency",
    "order",
    "name",
    "pubsub",
    "codec",
    "middleware",
    "service",
    "external",
    "start",
    "id",
    "retry_topics",
    "dead_letter",
    "batch",
    "linger",
    "crate",
];

/// A topic given as a name or as a `#[millstream::topic]` type.
pub(crate) enum TopicArg {
    /// `topic = "orders"`.
    Name(LitStr),
    /// `topic = OrderPlaced`.
    Type(Box<Type>),
}

/// The attribute's keys, each at most once.
pub(crate) struct Args {
    pub(crate) topic: Slot<TopicArg>,
    pub(crate) publish: Slot<TopicArg>,
    pub(crate) group: Slot<LitStr>,
    pub(crate) concurrency: Slot<usize>,
    pub(crate) order: Slot<LitStr>,
    pub(crate) name: Slot<LitStr>,
    pub(crate) pubsub: Slot<LitStr>,
    pub(crate) codec: Slot<Expr>,
    pub(crate) middleware: Slot<Vec<Expr>>,
    pub(crate) service: Slot<LitStr>,
    /// `external` (a command handler's command is defined in another crate).
    pub(crate) external: Slot<()>,
    /// `start` (a saga step that may begin an instance).
    pub(crate) start: Slot<()>,
    /// `id = field` (a saga step: the message's field that names the instance).
    pub(crate) id: Slot<Vec<syn::Member>>,
    /// `retry_topics = ["1s", "10s"]`: each delay in milliseconds.
    pub(crate) retry_topics: Slot<Vec<u64>>,
    pub(crate) dead_letter: Slot<LitStr>,
    /// `batch = 100`: a batch handler's largest batch.
    pub(crate) batch: Slot<usize>,
    /// `linger = "50ms"`: how long a batch waits for more, in milliseconds.
    pub(crate) linger: Slot<u64>,
    pub(crate) krate: Slot<syn::Path>,
}

/// Parses the attribute's arguments; every malformed entry is recorded in `errors`.
pub(crate) fn args(tokens: TokenStream, errors: &mut Errors) -> Args {
    let mut args = Args {
        topic: Slot::new("topic"),
        publish: Slot::new("publish"),
        group: Slot::new("group"),
        concurrency: Slot::new("concurrency"),
        order: Slot::new("order"),
        name: Slot::new("name"),
        pubsub: Slot::new("pubsub"),
        codec: Slot::new("codec"),
        middleware: Slot::new("middleware"),
        service: Slot::new("service"),
        external: Slot::new("external"),
        start: Slot::new("start"),
        id: Slot::new("id"),
        retry_topics: Slot::new("retry_topics"),
        dead_letter: Slot::new("dead_letter"),
        batch: Slot::new("batch"),
        linger: Slot::new("linger"),
        krate: Slot::new("crate"),
    };
    attr::parse_entries(tokens, errors, |input, errors| entry(input, &mut args, errors));
    args
}

fn entry(input: ParseStream<'_>, args: &mut Args, errors: &mut Errors) -> syn::Result<()> {
    let lookahead = input.lookahead1();
    if lookahead.peek(kw::topic) {
        let key: kw::topic = input.parse()?;
        attr::eq(input, "topic")?;
        args.topic.set(key.span, topic_arg(input, "topic")?, errors);
    } else if lookahead.peek(kw::publish) {
        let key: kw::publish = input.parse()?;
        attr::eq(input, "publish")?;
        args.publish.set(key.span, topic_arg(input, "publish")?, errors);
    } else if lookahead.peek(kw::group) {
        let key: kw::group = input.parse()?;
        attr::eq(input, "group")?;
        args.group.set(key.span, attr::string(input, "group")?, errors);
    } else if lookahead.peek(kw::concurrency) {
        let key: kw::concurrency = input.parse()?;
        attr::eq(input, "concurrency")?;
        args.concurrency.set(key.span, attr::positive(input, "concurrency")?, errors);
    } else if lookahead.peek(kw::order) {
        let key: kw::order = input.parse()?;
        attr::eq(input, "order")?;
        args.order.set(key.span, attr::string(input, "order")?, errors);
    } else if lookahead.peek(kw::name) {
        let key: kw::name = input.parse()?;
        attr::eq(input, "name")?;
        args.name.set(key.span, attr::string(input, "name")?, errors);
    } else if lookahead.peek(kw::pubsub) {
        let key: kw::pubsub = input.parse()?;
        attr::eq(input, "pubsub")?;
        args.pubsub.set(key.span, attr::string(input, "pubsub")?, errors);
    } else if lookahead.peek(kw::codec) {
        let key: kw::codec = input.parse()?;
        attr::eq(input, "codec")?;
        args.codec.set(key.span, input.parse()?, errors);
    } else if lookahead.peek(kw::middleware) {
        let key: kw::middleware = input.parse()?;
        attr::eq(input, "middleware")?;
        args.middleware.set(key.span, middleware_list(input)?, errors);
    } else if lookahead.peek(kw::service) {
        let key: kw::service = input.parse()?;
        attr::eq(input, "service")?;
        args.service.set(key.span, attr::string(input, "service")?, errors);
    } else if lookahead.peek(kw::external) {
        let key: kw::external = input.parse()?;
        if input.peek(Token![=]) {
            return Err(input.error("`external` takes no value: `#[millstream::command_handler(external)]`"));
        }
        args.external.set(key.span, (), errors);
    } else if lookahead.peek(kw::start) {
        let key: kw::start = input.parse()?;
        if input.peek(Token![=]) {
            return Err(input.error("`start` takes no value: `#[millstream::saga_handler(start)]`"));
        }
        args.start.set(key.span, (), errors);
    } else if lookahead.peek(kw::id) {
        let key: kw::id = input.parse()?;
        attr::eq(input, "id")?;
        let fields = syn::punctuated::Punctuated::<syn::Member, Token![.]>::parse_separated_nonempty(input)
            .map_err(|error| {
                syn::Error::new(
                    error.span(),
                    "`id` takes the message's field that names the saga instance: `id = order_id` (or `id = order.id`)",
                )
            })?;
        args.id.set(key.span, fields.into_iter().collect(), errors);
    } else if lookahead.peek(kw::retry_topics) {
        let key: kw::retry_topics = input.parse()?;
        attr::eq(input, "retry_topics")?;
        args.retry_topics.set(key.span, retry_delays(input)?, errors);
    } else if lookahead.peek(kw::dead_letter) {
        let key: kw::dead_letter = input.parse()?;
        attr::eq(input, "dead_letter")?;
        args.dead_letter.set(key.span, attr::string(input, "dead_letter")?, errors);
    } else if lookahead.peek(kw::batch) {
        let key: kw::batch = input.parse()?;
        attr::eq(input, "batch")?;
        args.batch.set(key.span, attr::positive(input, "batch")?, errors);
    } else if lookahead.peek(kw::linger) {
        let key: kw::linger = input.parse()?;
        attr::eq(input, "linger")?;
        args.linger.set(key.span, linger(input)?, errors);
    } else if lookahead.peek(Token![crate]) {
        let key: Token![crate] = input.parse()?;
        attr::eq(input, "crate")?;
        args.krate.set(key.span, input.call(syn::Path::parse_mod_style)?, errors);
    } else {
        return Err(attr::unknown_key(input, lookahead, KEYS));
    }
    Ok(())
}

/// `"name"` or a type.
fn topic_arg(input: ParseStream<'_>, key: &str) -> syn::Result<TopicArg> {
    if input.peek(LitStr) {
        return attr::string(input, key).map(TopicArg::Name);
    }
    if input.peek(syn::Lit) {
        return Err(input.error(format_args!(
            "`{key}` takes a string literal or a `#[millstream::topic]` type: `{key} = \"name\"` or `{key} = MyEvent`"
        )));
    }
    let ty: Type = input.parse().map_err(|error| {
        syn::Error::new(
            error.span(),
            format_args!(
                "`{key}` takes a string literal or a `#[millstream::topic]` type: `{key} = \"name\"` or `{key} = MyEvent`"
            ),
        )
    })?;
    Ok(TopicArg::Type(Box::new(ty)))
}

/// `["1s", "10s", "1m"]`: the delays of the retry topics, in milliseconds, each checked.
fn retry_delays(input: ParseStream<'_>) -> syn::Result<Vec<u64>> {
    const USAGE: &str = "`retry_topics` takes a list of delays: `retry_topics = [\"1s\", \"10s\", \"1m\"]`";
    if !input.peek(syn::token::Bracket) {
        return Err(input.error(USAGE));
    }
    let content;
    let brackets = syn::bracketed!(content in input);
    let list = Punctuated::<syn::Lit, Token![,]>::parse_terminated(&content)?;
    if list.is_empty() {
        return Err(syn::Error::new(brackets.span.join(), USAGE));
    }
    let mut delays: Vec<u64> = Vec::with_capacity(list.len());
    for lit in list {
        let syn::Lit::Str(text) = &lit else {
            return Err(syn::Error::new_spanned(lit, USAGE));
        };
        let delay = duration_ms(&text.value()).ok_or_else(|| {
            syn::Error::new(
                text.span(),
                format_args!(
                    "`{}` is not a delay: write a positive whole number and a unit, `ms`, `s`, `m` or `h` (\"500ms\", \"10s\", \"1m\")",
                    text.value()
                ),
            )
        })?;
        if delays.contains(&delay) {
            return Err(syn::Error::new(
                text.span(),
                format_args!("`{}` is the delay of another retry topic of this handler", text.value()),
            ));
        }
        delays.push(delay);
    }
    Ok(delays)
}

/// `"50ms"`: how long a batch waits for more messages after its first, in milliseconds (`"0ms"`:
/// only what is ready at once).
fn linger(input: ParseStream<'_>) -> syn::Result<u64> {
    const USAGE: &str = "`linger` takes a duration: `linger = \"50ms\"` (`ms`, `s`, `m` or `h`)";
    if !input.peek(LitStr) {
        return Err(input.error(USAGE));
    }
    let text: LitStr = input.parse()?;
    let value = text.value();
    let zero = value.strip_suffix("ms").or_else(|| value.strip_suffix('s')).is_some_and(|n| n == "0");
    match duration_ms(&value) {
        Some(ms) => Ok(ms),
        None if zero => Ok(0),
        None => Err(syn::Error::new(
            text.span(),
            format_args!("`{value}` is not a duration: write a whole number and a unit, `ms`, `s`, `m` or `h` (\"50ms\", \"1s\")"),
        )),
    }
}

/// `500ms`, `10s`, `1m`, `2h` in milliseconds; `None` for anything else, zero included.
fn duration_ms(text: &str) -> Option<u64> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok().filter(|n| *n > 0)?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// `[a, b(3), ..]`.
fn middleware_list(input: ParseStream<'_>) -> syn::Result<Vec<Expr>> {
    if !input.peek(syn::token::Bracket) {
        return Err(input.error("`middleware` takes a list: `middleware = [timing, retry(3)]`"));
    }
    let content;
    syn::bracketed!(content in input);
    let list = Punctuated::<Expr, Token![,]>::parse_terminated(&content)?;
    Ok(list.into_iter().collect())
}

/// The item under the attribute: a fn, or tokens that are not one (emitted back unchanged).
pub(crate) enum Item {
    /// It parsed as a fn.
    Fn(Box<syn::ItemFn>),
    /// It did not; rustc reports the user's own mistake when the tokens are emitted back.
    Other(TokenStream),
}

/// Reads the item.
pub(crate) fn item(tokens: TokenStream) -> Item {
    match syn::parse2::<syn::ItemFn>(tokens.clone()) {
        Ok(item) => Item::Fn(Box::new(item)),
        Err(_) => Item::Other(tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn delays_read_as_milliseconds() {
        assert_eq!(duration_ms("500ms"), Some(500));
        assert_eq!(duration_ms("10s"), Some(10_000));
        assert_eq!(duration_ms("1m"), Some(60_000));
        assert_eq!(duration_ms("2h"), Some(7_200_000));
        for bad in ["", "s", "0s", "1", "1.5s", "-1s", "1 s", "1d", "1S", "99999999999999999999h"] {
            assert_eq!(duration_ms(bad), None, "{bad}");
        }
    }
}
