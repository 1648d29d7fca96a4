//! A command line for a millstream binary (`cli` feature), like FastStream's `faststream run`:
//! the binary's own handlers (`list`, `graph`, `asyncapi`, `run`) and any backend by URL
//! (`publish`, `tail`, `poison list|show|requeue`).
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> std::process::ExitCode {
//! millstream::cli::main(millstream::App::from_registry()).await
//! # }
//! ```
//!
//! ```text
//! myapp list                                    # handlers: topic, group, output, file:line
//! myapp graph --format dot                      # the topology (Mermaid by default)
//! myapp asyncapi --server prod=kafka://b:9092   # the AsyncAPI 3.0 document
//! myapp docs --out docs.html                    # one self-contained HTML page of both (or --serve ADDR)
//! myapp run --pubsub nats://localhost:4222      # the handlers, until Ctrl-C
//! myapp publish --pubsub sqlite:app.db orders '{"id":1}' --header source=cli
//! myapp tail --pubsub sqlite:app.db orders --from-start --idle 2   # stops when idle 2 s
//! myapp poison list --pubsub sqlite:app.db --reason timeout
//! myapp poison requeue --pubsub sqlite:app.db --handler shop::bill
//! ```
//!
//! `--pubsub` defaults to the `MILLSTREAM_PUBSUB` environment variable; the URL is
//! [`connect`](crate::connect())'s. The `millstream` binary (crate `millstream-cli`) is this command
//! line with no handlers of its own.
//!
//! `tail --from-start` and `poison list|show` read from the oldest message the backend holds
//! (SQL, NATS, Redis, Kafka keep history; the in-memory backend, RabbitMQ and MQTT do not).
//! `poison requeue` reads the poison topic in the consumer group `millstream-cli.requeue`: it acks
//! what it requeued and gives the rest back for a later requeue. On NATS 2.9 a message given back
//! reaches the next requeue only after the consumer's ack wait (30 s by default): the server keeps
//! the pull of a reader that has exited open until it expires.

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::app::App;
use crate::asyncapi::AsyncApi;
use crate::connect::connect;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::poison;
use crate::message::Message;
use crate::pubsub::{Publisher, StartFrom, SubscribeOptions, Subscriber};

#[derive(Parser, Debug)]
#[command(about = "A millstream program: its handlers, and any backend by URL.", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the handlers until Ctrl-C.
    Run {
        #[command(flatten)]
        backend: BackendArg,
    },
    /// Lists the handlers linked into this binary.
    List,
    /// Draws the handlers and topics (Mermaid or Graphviz DOT).
    Graph {
        /// `mermaid` or `dot`.
        #[arg(long, default_value = "mermaid", value_parser = ["mermaid", "dot"])]
        format: String,
    },
    /// Prints the AsyncAPI 3.0 document of the handlers.
    Asyncapi {
        #[command(flatten)]
        describe: Describe,
    },
    /// Writes the handlers' documentation page (the topology and the AsyncAPI document, one
    /// self-contained HTML file), or serves it.
    Docs {
        #[command(flatten)]
        describe: Describe,
        /// Where to write the page (`-`: standard output).
        #[arg(long, default_value = "-", conflicts_with = "serve")]
        out: String,
        /// Serves the page over HTTP on this address (`127.0.0.1:8088`) until Ctrl-C.
        #[arg(long)]
        serve: Option<String>,
    },
    /// Publishes one message (the payload from the argument, or standard input).
    Publish {
        #[command(flatten)]
        backend: BackendArg,
        /// The topic.
        topic: String,
        /// The payload; standard input when absent.
        payload: Option<String>,
        /// A metadata entry, `key=value` (repeatable).
        #[arg(long = "header", value_parser = name_and_value)]
        headers: Vec<(String, String)>,
        /// The message key (ordering, partitioning).
        #[arg(long)]
        key: Option<String>,
    },
    /// Prints the messages of a topic as JSON, with their metadata.
    Tail {
        #[command(flatten)]
        backend: BackendArg,
        /// The topic.
        topic: String,
        #[command(flatten)]
        reading: Reading,
    },
    /// Browses a poison topic and sends messages back to where they came from.
    Poison {
        #[command(subcommand)]
        action: PoisonAction,
    },
}

#[derive(Subcommand, Debug)]
enum PoisonAction {
    /// Lists poisoned messages (id, handler, topic, reason).
    List(PoisonArgs),
    /// Prints poisoned messages in full.
    Show(PoisonArgs),
    /// Publishes matching poisoned messages to their original topic again, without the poison
    /// metadata; each once (the poison topic is read in the group `millstream-cli.requeue`,
    /// which acks what it requeued and gives the rest back).
    Requeue {
        #[command(flatten)]
        poison: PoisonArgs,
        /// Says what would be requeued, and requeues nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// What an AsyncAPI document says of the app.
#[derive(Args, Debug)]
struct Describe {
    /// The document's title.
    #[arg(long, default_value = "millstream")]
    title: String,
    /// The app's version.
    #[arg(long = "app-version", default_value = "0.0.0")]
    app_version: String,
    /// A server, `name=url` (repeatable).
    #[arg(long = "server", value_parser = name_and_value)]
    servers: Vec<(String, String)>,
}

impl Describe {
    fn api(self) -> Result<AsyncApi> {
        let mut api = AsyncApi::new(self.title, self.app_version);
        for (name, url) in self.servers {
            api = api.server(name, &url)?;
        }
        Ok(api)
    }
}

#[derive(Args, Debug)]
struct BackendArg {
    /// The backend's URL (`sqlite:app.db`, `nats://host:4222`, ...).
    #[arg(long, env = "MILLSTREAM_PUBSUB")]
    pubsub: String,
}

#[derive(Args, Debug)]
struct Reading {
    /// Reads in this consumer group (shares the messages with its other members, and acks them).
    #[arg(long)]
    group: Option<String>,
    /// Starts at the oldest message the backend holds (default: only new ones).
    #[arg(long)]
    from_start: bool,
    /// Stops after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Stops when nothing arrives for this many seconds.
    #[arg(long)]
    idle: Option<f64>,
    /// One message per line instead of pretty-printed.
    #[arg(long)]
    compact: bool,
}

#[derive(Args, Debug)]
struct PoisonArgs {
    #[command(flatten)]
    backend: BackendArg,
    /// The poison topic.
    #[arg(long, default_value = "millstream.poison")]
    topic: String,
    /// Only messages whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Only messages poisoned by this handler.
    #[arg(long)]
    handler: Option<String>,
    /// Only the message with this id.
    #[arg(long)]
    id: Option<String>,
    /// Stops when nothing arrives for this many seconds (the end of the poison topic).
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
}

/// Runs the command line of `std::env::args` for `app`; the process's exit code (errors are
/// printed to standard error).
pub async fn main(app: App) -> ExitCode {
    run_from(app, std::env::args_os()).await
}

/// [`main`] with the arguments given (the first is the program's name).
pub async fn run_from<I, T>(app: App, args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match execute(app, cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(app: App, command: Command) -> Result<()> {
    match command {
        Command::List => list(&app),
        Command::Graph { format } => {
            let topology = app.topology();
            print!("{}", if format == "dot" { topology.dot() } else { topology.mermaid() });
            Ok(())
        }
        Command::Asyncapi { describe } => {
            println!("{:#}", describe.api()?.document(&app.topology()));
            Ok(())
        }
        Command::Docs { describe, out, serve } => {
            let topology = app.topology();
            let document = describe.api()?.document(&topology);
            let page = crate::docs_page::page(&document, &topology);
            match (serve, out.as_str()) {
                (Some(addr), _) => serve_page(&addr, page).await,
                (None, "-") => {
                    print!("{page}");
                    Ok(())
                }
                (None, path) => {
                    std::fs::write(path, page).map_err(|e| cli_error(format!("writing {path}: {e}")))?;
                    eprintln!("wrote {path}");
                    Ok(())
                }
            }
        }
        Command::Run { backend } => app.connect(&backend.pubsub).await?.run_until_ctrl_c().await,
        Command::Publish { backend, topic, payload, headers, key } => {
            let pubsub = connect(&backend.pubsub).await?;
            let payload = match payload {
                Some(payload) => payload.into_bytes(),
                None => {
                    let mut input = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut input)
                        .map_err(|e| cli_error(format!("reading stdin: {e}")))?;
                    input
                }
            };
            let mut message = Message::new(payload);
            for (name, value) in headers {
                message.metadata_mut().insert(name, value);
            }
            if let Some(key) = key {
                message = message.with_key(key);
            }
            let id = message.id();
            pubsub.publish(&topic, message).await?;
            Publisher::close(&pubsub).await?;
            eprintln!("published {id} to {topic}");
            Ok(())
        }
        Command::Tail { backend, topic, reading } => tail(&backend.pubsub, &topic, &reading).await,
        Command::Poison { action } => match action {
            PoisonAction::List(args) => poison_read(&args, Show::List).await,
            PoisonAction::Show(args) => poison_read(&args, Show::Full).await,
            PoisonAction::Requeue { poison, dry_run } => requeue(&poison, dry_run).await,
        },
    }
}

fn list(app: &App) -> Result<()> {
    let topology = app.topology();
    if topology.handlers().is_empty() {
        println!("no handlers are linked into this binary");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    for node in topology.handlers() {
        let location = node.location.map(|l| l.to_string()).unwrap_or_else(|| "-".into());
        let publishes = node.publishes.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "{}\n    reads {} in group {}; publishes to {publishes}; {location}",
            node.name, node.topic, node.group
        );
    }
    Ok(())
}

/// A message as the command line prints it.
fn render(message: &Message, topic: &str) -> Value {
    let metadata: serde_json::Map<String, Value> =
        message.metadata().iter().map(|(k, v)| (k.to_owned(), json!(v))).collect();
    let payload = match serde_json::from_slice::<Value>(message.payload()) {
        Ok(value) => value,
        Err(_) => json!(String::from_utf8_lossy(message.payload())),
    };
    json!({ "id": message.id().to_string(), "topic": topic, "key": message.key(), "metadata": metadata, "payload": payload })
}

fn print(value: &Value, compact: bool) {
    let mut out = std::io::stdout().lock();
    let _ = if compact { writeln!(out, "{value}") } else { writeln!(out, "{value:#}") };
}

async fn tail(url: &str, topic: &str, reading: &Reading) -> Result<()> {
    let pubsub = connect(url).await?;
    let start = if reading.from_start { StartFrom::Earliest } else { StartFrom::Latest };
    let options = match &reading.group {
        Some(group) => SubscribeOptions::group(group.clone()).start(start),
        None => SubscribeOptions::default().start(start),
    };
    let mut sub = pubsub.subscribe(topic, options).await?;
    let idle = reading.idle.map(Duration::from_secs_f64);
    let started = Instant::now();
    let mut seen = 0usize;
    let mut progress = Progress::new(format!("reading {topic}"));
    while reading.count.is_none_or(|count| seen < count) {
        let next = match idle {
            Some(idle) => match tokio::time::timeout(idle, sub.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => sub.next().await,
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(error)) => return Err(error),
            None => break,
        };
        print(&render(delivery.message(), topic), reading.compact);
        delivery.ack().await?;
        seen += 1;
        progress.tick(seen);
    }
    progress.finish();
    drop(sub);
    Subscriber::close(&pubsub).await?;
    eprintln!("{seen} message(s) from {topic} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// A line on standard error, when it is a terminal, saying how far a long read has got (at most
/// once a second); cleared at the end, where the summary line follows.
struct Progress {
    what: String,
    shown: bool,
    last: Instant,
    terminal: bool,
}

impl Progress {
    fn new(what: impl Into<String>) -> Self {
        Progress {
            what: what.into(),
            shown: false,
            last: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self, seen: usize) {
        if self.terminal && self.last.elapsed() >= Duration::from_secs(1) {
            eprint!("\r{}: {seen} message(s)…", self.what);
            self.shown = true;
            self.last = Instant::now();
        }
    }

    fn finish(self) {
        if self.shown {
            eprint!("\r\x1b[2K");
        }
    }
}

enum Show {
    List,
    Full,
}

impl PoisonArgs {
    fn matches(&self, message: &Message) -> bool {
        let get = |key| message.metadata().get(key).unwrap_or("");
        self.reason.as_deref().is_none_or(|text| get(poison::REASON).contains(text))
            && self.handler.as_deref().is_none_or(|handler| get(poison::HANDLER) == handler)
            && self.id.as_deref().is_none_or(|id| message.id().to_string() == id)
    }
}

/// Reads the poison topic from its start, group-less, until it is idle; prints what matches.
async fn poison_read(args: &PoisonArgs, show: Show) -> Result<()> {
    let pubsub = connect(&args.backend.pubsub).await?;
    let options = SubscribeOptions::default().start(StartFrom::Earliest);
    let mut sub = pubsub.subscribe(&args.topic, options).await?;
    let (mut seen, mut shown) = (0usize, 0usize);
    let mut progress = Progress::new(format!("reading {}", args.topic));
    while let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs_f64(args.idle), sub.next()).await {
        let delivery = next?;
        seen += 1;
        progress.tick(seen);
        let message = delivery.message();
        if args.matches(message) {
            shown += 1;
            match show {
                Show::Full => print(&render(message, &args.topic), false),
                Show::List => {
                    let get = |key| message.metadata().get(key).unwrap_or("?");
                    println!(
                        "{}  handler {}  topic {}  attempt {}\n    {}",
                        message.id(),
                        get(poison::HANDLER),
                        get(poison::TOPIC),
                        get(poison::ATTEMPT),
                        get(poison::REASON)
                    );
                }
            }
        }
        delivery.ack().await?;
    }
    progress.finish();
    drop(sub);
    Subscriber::close(&pubsub).await?;
    eprintln!("{shown} of {seen} poisoned message(s) in {} matched", args.topic);
    Ok(())
}

/// Requeues matching poisoned messages, each once: the poison topic is read in a group of its
/// own, so a message read once is not read again by a later requeue.
async fn requeue(args: &PoisonArgs, dry_run: bool) -> Result<()> {
    let pubsub = connect(&args.backend.pubsub).await?;
    let options = SubscribeOptions::group("millstream-cli.requeue").start(StartFrom::Earliest);
    let mut sub = pubsub.subscribe(&args.topic, options).await?;
    let (mut seen, mut requeued) = (0usize, 0usize);
    // What is not requeued is held until the end, then given back unsettled (for a later
    // requeue): released at once, it would come straight back to this reader.
    let mut held = Vec::new();
    let mut progress = Progress::new(format!("requeueing from {}", args.topic));
    while let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs_f64(args.idle), sub.next()).await {
        let delivery = next?;
        seen += 1;
        progress.tick(seen);
        let message = delivery.message();
        if !args.matches(message) {
            held.push(delivery);
            continue;
        }
        let Some(original) = message.metadata().get(poison::TOPIC).map(str::to_owned) else {
            eprintln!("{}: no {} metadata; left where it is", message.id(), poison::TOPIC);
            held.push(delivery);
            continue;
        };
        requeued += 1;
        if dry_run {
            println!("would requeue {} to {original}", message.id());
            held.push(delivery);
            continue;
        }
        let mut back = message.clone();
        for key in
            [poison::REASON, poison::HANDLER, poison::TOPIC, poison::ATTEMPT, poison::KIND, poison::TIME]
        {
            back.metadata_mut().remove(key);
        }
        pubsub.publish(&original, back).await?;
        println!("requeued {} to {original}", message.id());
        delivery.ack().await?;
    }
    progress.finish();
    for delivery in held {
        let _ = delivery.release().await;
    }
    drop(sub);
    Subscriber::close(&pubsub).await?;
    Publisher::close(&pubsub).await?;
    let verb = if dry_run { "would requeue" } else { "requeued" };
    eprintln!("{verb} {requeued} of {seen} poisoned message(s) read from {}", args.topic);
    Ok(())
}

/// Serves `page` at every path of `addr` until Ctrl-C.
async fn serve_page(addr: &str, page: String) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| cli_error(format!("binding {addr}: {e}")))?;
    let local = listener.local_addr().map_err(Error::from)?;
    eprintln!("serving the documentation on http://{local}/ (Ctrl-C stops)");
    let page = std::sync::Arc::new(page);
    let accept = async {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let page = page.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 2048];
                let _ = stream.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    page.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(page.as_bytes()).await;
            });
        }
    };
    tokio::select! {
        () = accept => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

fn name_and_value(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected name=value, got {text:?}")),
    }
}

fn cli_error(text: String) -> Error {
    Error::new(ErrorKind::Config, text)
}
