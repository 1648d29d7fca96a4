//! `#[millstream::command]` and `#[millstream::event]`: parse → validate → expand.

mod expand;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::errors::Errors;

/// Which attribute: the kind of message the type is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Command,
    Event,
}

impl Kind {
    /// The attribute's name, for messages.
    pub(crate) fn attribute(self) -> &'static str {
        match self {
            Kind::Command => "#[millstream::command]",
            Kind::Event => "#[millstream::event]",
        }
    }

    /// The environment variable holding the naming rule of this kind's default topics.
    pub(crate) fn rule_variable(self) -> &'static str {
        match self {
            Kind::Command => "MILLSTREAM_COMMAND_TOPICS",
            Kind::Event => "MILLSTREAM_EVENT_TOPICS",
        }
    }

    /// The default topic of a type named `name` under the naming rule that `read` finds for this
    /// kind (Watermill's `GenerateCommandsTopic` / `GenerateEventsTopic`): the rule with `{name}`
    /// replaced, else `commands.{name}` / `events.{name}`. A rule is set at build time,
    /// e.g. in `.cargo/config.toml`: `[env] MILLSTREAM_EVENT_TOPICS = "billing.events.{name}"`.
    pub(crate) fn default_topic(
        self,
        name: &str,
        read: impl Fn(&str) -> Option<String>,
    ) -> Result<String, String> {
        let variable = self.rule_variable();
        let rule = match read(variable) {
            Some(rule) => rule,
            None => match self {
                Kind::Command => "commands.{name}".to_owned(),
                Kind::Event => "events.{name}".to_owned(),
            },
        };
        if !rule.contains("{name}") {
            return Err(format!(
                "the naming rule `{variable}={rule}` has no `{{name}}`: every type would share one topic; write e.g. `{variable}=\"billing.{{name}}\"`"
            ));
        }
        if rule.chars().any(char::is_whitespace) {
            return Err(format!("the naming rule `{variable}={rule}` contains whitespace"));
        }
        Ok(rule.replace("{name}", name))
    }
}

/// The attribute's output: the type unchanged, then its impls, or the errors.
pub(crate) fn message_type(kind: Kind, attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::args(attr, &mut errors);
    let item = crate::topic::parse_item(item);
    let (item, checked) = validate::validate(kind, args, item, &mut errors);
    match (errors.check(), checked) {
        (Ok(()), Some(checked)) => {
            let implementation = expand::expand(&checked);
            quote::quote!(#item #implementation)
        }
        (Err(errors), _) => quote::quote!(#item #errors),
        // `validate` returns nothing only after recording why.
        (Ok(()), None) => unreachable!("`validate` rejected the item without an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn the_naming_rule_names_default_topics() {
        let none = |_: &str| None;
        assert_eq!(Kind::Command.default_topic("PlaceOrder", none).unwrap(), "commands.PlaceOrder");
        assert_eq!(Kind::Event.default_topic("OrderPlaced", none).unwrap(), "events.OrderPlaced");
        let rule =
            |variable: &str| (variable == "MILLSTREAM_EVENT_TOPICS").then(|| "shop.{name}.v1".to_owned());
        assert_eq!(Kind::Event.default_topic("OrderPlaced", rule).unwrap(), "shop.OrderPlaced.v1");
        assert_eq!(Kind::Command.default_topic("PlaceOrder", rule).unwrap(), "commands.PlaceOrder");
        let flat = |_: &str| Some("everything".to_owned());
        let error = Kind::Command.default_topic("PlaceOrder", flat).unwrap_err();
        assert!(error.contains("has no `{name}`"), "{error}");
    }
}
