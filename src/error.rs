//! The library's one error type, and the one place that turns tungstenite's errors into it.
//! What an I/O error means is decided in `io_outcome`; here it becomes the library's error.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use tungstenite::error::{CapacityError, ProtocolError};
use tungstenite::protocol::frame::coding::CloseCode;

use crate::deflate::inbound::Failure;
use crate::io_outcome::{io_outcome, IoOutcome};

/// Everything that can go wrong in `syncws`.
///
/// A normal close is not an error: it reaches the handler as
/// [`Handler::on_connection_closed`](crate::Handler::on_connection_closed) with its code and
/// reason. Errors that end a connection are reported once through
/// [`Handler::on_error`](crate::Handler::on_error) (or [`Event::Error`](crate::Event::Error)).
///
/// Connect errors are distinct, so a program can decide what to tell its user or whether to
/// try again:
///
/// ```no_run
/// use syncws::{BlockingClient, Config, Error, TimeoutKind, TlsFailure};
///
/// match BlockingClient::connect("wss://example.com/feed", &Config::default()) {
///     Ok(client) => { /* client.run(&mut handler) */ }
///     Err(Error::Resolve { host, .. }) => eprintln!("no such host {host}"),
///     Err(Error::Connect { addr, .. }) => eprintln!("{addr} refused"),
///     Err(Error::Tls { failure: TlsFailure::Expired, .. }) => eprintln!("its certificate expired"),
///     Err(Error::HandshakeRejected { status }) => eprintln!("the server said {status}"),
///     Err(Error::Timeout(TimeoutKind::Connect)) => eprintln!("no answer; try later"),
///     Err(e) if e.is_permanent() => eprintln!("giving up: {e}"),
///     Err(e) => eprintln!("{e}; try later"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be parsed, or has no host.
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL's scheme is neither `ws` nor `wss`.
    #[error("unsupported url scheme {scheme:?}: expected ws or wss")]
    UnsupportedScheme {
        /// The scheme as given.
        scheme: String,
    },
    /// The host name could not be resolved.
    #[error("resolve {host}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// Every address of the host refused or failed the TCP connection; this is the last failure.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address that failed last.
        addr: SocketAddr,
        /// The socket error (for example "connection refused").
        #[source]
        source: io::Error,
    },
    /// An operation ran past its deadline; the kind says which.
    #[error("{0} timed out")]
    Timeout(TimeoutKind),
    /// The TLS handshake failed; [`TlsFailure`] says why in a form a program can match on.
    #[error("tls handshake with {host}: {failure}")]
    Tls {
        /// The host name that was verified.
        host: String,
        /// The reason, classified.
        failure: TlsFailure,
        /// The TLS library's error (native-tls's or rustls's).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered the upgrade request with something other than `101 Switching
    /// Protocols`.
    #[error("handshake rejected by the server: HTTP {status}")]
    HandshakeRejected {
        /// The HTTP status the server sent.
        status: http::StatusCode,
    },
    /// The opening handshake broke the protocol: a bad accept key, a subprotocol or extension
    /// we did not offer, malformed HTTP. (A server refusing a client's request reports
    /// [`Error::BadRequest`].)
    #[error("invalid handshake: {0}")]
    InvalidHandshake(String),
    /// Server side: the client's request is not one the server can take: malformed HTTP, a
    /// head over the size limit, or an invalid WebSocket upgrade (method, version, missing
    /// headers, a bad key). The client was answered with `status` (400, 405, 426 or 431) and the
    /// connection closed.
    #[error("bad request from the client (answered HTTP {status}): {reason}")]
    BadRequest {
        /// The HTTP status the client was answered with.
        status: http::StatusCode,
        /// What was wrong with the request.
        reason: String,
    },
    /// Server side: [`Accept::subprotocol`](crate::Accept::subprotocol) asked for a subprotocol
    /// the client did not offer. The client was answered 400 and the connection closed.
    #[error("the client did not offer subprotocol {protocol:?}")]
    SubprotocolNotOffered {
        /// The subprotocol the server asked for.
        protocol: String,
    },
    /// A compressed message (permessage-deflate) could not be inflated: the peer sent data that
    /// is not valid deflate. The connection was closed with 1007.
    #[error("invalid compressed data in a message: {0}")]
    InvalidCompressedData(String),
    /// A text message was not valid UTF-8; the connection was closed with 1007.
    #[error("invalid utf-8 in a text message")]
    InvalidUtf8,
    /// An incoming message or frame was larger than the configured limit; the connection was
    /// closed with 1009. For a compressed message, `size` is how far it had inflated when it
    /// passed the limit.
    #[error("incoming message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The size announced or reached.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The peer broke the WebSocket protocol (reserved bits, bad opcodes, fragmented control
    /// frames...); the connection was closed with 1002.
    #[error("protocol violation by the peer: {0}")]
    Protocol(#[source] ProtocolError),
    /// The peer went away without a close handshake: it ended TCP (FIN), reset it (RST), or
    /// the connection broke under us (a write after the peer closed, an aborted connection).
    #[error("connection reset by the peer without a close handshake")]
    ConnectionReset,
    /// The outgoing queue cannot take this message: it would pass
    /// [`ConfigBuilder::max_queued_bytes`](crate::ConfigBuilder::max_queued_bytes). Nothing was
    /// queued. [`Handler::on_writable`](crate::Handler::on_writable) says when the queue has
    /// drained: retry then. `send_text`/`send_binary` borrowed the data, so the caller still
    /// has it; [`Context::try_send`](crate::Context::try_send) hands an owned `Message` back
    /// with the error. Commands from other threads never meet this for a full socket: they
    /// wait in the channel.
    #[error(
        "send queue full: a message of {len} bytes does not fit under the limit of {limit} bytes"
    )]
    QueueFull {
        /// Size of the rejected frame in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The connection is closing or closed: nothing more can be sent.
    #[error("connection is closing or closed")]
    Closed,
    /// The connection ended while `messages` data messages it had accepted were still in its
    /// queue, not yet handed to the socket: they were not sent. (Those the socket had taken
    /// may still be lost in the kernel when a connection is reset.) A reconnecting client with
    /// [`WhileDisconnected::Queue`](crate::WhileDisconnected::Queue) sends them again on its
    /// next connection instead of reporting them.
    #[error("the connection ended with {messages} accepted messages not yet sent")]
    Unsent {
        /// How many.
        messages: usize,
    },
    /// A reconnecting client is between connections and
    /// [`WhileDisconnected::Refuse`](crate::WhileDisconnected::Refuse) is in force: the message
    /// was not sent or kept.
    #[error("disconnected (reconnecting): the message was not sent")]
    Disconnected,
    /// A close code that may not be sent on the wire (1005, 1006, 1015, or outside 1000-4999).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    /// A ping or pong payload longer than the 125 bytes a control frame can carry (RFC 6455
    /// 5.5); nothing was sent.
    #[error("control frame payload of {0} bytes is longer than 125 bytes")]
    ControlPayloadTooLong(usize),
    /// [`Context::send`](crate::Context::send) was given a `Message::Frame`: a raw frame would
    /// reach the wire unchecked (control frame size, reserved bits, fragmentation, the close
    /// handshake), so it is refused and nothing is sent.
    #[error("raw frames cannot be sent: use text, binary, ping, pong or close")]
    RawFrame,
    /// A close reason longer than the 123 bytes a close frame can carry.
    #[error("close reason of {0} bytes is longer than 123 bytes")]
    CloseReasonTooLong(usize),
    /// A proxy URL, given to [`Proxy::parse`](crate::Proxy::parse) or read from the environment
    /// (see [`ConfigBuilder::proxy_from_env`](crate::ConfigBuilder::proxy_from_env)), is not
    /// one this library can use. Credentials in the URL are masked.
    #[error("invalid proxy url {url:?}: {reason}")]
    InvalidProxy {
        /// The URL as given, with any user name and password replaced by `***`.
        url: String,
        /// What is wrong with it (and, from the environment, which variable held it).
        reason: String,
    },
    /// The proxy could not be reached (its name did not resolve, or every address refused or
    /// failed the TCP connection), or the connection to it failed during the tunnel exchange.
    /// A timeout is [`Error::Timeout`] instead.
    #[error("connection to proxy {proxy}: {source}")]
    ProxyConnect {
        /// The proxy, as `host:port`.
        proxy: String,
        /// The resolver's or the socket's error.
        #[source]
        source: io::Error,
    },
    /// The proxy refused to open a tunnel to the target; [`ProxyStatus`] says how (an HTTP
    /// status such as 407, 403 or 502, or a SOCKS5 reply).
    #[error("proxy {proxy} refused the tunnel: {status}")]
    ProxyRefused {
        /// The proxy, as `host:port`.
        proxy: String,
        /// Its answer.
        status: ProxyStatus,
    },
    /// The exchange with the proxy broke down: its answer was not HTTP or SOCKS5, it chose an
    /// authentication method we did not offer, it hung up before answering, or the request
    /// cannot be expressed (a host name longer than SOCKS5's 255 bytes).
    #[error("proxy {proxy}: {reason}")]
    ProxyProtocol {
        /// The proxy, as `host:port`.
        proxy: String,
        /// What went wrong.
        reason: String,
    },
    /// The configuration is inconsistent; the message says which setting.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A [`ConnectionSet`](crate::ConnectionSet) member's hook (or the library, while driving
    /// that connection) panicked: the set caught it and closed that connection alone, with
    /// 1011 when the socket could still take a Close. The other connections carry on.
    #[error("a panic on the set's thread ended this connection: {message}")]
    Panicked {
        /// What the panic said (its `&str` or `String` payload).
        message: String,
    },
    /// An I/O error on an established connection.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl Error {
    /// Whether trying the same connection again cannot help: the URL, proxy or TLS
    /// configuration is wrong, or credentials were refused (HTTP 401, proxy 407, SOCKS5
    /// authentication). A reconnecting client gives up on these at once instead of retrying
    /// until `max_attempts`.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::InvalidUrl { .. }
            | Error::UnsupportedScheme { .. }
            | Error::InvalidProxy { .. }
            | Error::Config(_) => true,
            Error::Tls { failure, .. } => *failure == TlsFailure::Configuration,
            Error::HandshakeRejected { status } => *status == http::StatusCode::UNAUTHORIZED,
            Error::ProxyRefused { status, .. } => {
                matches!(
                    status,
                    ProxyStatus::Socks5AuthRejected | ProxyStatus::Socks5NoAcceptableAuth
                ) || *status == ProxyStatus::Http(http::StatusCode::PROXY_AUTHENTICATION_REQUIRED)
            }
            _ => false,
        }
    }
}

/// Which deadline passed, for [`Error::Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// TCP connect ([`ConfigBuilder::connect_timeout`](crate::ConfigBuilder::connect_timeout)).
    Connect,
    /// The host name lookup (the target's or the proxy's) did not answer within
    /// [`ConfigBuilder::connect_timeout`](crate::ConfigBuilder::connect_timeout).
    Resolve,
    /// The whole opening: name lookup + TCP + proxy tunnel + TLS + HTTP upgrade
    /// ([`ConfigBuilder::handshake_timeout`](crate::ConfigBuilder::handshake_timeout)).
    Handshake,
    /// The close handshake ([`ConfigBuilder::close_timeout`](crate::ConfigBuilder::close_timeout)).
    Close,
    /// Queued data made no progress onto the socket
    /// ([`ConfigBuilder::write_timeout`](crate::ConfigBuilder::write_timeout)).
    Write,
    /// Nothing (no pong, no other traffic) arrived within
    /// [`ConfigBuilder::pong_timeout`](crate::ConfigBuilder::pong_timeout) of a heartbeat ping:
    /// the peer is gone or the path is dead.
    Pong,
    /// A [`ThreadedClient`](crate::ThreadedClient)'s worker did not end within
    /// [`ConfigBuilder::shutdown_timeout`](crate::ConfigBuilder::shutdown_timeout). Every wait
    /// of the worker takes the stop (a reconnect attempt's name lookup included), so it can
    /// only be a worker the machine gives no time to run; it ends by itself.
    Shutdown,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutKind::Connect => "tcp connect",
            TimeoutKind::Resolve => "name lookup",
            TimeoutKind::Handshake => "websocket opening handshake",
            TimeoutKind::Close => "close handshake",
            TimeoutKind::Write => "write",
            TimeoutKind::Pong => "heartbeat pong",
            TimeoutKind::Shutdown => "worker shutdown",
        })
    }
}

/// How a proxy refused to open a tunnel, for [`Error::ProxyRefused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyStatus {
    /// An HTTP proxy answered `CONNECT` with this status instead of 2xx: typically 407 (proxy
    /// credentials missing or wrong), 403 (the target is forbidden by policy) or 502 (the proxy
    /// could not reach the target).
    Http(http::StatusCode),
    /// A SOCKS5 proxy accepts none of the authentication methods offered ("no authentication",
    /// plus "username/password" when the proxy URL has credentials): it wants credentials.
    Socks5NoAcceptableAuth,
    /// A SOCKS5 proxy rejected the user name and password (RFC 1929).
    Socks5AuthRejected,
    /// A SOCKS5 proxy answered the CONNECT request with this reply code (RFC 1928 section 6:
    /// 1 general failure, 2 not allowed by ruleset, 3 network unreachable, 4 host unreachable,
    /// 5 connection refused, 6 TTL expired, 7 command not supported, 8 address type not
    /// supported).
    Socks5(u8),
}

impl fmt::Display for ProxyStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyStatus::Http(status) => write!(f, "HTTP {status}"),
            ProxyStatus::Socks5NoAcceptableAuth => f.write_str(
                "SOCKS5 proxy accepts none of the offered authentication methods \
                 (credentials required?)",
            ),
            ProxyStatus::Socks5AuthRejected => {
                f.write_str("SOCKS5 user name and password rejected")
            }
            ProxyStatus::Socks5(code) => {
                let reason = match code {
                    1 => "general SOCKS server failure",
                    2 => "connection not allowed by ruleset",
                    3 => "network unreachable",
                    4 => "host unreachable",
                    5 => "connection refused",
                    6 => "TTL expired",
                    7 => "command not supported",
                    8 => "address type not supported",
                    _ => "unassigned reply code",
                };
                write!(f, "SOCKS5 reply {code}: {reason}")
            }
        }
    }
}

/// Why a TLS handshake failed, classified from the TLS library's report (its error codes, never
/// its wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The certificate is valid but names another host.
    HostnameMismatch,
    /// The certificate is self-signed and not among the trusted roots. Only native-tls on
    /// OpenSSL tells this apart; rustls, Security.framework (macOS) and SChannel (Windows)
    /// report it as [`UntrustedIssuer`](Self::UntrustedIssuer).
    SelfSigned,
    /// The certificate chain leads to no trusted root.
    UntrustedIssuer,
    /// The certificate has expired or is not yet valid.
    Expired,
    /// The TLS configuration (roots, identity) could not be loaded.
    Configuration,
    /// The peer does not speak TLS on this port (a `ws://` server addressed as `wss://`?).
    NotTls,
    /// The peer closed the connection during the TLS handshake.
    ClosedDuringHandshake,
    /// Anything else (protocol mismatch, the peer is not speaking TLS, ...).
    Other,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFailure::HostnameMismatch => "certificate is for another host",
            TlsFailure::SelfSigned => "self-signed certificate is not trusted",
            TlsFailure::UntrustedIssuer => "certificate issuer is not trusted",
            TlsFailure::Expired => "certificate has expired or is not yet valid",
            TlsFailure::Configuration => "tls configuration could not be loaded",
            TlsFailure::NotTls => "the server does not speak tls on this port (a ws:// server?)",
            TlsFailure::ClosedDuringHandshake => {
                "the server closed the connection during the tls handshake"
            }
            TlsFailure::Other => "tls failure",
        })
    }
}

/// During the opening handshake the socket blocks with a timeout set to what is left of the
/// deadline; a read or write that runs out shows up as our `TcpConn`'s deadline error, as
/// `TimedOut` (a connect timeout, a socket timeout reported as such), or as `WouldBlock` (the
/// platform's report of a socket timeout: a blocking socket says it for no other reason). The
/// one place that says "the handshake deadline passed".
pub(crate) fn is_deadline(e: &io::Error) -> bool {
    matches!(
        io_outcome(e),
        IoOutcome::Deadline | IoOutcome::TimedOut | IoOutcome::WouldBlock
    )
}

/// Whether a TLS library's error (either side's handshake) hides a passed deadline in its
/// source chain: the libraries keep the socket's error there.
pub(crate) fn deadline_in_chain(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.downcast_ref::<io::Error>().is_some_and(is_deadline) {
            return true;
        }
        current = err.source();
    }
    false
}

/// An I/O error during the opening handshake, as the library's error.
pub(crate) fn handshake_io(e: io::Error) -> Error {
    if is_deadline(&e) {
        Error::Timeout(TimeoutKind::Handshake)
    } else {
        Error::Io(e)
    }
}

/// What the session should do with a tungstenite error: the mapped error, and the close code to
/// send before ending (if the protocol state still lets us send one).
pub(crate) enum Classified {
    /// The socket has nothing more right now; not an error.
    WouldBlock,
    /// The close handshake finished and the connection is done; not an error.
    Closed,
    /// The connection failed; send a close frame with this code first when one is given.
    Fatal(Error, Option<CloseCode>),
}

/// The single place that interprets `tungstenite::Error` for an established connection.
pub(crate) fn classify(err: tungstenite::Error) -> Classified {
    use tungstenite::Error as T;
    match err {
        T::Io(e) => match io_outcome(&e) {
            // Nothing more now (a non-blocking call hardly ever sees a signal).
            IoOutcome::WouldBlock | IoOutcome::Interrupted => Classified::WouldBlock,
            // However the socket said it (rustls reports a TCP end without close_notify as
            // UnexpectedEof where OpenSSL reports a plain end), the peer went away.
            IoOutcome::Ended | IoOutcome::Reset => Classified::Fatal(Error::ConnectionReset, None),
            // No deadline of ours is armed on an established connection: a timeout here is
            // the kernel giving up on the peer, a failure like any other.
            IoOutcome::Deadline | IoOutcome::TimedOut | IoOutcome::Failed => io_failure(e),
        },
        T::ConnectionClosed | T::AlreadyClosed => Classified::Closed,
        T::Utf8(_) => Classified::Fatal(Error::InvalidUtf8, Some(CloseCode::Invalid)),
        T::Capacity(CapacityError::MessageTooLong { size, max_size }) => Classified::Fatal(
            Error::MessageTooLarge {
                size,
                max: max_size,
            },
            Some(CloseCode::Size),
        ),
        T::Capacity(CapacityError::TooManyHeaders) => Classified::Fatal(
            Error::Protocol(ProtocolError::HandshakeIncomplete),
            Some(CloseCode::Protocol),
        ),
        T::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Classified::Fatal(Error::ConnectionReset, None)
        }
        T::Protocol(p) => Classified::Fatal(Error::Protocol(p), Some(CloseCode::Protocol)),
        T::WriteBufferFull(msg) => Classified::Fatal(
            Error::QueueFull {
                len: msg.len(),
                limit: 0,
            },
            None,
        ),
        other => Classified::Fatal(Error::Io(io::Error::other(other.to_string())), None),
    }
}

/// An I/O failure on an established connection: the inflating layer's [`Failure`] (an
/// `InvalidData` error carrying it) has its own error and close code; anything else is
/// [`Error::Io`].
fn io_failure(e: io::Error) -> Classified {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Failure>())
    {
        Some(Failure::Corrupt(why)) => Classified::Fatal(
            Error::InvalidCompressedData(why.clone()),
            Some(CloseCode::Invalid),
        ),
        Some(&Failure::TooLarge { size, max }) => {
            Classified::Fatal(Error::MessageTooLarge { size, max }, Some(CloseCode::Size))
        }
        None => Classified::Fatal(Error::Io(e), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        // Errors travel through channels and Results on hot paths; large payloads are boxed.
        assert!(
            std::mem::size_of::<Error>() <= 56,
            "{}",
            std::mem::size_of::<Error>()
        );
    }

    #[test]
    fn only_errors_retrying_cannot_fix_are_permanent() {
        assert!(Error::Config("x".into()).is_permanent());
        assert!(Error::HandshakeRejected {
            status: http::StatusCode::UNAUTHORIZED
        }
        .is_permanent());
        assert!(!Error::HandshakeRejected {
            status: http::StatusCode::SERVICE_UNAVAILABLE
        }
        .is_permanent());
        assert!(!Error::ConnectionReset.is_permanent());
        assert!(!Error::Timeout(TimeoutKind::Connect).is_permanent());
    }

    #[test]
    fn every_way_a_socket_says_the_peer_went_away_is_a_connection_reset() {
        use io::ErrorKind::*;
        for kind in [
            UnexpectedEof,
            ConnectionReset,
            ConnectionAborted,
            BrokenPipe,
        ] {
            let classified = classify(tungstenite::Error::Io(kind.into()));
            assert!(
                matches!(classified, Classified::Fatal(Error::ConnectionReset, None)),
                "{kind:?}"
            );
        }
        for kind in [PermissionDenied, TimedOut, OutOfMemory] {
            let classified = classify(tungstenite::Error::Io(kind.into()));
            assert!(
                matches!(classified, Classified::Fatal(Error::Io(ref e), None) if e.kind() == kind),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn a_deadline_during_the_handshake_is_the_handshake_timeout_also_inside_tls_errors() {
        use crate::io_outcome::deadline_passed;
        assert!(matches!(
            handshake_io(deadline_passed()),
            Error::Timeout(TimeoutKind::Handshake)
        ));
        for kind in [io::ErrorKind::TimedOut, io::ErrorKind::WouldBlock] {
            assert!(is_deadline(&kind.into()), "{kind:?}");
        }
        assert!(matches!(
            handshake_io(io::ErrorKind::ConnectionRefused.into()),
            Error::Io(_)
        ));

        /// How a TLS library reports a socket error: inside its own.
        #[derive(Debug)]
        struct Wrapped(io::Error);
        impl fmt::Display for Wrapped {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("tls failure")
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        assert!(deadline_in_chain(&Wrapped(deadline_passed())));
        assert!(!deadline_in_chain(&Wrapped(
            io::ErrorKind::ConnectionReset.into()
        )));
    }

    #[test]
    fn on_an_established_connection_a_timeout_is_a_failure_not_a_wait() {
        use crate::io_outcome::deadline_passed;
        for e in [deadline_passed(), io::ErrorKind::TimedOut.into()] {
            assert!(matches!(
                classify(tungstenite::Error::Io(e)),
                Classified::Fatal(Error::Io(_), None)
            ));
        }
        for kind in [io::ErrorKind::WouldBlock, io::ErrorKind::Interrupted] {
            assert!(matches!(
                classify(tungstenite::Error::Io(kind.into())),
                Classified::WouldBlock
            ));
        }
    }

    #[test]
    fn messages_carry_context() {
        let e = Error::Timeout(TimeoutKind::Close);
        assert_eq!(e.to_string(), "close handshake timed out");
        let e = Error::UnsupportedScheme {
            scheme: "http".into(),
        };
        assert_eq!(
            e.to_string(),
            "unsupported url scheme \"http\": expected ws or wss"
        );
    }
}
