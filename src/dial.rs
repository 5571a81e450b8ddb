//! Opening a client connection, as a state machine that never waits: URL -> name lookup ->
//! TCP -> [proxy tunnel] -> TLS -> WebSocket upgrade. [`Dial::advance`] goes as far as it can
//! and says what to wait for ([`Progress::Pending`]: the socket readable or writable, or, while
//! a name is looked up, no socket: the dial's `Wake`; until when); the caller waits its own
//! way: the blocking connect (`connect::connect`) in poll(2) or parked, a reconnecting driver
//! in its waiter, where commands and stops also end the wait.
//!
//! Names are looked up in the resolver pool (`resolver.rs`: the system resolver has no
//! non-blocking interface), which calls the dial's `Wake` with the answer; IP literals need
//! no lookup. A lookup is bounded by `connect_timeout` and what is left of
//! `handshake_timeout` (whose clock starts with the dial), as each TCP connect is.

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
use crate::resolver::{self, Lookup, Wake};
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
    /// `interest` is `None` while a name is looked up: there is no socket yet, and the dial's
    /// `Wake` (given to [`Dial::start`]) says when the answer is in.
    Pending {
        interest: Option<Interest>,
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
    /// Where TCP goes (the proxy's addresses, or the target's), tried in order; empty until
    /// its name is looked up.
    addrs: Vec<SocketAddr>,
    /// Ends the wait of whoever advances this dial when a lookup's answer is in.
    wake: Wake,
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
    /// The target's name (`server_name`), for a proxy that takes an address (SOCKS5): looked
    /// up here before TCP starts.
    Unresolved,
}

impl TunnelTo {
    fn target(&self) -> Option<Target<'_>> {
        match self {
            TunnelTo::Name(name) => Some(Target::Name(name)),
            TunnelTo::Ip(ip) => Some(Target::Ip(*ip)),
            TunnelTo::Unresolved => None,
        }
    }
}

/// Which name a lookup is for, and so where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    /// The target's, for its addresses (a direct connection).
    Target,
    /// The target's, for the address a SOCKS5 proxy is given.
    TunnelTarget,
    /// The proxy's, for its addresses.
    Proxy,
}

#[derive(Debug)]
enum State {
    /// Look up the next name the dial needs (the tunnel's target, then where TCP goes), or,
    /// with every address known, on to TCP.
    Resolve,
    /// A lookup under way in the resolver pool, until `until` (`connect_timeout`, within the
    /// handshake's).
    Resolving {
        lookup: Lookup,
        name: Name,
        until: Option<Instant>,
    },
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
    /// Check `url` and the configuration and pick the proxy. Nothing waits here: no socket is
    /// opened and no name looked up yet (the first [`Dial::advance`] does both, as far as it
    /// can); `wake` is called whenever a lookup's answer is in, from a thread of the resolver
    /// pool, to end the wait of whoever advances the dial.
    ///
    /// # Errors
    ///
    /// `InvalidUrl`, `UnsupportedScheme`, `InvalidProxy` (from the environment).
    pub(crate) fn start(url: &str, config: &Config, wake: Wake) -> Result<Dial, Error> {
        let span = tracing::info_span!("connect", url = %redacted(url));
        let started = Instant::now();
        let dial = span.in_scope(|| Dial::prepare(url, config, wake, started, span.clone()));
        if let Err(e) = &dial {
            span.in_scope(|| tracing::warn!(error = %e, "connect failed"));
        }
        dial
    }

    fn prepare(
        url: &str,
        config: &Config,
        wake: Wake,
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
        // IP literals are addresses already; names are looked up by `advance` (`Resolve`).
        // `localhost` is a name like any other: std asks the system resolver for it too (its
        // hosts file, as a rule, but that is the resolver's configuration to decide).
        let (addrs, tunnel) = match proxy {
            None => {
                let addrs = match host {
                    Host::Domain(_) => Vec::new(),
                    Host::Ipv4(ip) => vec![SocketAddr::new(ip.into(), port)],
                    Host::Ipv6(ip) => vec![SocketAddr::new(ip.into(), port)],
                };
                (addrs, None)
            }
            Some(proxy) => {
                let to = match host {
                    // SOCKS5 takes one address; like curl, we give it the first one the
                    // resolver returns.
                    Host::Domain(_) if proxy.resolves_locally() => TunnelTo::Unresolved,
                    Host::Domain(name) => TunnelTo::Name(name.to_owned()),
                    Host::Ipv4(ip) => TunnelTo::Ip(ip.into()),
                    Host::Ipv6(ip) => TunnelTo::Ip(ip.into()),
                };
                let addrs = match proxy.host().parse::<IpAddr>() {
                    Ok(ip) => vec![SocketAddr::new(ip, proxy.port())],
                    Err(_) => Vec::new(),
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
            wake,
            next: 0,
            last_failure: None,
            deadline,
            state: State::Resolve,
            span,
            started,
        })
    }

    /// The socket to wait on after [`Progress::Pending`]: there is one whenever its
    /// `interest` is, and none while a name is looked up.
    pub(crate) fn fd(&self) -> Option<BorrowedSocket<'_>> {
        match &self.state {
            State::Connecting { socket, .. } => Some(socket.as_fd()),
            State::Tunnel { conn, .. } | State::TlsStart(conn) => Some(conn.tcp().as_fd()),
            State::Tls(handshake) => Some(handshake.tcp_conn().tcp().as_fd()),
            State::Upgrade { stream, .. } => stream.tcp_conn().map(|c| c.tcp().as_fd()),
            State::Resolve | State::Resolving { .. } | State::NextAddress | State::Over => None,
        }
    }

    /// Go on as far as the lookups and the socket allow at `now`. After `Done` or an error the
    /// dial is over (its socket closed, its lookup abandoned, on error).
    ///
    /// # Errors
    ///
    /// Every connect-time error after the URL, as the blocking connect has always given them:
    /// `Resolve` (the target's name), `ProxyConnect` (the proxy's name, or every address of
    /// the proxy failed), `Timeout(Resolve)` (a lookup past `connect_timeout`), `Connect`
    /// (each address failed; the last one's), `Timeout(Connect)`, `Timeout(Handshake)` (also
    /// when `now` is past `handshake_timeout` while waiting), `ProxyRefused`/`ProxyProtocol`,
    /// `Tls`, `HandshakeRejected`, `InvalidHandshake`, `Io`.
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
                State::Resolve => self.look_up_next(now)?,
                State::Resolving {
                    lookup,
                    name,
                    until,
                } => match lookup.answer() {
                    Some(answer) => {
                        self.resolved(name, answer)?;
                        State::Resolve
                    }
                    None if until.is_some_and(|t| now >= t) => {
                        return Err(self.lookup_timeout(now));
                    }
                    None => {
                        self.state = State::Resolving {
                            lookup,
                            name,
                            until,
                        };
                        return Ok(Progress::Pending {
                            interest: None,
                            deadline: until,
                        });
                    }
                },
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
                            interest: Some(Interest::Writable),
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
                    // Looked up (`Resolve`) before TCP started.
                    let target = to
                        .target()
                        .ok_or_else(|| io::Error::other("a tunnel to a name not looked up"))?;
                    match exchange.advance(&mut conn, proxy, target, self.port)? {
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
            interest: Some(Interest::writing(writing)),
            deadline: self.deadline,
        })
    }

    /// Ask the resolver pool for the next name the dial needs: the tunnel's target (a SOCKS5
    /// proxy is given an address), then where TCP goes (the proxy, or the target). With every
    /// address known, on to TCP.
    fn look_up_next(&mut self, now: Instant) -> Result<State, Error> {
        let (name, host, port) = match &self.tunnel {
            Some((_, TunnelTo::Unresolved)) => {
                (Name::TunnelTarget, self.server_name.as_str(), self.port)
            }
            _ if !self.addrs.is_empty() => return Ok(State::NextAddress),
            Some((proxy, _)) => (Name::Proxy, proxy.host(), proxy.port()),
            None => (Name::Target, self.server_name.as_str(), self.port),
        };
        let until = self.step_deadline(now)?;
        tracing::debug!(host = %host, "looking up");
        let lookup = resolver::lookup(host, port, self.wake.clone())
            .map_err(|source| self.lookup_failed(name, source))?;
        Ok(State::Resolving {
            lookup,
            name,
            until,
        })
    }

    /// A lookup's answer: the addresses go where `name` says.
    fn resolved(&mut self, name: Name, answer: io::Result<Vec<SocketAddr>>) -> Result<(), Error> {
        let addrs = match answer {
            Ok(addrs) if addrs.is_empty() => {
                Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"))
            }
            other => other,
        }
        .map_err(|source| self.lookup_failed(name, source))?;
        tracing::debug!(
            addresses = addrs.len(),
            elapsed_us = self.started.elapsed().as_micros() as u64,
            "looked up"
        );
        match (name, &mut self.tunnel) {
            (Name::TunnelTarget, Some((_, to))) => *to = TunnelTo::Ip(addrs[0].ip()),
            _ => self.addrs = addrs,
        }
        Ok(())
    }

    /// A lookup failed: the proxy's is the proxy's failure, the target's a `Resolve`.
    fn lookup_failed(&self, name: Name, source: io::Error) -> Error {
        match (name, &self.tunnel) {
            (Name::Proxy, Some((proxy, _))) => Error::ProxyConnect {
                proxy: proxy.authority(),
                source,
            },
            _ => Error::Resolve {
                host: self.server_name.clone(),
                source,
            },
        }
    }

    /// A lookup ran past its deadline: the handshake's, or its own (`connect_timeout`).
    fn lookup_timeout(&self, now: Instant) -> Error {
        if self.deadline.is_some_and(|d| now >= d) {
            Error::Timeout(TimeoutKind::Handshake)
        } else {
            Error::Timeout(TimeoutKind::Resolve)
        }
    }

    /// When a step bounded by `connect_timeout` (a lookup, a TCP connect) that starts at `now`
    /// must be over: that, or the handshake's deadline if sooner. An error if that has passed.
    fn step_deadline(&self, now: Instant) -> Result<Option<Instant>, Error> {
        let left = match self.deadline {
            Some(d) if now >= d => return Err(Error::Timeout(TimeoutKind::Handshake)),
            Some(d) => Some(d - now),
            None => None,
        };
        let timeout = match (self.config.connect_timeout(), left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(timeout.map(|t: Duration| crate::deadline::after(now, t)))
    }

    /// Start TCP to the next address, bounded by `connect_timeout` and what is left of the
    /// handshake's; when every address has failed, the last failure is the dial's.
    fn connect_next(&mut self, now: Instant) -> Result<State, Error> {
        let Some(&addr) = self.addrs.get(self.next) else {
            return Err(self.tcp_failed(now));
        };
        self.next += 1;
        let until = self.step_deadline(now)?;
        Ok(match connect_start(addr, &self.config) {
            Ok((socket, true)) => self.tcp_open(socket, addr),
            Ok((socket, false)) => State::Connecting {
                socket,
                addr,
                until,
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
            // A lookup never leaves the list empty (`resolved`), so an address was tried.
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

    /// A dial to an IP literal: no lookup, so nothing to wake.
    fn start(url: &str, config: &Config) -> Dial {
        Dial::start(url, config, Wake::new(|| {})).unwrap()
    }

    /// Advance until the dial asks to wait for `until`, waiting for the socket in between as
    /// the blocking connect does. Returns that wait's deadline.
    fn advance_until(dial: &mut Dial, until: Interest) -> Option<Instant> {
        let (mut waiter, _) = Waiter::new(WaitStrategy::Readiness, false).unwrap();
        loop {
            match dial.advance(Instant::now()).unwrap() {
                Progress::Pending {
                    interest: Some(interest),
                    deadline,
                } if interest == until => return deadline,
                Progress::Pending { interest, .. } => {
                    let socket = Some((dial.fd().unwrap(), interest.unwrap().into()));
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
        let mut dial = start(&format!("ws://{addr}/"), &Config::default());
        let (mut waiter, _) = Waiter::new(WaitStrategy::Readiness, false).unwrap();
        let mut reads = 0;
        let open = loop {
            match dial.advance(Instant::now()).unwrap() {
                Progress::Done(open) => break open,
                Progress::Pending { interest, .. } => {
                    let interest = interest.unwrap();
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
        let mut dial = start(&format!("ws://{addr}/"), &config);
        let deadline = advance_until(&mut dial, Interest::Readable).expect("a deadline");
        assert!(deadline > Instant::now() + Duration::from_secs(20));
        // Just before the deadline it still waits; at it, it fails, and the dial is over.
        let before = dial.advance(deadline - Duration::from_millis(1)).unwrap();
        assert!(
            matches!(
                before,
                Progress::Pending {
                    interest: Some(Interest::Readable),
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

    #[test]
    fn a_lookup_past_its_time_is_the_lookup_or_the_handshake_timeout_and_has_no_socket() {
        let _pool = crate::resolver::fake::pool_to_myself();
        let (entered, release) = crate::resolver::fake::held(&["never-a.test", "never-b.test"]);
        // A name each: the second dial would join the first one's lookup, still held.
        for (name, connect, handshake, expected) in [
            ("never-a.test", 10, 30, TimeoutKind::Resolve),
            ("never-b.test", 30, 10, TimeoutKind::Handshake),
        ] {
            let config = Config::builder()
                .connect_timeout(Some(Duration::from_secs(connect)))
                .handshake_timeout(Some(Duration::from_secs(handshake)))
                .build()
                .unwrap();
            let mut dial = start(&format!("ws://{name}:9/"), &config);
            let now = Instant::now();
            let until = match dial.advance(now).unwrap() {
                Progress::Pending {
                    interest: None,
                    deadline: Some(until),
                } => until,
                other => panic!("the lookup is under way: {other:?}"),
            };
            assert!(dial.fd().is_none(), "no socket while the name is looked up");
            let expected_until = now + Duration::from_secs(connect.min(handshake));
            assert!(until <= expected_until, "{until:?} {expected_until:?}");
            assert!(until + Duration::from_secs(1) > expected_until);
            // The lookup started and is still held: only the deadline can end the dial.
            entered.recv_timeout(PATIENCE).unwrap();
            assert!(matches!(
                dial.advance(until - Duration::from_millis(1)).unwrap(),
                Progress::Pending { interest: None, .. }
            ));
            let e = dial.advance(until).unwrap_err();
            assert!(
                matches!(e, Error::Timeout(kind) if kind == expected),
                "{e:?}"
            );
        }
        drop(release);
    }

    #[test]
    fn a_lookup_wakes_its_dial_and_its_addresses_are_tried_in_order() {
        let _pool = crate::resolver::fake::pool_to_myself();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        // A port nobody listens on: refused, then the next address.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        crate::resolver::fake::answer("two.test", move |_| Ok(vec![closed, open]));
        let (woken_tx, woken) = crossbeam_channel::unbounded();
        let wake = Wake::new(move || {
            let _ = woken_tx.send(());
        });
        let mut dial = Dial::start("ws://two.test:1/", &Config::default(), wake).unwrap();
        let mut progress = dial.advance(Instant::now()).unwrap();
        if let Progress::Pending { interest: None, .. } = progress {
            woken.recv_timeout(PATIENCE).unwrap();
            progress = dial.advance(Instant::now()).unwrap();
        }
        // On to TCP, to the open address after the refused one, and the upgrade request.
        assert!(
            matches!(
                progress,
                Progress::Pending {
                    interest: Some(_),
                    ..
                }
            ),
            "{progress:?}"
        );
        advance_until(&mut dial, Interest::Readable);
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        assert!(request_head(&mut tcp).starts_with("GET / HTTP/1.1\r\n"));
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
            let mut dial = start(&format!("ws://{addr}/"), &config);
            let now = Instant::now();
            let until = match dial.advance(now).unwrap() {
                Progress::Pending {
                    interest: Some(Interest::Writable),
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
