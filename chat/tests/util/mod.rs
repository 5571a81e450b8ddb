//! A chat server on 127.0.0.1 port 0 with its own data directory, and a client that speaks the
//! protocol through the library's threaded client.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use syncws::{Config, Event, ThreadedClient};
use syncws_chat::{Options, Server};

/// The longest any one expected event may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn options(dir: &Path, extra: &[&str]) -> Options {
    let mut args = vec!["chat-server", "--data-dir", dir.to_str().unwrap()];
    // Loopback, no TLS, and tests send faster than people type: unless the test says otherwise.
    for (flag, value) in [
        ("--listen", "127.0.0.1:0"),
        ("--tls-listen", "off"),
        ("--rate", "100000"),
        ("--burst", "100000"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    use clap::Parser;
    Options::try_parse_from(args).unwrap()
}

/// An in-process server.
pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub url: String,
}

impl TestServer {
    pub fn start(extra: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&options(dir.path(), extra)).unwrap();
        let url = format!("ws://{}/", server.ws_addr.unwrap());
        TestServer {
            server: Some(server),
            dir,
            url,
        }
    }

    pub fn metric(&self, name: &str) -> u64 {
        let text = self.server.as_ref().unwrap().metrics().render();
        metric_in(&text, name)
    }

    pub fn shutdown(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_secs(5));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn metric_in(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// The `chat-server` binary, for restarts and `kill -9`.
pub struct Binary {
    pub child: Child,
    pub url: String,
}

impl Binary {
    pub fn start(dir: &Path, extra: &[&str]) -> Binary {
        Self::start_with_stderr(dir, extra, Stdio::null())
    }

    /// As `start`, with the server's stderr (its log, and any panic) in `stderr`.
    pub fn start_with_stderr(dir: &Path, extra: &[&str], stderr: impl Into<Stdio>) -> Binary {
        Self::start_with_env(dir, extra, &[], stderr)
    }

    /// As `start_with_stderr`, with these variables added to the server's environment.
    pub fn start_with_env(
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: impl Into<Stdio>,
    ) -> Binary {
        let mut child = Process::new(env!("CARGO_BIN_EXE_chat-server"))
            .envs(env.iter().copied())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--tls-listen",
                "off",
                "--rate",
                "100000",
                "--burst",
                "100000",
            ])
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("the server printed its URL").unwrap();
            if let Some(rest) = line.strip_prefix("chat-server listening on ws://") {
                break format!("ws://{}", rest.split(' ').next().unwrap());
            }
        };
        // Keep reading its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Binary { child, url }
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A test that fails half-way leaves no server behind.
impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A protocol client.
pub struct Chat {
    pub client: ThreadedClient,
    /// Events read while looking for another.
    pub seen: VecDeque<Value>,
    pub welcome: Value,
    /// The lobby's `joined`, sent on connect.
    pub lobby: Value,
}

impl Chat {
    pub fn connect(url: &str) -> Chat {
        Self::connect_with(url, &Config::default())
    }

    pub fn connect_with(url: &str, config: &Config) -> Chat {
        let client = ThreadedClient::connect(url, config).unwrap();
        let mut chat = Chat {
            client,
            seen: VecDeque::new(),
            welcome: Value::Null,
            lobby: Value::Null,
        };
        chat.welcome = chat.expect("welcome");
        // Everyone starts in the lobby.
        chat.lobby = chat.expect("joined");
        assert_eq!(chat.lobby["room"], "lobby");
        chat
    }

    pub fn send(&self, v: Value) {
        self.client.control_tx.send_text(v.to_string()).unwrap();
    }

    /// Send, for a client the server may have closed already (an abuse test): false once the
    /// connection no longer takes anything.
    pub fn try_send(&self, v: Value) -> bool {
        self.client.control_tx.send_text(v.to_string()).is_ok()
    }

    pub fn send_raw(&self, text: &str) {
        self.client.control_tx.send_text(text.to_owned()).unwrap();
    }

    /// The next JSON event; panics on anything else but pings and pongs.
    pub fn next(&mut self) -> Value {
        if let Some(v) = self.seen.pop_front() {
            return v;
        }
        self.recv()
    }

    fn recv(&mut self) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.event_rx.recv_timeout(left) {
                Ok(Event::TextMessage(t)) => {
                    let v = serde_json::from_str(t.as_str()).unwrap();
                    check_server_frame(&v);
                    return v;
                }
                Ok(Event::Activated(_) | Event::Ping(_) | Event::Pong(_)) => {}
                Ok(other) => panic!("expected an event, got {other:?}"),
                Err(e) => panic!("no event within {DEADLINE:?}: {e}"),
            }
        }
    }

    /// Skip to the first event `ev` (keeping the others for `next`).
    pub fn expect(&mut self, ev: &str) -> Value {
        if let Some(i) = self.seen.iter().position(|v| v["ev"] == ev) {
            return self.seen.remove(i).unwrap();
        }
        loop {
            let v = self.recv();
            if v["ev"] == ev {
                return v;
            }
            self.seen.push_back(v);
        }
    }

    /// The next `msg` of `room`, skipping presence and typing noise.
    pub fn msg(&mut self, room: &str) -> Value {
        loop {
            let v = self.expect("msg");
            if v["room"] == room {
                return v;
            }
        }
    }

    pub fn join(&mut self, room: &str) -> Value {
        self.send(json!({"op": "join", "room": room}));
        loop {
            let v = self.expect("joined");
            if v["room"] == room {
                return v;
            }
        }
    }

    /// Wait for the connection to end; the close code the server sent (None: no close frame).
    pub fn closed(&mut self) -> Option<u16> {
        let deadline = Instant::now() + DEADLINE;
        let mut code = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.client.event_rx.recv_timeout(left) {
                Ok(Event::ConnectionClosed(c)) => code = Some(c.code.into()),
                Ok(Event::Quit) => return code,
                Ok(Event::TextMessage(t)) => {
                    check_server_frame(&serde_json::from_str(t.as_str()).unwrap());
                }
                Ok(_) => {}
                Err(e) => panic!("the connection did not end within {DEADLINE:?}: {e}"),
            }
        }
    }

    pub fn close(self) {
        let _ = self.client.control_tx.close(1000, "bye");
        let _ = self.client.shutdown(DEADLINE);
    }
}

/// chat/protocol/chat.schema.json, with its root set to `frame` (`ServerFrame` or
/// `ClientFrame`).
pub fn protocol_schema(frame: &str) -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/chat.schema.json");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let root = schema.as_object_mut().unwrap();
    root.remove("oneOf");
    root.insert("$ref".into(), json!(format!("#/$defs/{frame}")));
    jsonschema::validator_for(&schema).expect("the protocol schema compiles")
}

/// Every frame the server sends in any test must be one the protocol's schema describes: the
/// schema is a contract for client writers, not a description that may drift.
pub fn check_server_frame(frame: &Value) {
    static SERVER: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let validator = SERVER.get_or_init(|| protocol_schema("ServerFrame"));
    let errors: Vec<String> = validator
        .iter_errors(frame)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "a server frame outside chat/protocol/chat.schema.json: {frame}\n{}",
        errors.join("\n")
    );
}

pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    (dir, path)
}

/// Wait until `done` holds (for what a client cannot be told directly: a counter the server
/// moves after the socket is gone), looking every few milliseconds, for at most `DEADLINE`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `CHAT_EVENT_THREADS` from the environment, which every server a test starts reads too (0:
/// a thread per connection). CI runs the chat tests both ways.
#[allow(dead_code)]
pub fn event_threads() -> usize {
    std::env::var("CHAT_EVENT_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
