//! One self-contained HTML page documenting an app: its topology drawn as inline SVG and its
//! AsyncAPI document (channels, operations, messages with their payload schemas). Nothing is
//! fetched from elsewhere (no CDN, no script): the page opens from a file or from
//! `millstream docs serve` on a machine without internet.
//!
//! ```
//! use millstream::asyncapi::AsyncApi;
//! let topology = millstream::App::from_registry().topology();
//! let document = AsyncApi::new("shop", "1.0.0").document(&topology);
//! let html = millstream::docs_page::page(&document, &topology);
//! assert!(html.starts_with("<!doctype html>"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

use crate::topology::Topology;

/// The page for `document` (from [`AsyncApi::document`](crate::asyncapi::AsyncApi::document))
/// and the `topology` it was made from.
pub fn page(document: &Value, topology: &Topology) -> String {
    let title = document["info"]["title"].as_str().unwrap_or("millstream");
    let version = document["info"]["version"].as_str().unwrap_or("");
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} {}</title><style>{STYLE}</style></head><body>\n",
        escape(title),
        escape(version)
    );
    let _ = writeln!(
        out,
        "<header><h1>{}</h1><p class=\"version\">version {}</p>",
        escape(title),
        escape(version)
    );
    if let Some(description) = document["info"]["description"].as_str() {
        let _ = writeln!(out, "<p>{}</p>", escape(description));
    }
    out.push_str("</header>\n<section id=\"topology\"><h2>Topology</h2>\n");
    out.push_str(&svg(topology));
    out.push_str("</section>\n");

    if let Some(servers) = document["servers"].as_object() {
        out.push_str("<section id=\"servers\"><h2>Servers</h2><table><tr><th>name</th><th>protocol</th><th>host</th></tr>\n");
        for (name, server) in servers {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}{}</td></tr>",
                escape(name),
                escape(server["protocol"].as_str().unwrap_or("")),
                escape(server["host"].as_str().unwrap_or("")),
                escape(server["pathname"].as_str().unwrap_or(""))
            );
        }
        out.push_str("</table></section>\n");
    }

    out.push_str("<section id=\"handlers\"><h2>Handlers</h2>\n");
    for node in topology.handlers() {
        let _ = write!(
            out,
            "<article class=\"handler\" data-handler=\"{0}\"><h3>{0}</h3><dl><dt>reads</dt><dd><a href=\"#channel-{1}\">{2}</a></dd><dt>group</dt><dd>{3}</dd>",
            escape(&node.name),
            escape(&anchor(&node.topic)),
            escape(&node.topic),
            escape(&node.group)
        );
        if let Some(publishes) = &node.publishes {
            let _ = write!(
                out,
                "<dt>publishes to</dt><dd><a href=\"#channel-{}\">{}</a></dd>",
                escape(&anchor(publishes)),
                escape(publishes)
            );
        }
        if let Some(payload) = node.payload {
            let _ = write!(out, "<dt>payload</dt><dd><code>{}</code></dd>", escape(payload));
        }
        if let Some(location) = node.location {
            let _ =
                write!(out, "<dt>declared at</dt><dd><code>{}</code></dd>", escape(&location.to_string()));
        }
        out.push_str("</dl></article>\n");
    }
    out.push_str("</section>\n<section id=\"channels\"><h2>Channels</h2>\n");
    let messages = document["components"]["messages"].as_object();
    if let Some(channels) = document["channels"].as_object() {
        for channel in channels.values() {
            let address = channel["address"].as_str().unwrap_or("");
            let _ = writeln!(
                out,
                "<article class=\"channel\" id=\"channel-{}\" data-topic=\"{}\"><h3>{}</h3>",
                escape(&anchor(address)),
                escape(address),
                escape(address)
            );
            for (id, _) in channel["messages"].as_object().into_iter().flatten() {
                let message = messages.and_then(|m| m.get(id));
                let name = message.and_then(|m| m["name"].as_str()).unwrap_or(id);
                let payload = message.map(|m| &m["payload"]).cloned().unwrap_or(Value::Null);
                let pretty = serde_json::to_string_pretty(&payload).unwrap_or_default();
                let _ = write!(
                    out,
                    "<details class=\"message\" open><summary>message <code>{}</code></summary><p>payload schema</p><pre>{}</pre>",
                    escape(name),
                    escape(&pretty)
                );
                if let Some(example) = message.and_then(|m| m["examples"][0].get("payload")) {
                    let pretty = serde_json::to_string_pretty(example).unwrap_or_default();
                    let _ = write!(out, "<p>example</p><pre class=\"example\">{}</pre>", escape(&pretty));
                }
                out.push_str("</details>\n");
            }
            out.push_str("</article>\n");
        }
    }
    out.push_str("</section>\n<section id=\"operations\"><h2>Operations</h2><table><tr><th>operation</th><th>action</th><th>channel</th><th>handler</th></tr>\n");
    if let Some(operations) = document["operations"].as_object() {
        for (id, operation) in operations {
            let channel =
                operation["channel"]["$ref"].as_str().unwrap_or("").trim_start_matches("#/channels/");
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(id),
                escape(operation["action"].as_str().unwrap_or("")),
                escape(channel),
                escape(operation["x-millstream-handler"].as_str().unwrap_or(""))
            );
        }
    }
    out.push_str(
        "</table></section>\n<footer>AsyncAPI 3.0 document generated by millstream.</footer></body></html>\n",
    );
    out
}

/// The topology as a layered drawing: topics (rounded) and handlers (boxes) in columns, each
/// one column right of what feeds it, with arrows from a topic to its readers and from a
/// handler to the topic it publishes to.
pub fn svg(topology: &Topology) -> String {
    // Columns: a topic no handler writes starts at 0; a handler sits right of its topic, the
    // topic it writes right of it (cycles stop growing at the number of nodes).
    let mut column: BTreeMap<String, usize> = BTreeMap::new();
    for topic in topology.topics() {
        column.insert(format!("t:{topic}"), 0);
    }
    let limit = 2 * (topology.handlers().len() + column.len()) + 2;
    for _ in 0..limit {
        let mut changed = false;
        for node in topology.handlers() {
            let read = column[&format!("t:{}", node.topic)];
            let handler = column.entry(format!("h:{}", node.name)).or_insert(0);
            if *handler <= read && read < limit {
                *handler = read + 1;
                changed = true;
            }
            let handler = *handler;
            if let Some(publishes) = &node.publishes {
                let written = column.get_mut(&format!("t:{publishes}")).expect("every output is a topic");
                if *written <= handler && handler < limit {
                    *written = handler + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (key, col) in &column {
        rows.entry(*col).or_default().push(key);
    }
    const WIDTH: usize = 210;
    const HEIGHT: usize = 44;
    const GAP_X: usize = 60;
    const GAP_Y: usize = 22;
    let mut position: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (col, keys) in &rows {
        for (row, key) in keys.iter().enumerate() {
            position.insert(key, (20 + col * (WIDTH + GAP_X), 20 + row * (HEIGHT + GAP_Y)));
        }
    }
    let width = 40 + rows.len() * (WIDTH + GAP_X);
    let height = 40 + rows.values().map(Vec::len).max().unwrap_or(1) * (HEIGHT + GAP_Y);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"topology\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"topology\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\"/></marker></defs>\n"
    );
    let edge = |out: &mut String, from: &str, to: &str| {
        let (Some(&(x1, y1)), Some(&(x2, y2))) = (position.get(from), position.get(to)) else { return };
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" marker-end=\"url(#arrow)\"/>",
            x1 + WIDTH,
            y1 + HEIGHT / 2,
            x2,
            y2 + HEIGHT / 2
        );
    };
    for node in topology.handlers() {
        let handler = format!("h:{}", node.name);
        edge(&mut out, &format!("t:{}", node.topic), &handler);
        if let Some(publishes) = &node.publishes {
            edge(&mut out, &handler, &format!("t:{publishes}"));
        }
    }
    for (key, &(x, y)) in &position {
        let (kind, label, radius) = match key.split_once(':') {
            Some(("t", topic)) => ("topic", topic, 20),
            Some((_, handler)) => ("handler", handler, 4),
            None => continue,
        };
        let _ = writeln!(
            out,
            "<g class=\"{kind}\" data-name=\"{label}\"><rect x=\"{x}\" y=\"{y}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" rx=\"{radius}\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" dominant-baseline=\"middle\">{}</text></g>",
            x + WIDTH / 2,
            y + HEIGHT / 2,
            escape(&shorten(label, 30)),
            label = escape(label)
        );
    }
    out.push_str("</svg>\n");
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;color:#1d2433;max-width:80rem}\
h1{margin-bottom:0}.version{color:#667;margin-top:.2rem}section{margin-top:2rem}\
article{border:1px solid #d6dbe4;border-radius:6px;padding:.6rem 1rem;margin:.6rem 0}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem;margin:.4rem 0}dt{color:#667}\
pre{background:#f5f7fa;padding:.6rem;overflow:auto}table{border-collapse:collapse}\
td,th{border:1px solid #d6dbe4;padding:.3rem .6rem;text-align:left}\
svg.topology{max-width:100%;height:auto}svg line{stroke:#556;stroke-width:1.5}\
svg .topic rect{fill:#e8f1ff;stroke:#3b6fd8}svg .handler rect{fill:#fff6e5;stroke:#d38b1f}\
svg text{font-size:12px;fill:#1d2433}footer{margin-top:3rem;color:#889;font-size:.85rem}";

/// `text` with HTML's special characters escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An id for a fragment link: other characters than `[A-Za-z0-9._-]` become `_`.
fn anchor(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect()
}

/// `text`, cut to `max` characters with an ellipsis.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max - 1).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_would_read() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(anchor("orders::placed v2"), "orders__placed_v2");
    }
}
