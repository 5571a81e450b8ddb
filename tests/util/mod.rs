//! Test support: peers on 127.0.0.1:0 written with plain tungstenite or raw TCP (independent of
//! the code under test), and a harness that runs one script in every client mode.
#![allow(dead_code)]

pub mod deflate_peer;
pub mod proxy;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use syncws::{
    BlockingClient, CloseInfo, Command, CommandSender, Config, ConnectionSet, Context, Error,
    Event, Handler, Metrics, NonBlockingClient, ReconnectAttempt, ServerConnection, ThreadedClient,
    WaitStrategy,
};
use tungstenite::protocol::WebSocket;

/// How long any test may take before it fails instead of hanging.
pub const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// Socket timeout for test servers, so a broken client cannot hang them.
pub const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(30);

// ----- peers -------------------------------------------------------------------------------------

/// Bind 127.0.0.1:0 and hand the real address back.
pub fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// Accept one TCP connection and run `f` on it in a thread.
pub fn raw_server<R: Send + 'static>(
    f: impl FnOnce(TcpStream) -> R + Send + 'static,
) -> (SocketAddr, JoinHandle<R>) {
    let (listener, addr) = bind();
    serve_one(listener, addr, f)
}

/// Like [`ws_server`], with the server's receive buffer pinned to `rcvbuf` bytes (set on the
/// listener, so the accepted socket has it from the start), for tests that must fill a socket.
pub fn ws_server_small_rcvbuf<R: Send + 'static>(
    rcvbuf: usize,
    f: impl FnOnce(WebSocket<TcpStream>) -> R + Send + 'static,
) -> (String, JoinHandle<R>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(1).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let (addr, handle) = serve_one(listener, addr, move |tcp| {
        f(tungstenite::accept(tcp).expect("server handshake"))
    });
    (format!("ws://{addr}/"), handle)
}

fn serve_one<R: Send + 'static>(
    listener: TcpListener,
    addr: SocketAddr,
    f: impl FnOnce(TcpStream) -> R + Send + 'static,
) -> (SocketAddr, JoinHandle<R>) {
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().expect("accept");
        tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
        tcp.set_write_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
        f(tcp)
    });
    (addr, handle)
}

/// Accept one WebSocket connection (tungstenite's server) and run `f` on it in a thread.
/// Returns the `ws://` URL.
pub fn ws_server<R: Send + 'static>(
    f: impl FnOnce(WebSocket<TcpStream>) -> R + Send + 'static,
) -> (String, JoinHandle<R>) {
    let (addr, handle) = raw_server(move |tcp| {
        let ws = tungstenite::accept(tcp).expect("server handshake");
        f(ws)
    });
    (format!("ws://{addr}/"), handle)
}

/// Accept an upgrade by hand: returns the request head exactly as it came over the wire, and
/// the server-side WebSocket. `extra` lines are added to the 101 response.
pub fn accept_by_hand(mut tcp: TcpStream, extra: &str) -> (String, WebSocket<TcpStream>) {
    let head = upgrade_by_hand(&mut tcp, extra);
    let ws = WebSocket::from_raw_socket(tcp, tungstenite::protocol::Role::Server, None);
    (head, ws)
}

/// The server's half of the opening handshake, written by hand on any stream: read the request
/// head, answer 101 with `extra` header lines, return the head as it came over the wire.
pub fn upgrade_by_hand<S: Read + Write>(stream: &mut S, extra: &str) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("request head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ascii request");
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("key header");
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    )
    .unwrap();
    head
}

/// A server-side handler that echoes every data message and records how the connection ended.
#[derive(Default)]
pub struct Echo {
    pub closed: Option<CloseInfo>,
    pub errors: Vec<String>,
}

impl Handler for Echo {
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        ctx.send_text(text).unwrap();
    }
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        ctx.send_binary(data).unwrap();
    }
    fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &CloseInfo) {
        self.closed = Some(close.clone());
    }
    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &Error) {
        self.errors.push(error.to_string());
    }
}

/// Read messages until the client's Close; return the data messages and the close frame.
pub fn read_until_close<S: Read + Write>(
    ws: &mut WebSocket<S>,
) -> (
    Vec<tungstenite::Message>,
    Option<tungstenite::protocol::CloseFrame>,
) {
    let mut got = Vec::new();
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => {
                // Answer, then let tungstenite finish the handshake.
                let _ = ws.flush();
                return (got, frame);
            }
            Ok(m) => got.push(m),
            Err(e) => panic!("server read failed before close: {e}"),
        }
    }
}

/// Echo until the connection ends; returns how many messages were echoed.
pub fn echo<S: Read + Write>(mut ws: WebSocket<S>) -> usize {
    let mut n = 0;
    loop {
        match ws.read() {
            Ok(m @ (tungstenite::Message::Text(_) | tungstenite::Message::Binary(_))) => {
                n += 1;
                ws.send(m).expect("echo");
            }
            Ok(_) => {}
            Err(_) => return n,
        }
    }
}

/// Write raw bytes (a hand-made frame) on the server side of a tungstenite socket.
pub fn write_raw(ws: &mut WebSocket<TcpStream>, bytes: &[u8]) {
    ws.get_mut().write_all(bytes).expect("raw write");
}

/// Read what the client sends until its Close frame (raw, after a tungstenite handshake) and
/// return the close code, or None if TCP ended first.
pub fn close_code_from_client(ws: &mut WebSocket<TcpStream>) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(Some(f))) => return Some(f.code.into()),
            Ok(tungstenite::Message::Close(None)) => return Some(1005),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Read from a raw socket until EOF (or error), returning the bytes.
pub fn read_to_end(tcp: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf);
    buf
}

/// Decode the frames a client wrote (masked, as RFC 6455 requires of a client): each frame's
/// first byte (FIN, RSV and opcode) and its unmasked payload. Panics on an unmasked or cut
/// frame, so bytes that are not whole client frames fail the test.
pub fn client_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 2, "a cut frame header: {bytes:?}");
        let (first, second) = (bytes[0], bytes[1]);
        assert!(
            second & 0x80 != 0,
            "a client frame must be masked: {bytes:?}"
        );
        let (len, at) = match second & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        assert!(bytes.len() >= at + 4 + len, "a cut frame: {bytes:?}");
        let mask = &bytes[at..at + 4];
        let payload = bytes[at + 4..at + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        frames.push((first, payload));
        bytes = &bytes[at + 4 + len..];
    }
    frames
}

/// The payload of a Close frame: the code, big-endian, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// A CA and certificates it signs, for TLS tests.
pub struct TestPki {
    pub ca_pem: String,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestPki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "syncws test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        TestPki {
            ca_pem: ca.pem(),
            ca,
        }
    }

    /// A server identity for `names`, signed by this CA.
    pub fn server_identity(&self, names: &[&str]) -> native_tls::Identity {
        let (cert, key) = self.issue(names);
        native_tls::Identity::from_pkcs8(cert.as_bytes(), key.as_bytes()).unwrap()
    }

    /// A certificate for `names` signed by this CA, and its PKCS#8 key, both PEM.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        self.issue_valid(names, None)
    }

    /// As [`issue`](Self::issue), valid only from the first of January of one year to that
    /// of another when given (rcgen's default otherwise: from 1975 to 4096).
    pub fn issue_valid(&self, names: &[&str], years: Option<(i32, i32)>) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some((from, until)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(until, 1, 1);
        }
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A self-signed server identity for `localhost`.
pub fn self_signed_identity() -> native_tls::Identity {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    native_tls::Identity::from_pkcs8(
        cert.pem().as_bytes(),
        signing_key.serialize_pem().as_bytes(),
    )
    .unwrap()
}

/// Accept one TLS + WebSocket connection and run `f`. Returns the port.
pub fn wss_server<R: Send + 'static>(
    identity: native_tls::Identity,
    f: impl FnOnce(Result<WebSocket<native_tls::TlsStream<TcpStream>>, String>) -> R + Send + 'static,
) -> (u16, JoinHandle<R>) {
    let acceptor = native_tls::TlsAcceptor::new(identity).unwrap();
    let (addr, handle) = raw_server(move |tcp| match acceptor.accept(tcp) {
        Ok(tls) => f(tungstenite::accept(tls).map_err(|e| e.to_string())),
        Err(e) => f(Err(e.to_string())),
    });
    (addr.port(), handle)
}

/// A wss server (rustls) that requires a client certificate signed by `pki`'s CA. Returns the
/// port; the thread returns how many messages it echoed, or why the TLS handshake failed.
pub fn mtls_server(pki: &TestPki) -> (u16, JoinHandle<Result<usize, String>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    // Deprecated from rustls 0.23.48 (see src/tls.rs): allowed for the same reason.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let (cert, key) = pki.issue(&["localhost"]);
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let (addr, handle) = raw_server(move |mut tcp| {
        let mut conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
        }
        let ws =
            tungstenite::accept(rustls::StreamOwned::new(conn, tcp)).map_err(|e| e.to_string())?;
        let mut ws = ws;
        let mut n = 0;
        while let Ok(m) = ws.read() {
            if m.is_text() {
                n += 1;
                let _ = ws.send(m);
            }
        }
        Ok(n)
    });
    (addr.port(), handle)
}

// ----- server connections, both ways -----------------------------------------------------------

/// How a test drives an accepted server connection: on a thread of its own
/// (`ServerConnection::run`), or adopted by a `ConnectionSet` running on another thread. Every
/// server-side test runs both ways, through [`serve`], so the two cannot drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Thread,
    Set,
}

/// Both ways of driving a server connection.
pub const SIDES: [Side; 2] = [Side::Thread, Side::Set];

/// Drive `conn` with `handler` until it ends, `side`'s way; returns once `on_quit` has run.
/// `Side::Set`: a set runs on another thread (`run_until_stopped`), this thread hands the
/// connection to it through a `SetHandle`, as an accept loop does, and the set must come back
/// empty.
pub fn serve<H: Handler + Send>(side: Side, conn: ServerConnection, handler: &mut H) {
    match side {
        Side::Thread => conn.run(handler),
        Side::Set => {
            let mut set: ConnectionSet<&mut H> = ConnectionSet::new().expect("a set");
            let handle = set.handle();
            std::thread::scope(|scope| {
                let running = scope.spawn(move || {
                    set.run_until_stopped();
                    set.len()
                });
                handle.adopt(conn, handler).expect("the set takes it");
                // Queued behind the adopt: the run ends once the connection has quit.
                handle.stop().expect("the set is there");
                let left = running.join().expect("the set's thread");
                assert_eq!(left, 0, "the set ends empty");
            });
        }
    }
}

// ----- clients in every mode -----------------------------------------------------------------------

/// A client mode under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Blocking,
    NonBlocking(WaitStrategy),
    Threaded,
    /// One connection in a `ClientSet` (tests/client_set.rs runs hundreds at once).
    Set,
}

/// Every mode, with the non-blocking client under each wait strategy.
pub const MODES: [Mode; 6] = [
    Mode::Blocking,
    Mode::NonBlocking(WaitStrategy::Readiness),
    Mode::NonBlocking(WaitStrategy::Sleep(Duration::from_millis(1))),
    Mode::NonBlocking(WaitStrategy::BusySpin),
    Mode::Threaded,
    Mode::Set,
];

/// What a client reported, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    Activated(Option<String>),
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Closed(CloseInfo),
    Error(String),
    Idle,
    /// A reconnect attempt: its number.
    Reconnecting(u32),
    Quit,
}

/// What a script can do, in every mode.
pub trait Actions {
    fn text(&mut self, s: &str) -> Result<(), String>;
    fn binary(&mut self, b: &[u8]) -> Result<(), String>;
    /// As `binary`, but never waiting for room: a hook's send (which never waits), or a
    /// command sender's `try_send`.
    fn try_binary(&mut self, b: &[u8]) -> Result<(), String>;
    fn ping(&mut self, b: &[u8]) -> Result<(), String>;
    fn close(&mut self, code: u16, reason: &str) -> Result<(), String>;
    fn quit(&mut self);
    /// The connection's counters now.
    fn metrics(&self) -> Counters;
}

impl Actions for Context<'_> {
    fn text(&mut self, s: &str) -> Result<(), String> {
        self.send_text(s).map_err(|e| e.to_string())
    }
    fn binary(&mut self, b: &[u8]) -> Result<(), String> {
        self.send_binary(b).map_err(|e| e.to_string())
    }
    fn try_binary(&mut self, b: &[u8]) -> Result<(), String> {
        self.binary(b)
    }
    fn ping(&mut self, b: &[u8]) -> Result<(), String> {
        self.send_ping(b).map_err(|e| e.to_string())
    }
    fn close(&mut self, code: u16, reason: &str) -> Result<(), String> {
        Context::close(self, code, reason).map_err(|e| e.to_string())
    }
    fn quit(&mut self) {
        self.force_quit();
    }
    fn metrics(&self) -> Counters {
        Counters::of(Context::metrics(self))
    }
}

/// What the threaded client's application thread acts through: its command sender, and the
/// client's metrics (readable from any thread).
pub struct FromApp {
    pub control: CommandSender,
    pub metrics: Arc<Metrics>,
}

impl Actions for FromApp {
    fn text(&mut self, s: &str) -> Result<(), String> {
        self.control
            .send_text(s.to_string())
            .map_err(|e| e.to_string())
    }
    fn binary(&mut self, b: &[u8]) -> Result<(), String> {
        self.control
            .send_binary(b.to_vec())
            .map_err(|e| e.to_string())
    }
    fn try_binary(&mut self, b: &[u8]) -> Result<(), String> {
        self.control
            .try_send(Command::SendBinary(b.to_vec().into()))
            .map_err(|e| e.to_string())
    }
    fn ping(&mut self, b: &[u8]) -> Result<(), String> {
        self.control
            .send(Command::SendPing(b.to_vec().into()))
            .map_err(|e| e.to_string())
    }
    fn close(&mut self, code: u16, reason: &str) -> Result<(), String> {
        CommandSender::close(&self.control, code, reason).map_err(|e| e.to_string())
    }
    fn quit(&mut self) {
        let _ = self.control.force_quit();
    }
    fn metrics(&self) -> Counters {
        Counters::of(&self.metrics)
    }
}

/// A reading of a connection's [`Metrics`] (which are shared atomics, not a value to keep).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    pub messages_received: u64,
    pub bytes_received: u64,
    pub frames_queued: u64,
    pub queued_bytes: u64,
    pub reconnects: u64,
    pub last_rtt: Option<Duration>,
    pub compression_input_bytes: u64,
    pub compression_output_bytes: u64,
}

impl Counters {
    pub fn of(m: &Metrics) -> Self {
        Counters {
            messages_sent: m.messages_sent(),
            bytes_sent: m.bytes_sent(),
            messages_received: m.messages_received(),
            bytes_received: m.bytes_received(),
            frames_queued: m.frames_queued(),
            queued_bytes: m.queued_bytes(),
            reconnects: m.reconnects(),
            last_rtt: m.last_rtt(),
            compression_input_bytes: m.compression_input_bytes(),
            compression_output_bytes: m.compression_output_bytes(),
        }
    }
}

/// The script a test runs: sees each record and may act.
pub type Script = Box<dyn FnMut(&Rec, &mut dyn Actions) + Send>;

/// What happened on one connection.
#[derive(Debug)]
pub struct Outcome {
    pub recs: Vec<Rec>,
    pub errors: Vec<Error>,
    /// Every reconnect attempt as reported, in full.
    pub attempts: Vec<ReconnectAttempt>,
    /// The connection's counters once it ended (in a set, as its last hook saw them: a set
    /// hands out no `Arc<Metrics>`).
    pub metrics: Counters,
}

impl Outcome {
    pub fn texts(&self) -> Vec<String> {
        self.recs
            .iter()
            .filter_map(|r| match r {
                Rec::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }
    pub fn closed(&self) -> Option<&CloseInfo> {
        self.recs.iter().find_map(|r| match r {
            Rec::Closed(c) => Some(c),
            _ => None,
        })
    }
    pub fn position(&self, pred: impl Fn(&Rec) -> bool) -> Option<usize> {
        self.recs.iter().position(pred)
    }
}

struct Recorder {
    recs: Vec<Rec>,
    errors: Vec<Error>,
    attempts: Vec<ReconnectAttempt>,
    /// The counters after the last hook (what a set connection's outcome reports).
    metrics: Counters,
    script: Script,
}

impl Recorder {
    fn new(script: Script) -> Self {
        Recorder {
            recs: Vec::new(),
            errors: Vec::new(),
            attempts: Vec::new(),
            metrics: Counters::default(),
            script,
        }
    }
    fn push(&mut self, rec: Rec, ctx: &mut Context<'_>) {
        self.recs.push(rec.clone());
        (self.script)(&rec, ctx);
        self.metrics = Counters::of(ctx.metrics());
    }
    fn outcome(self, metrics: Option<&Metrics>) -> Outcome {
        Outcome {
            metrics: metrics.map_or(self.metrics, Counters::of),
            recs: self.recs,
            errors: self.errors,
            attempts: self.attempts,
        }
    }
}

impl Handler for Recorder {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        let sub = ctx
            .handshake()
            .and_then(|h| h.subprotocol())
            .map(str::to_owned);
        self.push(Rec::Activated(sub), ctx);
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        self.push(Rec::Text(text.to_owned()), ctx);
    }
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        self.push(Rec::Binary(data.to_vec()), ctx);
    }
    fn on_ping(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        self.push(Rec::Ping(data.to_vec()), ctx);
    }
    fn on_pong(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        self.push(Rec::Pong(data.to_vec()), ctx);
    }
    fn on_connection_closed(&mut self, ctx: &mut Context<'_>, close: &CloseInfo) {
        self.push(Rec::Closed(close.clone()), ctx);
    }
    fn on_error(&mut self, ctx: &mut Context<'_>, error: &Error) {
        self.errors.push(clone_error(error));
        self.push(Rec::Error(format!("{error:?}")), ctx);
    }
    fn on_idle(&mut self, ctx: &mut Context<'_>) {
        // Spin and sleep strategies call this after every empty poll; record once per run of
        // idles to keep the log readable.
        if self.recs.last() != Some(&Rec::Idle) {
            self.push(Rec::Idle, ctx);
        } else {
            (self.script)(&Rec::Idle, ctx);
            self.metrics = Counters::of(ctx.metrics());
        }
    }
    fn on_reconnecting(&mut self, ctx: &mut Context<'_>, attempt: &ReconnectAttempt) {
        self.attempts.push(attempt.clone());
        self.push(Rec::Reconnecting(attempt.attempt), ctx);
    }
    fn on_quit(&mut self) {
        self.recs.push(Rec::Quit);
    }
}

/// The typed errors tests match on, rebuilt (the library's Error is not Clone on purpose).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Timeout(k) => Error::Timeout(*k),
        Error::InvalidUtf8 => Error::InvalidUtf8,
        Error::InvalidCompressedData(why) => Error::InvalidCompressedData(why.clone()),
        Error::MessageTooLarge { size, max } => Error::MessageTooLarge {
            size: *size,
            max: *max,
        },
        Error::Protocol(p) => Error::Protocol(p.clone()),
        Error::ConnectionReset => Error::ConnectionReset,
        Error::QueueFull { len, limit } => Error::QueueFull {
            len: *len,
            limit: *limit,
        },
        Error::Closed => Error::Closed,
        Error::Disconnected => Error::Disconnected,
        Error::Connect { addr, source } => Error::Connect {
            addr: *addr,
            source: std::io::Error::from(source.kind()),
        },
        other => Error::Config(format!("{other}")),
    }
}

/// Connect in `mode` with the config `builder` makes (the wait strategy is set from the mode)
/// and run `script` until the connection ends, within [`TEST_DEADLINE`]. Checks what must hold
/// in every mode: `Activated` first, `Quit` last and exactly once, and for the threaded client
/// that both channel ends report disconnection afterwards.
pub fn drive(mode: Mode, url: &str, builder: syncws::ConfigBuilder, script: Script) -> Outcome {
    let strategy = match mode {
        Mode::NonBlocking(s) => s,
        _ => WaitStrategy::Readiness,
    };
    let config = builder
        .wait_strategy(strategy)
        .build()
        .expect("valid config");
    let url = url.to_owned();
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut recorder = Recorder::new(script);
        let result = match mode {
            Mode::Blocking => BlockingClient::connect(&url, &config).map(|c| {
                let metrics = c.metrics();
                c.run(&mut recorder);
                metrics
            }),
            Mode::NonBlocking(_) => NonBlockingClient::connect(&url, &config).map(|c| {
                let metrics = c.metrics();
                c.run(&mut recorder);
                metrics
            }),
            Mode::Threaded => {
                let _ = tx.send(run_threaded(&url, config, recorder));
                return;
            }
            Mode::Set => {
                let _ = tx.send(run_in_set(&url, &config, recorder));
                return;
            }
        };
        let _ = tx.send(result.map(|metrics| recorder.outcome(Some(&metrics))));
    });
    let outcome = match rx.recv_timeout(TEST_DEADLINE) {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => panic!("{mode:?}: connect failed: {e}"),
        Err(RecvTimeoutError::Disconnected) => panic!("{mode:?}: client thread panicked (above)"),
        Err(RecvTimeoutError::Timeout) => {
            panic!("{mode:?}: client did not finish within {TEST_DEADLINE:?}")
        }
    };
    check_universal(mode, &outcome);
    outcome
}

fn check_universal(mode: Mode, outcome: &Outcome) {
    assert!(
        matches!(outcome.recs.first(), Some(Rec::Activated(_))),
        "{mode:?}: first report must be Activated: {:?}",
        outcome.recs
    );
    assert_eq!(
        outcome.recs.iter().filter(|r| **r == Rec::Quit).count(),
        1,
        "{mode:?}: Quit exactly once: {:?}",
        outcome.recs
    );
    assert_eq!(outcome.recs.last(), Some(&Rec::Quit), "{mode:?}: Quit last");
}

/// A recorder in a client set, handed back when its connection quits.
struct InSet {
    recorder: Option<Recorder>,
    done: crossbeam_channel::Sender<Recorder>,
}

impl InSet {
    fn rec(&mut self) -> &mut Recorder {
        self.recorder.as_mut().expect("hooks before on_quit")
    }
}

impl Handler for InSet {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        self.rec().on_activated(ctx);
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        self.rec().on_text_message(ctx, text);
    }
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        self.rec().on_binary_message(ctx, data);
    }
    fn on_ping(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        self.rec().on_ping(ctx, data);
    }
    fn on_pong(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        self.rec().on_pong(ctx, data);
    }
    fn on_connection_closed(&mut self, ctx: &mut Context<'_>, close: &CloseInfo) {
        self.rec().on_connection_closed(ctx, close);
    }
    fn on_error(&mut self, ctx: &mut Context<'_>, error: &Error) {
        self.rec().on_error(ctx, error);
    }
    fn on_idle(&mut self, ctx: &mut Context<'_>) {
        self.rec().on_idle(ctx);
    }
    fn on_reconnecting(&mut self, ctx: &mut Context<'_>, attempt: &ReconnectAttempt) {
        self.rec().on_reconnecting(ctx, attempt);
    }
    fn on_quit(&mut self) {
        if let Some(mut recorder) = self.recorder.take() {
            recorder.on_quit();
            let _ = self.done.send(recorder);
        }
    }
}

/// One connection in a client set: a connect failure (an error and a quit with no activation)
/// comes back as the error, as `connect` returns it in the other modes.
fn run_in_set(url: &str, config: &Config, recorder: Recorder) -> Result<Outcome, Error> {
    let (done, back) = crossbeam_channel::bounded(1);
    let mut set = syncws::ClientSet::new()?;
    let (id, _) = set.add(
        url,
        config,
        InSet {
            recorder: Some(recorder),
            done,
        },
    )?;
    assert_eq!(id.get(), 0);
    set.run();
    assert!(set.is_empty(), "run returns once every connection has quit");
    let mut recorder = back.try_recv().expect("on_quit ran before run returned");
    if !recorder.recs.iter().any(|r| matches!(r, Rec::Activated(_))) {
        if let Some(e) = recorder.errors.pop() {
            return Err(e);
        }
    }
    Ok(recorder.outcome(None))
}

fn run_threaded(url: &str, config: Config, mut recorder: Recorder) -> Result<Outcome, Error> {
    let client = ThreadedClient::connect(url, &config)?;
    let metrics = client.metrics();
    let mut app = FromApp {
        control: client.control_tx.clone(),
        metrics: metrics.clone(),
    };
    loop {
        let event = match client.event_rx.recv_timeout(TEST_DEADLINE) {
            Ok(e) => e,
            Err(e) => panic!("threaded: no event: {e:?}"),
        };
        let rec = match event {
            Event::Activated(h) => Rec::Activated(h.subprotocol().map(str::to_owned)),
            Event::TextMessage(t) => Rec::Text(t.as_str().to_owned()),
            Event::BinaryMessage(b) => Rec::Binary(b.to_vec()),
            Event::Ping(p) => Rec::Ping(p.to_vec()),
            Event::Pong(p) => Rec::Pong(p.to_vec()),
            Event::ConnectionClosed(c) => Rec::Closed(c),
            Event::Error(e) => {
                let rec = Rec::Error(format!("{e:?}"));
                recorder.errors.push(e);
                rec
            }
            Event::Reconnecting(a) => {
                let rec = Rec::Reconnecting(a.attempt);
                recorder.attempts.push(a);
                rec
            }
            Event::Quit => {
                recorder.recs.push(Rec::Quit);
                break;
            }
            other => panic!("unexpected event {other:?}"),
        };
        recorder.recs.push(rec.clone());
        (recorder.script)(&rec, &mut app);
    }
    // The worker is ending: both channel ends must report disconnection, promptly.
    match client.event_rx.recv_timeout(Duration::from_secs(10)) {
        Err(RecvTimeoutError::Disconnected) => {}
        other => panic!("threaded: event_rx after Quit gave {other:?}, expected disconnection"),
    }
    assert!(
        client.control_tx.send(Command::ForceQuit).is_err(),
        "threaded: control_tx must report disconnection after the worker ends"
    );
    Ok(recorder.outcome(Some(&metrics)))
}

/// The events of a threaded client until its channel disconnects, each awaited at most
/// [`TEST_DEADLINE`]: `for event in events(&client.event_rx)` instead of an `iter()` that could
/// wait forever.
pub fn events(rx: &crossbeam_channel::Receiver<Event>) -> impl Iterator<Item = Event> + '_ {
    std::iter::from_fn(move || match rx.recv_timeout(TEST_DEADLINE) {
        Ok(event) => Some(event),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => panic!("no event within {TEST_DEADLINE:?}"),
    })
}

/// A TCP client socket whose reads and writes give up after [`SERVER_IO_TIMEOUT`], so a test
/// whose server never answers fails instead of hanging.
pub fn timed_tcp(addr: impl std::net::ToSocketAddrs) -> TcpStream {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
    tcp.set_write_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
    tcp
}

/// `tungstenite::connect` for `ws://` URLs over a [`timed_tcp`] socket.
pub fn connect_timed<R: tungstenite::client::IntoClientRequest>(
    request: R,
) -> Result<
    (
        WebSocket<TcpStream>,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
> {
    let request = request.into_client_request()?;
    let host = request.uri().host().expect("host").to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    match tungstenite::client(request, timed_tcp((host.as_str(), port))) {
        Ok(done) => Ok(done),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            Err(std::io::Error::from(std::io::ErrorKind::WouldBlock).into())
        }
    }
}

/// How many times the calling thread has given up the CPU of its own accord (slept, parked or
/// waited in a system call) so far: `voluntary_ctxt_switches` in /proc/thread-self/status.
/// Linux only (`None` elsewhere). Counts a thread's wake-ups without changing how it waits.
pub fn voluntary_switches() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
        .trim()
        .parse()
        .ok()
}

/// Run `f` (a client's `run`, say) on its own thread and hand back what it returns; fails the
/// test instead of hanging if that takes longer than [`TEST_DEADLINE`].
pub fn within_deadline<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(TEST_DEADLINE) {
        Ok(r) => r,
        Err(RecvTimeoutError::Disconnected) => panic!("the thread panicked (above)"),
        Err(RecvTimeoutError::Timeout) => panic!("not finished within {TEST_DEADLINE:?}"),
    }
}

/// A script that does nothing.
pub fn passive() -> Script {
    Box::new(|_, _| {})
}
