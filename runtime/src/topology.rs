//! The shape of an app: which handler reads which topic in which group and where its return
//! values go, as data ([`Topology`]) and as a drawing in Mermaid or Graphviz DOT.
//!
//! [`App::topology`](crate::App::topology) builds it from the handlers the app would run, without
//! connecting to anything. Only what the types say is known: the topic a handler reads and the
//! topics of what it returns (or its `publish` topic); what it sends through `Ctx`, a bus or a
//! publisher at run time is not drawn.
//!
//! ```text
//! flowchart LR
//!     t0[("orders.placed")]
//!     h0["shop::bill"]
//!     t0 -- "billing" --> h0
//!     t1[("invoices.issued")]
//!     h0 --> t1
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::registry::Role;
use crate::router::{HandlerSummary, Location};

/// One handler in the drawing.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Node {
    /// The handler's name.
    pub name: String,
    /// The topic it reads.
    pub topic: String,
    /// Its consumer group.
    pub group: String,
    /// Where its return values go, when it returns any.
    pub publishes: Option<String>,
    /// Which attribute declared it (`None`: a hand-made route).
    pub role: Option<Role>,
    /// Its payload type, as written.
    pub payload: Option<&'static str>,
    /// The type of the values it returns to publish, as written.
    pub output: Option<&'static str>,
    /// The payload type's JSON Schema (`schema` feature, a type deriving `JsonSchema`).
    pub payload_schema: Option<serde_json::Value>,
    /// The returned type's JSON Schema (`schema` feature, a type deriving `JsonSchema`).
    pub output_schema: Option<serde_json::Value>,
    /// Where it was declared.
    pub location: Option<Location>,
}

/// The handlers of an app and the topics between them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Topology {
    nodes: Vec<Node>,
}

impl Topology {
    /// A topology of `nodes`, sorted by name.
    pub(crate) fn new(mut nodes: Vec<Node>) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Topology { nodes }
    }

    /// A node for a handler summary, with what the registry adds.
    pub(crate) fn node(
        summary: HandlerSummary,
        descriptor: Option<&crate::registry::HandlerDescriptor>,
    ) -> Node {
        let info = descriptor.map(|d| d.info());
        Node {
            name: summary.name,
            topic: summary.topic,
            group: summary.group,
            publishes: summary.publish,
            role: info.map(|info| info.role),
            payload: info.and_then(|info| info.payload),
            output: info.and_then(|info| info.output),
            payload_schema: descriptor.and_then(|d| d.payload_schema()),
            output_schema: descriptor.and_then(|d| d.output_schema()),
            location: summary.location,
        }
    }

    /// The handlers, by name.
    pub fn handlers(&self) -> &[Node] {
        &self.nodes
    }

    /// Every topic read or written, sorted.
    pub fn topics(&self) -> BTreeSet<&str> {
        self.nodes
            .iter()
            .flat_map(|n| std::iter::once(n.topic.as_str()).chain(n.publishes.as_deref()))
            .collect()
    }

    /// A Mermaid flowchart: topics as cylinders, handlers as boxes, an edge from a topic to each
    /// handler reading it (labelled with the group when it is not the handler's name) and from a
    /// handler to the topic it publishes to.
    pub fn mermaid(&self) -> String {
        let topics: Vec<&str> = self.topics().into_iter().collect();
        let topic_id = |topic: &str| topics.binary_search(&topic).map_or(0, |i| i);
        let mut out = String::from("flowchart LR\n");
        for (i, topic) in topics.iter().enumerate() {
            let _ = writeln!(out, "    t{i}[(\"{}\")]", mermaid_text(topic));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let kind = match node.role {
                Some(Role::CommandHandler) => "<br/><small>command handler</small>",
                Some(Role::EventHandler) => "<br/><small>event handler</small>",
                Some(Role::SagaHandler { .. }) => "<br/><small>saga step</small>",
                _ => "",
            };
            let _ = writeln!(out, "    h{i}[\"{}{kind}\"]", mermaid_text(&node.name));
            let topic = topic_id(&node.topic);
            if node.group == node.name {
                let _ = writeln!(out, "    t{topic} --> h{i}");
            } else {
                let _ = writeln!(out, "    t{topic} -- \"{}\" --> h{i}", mermaid_text(&node.group));
            }
            if let Some(publishes) = &node.publishes {
                let _ = writeln!(out, "    h{i} --> t{}", topic_id(publishes));
            }
        }
        out
    }

    /// A Graphviz DOT digraph of the same (`dot -Tsvg`).
    pub fn dot(&self) -> String {
        let mut out =
            String::from("digraph millstream {\n    rankdir=LR;\n    node [fontname=\"sans-serif\"];\n");
        for topic in self.topics() {
            let _ = writeln!(out, "    \"topic:{0}\" [shape=cylinder, label=\"{0}\"];", dot_text(topic));
        }
        for node in &self.nodes {
            let name = dot_text(&node.name);
            let _ = writeln!(out, "    \"handler:{name}\" [shape=box, label=\"{name}\"];");
            let label = if node.group == node.name {
                String::new()
            } else {
                format!(" [label=\"{}\"]", dot_text(&node.group))
            };
            let _ = writeln!(out, "    \"topic:{}\" -> \"handler:{name}\"{label};", dot_text(&node.topic));
            if let Some(publishes) = &node.publishes {
                let _ = writeln!(out, "    \"handler:{name}\" -> \"topic:{}\";", dot_text(publishes));
            }
        }
        out.push_str("}\n");
        out
    }
}

/// Text inside a quoted Mermaid label (`"` and `<`/`>` written as entities).
fn mermaid_text(text: &str) -> String {
    text.replace('"', "#quot;").replace('<', "#lt;").replace('>', "#gt;")
}

/// Text inside a quoted DOT string.
fn dot_text(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, topic: &str, publishes: Option<&str>) -> Node {
        Node {
            name: name.to_owned(),
            topic: topic.to_owned(),
            group: format!("{name}-group"),
            publishes: publishes.map(str::to_owned),
            role: Some(Role::Handler),
            payload: None,
            output: None,
            payload_schema: None,
            output_schema: None,
            location: None,
        }
    }

    #[test]
    fn draws_topics_handlers_and_edges() {
        let topology = Topology::new(vec![
            node("ship", "invoices", Some("shipments")),
            node("bill", "orders", Some("invoices")),
            node("track", "shipments", None),
        ]);
        assert_eq!(topology.topics().into_iter().collect::<Vec<_>>(), ["invoices", "orders", "shipments"]);
        let mermaid = topology.mermaid();
        assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
        assert!(mermaid.contains("    t1[(\"orders\")]\n"), "{mermaid}");
        assert!(mermaid.contains("    t1 -- \"bill-group\" --> h0\n    h0 --> t0\n"), "{mermaid}");
        assert!(mermaid.contains("    t2 -- \"track-group\" --> h2\n"), "{mermaid}");
        let dot = topology.dot();
        assert!(dot.contains("\"topic:orders\" -> \"handler:bill\" [label=\"bill-group\"];"), "{dot}");
        assert!(dot.contains("\"handler:bill\" -> \"topic:invoices\";"), "{dot}");
        assert!(dot.ends_with("}\n"));
    }

    #[test]
    fn quotes_are_escaped() {
        let topology = Topology::new(vec![node("a\"b", "t<1>", None)]);
        assert!(topology.mermaid().contains("a#quot;b") && topology.mermaid().contains("t#lt;1#gt;"));
        assert!(topology.dot().contains("a\\\"b"));
    }
}
