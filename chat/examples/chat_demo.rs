//! The README's first command: starts the chat server in this process (ws:// on a free port,
//! data in `target/chat-demo-data`), then runs library clients against it: they chat in a
//! room, one drops and recovers what it missed, and two strangers are matched.
//!
//! ```text
//! cargo run --release -p syncws-chat --example chat_demo
//! ```

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};
use syncws::{Config, Event, ThreadedClient};
use syncws_chat::{Options, Server};

type Failure = Box<dyn std::error::Error + Send + Sync>;

struct Client {
    name: &'static str,
    inner: ThreadedClient,
}

impl Client {
    fn connect(url: &str, name: &'static str) -> Result<Client, Failure> {
        let inner = ThreadedClient::connect(url, &Config::default())?;
        let c = Client { name, inner };
        c.send(json!({"op": "hello", "nick": name}))?;
        // The welcome sent on connect comes first, with a generated nick; then the one for hello.
        c.wait("welcome")?;
        let welcome = c.wait("welcome")?;
        if welcome["nick"] != name {
            return Err(format!("{name}: welcomed as {}", welcome["nick"]).into());
        }
        Ok(c)
    }

    fn send(&self, v: Value) -> Result<(), Failure> {
        self.inner.control_tx.send_text(v.to_string())?;
        Ok(())
    }

    /// The next `msg` in `room`, which must be `text` from `from` with sequence number `seq`.
    fn expect_msg(&self, room: &Value, seq: u64, from: &str, text: &str) -> Result<(), Failure> {
        let m = self.wait("msg")?;
        if m["room"] != *room || m["seq"] != seq || m["from"] != from || m["text"] != text {
            return Err(format!(
                "{}: expected seq {seq} {text:?} from {from} in {room}, got {m}",
                self.name
            )
            .into());
        }
        Ok(())
    }

    /// Closes with 1000 and waits for the closing handshake to finish.
    fn close(self) -> Result<(), Failure> {
        self.inner.control_tx.close(1000, "bye")?;
        let mut closed = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inner.event_rx.recv_timeout(left) {
                Ok(Event::ConnectionClosed(_)) => closed = true,
                Ok(Event::Error(e)) => return Err(format!("{}: {e}", self.name).into()),
                Ok(Event::Quit) if closed => return Ok(()),
                Ok(Event::Quit) => {
                    return Err(format!("{}: quit without a close", self.name).into())
                }
                Ok(_) => {}
                Err(_) => return Err(format!("{}: close not done within 10 s", self.name).into()),
            }
        }
    }

    /// The next event `ev` (printing it), within 10 s.
    fn wait(&self, ev: &str) -> Result<Value, String> {
        self.wait_for(ev, None)
    }

    /// The next `joined` of `room`.
    fn joined(&self, room: &str) -> Result<Value, String> {
        self.wait_for("joined", Some(room))
    }

    fn wait_for(&self, ev: &str, room: Option<&str>) -> Result<Value, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inner.event_rx.recv_timeout(left) {
                Ok(Event::TextMessage(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                    if v["ev"] == ev && room.is_none_or(|r| v["room"] == r) {
                        if ev == "welcome" {
                            // The limits are long; the page and the README show them.
                            println!("  {:>5} <- welcome as {}", self.name, v["nick"]);
                        } else {
                            println!("  {:>5} <- {}", self.name, t.as_str());
                        }
                        return Ok(v);
                    }
                }
                Ok(Event::Error(e)) => return Err(e.to_string()),
                Ok(_) => {}
                Err(_) => return Err(format!("{}: no {ev} within 10 s", self.name)),
            }
        }
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Failure> {
    // The usual port when it is free, so the page's address is the one in the README.
    let listen = if std::net::TcpListener::bind("127.0.0.1:8080").is_ok() {
        "127.0.0.1:8080"
    } else {
        "127.0.0.1:0"
    };
    let options = Options::parse_from([
        "chat-server",
        "--listen",
        listen,
        "--tls-listen",
        "off",
        "--data-dir",
        "target/chat-demo-data",
    ]);
    let server = Server::start(&options)?;
    let url = format!("ws://{}/", server.ws_addr.ok_or("no listener")?);
    println!("chat server on {url} (data in target/chat-demo-data)\n");

    println!(
        "1. ann and bob chat in room 'demo'; every member gets every message, the sender too:"
    );
    let ann = Client::connect(&url, "ann")?;
    let bob = Client::connect(&url, "bob")?;
    let demo = json!("demo");
    ann.send(json!({"op": "join", "room": "demo"}))?;
    let joined = ann.joined("demo")?;
    let epoch = joined["epoch"].clone();
    let first = joined["seq"].as_u64().ok_or("joined without a seq")? + 1;
    bob.send(json!({"op": "join", "room": "demo"}))?;
    bob.joined("demo")?;
    ann.send(json!({"op": "say", "room": "demo", "text": "hello bob", "cid": "a1"}))?;
    ann.expect_msg(&demo, first, "ann", "hello bob")?;
    bob.expect_msg(&demo, first, "ann", "hello bob")?;
    bob.send(json!({"op": "say", "room": "demo", "text": "hi ann"}))?;
    bob.expect_msg(&demo, first + 1, "bob", "hi ann")?;
    ann.expect_msg(&demo, first + 1, "bob", "hi ann")?;
    let last = first + 1;

    println!(
        "\n2. bob drops; ann says two more; bob reconnects with since={last} and recovers them:"
    );
    bob.close()?;
    let missed = ["are you there?", "you will see this later"];
    for (i, text) in missed.iter().enumerate() {
        ann.send(json!({"op": "say", "room": "demo", "text": text}))?;
        ann.expect_msg(&demo, last + 1 + i as u64, "ann", text)?;
    }
    let bob = Client::connect(&url, "bob")?;
    bob.send(json!({"op": "join", "room": "demo", "since": last, "epoch": epoch}))?;
    let joined = bob.joined("demo")?;
    let replay = bob.wait("history")?;
    let got: Vec<(Value, Value)> = replay["msgs"]
        .as_array()
        .map(|msgs| {
            msgs.iter()
                .map(|m| (m["seq"].clone(), m["text"].clone()))
                .collect()
        })
        .unwrap_or_default();
    let want: Vec<(Value, Value)> = missed
        .iter()
        .enumerate()
        .map(|(i, t)| (json!(last + 1 + i as u64), json!(t)))
        .collect();
    if joined["recovered"] != true || replay["more"] != false || got != want {
        return Err(format!("recovery failed: {joined} {replay}").into());
    }

    println!("\n3. cy and dee ask for a stranger and are matched in a private room:");
    let cy = Client::connect(&url, "cy")?;
    let dee = Client::connect(&url, "dee")?;
    cy.send(json!({"op": "match"}))?;
    cy.wait("queued")?;
    dee.send(json!({"op": "match"}))?;
    let room = cy.wait("matched")?["room"].clone();
    if dee.wait("matched")?["room"] != room {
        return Err("cy and dee were matched into different rooms".into());
    }
    dee.send(json!({"op": "say", "room": room, "text": "hi stranger"}))?;
    dee.expect_msg(&room, 1, "dee", "hi stranger")?;
    cy.expect_msg(&room, 1, "dee", "hi stranger")?;
    dee.close()?;
    if cy.wait("peer_left")?["room"] != room {
        return Err("cy was told of the wrong room's partner leaving".into());
    }

    for c in [ann, bob, cy] {
        c.close()?;
    }
    println!("\nall good: ordered delivery, recovery after reconnect, matchmaking.");
    let page = format!("http://{}/", server.ws_addr.ok_or("no listener")?);
    println!("\n4. the chat page: {page}   (the operator's pages: {page}report and {page}logs)");
    // A person at a terminal gets the server to try the page with; a script (CI) does not wait.
    if std::io::stdout().is_terminal() {
        println!(
            "   open it in a browser (two tabs chat with each other); Ctrl-C stops the server"
        );
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])?;
        signals.forever().next();
    }
    server.shutdown(Duration::from_secs(5));
    println!("run the real server with: cargo run --release -p syncws-chat");
    Ok(())
}
