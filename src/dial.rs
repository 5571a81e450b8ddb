//! Opening a client connection, as a state machine that never waits: URL -> DNS -> TCP ->
//! [proxy tunnel] -> TLS -> WebSocket upgrade. [`Dial::advance`] goes as far as the socket
//! allows and says what to wait for ([`Progress::Pending`]: readable or writable, until when);
//! the caller waits its own way on [`Dial::fd`]: the blocking connect (`connect::connect`) in
//! poll(2), a reconnecting driver in its waiter, where commands and stops also end the wait.
//!
//! Every step after DNS is non-blocking. DNS is the exception: the system resolver has no
//! non-blocking interface, so [`Dial::start`] resolves, blocking, outside `handshake_timeout`
//! (whose clock starts before it, as it always has).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use tungstenite::protocol::{Role, WebSocket};
use url::{Host, Url};

use crate::error::{is_deadline, Error, TimeoutKind};
use crate::handshake::{websocket, ClientUpgrade};
use crate::io_outcome::connect_pending;
use crate::proxy::env::for_target;
use crate::proxy::tunnel::{self, Exchange};
use crate::proxy::{Proxy, Target};
use crate::stream::{Stream, Transport};
use crate::sys::{AsFd, BorrowedSocket};
use crate::tcp::TcpConn;
use crate::tls::{self, TlsHandshake, TlsProgress};
use crate::{Config, Handshake};

/// What a dial waits for on its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    Readable,
    Writable,
}

impl Interest {
    fn writing(writing: bool) -> Self {
        if writing {
            Interest::Writable
        } else {
            Interest::Readable
        }
    }
}

/// Where a dial stands after [`Dial::advance`].
#[derive(Debug)]
pub(crate) enum Progress {
    /// Call [`Dial::advance`] again when the socket ([`Dial::fd`]) is ready for `interest`, or
    /// at `deadline` (the dial then fails with its timeout; on Windows, while TCP connects, it
    /// may only look again, see `CONNECT_RECHECK`). A call before either is harmless.
    Pending {
        interest: Interest,
        deadline: Option<Instant>,
    },
    /// The connection is open; its socket is non-blocking, ready for a session.
    Done(Box<(WebSocket<Stream>, Handshake)>),
}

/// A client connection being opened (see the module docs).
#[derive(Debug)]
pub(crate) struct Dial {
    url: Url,
    config: Config,
    tls: bool,
    /// The name TLS verifies: the target's, through a proxy too.
    server_name: String,
    /// The proxy and what to ask it for, when there is one.
    tunnel: Option<(Proxy, TunnelTo)>,
    /// The target's port (the tunnel's; a direct connection's addresses have it).
    port: u16,
    /// Where TCP goes (the proxy's addresses, or the target's), tried in order.
    addrs: Vec<SocketAddr>,
    /// The next address to try.
    next: usize,
    /// Why the last address failed.
    last_failure: Option<(SocketAddr, io::Error)>,
    /// `handshake_timeout` from the start.
    deadline: Option<Instant>,
    state: State,
    span: tracing::Span,
    started: Instant,
}

/// The tunnel's target, owned (the exchange borrows it as a [`Target`]).
#[derive(Debug)]
enum TunnelTo {
    Name(String),
    Ip(IpAddr),
}

impl TunnelTo {
    fn target(&self) -> Target<'_> {
        match self {
            TunnelTo::Name(name) => Target::Name(name),
            TunnelTo::Ip(ip) => Target::Ip(*ip),
        }
    }
}

#[derive(Debug)]
enum State {
    /// Start TCP to the next address (or fail: none is left).
    NextAddress,
    /// TCP to `addr` under way until `until` (`connect_timeout`, within the handshake's).
    Connecting {
        socket: Socket,
        addr: SocketAddr,
        until: Option<Instant>,
    },
    /// The exchange with the proxy.
    Tunnel {
        conn: TcpConn,
        exchange: Exchange,
    },
    /// TCP (through the tunnel) is there; TLS starts next.
    TlsStart(TcpConn),
    Tls(TlsHandshake),
    /// The HTTP upgrade: the request goes out, the answer comes in.
    Upgrade {
        stream: Stream,
        upgrade: ClientUpgrade,
    },
    /// Done or failed.
    Over,
}

impl Dial {
    /// Check `url` and the configuration, pick the proxy, and resolve the names (blocking: the
    /// one step that does). No socket is opened yet.
    ///
    /// # Errors
    ///
    /// `InvalidUrl`, `UnsupportedScheme`, `InvalidProxy` (from the environment), `Resolve`, and
    /// `ProxyConnect` when the proxy's name does not resolve.
    pub(crate) fn start(url: &str, config: &Config) -> Result<Dial, Error> {
        let span = tracing::info_span!("connect", url = %redacted(url));
        let started = Instant::now();
        let dial = span.in_scope(|| Dial::resolve(url, config, started, span.clone()));
        if let Err(e) = &dial {
            span.in_scope(|| tracing::warn!(error = %e, "connect failed"));
        }
        dial
    }

    fn resolve(
        url: &str,
        config: &Config,
        started: Instant,
        span: tracing::Span,
    ) -> Result<Dial, Error> {
        let (parsed, tls) = parse_url(url)?;
        let host = parsed.host().ok_or_else(|| Error::InvalidUrl {
            url: url.to_owned(),
            reason: "no host".to_owned(),
        })?;
        let port = parsed
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let deadline = config
            .handshake_timeout()
            .map(|d| crate::deadline::after(started, d));
        let proxy = for_target(config, tls, &host, port)?;

        // TLS verifies the target's name, through a proxy too.
        let server_name = match host {
            Host::Domain(name) => name.to_owned(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        let (addrs, tunnel) = match proxy {
            None => {
                let addrs = match host {
                    Host::Domain(name) => resolve(name, port)?,
                    Host::Ipv4(ip) => vec![SocketAddr::new(ip.into(), port)],
                    Host::Ipv6(ip) => vec![SocketAddr::new(ip.into(), port)],
                };
                (addrs, None)
            }
            Some(proxy) => {
                let to = match host {
                    // SOCKS5 takes one address; like curl, we give it the first one the
                    // resolver returns.
                    Host::Domain(name) if proxy.resolves_locally() => {
                        TunnelTo::Ip(resolve(name, port)?[0].ip())
                    }
                    Host::Domain(name) => TunnelTo::Name(name.to_owned()),
                    Host::Ipv4(ip) => TunnelTo::Ip(ip.into()),
                    Host::Ipv6(ip) => TunnelTo::Ip(ip.into()),
                };
                let addrs = match proxy.host().parse::<IpAddr>() {
                    Ok(ip) => vec![SocketAddr::new(ip, proxy.port())],
                    Err(_) => resolve(proxy.host(), proxy.port()).map_err(|e| match e {
                        Error::Resolve { source, .. } => Error::ProxyConnect {
                            proxy: proxy.authority(),
                            source,
                        },
                        other => other,
                    })?,
                };
                (addrs, Some((proxy, to)))
            }
        };
        Ok(Dial {
            url: parsed,
            config: config.clone(),
            tls,
            server_name,
            tunnel,
            port,
            addrs,
            next: 0,
            last_failure: None,
            deadline,
            state: State::NextAddress,
            span,
            started,
        })
    }

    /// The socket to wait on after [`Progress::Pending`] (which always has one).
    pub(crate) fn fd(&self) -> Option<BorrowedSocket<'_>> {
        match &self.state {
            State::Connecting { socket, .. } => Some(socket.as_fd()),
            State::Tunnel { conn, .. } | State::TlsStart(conn) => Some(conn.tcp().as_fd()),
            State::Tls(handshake) => Some(handshake.tcp_conn().tcp().as_fd()),
            State::Upgrade { stream, .. } => stream.tcp_conn().map(|c| c.tcp().as_fd()),
            State::NextAddress | State::Over => None,
        }
    }

    /// Go on as far as the socket allows at `now`. After `Done` or an error the dial is over
    /// (its socket closed, on error).
    ///
    /// # Errors
    ///
    /// Every connect-time error after DNS, as the blocking connect has always given them:
    /// `Connect` (each address failed; the last one's), `Timeout(Connect)`,
    /// `Timeout(Handshake)` (also when `now` is past `handshake_timeout` while waiting),
    /// `ProxyConnect`/`ProxyRefused`/`ProxyProtocol`, `Tls`, `HandshakeRejected`,
    /// `InvalidHandshake`, `Io`.
    pub(crate) fn advance(&mut self, now: Instant) -> Result<Progress, Error> {
        let span = self.span.clone();
        let _enter = span.enter();
        let progress = self.run(now);
        if !matches!(progress, Ok(Progress::Pending { .. })) {
            // Over: on error, this closes the socket.
            self.state = State::Over;
        }
        match &progress {
            Ok(Progress::Pending { .. }) => {}
            Ok(Progress::Done(open)) => tracing::info!(
                elapsed_us = self.started.elapsed().as_micros() as u64,
                subprotocol = open.1.subprotocol(),
                "websocket open"
            ),
            Err(e) => tracing::warn!(error = %e, "connect failed"),
        }
        progress
    }

    fn run(&mut self, now: Instant) -> Result<Progress, Error> {
        loop {
            // Taken out: each arm puts back the state it leaves the dial in.
            self.state = match std::mem::replace(&mut self.state, State::Over) {
                State::NextAddress => self.connect_next(now)?,
                State::Connecting {
                    socket,
                    addr,
                    until,
                } => match connected(&socket) {
                    Ok(true) => self.tcp_open(socket, addr),
                    Ok(false) if until.is_some_and(|t| now >= t) => {
                        self.failed(addr, io::Error::from(io::ErrorKind::TimedOut));
                        State::NextAddress
                    }
                    Ok(false) => {
                        self.state = State::Connecting {
                            socket,
                            addr,
                            until,
                        };
                        return Ok(Progress::Pending {
                            interest: Interest::Writable,
                            deadline: connect_wait(now, until),
                        });
                    }
                    Err(e) => {
                        self.failed(addr, e);
                        State::NextAddress
                    }
                },
                State::Tunnel {
                    mut conn,
                    mut exchange,
                } => {
                    let (proxy, to) = self
                        .tunnel
                        .as_ref()
                        .ok_or_else(|| io::Error::other("a tunnel state without a proxy"))?;
                    match exchange.advance(&mut conn, proxy, to.target(), self.port)? {
                        tunnel::Progress::Open => self.secure(conn),
                        tunnel::Progress::Blocked { writing } => {
                            self.state = State::Tunnel { conn, exchange };
                            return self.blocked(writing, now);
                        }
                    }
                }
                State::TlsStart(conn) => match tls::start(&self.server_name, conn, &self.config)? {
                    TlsProgress::Done(tls) => self.upgrade(Transport::Tls(tls)),
                    TlsProgress::Blocked(handshake) => return self.tls_blocked(handshake, now),
                },
                State::Tls(handshake) => match handshake.resume(&self.server_name)? {
                    TlsProgress::Done(tls) => self.upgrade(Transport::Tls(tls)),
                    TlsProgress::Blocked(handshake) => return self.tls_blocked(handshake, now),
                },
                State::Upgrade {
                    mut stream,
                    mut upgrade,
                } => match upgrade.advance(&mut stream, &self.config)? {
                    Some((handshake, leftover)) => {
                        let deflate = handshake.deflate().is_some();
                        let mut ws =
                            websocket(stream, leftover, Role::Client, deflate, &self.config);
                        ws.get_mut().make_nonblocking()?;
                        return Ok(Progress::Done(Box::new((ws, handshake))));
                    }
                    None => {
                        let writing = stream.tcp_conn().is_some_and(TcpConn::blocked_writing);
                        self.state = State::Upgrade { stream, upgrade };
                        return self.blocked(writing, now);
                    }
                },
                State::Over => return Err(Error::Io(io::Error::other("the dial is over"))),
            };
        }
    }

    /// TLS stopped at "would block"; its socket says which way.
    fn tls_blocked(&mut self, handshake: TlsHandshake, now: Instant) -> Result<Progress, Error> {
        let writing = handshake.tcp_conn().blocked_writing();
        self.state = State::Tls(handshake);
        self.blocked(writing, now)
    }

    /// The socket would block after TCP: wait, unless the handshake deadline has passed.
    fn blocked(&self, writing: bool, now: Instant) -> Result<Progress, Error> {
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(Error::Timeout(TimeoutKind::Handshake));
        }
        Ok(Progress::Pending {
            interest: Interest::writing(writing),
            deadline: self.deadline,
        })
    }

    /// Start TCP to the next address, bounded by `connect_timeout` and what is left of the
    /// handshake's; when every address has failed, the last failure is the dial's.
    fn connect_next(&mut self, now: Instant) -> Result<State, Error> {
        let Some(&addr) = self.addrs.get(self.next) else {
            return Err(self.tcp_failed(now));
        };
        self.next += 1;
        let left = match self.deadline {
            Some(d) if now >= d => return Err(Error::Timeout(TimeoutKind::Handshake)),
            Some(d) => Some(d - now),
            None => None,
        };
        let timeout = match (self.config.connect_timeout(), left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(match connect_start(addr, &self.config) {
            Ok((socket, true)) => self.tcp_open(socket, addr),
            Ok((socket, false)) => State::Connecting {
                socket,
                addr,
                until: timeout.map(|t: Duration| crate::deadline::after(now, t)),
            },
            Err(e) => {
                self.failed(addr, e);
                State::NextAddress
            }
        })
    }

    fn failed(&mut self, addr: SocketAddr, e: io::Error) {
        tracing::debug!(%addr, error = %e, "tcp connect failed");
        self.last_failure = Some((addr, e));
    }

    /// Every address failed: the last failure, as the dial's error.
    fn tcp_failed(&mut self, now: Instant) -> Error {
        let Some((addr, source)) = self.last_failure.take() else {
            // `resolve` never returns an empty list, so an address was tried.
            return Error::Io(io::Error::other("no address to connect to"));
        };
        if is_deadline(&source) {
            return if self.deadline.is_some_and(|d| now >= d) {
                Error::Timeout(TimeoutKind::Handshake)
            } else {
                Error::Timeout(TimeoutKind::Connect)
            };
        }
        match &self.tunnel {
            Some((proxy, _)) => Error::ProxyConnect {
                proxy: proxy.authority(),
                source,
            },
            None => Error::Connect { addr, source },
        }
    }

    /// TCP is connected: set the socket's options, then on to the proxy or TLS or the upgrade.
    fn tcp_open(&mut self, socket: Socket, addr: SocketAddr) -> State {
        if let Err(e) = socket_options(&socket, addr, &self.config) {
            self.failed(addr, e);
            return State::NextAddress;
        }
        tracing::debug!(%addr, "tcp connected");
        let conn = TcpConn::new(socket.into(), None);
        match self.tunnel {
            Some(_) => State::Tunnel {
                conn,
                exchange: Exchange::default(),
            },
            None => self.secure(conn),
        }
    }

    /// The byte stream to the target is there: TLS for `wss://`, else the upgrade.
    fn secure(&self, conn: TcpConn) -> State {
        if self.tls {
            State::TlsStart(conn)
        } else {
            self.upgrade(Transport::Plain(conn))
        }
    }

    fn upgrade(&self, transport: Transport) -> State {
        State::Upgrade {
            stream: Stream::from(transport),
            upgrade: ClientUpgrade::new(&self.url, &self.config),
        }
    }
}

/// Check a URL the way every connect does: it parses, its scheme is `ws` or `wss`, it has a
/// host. Returns it parsed, and whether it is `wss`.
pub(crate) fn parse_url(url: &str) -> Result<(Url, bool), Error> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    let tls = match parsed.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(Error::UnsupportedScheme {
                scheme: other.to_owned(),
            })
        }
    };
    if parsed.host().is_none() {
        return Err(invalid("no host"));
    }
    Ok((parsed, tls))
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    let addrs = crate::resolver::system_lookup(host, port).map_err(|source| Error::Resolve {
        host: host.to_owned(),
        source,
    })?;
    if addrs.is_empty() {
        return Err(Error::Resolve {
            host: host.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        });
    }
    Ok(addrs)
}

/// A non-blocking socket connecting to `addr`, and whether it is connected already.
fn connect_start(addr: SocketAddr, config: &Config) -> io::Result<(Socket, bool)> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    // Buffer sizes must be set before connect to take part in window scaling.
    if let Some(n) = config.send_buffer_size() {
        socket.set_send_buffer_size(n)?;
    }
    if let Some(n) = config.recv_buffer_size() {
        socket.set_recv_buffer_size(n)?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => Ok((socket, true)),
        Err(e) if connect_pending(&e) => Ok((socket, false)),
        Err(e) => Err(e),
    }
}

/// How often a TCP connect under way is looked at (by `connected`, which asks `SO_ERROR`) on
/// Windows even though its wait did not end: `WSAPoll` before Windows 10 2004 never reports a
/// failed non-blocking connect, so the wait would last until the connect timeout, or forever
/// without one.
#[cfg(windows)]
const CONNECT_RECHECK: Duration = Duration::from_millis(100);

/// Until when to wait for a TCP connect under way that must be over by `until`.
fn connect_wait(now: Instant, until: Option<Instant>) -> Option<Instant> {
    #[cfg(windows)]
    let until = Some(until.map_or(now + CONNECT_RECHECK, |t| t.min(now + CONNECT_RECHECK)));
    #[cfg(not(windows))]
    let _ = now;
    until
}

/// Whether a non-blocking connect has finished: true when connected, its error when it failed.
fn connected(socket: &Socket) -> io::Result<bool> {
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    match socket.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if connect_pending(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The options set once connected.
fn socket_options(socket: &Socket, addr: SocketAddr, config: &Config) -> io::Result<()> {
    socket.set_tcp_nodelay(config.nodelay())?;
    if let Some(ttl) = config.ttl() {
        if addr.is_ipv4() {
            socket.set_ttl_v4(ttl)?;
        } else {
            socket.set_unicast_hops_v6(ttl)?;
        }
    }
    if let Some(idle) = config.keepalive() {
        socket.set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))?;
    }
    Ok(())
}

/// The URL for logs: without credentials (`ws://user:pass@host/` logs as `ws://host/`).
fn redacted(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<invalid url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use crate::wait::Waiter;
    use crate::WaitStrategy;

    /// No test waits longer than this for a socket.
    const PATIENCE: Duration = Duration::from_secs(60);

    #[test]
    fn credentials_never_reach_the_logs() {
        assert_eq!(redacted("ws://u:secret@h:1/p?q"), "ws://h:1/p?q");
        assert_eq!(redacted("wss://h/"), "wss://h/");
        assert_eq!(redacted("not a url secret"), "<invalid url>");
    }

    /// Advance until the dial asks to wait for `until`, waiting for the socket in between as
    /// the blocking connect does. Returns that wait's deadline.
    fn advance_until(dial: &mut Dial, until: Interest) -> Option<Instant> {
        let (mut waiter, _) = Waiter::new(WaitStrategy::Readiness, false).unwrap();
        loop {
            match dial.advance(Instant::now()).unwrap() {
                Progress::Pending { interest, deadline } if interest == until => return deadline,
                Progress::Pending { interest, .. } => {
                    let socket = Some((dial.fd().unwrap(), interest.into()));
                    waiter
                        .wait(socket, Some(Instant::now() + PATIENCE), None, false, false)
                        .unwrap();
                }
                Progress::Done(_) => panic!("connected"),
            }
        }
    }

    /// Read a request head off `tcp` a byte at a time (so nothing after it is taken).
    fn request_head(tcp: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            tcp.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    #[test]
    fn an_upgrade_answer_that_arrives_a_byte_at_a_time_is_read_across_advances() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (go_tx, go_rx) = crossbeam_channel::unbounded::<()>();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(PATIENCE)).unwrap();
            let head = request_head(&mut tcp);
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r"
            );
            // One byte per go; the last one comes with a frame right behind the head.
            let mut chunks: Vec<Vec<u8>> = answer.bytes().map(|b| vec![b]).collect();
            chunks.push(b"\n\x81\x02hi".to_vec());
            for chunk in &chunks {
                go_rx.recv_timeout(PATIENCE).unwrap();
                tcp.write_all(chunk).unwrap();
            }
            let _ = tcp.read(&mut [0u8; 64]);
            chunks.len()
        });
        let mut dial = Dial::start(&format!("ws://{addr}/"), &Config::default()).unwrap();
        let (mut waiter, _) = Waiter::new(WaitStrategy::Readiness, false).unwrap();
        let mut reads = 0;
        let open = loop {
            match dial.advance(Instant::now()).unwrap() {
                Progress::Done(open) => break open,
                Progress::Pending { interest, .. } => {
                    if interest == Interest::Readable {
                        // Waiting for the answer: let one more byte of it go.
                        reads += 1;
                        go_tx.send(()).unwrap();
                    }
                    let socket = Some((dial.fd().unwrap(), interest.into()));
                    waiter
                        .wait(socket, Some(Instant::now() + PATIENCE), None, false, false)
                        .unwrap();
                }
            }
        };
        let (mut ws, handshake) = *open;
        assert_eq!(handshake.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        // The frame read with the head's last byte is the first message, not lost.
        assert_eq!(ws.read().unwrap(), tungstenite::Message::text("hi"));
        drop(ws);
        let chunks = server.join().unwrap();
        assert!(reads >= chunks, "{reads} waits for {chunks} pieces");
    }

    #[test]
    fn a_silent_server_is_the_handshake_timeout_once_now_passes_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(PATIENCE)).unwrap();
            request_head(&mut tcp);
            // Silent until the client leaves.
            let _ = tcp.read(&mut [0u8; 64]);
        });
        let config = Config::builder()
            .handshake_timeout(Some(Duration::from_secs(30)))
            .build()
            .unwrap();
        let mut dial = Dial::start(&format!("ws://{addr}/"), &config).unwrap();
        let deadline = advance_until(&mut dial, Interest::Readable).expect("a deadline");
        assert!(deadline > Instant::now() + Duration::from_secs(20));
        // Just before the deadline it still waits; at it, it fails, and the dial is over.
        let before = dial.advance(deadline - Duration::from_millis(1)).unwrap();
        assert!(
            matches!(
                before,
                Progress::Pending {
                    interest: Interest::Readable,
                    deadline: Some(d)
                } if d == deadline
            ),
            "{before:?}"
        );
        let e = dial.advance(deadline).unwrap_err();
        assert!(matches!(e, Error::Timeout(TimeoutKind::Handshake)), "{e:?}");
        assert!(dial.fd().is_none(), "the socket is closed");
        server.join().unwrap();
    }

    /// A listener whose accept queue is full (backlog 0, one connection never accepted), so
    /// Linux drops further SYNs and a connect to it stays under way (retransmitting).
    fn full_listener() -> (Socket, TcpStream, SocketAddr) {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let filler = TcpStream::connect(addr).unwrap();
        (listener, filler, addr)
    }

    #[test]
    #[cfg_attr(windows, ignore = "Windows looks at a connect under way every 100 ms")]
    fn a_tcp_connect_past_its_time_is_the_connect_or_the_handshake_timeout() {
        for (connect, handshake, expected) in [
            (10, 30, TimeoutKind::Connect),
            (30, 10, TimeoutKind::Handshake),
        ] {
            let (_listener, _filler, addr) = full_listener();
            let config = Config::builder()
                .connect_timeout(Some(Duration::from_secs(connect)))
                .handshake_timeout(Some(Duration::from_secs(handshake)))
                .build()
                .unwrap();
            let mut dial = Dial::start(&format!("ws://{addr}/"), &config).unwrap();
            let now = Instant::now();
            let until = match dial.advance(now).unwrap() {
                Progress::Pending {
                    interest: Interest::Writable,
                    deadline: Some(until),
                } => until,
                other => panic!("the connect is under way: {other:?}"),
            };
            let expected_until = now + Duration::from_secs(connect.min(handshake));
            assert!(until <= expected_until, "{until:?} {expected_until:?}");
            assert!(until + Duration::from_secs(1) > expected_until);
            let e = dial.advance(until).unwrap_err();
            assert!(
                matches!(e, Error::Timeout(kind) if kind == expected),
                "{e:?}"
            );
        }
    }
}
