//! One configuration type shared by every mode.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

use crate::proxy::Proxy;
use crate::DeflateConfig;
use crate::{Error, Reconnect, TlsBackend, WhileDisconnected};

/// How a [`NonBlockingClient`](crate::NonBlockingClient) passes time when the socket has nothing
/// to read and nothing can be written.
///
/// Whatever the strategy, every message already readable is processed before waiting again, so
/// the wait never caps throughput; it only decides latency and idle CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// Poll again at once. Lowest latency; one core stays busy.
    BusySpin,
    /// Sleep this long between empty polls (s9_websocket's "spin-wait duration"). A command from
    /// another thread ends the sleep early. For 100 µs (at most the sleep) after a pass that read
    /// or wrote, it polls without sleeping, so an answer that comes within microseconds of a
    /// request is not held back by a whole sleep; an idle connection costs one poll per sleep.
    Sleep(Duration),
    /// Wait in the OS poll on the socket plus a waker: ~0% CPU when idle, and a message is
    /// handled as soon as it arrives. The default.
    #[default]
    Readiness,
}

/// Connection settings, shared by [`BlockingClient`](crate::BlockingClient),
/// [`NonBlockingClient`](crate::NonBlockingClient) and
/// [`ThreadedClient`](crate::ThreadedClient).
///
/// Build one with [`Config::builder`]; [`Config::default`] gives every default.
///
/// ```
/// use std::time::Duration;
/// let config = syncws::Config::builder()
///     .header("Authorization", "Bearer abc")
///     .subprotocol("chat.v1")
///     .handshake_timeout(Some(Duration::from_secs(5)))
///     .build()?;
/// assert_eq!(config.subprotocols(), ["chat.v1"]);
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) request: RequestOptions,
    pub(crate) timeouts: Timeouts,
    pub(crate) limits: Limits,
    pub(crate) socket: SocketOptions,
    pub(crate) tls: TlsOptions,
    pub(crate) proxying: ProxyOptions,
    pub(crate) driving: DrivingOptions,
    pub(crate) heartbeat: HeartbeatOptions,
    pub(crate) reconnect: Option<Reconnect>,
    pub(crate) while_disconnected: WhileDisconnected,
    pub(crate) deflate: Option<DeflateConfig>,
}

/// Every time limit in one place, as [`Config::timeouts`] reads them (set them on
/// [`ConfigBuilder`]: `connect_timeout`, `handshake_timeout`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timeouts {
    /// The host name lookup, and each TCP connect attempt.
    pub connect: Option<Duration>,
    /// The whole opening: name lookup, TCP, proxy tunnel, TLS and HTTP upgrade.
    pub handshake: Option<Duration>,
    /// The close handshake.
    pub close: Duration,
    /// Silence before `on_idle`.
    pub read: Option<Duration>,
    /// Queued output without progress before the connection fails.
    pub write: Option<Duration>,
    /// Silence after a heartbeat ping before the peer counts as gone.
    pub pong: Duration,
    /// How long dropping a threaded client waits for its worker.
    pub shutdown: Duration,
}

/// Every size bound in one place, as [`Config::limits`] reads them (set them on
/// [`ConfigBuilder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest incoming message.
    pub max_message_size: Option<usize>,
    /// Largest incoming frame (never `None` after `build`).
    pub max_frame_size: Option<usize>,
    /// Largest socket read tungstenite asks for (bulk data is read ahead beyond it).
    pub read_buffer_size: usize,
    /// Queued bytes that are written at once instead of at the pass's flush.
    pub write_buffer_size: usize,
    /// Bound on bytes queued for the socket.
    pub max_queued_bytes: usize,
    /// Capacity of the command channel.
    pub control_capacity: usize,
    /// Payload bytes the command channel holds at most (None: `max_queued_bytes`).
    pub control_bytes: Option<usize>,
    /// Capacity of a threaded client's `event_rx`.
    pub event_capacity: usize,
}

/// What a client's upgrade request carries besides the handshake's own headers.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestOptions {
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) subprotocols: Vec<String>,
}

/// TCP socket options.
#[derive(Debug, Clone)]
pub(crate) struct SocketOptions {
    pub(crate) nodelay: bool,
    pub(crate) ttl: Option<u32>,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) send_buffer_size: Option<usize>,
    pub(crate) recv_buffer_size: Option<usize>,
}

/// TLS for `wss://`.
#[derive(Debug, Clone)]
pub(crate) struct TlsOptions {
    pub(crate) backend: TlsBackend,
    pub(crate) root_certificates: Vec<Vec<u8>>,
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) danger_accept_invalid_certs: bool,
    /// The TLS client context built from the above, once per built config and shared by its
    /// clones (see `tls::ConnectorCache`).
    pub(crate) cache: crate::tls::ConnectorCache,
}

/// Which proxy, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProxyOptions {
    pub(crate) proxy: Option<Proxy>,
    pub(crate) from_env: bool,
}

/// How each mode drives and waits (per mode, not per connection).
#[derive(Debug, Clone)]
pub(crate) struct DrivingOptions {
    pub(crate) wait_strategy: WaitStrategy,
    pub(crate) worker_spin: Duration,
}

/// Heartbeat pings.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeartbeatOptions {
    pub(crate) interval: Option<Duration>,
    pub(crate) payload: Vec<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            request: RequestOptions::default(),
            timeouts: Timeouts {
                connect: Some(Duration::from_secs(10)),
                handshake: Some(Duration::from_secs(30)),
                close: Duration::from_secs(5),
                read: None,
                write: Some(Duration::from_secs(30)),
                pong: Duration::from_secs(10),
                shutdown: Duration::from_secs(5),
            },
            limits: Limits {
                max_message_size: Some(64 << 20),
                max_frame_size: Some(16 << 20),
                read_buffer_size: 16 << 10,
                write_buffer_size: 64 << 10,
                max_queued_bytes: 128 << 20,
                control_capacity: 1024,
                control_bytes: None,
                event_capacity: 1024,
            },
            socket: SocketOptions {
                nodelay: true,
                ttl: None,
                keepalive: None,
                send_buffer_size: None,
                recv_buffer_size: None,
            },
            tls: TlsOptions {
                backend: TlsBackend::NativeTls,
                root_certificates: Vec::new(),
                identity: None,
                danger_accept_invalid_certs: false,
                cache: crate::tls::ConnectorCache::default(),
            },
            proxying: ProxyOptions::default(),
            driving: DrivingOptions {
                wait_strategy: WaitStrategy::Readiness,
                worker_spin: Duration::from_micros(20),
            },
            heartbeat: HeartbeatOptions::default(),
            reconnect: None,
            while_disconnected: WhileDisconnected::Refuse,
            deflate: None,
        }
    }
}

impl Config {
    /// Start from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
            problems: Vec::new(),
        }
    }

    /// Every time limit (the same values as the single getters below).
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }
    /// Every size bound (the same values as the single getters below).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// Extra request headers, in the order they are sent.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.request.headers
    }
    /// Subprotocols offered, in order of preference.
    pub fn subprotocols(&self) -> &[String] {
        &self.request.subprotocols
    }
    /// Limit on the host name lookup and on each TCP connect attempt.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.timeouts.connect
    }
    /// Limit on the whole opening (name lookup + TCP + proxy tunnel + TLS + HTTP upgrade).
    pub fn handshake_timeout(&self) -> Option<Duration> {
        self.timeouts.handshake
    }
    /// Limit on the close handshake.
    pub fn close_timeout(&self) -> Duration {
        self.timeouts.close
    }
    /// How long a waiting client goes without input before `on_idle` runs.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.timeouts.read
    }
    /// How long queued output may make no progress before the connection fails.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.timeouts.write
    }
    /// Whether Nagle's algorithm is disabled.
    pub fn nodelay(&self) -> bool {
        self.socket.nodelay
    }
    /// IP time-to-live.
    pub fn ttl(&self) -> Option<u32> {
        self.socket.ttl
    }
    /// TCP keepalive idle time.
    pub fn keepalive(&self) -> Option<Duration> {
        self.socket.keepalive
    }
    /// SO_SNDBUF.
    pub fn send_buffer_size(&self) -> Option<usize> {
        self.socket.send_buffer_size
    }
    /// SO_RCVBUF.
    pub fn recv_buffer_size(&self) -> Option<usize> {
        self.socket.recv_buffer_size
    }
    /// Largest incoming message.
    pub fn max_message_size(&self) -> Option<usize> {
        self.limits.max_message_size
    }
    /// Largest incoming frame: the limit in force (after [`ConfigBuilder::build`], a frame limit
    /// set to `None` reads as the message limit).
    pub fn max_frame_size(&self) -> Option<usize> {
        self.limits.max_frame_size
    }
    /// Largest single socket read.
    pub fn read_buffer_size(&self) -> usize {
        self.limits.read_buffer_size
    }
    /// Queued bytes that trigger a write without waiting for the loop to flush.
    pub fn write_buffer_size(&self) -> usize {
        self.limits.write_buffer_size
    }
    /// Bound on bytes queued for the socket.
    pub fn max_queued_bytes(&self) -> usize {
        self.limits.max_queued_bytes
    }
    /// The wait strategy of [`NonBlockingClient`](crate::NonBlockingClient).
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.driving.wait_strategy
    }
    /// Capacity of the command channel (`control_tx` and client handles).
    pub fn control_capacity(&self) -> usize {
        self.limits.control_capacity
    }
    /// Payload bytes the command channel holds at most, besides its
    /// [`control_capacity`](Self::control_capacity).
    pub fn control_bytes(&self) -> usize {
        self.limits
            .control_bytes
            .unwrap_or(self.limits.max_queued_bytes)
    }
    /// Capacity of [`ThreadedClient`](crate::ThreadedClient)'s `event_rx`.
    pub fn event_capacity(&self) -> usize {
        self.limits.event_capacity
    }
    /// How long dropping a [`ThreadedClient`](crate::ThreadedClient) waits for its worker.
    pub fn shutdown_timeout(&self) -> Duration {
        self.timeouts.shutdown
    }
    /// How long the threaded worker looks for a reply before parking.
    pub fn worker_spin(&self) -> Duration {
        self.driving.worker_spin
    }
    /// Idle time after which a heartbeat ping is sent.
    pub fn ping_interval(&self) -> Option<Duration> {
        self.heartbeat.interval
    }
    /// How long after a heartbeat ping the peer may stay silent.
    pub fn pong_timeout(&self) -> Duration {
        self.timeouts.pong
    }
    /// Payload of heartbeat pings.
    pub fn ping_payload(&self) -> &[u8] {
        &self.heartbeat.payload
    }
    /// The TLS implementation for `wss://`.
    pub fn tls_backend(&self) -> TlsBackend {
        self.tls.backend
    }
    /// The reconnection policy, if any.
    pub fn reconnect(&self) -> Option<&Reconnect> {
        self.reconnect.as_ref()
    }
    /// The permessage-deflate settings, if compression is enabled.
    pub fn deflate(&self) -> Option<&DeflateConfig> {
        self.deflate.as_ref()
    }
    /// What happens to sends while a reconnecting client is disconnected.
    pub fn while_disconnected(&self) -> WhileDisconnected {
        self.while_disconnected
    }
    /// Extra trusted roots (PEM), as given.
    pub(crate) fn root_certificates(&self) -> &[Vec<u8>] {
        &self.tls.root_certificates
    }
    /// The client identity (certificate chain PEM, PKCS#8 key PEM), if set.
    pub(crate) fn identity(&self) -> Option<&(Vec<u8>, Vec<u8>)> {
        self.tls.identity.as_ref()
    }
    /// Whether certificate checks are off.
    pub fn danger_accept_invalid_certs(&self) -> bool {
        self.tls.danger_accept_invalid_certs
    }
    /// The proxy every connection goes through, if one is set.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxying.proxy.as_ref()
    }
    /// Whether, with no [`proxy`](Self::proxy) set, the proxy environment variables are read
    /// at each connect.
    pub fn proxy_from_env(&self) -> bool {
        self.proxying.from_env
    }

    pub(crate) fn websocket_config(&self) -> tungstenite::protocol::WebSocketConfig {
        tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(self.limits.read_buffer_size)
            // tungstenite's own frames (pongs, Close) pass straight into our outbox, which
            // holds the queue and its bound.
            .write_buffer_size(0)
            .max_write_buffer_size(usize::MAX)
            .max_message_size(self.limits.max_message_size)
            .max_frame_size(self.limits.max_frame_size)
    }
}

/// Builds a [`Config`]. Every setter documents its default; [`build`](Self::build) checks the
/// whole and returns [`Error::Config`] instead of panicking.
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
    problems: Vec<String>,
}

impl ConfigBuilder {
    /// Add a request header. Headers go out in the order added and a name may repeat; a `Host`
    /// header replaces the one derived from the URL. Defaults to none.
    ///
    /// An invalid name or value, or a header the handshake writes itself (`Connection`,
    /// `Upgrade`, `Sec-WebSocket-*`), is reported by [`build`](Self::build).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), _) if crate::handshake::RESERVED_HEADERS.contains(&n) => self.problems.push(
                format!("header {name:?} is written by the handshake itself (subprotocols: use `subprotocol`)"),
            ),
            (Ok(n), Ok(v)) => self.config.request.headers.push((n, v)),
            _ => self
                .problems
                .push(format!("invalid header {name:?}: {value:?}")),
        }
        self
    }
    /// Offer a subprotocol (`Sec-WebSocket-Protocol`); call again to offer more, in order of
    /// preference. The server's choice is in [`Handshake::subprotocol`](crate::Handshake::subprotocol).
    /// Defaults to none.
    pub fn subprotocol(mut self, protocol: &str) -> Self {
        if protocol.is_empty() || !protocol.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            self.problems
                .push(format!("invalid subprotocol {protocol:?}"));
        } else {
            self.config.request.subprotocols.push(protocol.to_owned());
        }
        self
    }
    /// Limit the host name lookup (the target's, or the proxy's), and each TCP connect attempt,
    /// each to this long: a lookup past it fails the attempt with
    /// [`TimeoutKind::Resolve`](crate::TimeoutKind::Resolve), a connect with
    /// [`TimeoutKind::Connect`](crate::TimeoutKind::Connect). `None` leaves them to the system
    /// resolver and the OS. Defaults to 10 s.
    ///
    /// Lookups run on a small pool of threads shared by the process (at most 4 at once; the
    /// rest wait their turn, their clocks running), so a caller is never held by a lookup past
    /// this, and a stop ends a reconnect attempt's lookup at once.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeouts.connect = timeout;
        self
    }
    /// Limit the whole opening: name lookup, TCP connect, proxy tunnel, TLS handshake and HTTP
    /// upgrade together. `None` means no limit. Defaults to 30 s.
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeouts.handshake = timeout;
        self
    }
    /// Limit the close handshake: after this long without the peer's Close (or the end of TCP),
    /// the connection is dropped and [`TimeoutKind::Close`](crate::TimeoutKind::Close) reported.
    /// Defaults to 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.timeouts.close = timeout;
        self
    }
    /// When set, a waiting client that receives nothing for this long calls
    /// [`Handler::on_idle`](crate::Handler::on_idle) and keeps waiting. Defaults to `None`.
    pub fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeouts.read = timeout;
        self
    }
    /// Queued output that makes no progress onto the socket for this long fails the connection
    /// with [`TimeoutKind::Write`](crate::TimeoutKind::Write): a peer that stopped reading
    /// cannot hold a connection (and its queue) forever. Any progress restarts the clock, so
    /// a slow link is not cut. `None` waits forever. Defaults to 30 s.
    pub fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.timeouts.write = timeout;
        self
    }
    /// Disable Nagle's algorithm. Output is already coalesced by the session, so this stays on.
    /// Defaults to `true`.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.config.socket.nodelay = nodelay;
        self
    }
    /// IP time-to-live. Defaults to the OS default.
    pub fn ttl(mut self, ttl: Option<u32>) -> Self {
        self.config.socket.ttl = ttl;
        self
    }
    /// Turn on TCP keepalive with this idle time. Defaults to off.
    pub fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.config.socket.keepalive = idle;
        self
    }
    /// SO_SNDBUF. Defaults to the OS default.
    pub fn send_buffer_size(mut self, bytes: Option<usize>) -> Self {
        self.config.socket.send_buffer_size = bytes;
        self
    }
    /// SO_RCVBUF. Defaults to the OS default.
    pub fn recv_buffer_size(mut self, bytes: Option<usize>) -> Self {
        self.config.socket.recv_buffer_size = bytes;
        self
    }
    /// Largest incoming message; a larger one fails the connection with 1009 and
    /// [`Error::MessageTooLarge`]. `None`: no limit, as long as
    /// [`max_frame_size`](Self::max_frame_size) has one (a message only grows with the bytes
    /// that arrive). Defaults to 64 MiB.
    pub fn max_message_size(mut self, bytes: Option<usize>) -> Self {
        self.config.limits.max_message_size = bytes;
        self
    }
    /// Largest incoming frame (payload); a larger one fails the connection with 1009 and
    /// [`Error::MessageTooLarge`] as soon as its header arrives. Defaults to 16 MiB.
    ///
    /// A frame's announced length is allocated when its header arrives, before its payload
    /// does, so this limit is memory a peer can make each connection reserve. `None` means no
    /// frame limit of its own: a frame may be as large as a message
    /// ([`max_message_size`](Self::max_message_size)), never as large as the peer claims.
    /// [`build`](Self::build) refuses `None` for both.
    pub fn max_frame_size(mut self, bytes: Option<usize>) -> Self {
        self.config.limits.max_frame_size = bytes;
        self
    }
    /// Largest single socket read, and the read buffer kept per connection. tungstenite clears
    /// this many bytes on every read call, so large values cost CPU on small messages.
    /// Defaults to 16 KiB.
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.config.limits.read_buffer_size = bytes;
        self
    }
    /// When this many bytes are queued, they are written at once instead of waiting for the loop
    /// to flush before it waits. Defaults to 64 KiB.
    pub fn write_buffer_size(mut self, bytes: usize) -> Self {
        self.config.limits.write_buffer_size = bytes;
        self
    }
    /// Bound on bytes queued for the socket (framed). A send that would pass it fails with
    /// [`Error::QueueFull`] and queues nothing. Must exceed `write_buffer_size`.
    /// Defaults to 128 MiB.
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.config.limits.max_queued_bytes = bytes;
        self
    }
    /// Trust this PEM certificate (or bundle) in addition to the system roots. Defaults to none.
    /// [`build`](Self::build) fails if it holds no certificate.
    pub fn root_certificate_pem(mut self, pem: &[u8]) -> Self {
        self.config.tls.root_certificates.push(pem.to_vec());
        self
    }
    /// Present this client identity: a PEM certificate chain and its PKCS#8 PEM private key.
    /// Defaults to none. [`build`](Self::build) fails if they cannot be loaded.
    pub fn identity_pem(mut self, cert_chain: &[u8], private_key: &[u8]) -> Self {
        self.config.tls.identity = Some((cert_chain.to_vec(), private_key.to_vec()));
        self
    }
    /// **Dangerous: for tests only.** Accept any certificate for any host, which lets anyone on
    /// the path read and change the traffic. Defaults to `false`.
    pub fn danger_accept_invalid_certs(mut self, accept: bool) -> Self {
        self.config.tls.danger_accept_invalid_certs = accept;
        self
    }
    /// Open every connection through this proxy: an HTTP proxy (`CONNECT` tunnel) or SOCKS5, see
    /// [`Proxy`]. It applies to every target, and the environment is then not read (no
    /// `NO_PROXY`). TCP options and `connect_timeout` apply to the connection to the proxy; the
    /// proxy exchange counts against `handshake_timeout`; TLS for `wss://` runs end to end with
    /// the target, verified against the target's name. Defaults to `None`: connect directly (or
    /// as [`proxy_from_env`](Self::proxy_from_env) says).
    ///
    /// ```
    /// use syncws::{Config, Proxy};
    /// let config = Config::builder()
    ///     .proxy(Some(Proxy::parse("socks5h://user:secret@127.0.0.1:1080")?))
    ///     .build()?;
    /// assert_eq!(config.proxy().map(|p| p.port()), Some(1080));
    /// # Ok::<(), syncws::Error>(())
    /// ```
    pub fn proxy(mut self, proxy: Option<Proxy>) -> Self {
        self.config.proxying.proxy = proxy;
        self
    }
    /// When no [`proxy`](Self::proxy) is set, pick one at each connect from the conventional
    /// environment variables, as curl does:
    ///
    /// - `wss://` uses `https_proxy` or `HTTPS_PROXY`, `ws://` uses `http_proxy` or
    ///   `HTTP_PROXY`, both falling back to `all_proxy` or `ALL_PROXY`. The lowercase name wins;
    ///   an empty value counts as unset; a value without a scheme is an `http://` proxy.
    ///   `HTTP_PROXY` is ignored when `REQUEST_METHOD` is set (in a CGI program a client can
    ///   set it through a `Proxy:` request header).
    /// - `no_proxy` or `NO_PROXY` lists, comma-separated, the targets to reach directly: `*`
    ///   for all; a host name, which also matches its subdomains (`example.com`,
    ///   `.example.com` and `*.example.com` all match `ws.example.com`); an IP address, or a
    ///   network such as `10.0.0.0/8`. An entry with a port (`example.com:8443`, `[::1]:9001`)
    ///   matches only that port. Matching is case-insensitive, against the host as written in
    ///   the URL (names are not resolved for it). `localhost` is not exempt unless listed.
    ///
    /// A variable holding a bad proxy URL fails the connect with [`Error::InvalidProxy`]
    /// naming it. Defaults to `false`: the environment is not read.
    pub fn proxy_from_env(mut self, enabled: bool) -> Self {
        self.config.proxying.from_env = enabled;
        self
    }
    /// How [`NonBlockingClient`](crate::NonBlockingClient) waits. Defaults to
    /// [`WaitStrategy::Readiness`].
    pub fn wait_strategy(mut self, strategy: WaitStrategy) -> Self {
        self.config.driving.wait_strategy = strategy;
        self
    }
    /// Capacity of the command channel behind `control_tx` and client handles; a full channel
    /// makes `send` block and `try_send` fail. Defaults to 1024.
    pub fn control_capacity(mut self, capacity: usize) -> Self {
        self.config.limits.control_capacity = capacity;
        self
    }
    /// Payload bytes the command channel holds at most, whatever the number of commands: a
    /// send that would pass it waits (`send`) or is `Full` (`try_send`), as one that would pass
    /// [`control_capacity`](Self::control_capacity) does, so large messages meet the same
    /// backpressure as small ones. One command is always taken into an empty channel, however
    /// large. Stops (`Close`, `ForceQuit`) carry no payload. Defaults to
    /// [`max_queued_bytes`](Self::max_queued_bytes): what waits in the channel is bounded as
    /// what waits in the outbox is.
    pub fn control_bytes(mut self, bytes: usize) -> Self {
        self.config.limits.control_bytes = Some(bytes);
        self
    }
    /// Capacity of [`ThreadedClient`](crate::ThreadedClient)'s `event_rx`; when full, the worker
    /// stops reading the socket until the application catches up. Defaults to 1024.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.config.limits.event_capacity = capacity;
        self
    }
    /// How long dropping a [`ThreadedClient`](crate::ThreadedClient) waits for its worker to
    /// finish. Defaults to 5 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.timeouts.shutdown = timeout;
        self
    }

    /// After handing messages to the application, the [`ThreadedClient`](crate::ThreadedClient)'s
    /// worker looks for a command this long before parking in the OS poll, so a reply sent
    /// right away is picked up without a wake-up (measured: round trip 72.7 -> 52.5 us on an
    /// idle 2-vCPU host). It costs up to this much CPU per burst of delivered messages and
    /// nothing while idle; zero turns it off. Defaults to 20 us.
    pub fn worker_spin(mut self, spin: Duration) -> Self {
        self.config.driving.worker_spin = spin;
        self
    }
    /// Heartbeat: when nothing has arrived for this long, send a ping; if nothing (a pong or any
    /// other traffic) arrives within [`pong_timeout`](Self::pong_timeout) after it, end the
    /// connection with [`TimeoutKind::Pong`](crate::TimeoutKind::Pong). A dead peer is thus
    /// found within interval + timeout. A readiness-mode client wakes only for these instants.
    /// Defaults to `None` (no heartbeat).
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.heartbeat.interval = interval;
        self
    }
    /// How long the peer may stay silent after a heartbeat ping. Defaults to 10 s.
    pub fn pong_timeout(mut self, timeout: Duration) -> Self {
        self.config.timeouts.pong = timeout;
        self
    }
    /// Payload of heartbeat pings (at most 125 bytes). Defaults to empty.
    pub fn ping_payload(mut self, payload: &[u8]) -> Self {
        self.config.heartbeat.payload = payload.to_vec();
        self
    }

    /// Which TLS implementation `wss://` uses; both honour the root, identity and dangerous
    /// settings. [`TlsBackend::Rustls`] needs the crate's `rustls` feature. Defaults to
    /// [`TlsBackend::NativeTls`].
    pub fn tls_backend(mut self, backend: TlsBackend) -> Self {
        self.config.tls.backend = backend;
        self
    }
    /// Reconnect after a connection ends without the user asking (see [`Reconnect`]). Applies to
    /// the three clients. Defaults to `None`: a connection that ends stays ended.
    pub fn reconnect(mut self, policy: Option<Reconnect>) -> Self {
        self.config.reconnect = policy;
        self
    }
    /// Compress messages with permessage-deflate (RFC 7692) when the peer agrees. Defaults to
    /// `None`: not offered (clients) or not accepted (servers).
    ///
    /// The client offers the extension with the [`DeflateConfig`]'s parameters; what the server
    /// agreed is in [`Handshake::deflate`](crate::Handshake::deflate). A server that declines
    /// leaves the connection uncompressed; an answer that does not fit the offer fails the
    /// handshake with [`Error::InvalidHandshake`]. Compressed messages that inflate past
    /// [`max_message_size`](Self::max_message_size) end the connection with
    /// [`Error::MessageTooLarge`] (close code 1009) before the memory is spent.
    pub fn deflate(mut self, deflate: Option<DeflateConfig>) -> Self {
        self.config.deflate = deflate;
        self
    }
    /// What happens to messages sent while a reconnecting client is disconnected. Defaults to
    /// [`WhileDisconnected::Refuse`].
    pub fn while_disconnected(mut self, policy: WhileDisconnected) -> Self {
        self.config.while_disconnected = policy;
        self
    }

    /// Check the settings and build the [`Config`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the first inconsistent setting.
    pub fn build(self) -> Result<Config, Error> {
        if let Some(problem) = self.problems.into_iter().next() {
            return Err(Error::Config(problem));
        }
        let mut c = self.config;
        match (c.limits.max_frame_size, c.limits.max_message_size) {
            (None, None) => {
                return Err(Error::Config(
                    "max_frame_size and max_message_size cannot both be None: a frame's \
                     announced length is allocated before it is read, so a peer could claim \
                     any size; set a finite max_frame_size"
                        .into(),
                ))
            }
            // A frame cannot be larger than the message it belongs to.
            (None, message) => c.limits.max_frame_size = message,
            _ => {}
        }
        if c.limits.max_queued_bytes <= c.limits.write_buffer_size {
            return Err(Error::Config(format!(
                "max_queued_bytes ({}) must exceed write_buffer_size ({})",
                c.limits.max_queued_bytes, c.limits.write_buffer_size
            )));
        }
        if c.limits.read_buffer_size == 0 {
            return Err(Error::Config("read_buffer_size must be at least 1".into()));
        }
        if c.limits.control_capacity == 0 || c.limits.event_capacity == 0 {
            return Err(Error::Config(
                "control_capacity and event_capacity must be at least 1".into(),
            ));
        }
        // A fresh context for this config: a builder's clones must not share one.
        c.tls.cache = crate::tls::ConnectorCache::default();
        crate::tls::validate(&c)?;
        if c.heartbeat.payload.len() > 125 {
            return Err(Error::Config(format!(
                "ping_payload of {} bytes is longer than 125 bytes",
                c.heartbeat.payload.len()
            )));
        }
        if c.heartbeat.interval == Some(Duration::ZERO) || c.timeouts.pong.is_zero() {
            return Err(Error::Config(
                "ping_interval and pong_timeout must not be zero".into(),
            ));
        }
        if let Some(policy) = &c.reconnect {
            policy.validate().map_err(Error::Config)?;
        }
        if let Some(d) = &c.deflate {
            d.validate()?;
        }
        if c.socket.ttl == Some(0) {
            return Err(Error::Config("ttl must be at least 1".into()));
        }
        for (what, d) in [
            ("connect_timeout", c.timeouts.connect),
            ("handshake_timeout", c.timeouts.handshake),
            ("read_timeout", c.timeouts.read),
            ("write_timeout", c.timeouts.write),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(Error::Config(format!("{what} must not be zero; use None")));
            }
        }
        Ok(c)
    }
}

// ----- server defaults (an additive block: the settings above stay the clients') -------------

impl Config {
    /// A builder that starts from defaults that fit a server, where one process holds many
    /// connections and a client must not be able to hold a thread or much memory:
    ///
    /// | setting | server default | client default |
    /// |---|---|---|
    /// | [`handshake_timeout`](ConfigBuilder::handshake_timeout) (TLS + request head + 101) | 10 s | 30 s |
    /// | [`write_timeout`](ConfigBuilder::write_timeout) (a client that stops reading) | 10 s | 30 s |
    /// | [`max_message_size`](ConfigBuilder::max_message_size) | 1 MiB | 64 MiB |
    /// | [`max_frame_size`](ConfigBuilder::max_frame_size) (buffered whole, and its buffer kept) | 1 MiB | 16 MiB |
    /// | [`max_queued_bytes`](ConfigBuilder::max_queued_bytes) (per-connection queue) | 1 MiB | 128 MiB |
    /// | [`write_buffer_size`](ConfigBuilder::write_buffer_size) | 16 KiB | 64 KiB |
    /// | [`read_buffer_size`](ConfigBuilder::read_buffer_size) (kept per connection) | 4 KiB | 16 KiB |
    /// | [`control_capacity`](ConfigBuilder::control_capacity) (commands from other threads) | 256 | 1024 |
    ///
    /// Everything else is as in [`Config::builder`], and every setter still applies.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = syncws::Config::server_builder()
    ///     .max_message_size(Some(64 << 10))
    ///     .build()?;
    /// assert_eq!(config.handshake_timeout(), Some(Duration::from_secs(10)));
    /// assert_eq!(config.write_timeout(), Some(Duration::from_secs(10)));
    /// assert_eq!(config.max_queued_bytes(), 1 << 20);
    /// assert_eq!(config.max_message_size(), Some(64 << 10));
    /// # Ok::<(), syncws::Error>(())
    /// ```
    pub fn server_builder() -> ConfigBuilder {
        let mut builder = Config::builder();
        let c = &mut builder.config;
        c.timeouts.handshake = Some(Duration::from_secs(10));
        c.timeouts.write = Some(Duration::from_secs(10));
        c.limits.max_queued_bytes = 1 << 20;
        // tungstenite reserves a frame's announced length as its header arrives and keeps the
        // buffer: a client's one large frame would pin that much of a connection's memory for
        // its life. A server holds thousands of connections.
        c.limits.max_message_size = Some(1 << 20);
        c.limits.max_frame_size = Some(1 << 20);
        c.limits.write_buffer_size = 16 << 10;
        c.limits.read_buffer_size = 4 << 10;
        c.limits.control_capacity = 256;
        builder
    }

    /// The server defaults of [`server_builder`](Self::server_builder), unchanged.
    pub fn server_defaults() -> Config {
        // The server defaults pass every check of `build` (the doc-test above builds them).
        Config::server_builder()
            .build()
            .expect("the server defaults are a valid config")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_groups_read_what_the_setters_set() {
        let c = Config::builder()
            .close_timeout(Duration::from_secs(2))
            .write_timeout(None)
            .max_queued_bytes(1 << 20)
            .event_capacity(7)
            .build()
            .unwrap();
        assert_eq!(c.timeouts().close, Duration::from_secs(2));
        assert_eq!(c.timeouts().write, None);
        assert_eq!(c.timeouts().handshake, c.handshake_timeout());
        assert_eq!(c.limits().max_queued_bytes, 1 << 20);
        assert_eq!(c.limits().event_capacity, 7);
        assert_eq!(c.limits().max_frame_size, c.max_frame_size());
    }

    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let c = Config::default();
        assert!(c.nodelay());
        assert_eq!(c.close_timeout(), Duration::from_secs(5));
        assert_eq!(c.max_message_size(), Some(64 << 20));
        assert_eq!(c.wait_strategy(), WaitStrategy::Readiness);
        assert!(c.proxy().is_none());
        assert!(!c.proxy_from_env());
    }

    #[test]
    fn bad_settings_are_errors_not_panics() {
        let e = Config::builder()
            .header("bad name", "v")
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("invalid header"), "{e}");
        let e = Config::builder()
            .max_queued_bytes(10)
            .write_buffer_size(10)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("max_queued_bytes"), "{e}");
        let e = Config::builder().subprotocol("a,b").build().unwrap_err();
        assert!(e.to_string().contains("subprotocol"), "{e}");
    }

    #[test]
    fn no_frame_limit_means_the_message_limit_never_what_the_peer_claims() {
        let c = Config::builder().max_frame_size(None).build().unwrap();
        assert_eq!(c.max_frame_size(), Some(64 << 20));
        let c = Config::builder()
            .max_message_size(Some(1000))
            .max_frame_size(None)
            .build()
            .unwrap();
        assert_eq!(c.max_frame_size(), Some(1000));
        let c = Config::builder().max_message_size(None).build().unwrap();
        assert_eq!(
            c.max_frame_size(),
            Some(16 << 20),
            "the frame limit bounds memory"
        );
        let e = Config::builder()
            .max_message_size(None)
            .max_frame_size(None)
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("max_frame_size"), "{e}");
    }

    #[test]
    fn headers_keep_order_and_repeats() {
        let c = Config::builder()
            .header("X-A", "1")
            .header("X-B", "2")
            .header("X-A", "3")
            .build()
            .unwrap();
        let names: Vec<_> = c
            .headers()
            .iter()
            .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
            .collect();
        assert_eq!(names, ["x-a=1", "x-b=2", "x-a=3"]);
    }
}
