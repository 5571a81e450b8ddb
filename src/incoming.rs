//! The server side of the opening handshake, written by us: a request read off an accepted
//! socket ([`Incoming`]), looked at by the application, then upgraded ([`Incoming::accept`]
//! with an [`Accept`]), refused with an HTTP status ([`Incoming::reject`]), or answered as plain
//! HTTP on the same port ([`Incoming::into_http`]).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Version};

use crate::error::{handshake_io, Error};
use crate::http_head::{self, HeadError, ParseError};
use crate::stream::Stream;
use crate::{Config, HttpStream, ServerConnection};

/// Largest request head a server reads (request line and headers): a client that sends more
/// without ending its head is answered 431 instead of being read forever.
pub(crate) const MAX_REQUEST_HEAD: usize = 16 << 10;

/// After answering an error, we stop writing but keep reading (and dropping) what the client
/// still sends for this long at most, or [`LINGER_BYTES`]: closing a socket with unread bytes
/// resets the connection, and the reset can destroy our answer before the client reads it.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 << 10;

/// An HTTP request read by a server from an accepted socket, not yet answered: look at it
/// (method, path, query, headers, the peer's address), then
///
/// - [`accept`](Self::accept) it as a WebSocket, with an [`Accept`] saying which subprotocol
///   and which extra response headers;
/// - [`reject`](Self::reject) it with an HTTP status (the answer has a plain-text body and
///   `Connection: close`);
/// - or take the stream with [`into_http`](Self::into_http) and answer plain HTTP yourself,
///   which is how one port serves pages and WebSockets.
///
/// Get one from [`ServerConnection::read_request`], or from [`Incoming::from_parts`] when you
/// have read the request head yourself. Until it is answered the socket is still blocking and
/// bounded by the config's `handshake_timeout`, counted from when the socket was handed over.
///
/// ```no_run
/// use std::io::Write;
/// use syncws::http::StatusCode;
/// use syncws::{Accept, Config, Context, Handler, ServerConnection};
///
/// struct Chat;
/// impl Handler for Chat {
///     fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
///         let _ = ctx.send_text(text);
///     }
/// }
///
/// fn serve(tcp: std::net::TcpStream, config: &Config) -> Result<(), syncws::Error> {
///     let incoming = ServerConnection::read_request(tcp, None, config)?;
///     match incoming.path() {
///         "/chat" if incoming.is_upgrade() => {
///             let mut accept = Accept::new();
///             if let Some(p) = incoming.subprotocols().find(|p| *p == "chat.v1") {
///                 accept = accept.subprotocol(p);
///             }
///             incoming.accept(accept)?.run(&mut Chat);
///         }
///         "/healthz" => {
///             let mut http = incoming.into_http();
///             http.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")?;
///             http.close()?;
///         }
///         _ => incoming.reject(StatusCode::NOT_FOUND, "no such page")?,
///     }
///     Ok(())
/// }
///
/// let config = Config::server_defaults();
/// let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
/// for tcp in listener.incoming() {
///     let Ok(tcp) = tcp else { continue };
///     let config = config.clone();
///     // Reading the request blocks (up to handshake_timeout): do it on the connection's thread.
///     std::thread::spawn(move || serve(tcp, &config));
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Incoming {
    stream: Stream,
    request: Request<()>,
    /// What the client sent after its head: frames it pipelined, or a request body.
    leftover: Vec<u8>,
    peer: SocketAddr,
    config: Config,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("peer", &self.peer)
            .field("request", &self.request)
            .field("leftover", &self.leftover.len())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// Read the request head off `stream` (blocking, under the handshake deadline).
    pub(crate) fn read(
        mut stream: Stream,
        peer: SocketAddr,
        config: &Config,
    ) -> Result<Self, Error> {
        match http_head::read(&mut stream, MAX_REQUEST_HEAD) {
            Ok(head) => Incoming::parse(stream, &head.head, head.leftover, peer, config),
            // The client went away (or, a port probe, never said anything): nobody to answer.
            Err(HeadError::Closed) => Err(Error::ConnectionReset),
            Err(HeadError::Io(e)) => Err(handshake_io(e)),
            Err(HeadError::TooLarge { limit }) => Err(refuse(
                &mut stream,
                Refusal::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    format!("request head longer than {limit} bytes"),
                ),
            )),
        }
    }

    fn parse(
        mut stream: Stream,
        head: &[u8],
        leftover: Vec<u8>,
        peer: SocketAddr,
        config: &Config,
    ) -> Result<Self, Error> {
        let request = match http_head::parse_request(head) {
            Ok(request) => request,
            Err(e) => {
                let status = match e {
                    ParseError::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    ParseError::Malformed(_) => StatusCode::BAD_REQUEST,
                };
                let reason = format!("malformed request: {e}");
                return Err(refuse(&mut stream, Refusal::new(status, reason)));
            }
        };
        // The path only: queries often carry tokens, which logs must not keep.
        tracing::debug!(%peer, method = %request.method(), path = request.uri().path(), "request");
        Ok(Incoming {
            stream,
            request,
            leftover,
            peer,
            config: config.clone(),
        })
    }

    /// A request whose head the application read itself from `tcp`: `head` is the request
    /// line and headers through the blank line, `leftover` whatever was read after it (frames
    /// the client sent at once, a body). From here on it is as if
    /// [`ServerConnection::read_request`] had read it; the handshake deadline starts now.
    /// Plain TCP only: over TLS, let [`ServerConnection::read_request`] read the head.
    ///
    /// # Errors
    ///
    /// [`Error::BadRequest`] when `head` is not a complete HTTP/1.x request head (the client is
    /// answered 400 and the connection closed), [`Error::Io`] when the socket is already
    /// unusable.
    pub fn from_parts(
        tcp: TcpStream,
        head: &[u8],
        leftover: &[u8],
        config: &Config,
    ) -> Result<Self, Error> {
        let (stream, peer) = crate::server::open(tcp, None, config)?;
        Incoming::parse(stream, head, leftover.to_vec(), peer, config)
    }

    /// Use `config` for this connection from here on, instead of the one its request was read
    /// with: one port can serve endpoints with different limits, compression or heartbeats
    /// (chosen by [`path`](Self::path), say). The handshake deadline already running is kept.
    ///
    /// ```no_run
    /// use syncws::{Accept, Config, DeflateConfig, ServerConnection};
    ///
    /// let chat = Config::server_defaults();
    /// let echo = Config::server_builder().deflate(Some(DeflateConfig::new())).build()?;
    /// # let tcp: std::net::TcpStream = unimplemented!();
    /// let incoming = ServerConnection::read_request(tcp, None, &chat)?;
    /// let incoming = if incoming.path() == "/echo" { incoming.with_config(&echo) } else { incoming };
    /// let conn = incoming.accept(Accept::new())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn with_config(mut self, config: &Config) -> Self {
        self.config = config.clone();
        self
    }

    /// The request, without a body (a body, if any, is read from [`into_http`](Self::into_http)'s
    /// stream).
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        self.request.method()
    }

    /// The path of the request target (`/chat` for `GET /chat?room=a`).
    pub fn path(&self) -> &str {
        self.request.uri().path()
    }

    /// The query of the request target, without the `?` (`room=a` for `GET /chat?room=a`).
    pub fn query(&self) -> Option<&str> {
        self.request.uri().query()
    }

    /// The request headers, in order, repeats kept.
    pub fn headers(&self) -> &HeaderMap {
        self.request.headers()
    }

    /// The client's address (the TCP peer: a proxy in front of the server is the peer).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the client asks for a WebSocket (an `Upgrade: websocket` header). Route on this;
    /// [`accept`](Self::accept) checks the rest of the request.
    pub fn is_upgrade(&self) -> bool {
        has_token(self.headers(), header::UPGRADE, "websocket")
    }

    /// The subprotocols the client offers (`Sec-WebSocket-Protocol`), in its order of
    /// preference.
    pub fn subprotocols(&self) -> impl Iterator<Item = &str> + '_ {
        tokens(self.headers(), header::SEC_WEBSOCKET_PROTOCOL)
    }

    /// Upgrade to a WebSocket: check the request as RFC 6455 4.2.1 asks, answer
    /// `101 Switching Protocols` (with the chosen subprotocol, the permessage-deflate answer
    /// when [`ConfigBuilder::deflate`](crate::ConfigBuilder::deflate) is set and the client
    /// offered it, and `accept`'s headers), and return the connection, ready to
    /// [`run`](ServerConnection::run). Bytes the client sent after its request are its first
    /// frames: they reach the handler first.
    ///
    /// # Errors
    ///
    /// After answering the client with the status in brackets and closing the connection:
    ///
    /// - [`Error::BadRequest`] when the request is not a valid upgrade: not `GET` (405, with
    ///   `Allow: GET`), not HTTP/1.1, a target that is neither a path nor an http(s) URI, not
    ///   exactly one `Host` naming a host, no `Upgrade: websocket` or no `upgrade` in
    ///   `Connection`, a missing or malformed `Sec-WebSocket-Key` (400); a
    ///   `Sec-WebSocket-Version` other than 13 (426, with `Sec-WebSocket-Version: 13`);
    /// - [`Error::SubprotocolNotOffered`] when `accept` names a subprotocol the client did not
    ///   offer (400);
    /// - [`Error::Config`] when `accept` has a bad header, or one the handshake writes itself
    ///   (500).
    ///
    /// And without answering: [`Error::Timeout`]`(`[`TimeoutKind::Handshake`](crate::TimeoutKind::Handshake)`)`
    /// when the answer cannot be written before `handshake_timeout`, [`Error::Io`] when the
    /// socket fails.
    pub fn accept(self, accept: Accept) -> Result<ServerConnection, Error> {
        let Incoming {
            mut stream,
            request,
            leftover,
            peer,
            config,
        } = self;
        if let Some(problem) = accept.problems.into_iter().next() {
            let refusal = Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server could not answer the upgrade".into(),
            );
            let _ = answer_and_close(&mut stream, &refusal);
            return Err(Error::Config(problem));
        }
        let key = match check_upgrade(&request) {
            Ok(key) => key,
            Err(refusal) => return Err(refuse(&mut stream, refusal)),
        };
        if let Some(wanted) = &accept.subprotocol {
            if !tokens(request.headers(), header::SEC_WEBSOCKET_PROTOCOL).any(|p| p == wanted) {
                let refusal = Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("this server speaks subprotocol {wanted:?}, which was not offered"),
                );
                let _ = answer_and_close(&mut stream, &refusal);
                return Err(Error::SubprotocolNotOffered {
                    protocol: wanted.clone(),
                });
            }
        }
        // permessage-deflate: answer the first offer we can meet (when enabled).
        let deflate = config.deflate().and_then(|settings| {
            let offers = request
                .headers()
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .filter_map(|v| v.to_str().ok());
            crate::deflate::server_accept(settings, offers)
        });

        let answer = switching_protocols(
            key,
            accept.subprotocol.as_deref(),
            deflate.as_ref().map(|(_, extensions)| extensions.as_str()),
            &accept.headers,
        );
        stream
            .write_all(&answer)
            .and_then(|()| stream.flush())
            .map_err(handshake_io)?;
        let agreed = deflate.map(|(params, _)| params);
        tracing::debug!(
            %peer,
            subprotocol = accept.subprotocol.as_deref(),
            deflate = agreed.is_some(),
            pipelined = leftover.len(),
            "websocket accepted"
        );
        ServerConnection::start(stream, leftover, &config, agreed, accept.subprotocol)
    }

    /// Refuse the request: answer `status` with `reason` as a plain-text body
    /// (`Content-Length`, `Connection: close`), then close the connection, reading and dropping
    /// for a moment whatever the client still sends so that it gets to read the answer. Any
    /// status from 200 up will do (a 200 here is a one-line plain-text answer); to send other
    /// headers (`WWW-Authenticate`, `Retry-After`, `Location`), write the answer yourself
    /// through [`into_http`](Self::into_http).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an informational (1xx) status, which cannot end a request (the
    /// client is answered 500); [`Error::Timeout`] or [`Error::Io`] when the answer cannot be
    /// written.
    pub fn reject(mut self, status: StatusCode, reason: &str) -> Result<(), Error> {
        if status.is_informational() {
            let refusal = Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server could not answer the request".into(),
            );
            let _ = answer_and_close(&mut self.stream, &refusal);
            return Err(Error::Config(format!(
                "reject: status {status} is informational; use a status from 200 up"
            )));
        }
        tracing::debug!(peer = %self.peer, status = status.as_u16(), reason, "request rejected");
        answer_and_close(&mut self.stream, &Refusal::new(status, reason.to_owned()))
            .map_err(handshake_io)
    }

    /// Take the connection to answer plain HTTP: the stream reads what the client sent after
    /// the head (a body, a next request) and then the socket, and writes to the socket (through
    /// TLS when the request came over TLS). It is still blocking and bounded by the handshake
    /// deadline; [`HttpStream::set_deadline`] changes that.
    pub fn into_http(self) -> HttpStream {
        HttpStream::new(self.stream, self.leftover, self.peer)
    }
}

/// How a server answers an upgrade it accepts: the subprotocol it chose and extra response
/// headers. [`Accept::new`] (the default) chooses no subprotocol and adds no headers.
///
/// ```
/// use syncws::Accept;
/// let accept = Accept::new()
///     .subprotocol("chat.v1")
///     .header("Set-Cookie", "session=abc; HttpOnly");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Accept {
    subprotocol: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    problems: Vec<String>,
}

impl Accept {
    /// Accept with no subprotocol and no extra headers.
    pub fn new() -> Self {
        Accept::default()
    }

    /// Answer with this subprotocol (`Sec-WebSocket-Protocol`). It must be one the client
    /// offered ([`Incoming::subprotocols`]): otherwise [`Incoming::accept`] answers 400 and
    /// fails with [`Error::SubprotocolNotOffered`], which is also how a server that speaks only
    /// one subprotocol turns away clients that do not offer it.
    pub fn subprotocol(mut self, protocol: &str) -> Self {
        self.subprotocol = Some(protocol.to_owned());
        self
    }

    /// Add a header to the 101 answer; a name may repeat. An invalid name or value, or a header
    /// the handshake writes itself (`Connection`, `Upgrade`, `Sec-WebSocket-*`), makes
    /// [`Incoming::accept`] fail with [`Error::Config`].
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), _)
                if n == header::SEC_WEBSOCKET_ACCEPT
                    || crate::handshake::RESERVED_HEADERS.contains(&n) =>
            {
                self.problems.push(format!(
                    "header {name:?} is written by the handshake itself (subprotocols: use \
                     `Accept::subprotocol`)"
                ))
            }
            (Ok(n), Ok(v)) => self.headers.push((n, v)),
            _ => self
                .problems
                .push(format!("invalid header {name:?}: {value:?}")),
        }
        self
    }
}

/// The `101 Switching Protocols` head that accepts an upgrade whose key is `key`.
pub(crate) fn switching_protocols(
    key: &str,
    subprotocol: Option<&str>,
    extensions: Option<&str>,
    headers: &[(HeaderName, HeaderValue)],
) -> Vec<u8> {
    let mut answer = Vec::with_capacity(256);
    // Writes to a Vec cannot fail.
    let _ = write!(
        answer,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        tungstenite::handshake::derive_accept_key(key.as_bytes())
    );
    if let Some(p) = subprotocol {
        let _ = write!(answer, "Sec-WebSocket-Protocol: {p}\r\n");
    }
    if let Some(extensions) = extensions {
        let _ = write!(answer, "Sec-WebSocket-Extensions: {extensions}\r\n");
    }
    for (name, value) in headers {
        crate::http_head::write_header(&mut answer, name, value);
    }
    answer.extend_from_slice(b"\r\n");
    answer
}

/// An error answer: status, the reason (the body), and headers the status calls for.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
    headers: &'static [(&'static str, &'static str)],
}

impl Refusal {
    fn new(status: StatusCode, reason: String) -> Self {
        Refusal {
            status,
            reason,
            headers: &[],
        }
    }
}

/// RFC 6455 4.2.1: what a server must find in an upgrade request. Returns the key.
pub(crate) fn check_upgrade(request: &Request<()>) -> Result<&str, Refusal> {
    let bad = |reason: &str| Refusal::new(StatusCode::BAD_REQUEST, reason.to_owned());
    if request.method() != Method::GET {
        return Err(Refusal {
            headers: &[("Allow", "GET")],
            ..Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("a websocket upgrade is a GET, not {}", request.method()),
            )
        });
    }
    if matches!(request.version(), Version::HTTP_09 | Version::HTTP_10) {
        return Err(bad("a websocket upgrade needs HTTP/1.1 or later"));
    }
    // RFC 6455 4.2.1 1: the target is a resource name (a path and query), or an absolute
    // http(s) URI; not `*` (asterisk-form) nor a bare authority (a CONNECT's).
    let uri = request.uri();
    let path = uri.scheme().is_none() && uri.authority().is_none() && uri.path().starts_with('/');
    let absolute = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
    if !(path || absolute) {
        return Err(bad(
            "the request target is neither a path nor an http(s) URI",
        ));
    }
    let headers = request.headers();
    // RFC 9112 3.2: exactly one Host, naming a host (RFC 6455 4.2.1: the server's authority).
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if is_host(host.as_bytes()) => {}
        (None, _) => return Err(bad("no Host header")),
        (Some(_), Some(_)) => return Err(bad("more than one Host header")),
        (Some(_), None) => return Err(bad("the Host header does not name a host")),
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(bad("not a websocket upgrade: no `Upgrade: websocket`"));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(bad("no `upgrade` in the Connection header"));
    }
    let versions: Vec<&str> = tokens(headers, header::SEC_WEBSOCKET_VERSION).collect();
    if versions != ["13"] {
        return Err(Refusal {
            headers: &[("Sec-WebSocket-Version", "13")],
            ..Refusal::new(
                StatusCode::UPGRADE_REQUIRED,
                format!("Sec-WebSocket-Version {versions:?} is not 13"),
            )
        });
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) if is_key(key.as_bytes()) => {
            // `is_key` allows base64 characters only.
            Ok(key.to_str().unwrap_or_default())
        }
        (None, _) => Err(bad("no Sec-WebSocket-Key")),
        (Some(_), Some(_)) => Err(bad("more than one Sec-WebSocket-Key")),
        (Some(_), None) => Err(bad("Sec-WebSocket-Key is not the base64 of 16 bytes")),
    }
}

/// Whether a `Host` value is `uri-host [ ":" port ]` (RFC 9110 7.2, RFC 3986 3.2.2): an IPv6
/// literal in brackets, or a name or IPv4 address that is not empty, then decimal digits
/// after a colon. (`http::uri::Authority` takes `h:x` and user info, so it will not do.)
fn is_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(end) => {
                let ip = std::str::from_utf8(&literal[..end])
                    .is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
                if !ip {
                    return false;
                }
                (None, &literal[end + 1..])
            }
            None => return false,
        },
        None => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (Some(&value[..end]), &value[end..])
        }
    };
    // reg-name: unreserved, percent-encoded, or sub-delims characters.
    let name_ok = host.is_none_or(|h| {
        !h.is_empty()
            && h.iter().enumerate().all(|(i, &b)| {
                b.is_ascii_alphanumeric()
                    || b"-._~!$&'()*+,;=".contains(&b)
                    || (b == b'%'
                        && h.get(i + 1..i + 3)
                            .is_some_and(|x| x.iter().all(u8::is_ascii_hexdigit)))
            })
    });
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    name_ok && port_ok
}

/// Whether `key` is the base64 of 16 bytes: 22 characters of the alphabet and `==`. The last
/// of them carries 2 bits of the 16th byte and 4 that must be zero (RFC 4648 3.5), so it is one
/// of `AQgw`: anything else decodes to 16 bytes only for a lenient decoder.
fn is_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..21]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        && b"AQgw".contains(&key[21])
}

/// The comma-separated elements of every `name` header, trimmed, empty ones skipped.
fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> + '_ {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Answer the refusal and close; the error says why the request was refused (failing to
/// write the answer only means the client will not read it).
fn refuse(stream: &mut Stream, refusal: Refusal) -> Error {
    if let Err(e) = answer_and_close(stream, &refusal) {
        tracing::debug!(error = %e, "could not answer a refused request");
    }
    tracing::debug!(status = refusal.status.as_u16(), reason = %refusal.reason, "request refused");
    Error::BadRequest {
        status: refusal.status,
        reason: refusal.reason,
    }
}

/// Write a complete plain-text answer (`Connection: close`), then close gracefully.
fn answer_and_close(stream: &mut Stream, refusal: &Refusal) -> io::Result<()> {
    let status = refusal.status;
    let mut out = Vec::with_capacity(192 + refusal.reason.len());
    // Writes to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Unknown")
    );
    for (name, value) in refusal.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(
        out,
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        refusal.reason.len()
    );
    out.extend_from_slice(refusal.reason.as_bytes());
    stream.write_all(&out)?;
    stream.flush()?;
    close_gracefully(stream);
    Ok(())
}

/// We are done with the connection: say so (FIN, after TLS close_notify), then read and drop
/// what the client still sends until it closes too, for [`LINGER`] or [`LINGER_BYTES`] at
/// most. Closing with unread bytes makes the kernel reset the connection, and the reset can
/// destroy our answer in the client's buffers before it reads it (RFC 9112 9.6).
pub(crate) fn close_gracefully(stream: &mut Stream) {
    stream.shutdown_write();
    if stream.set_deadline(Some(Instant::now() + LINGER)).is_err() {
        return;
    }
    let mut scratch = [0u8; 4096];
    let mut dropped = 0;
    while dropped < LINGER_BYTES {
        match stream.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => dropped += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Request<()> {
        http_head::parse_request(head.as_bytes()).unwrap()
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
    }

    #[test]
    fn a_valid_upgrade_passes_in_any_case_and_within_lists() {
        assert_eq!(check_upgrade(&request(&upgrade(""))).ok(), Some(KEY));
        let lists = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c, WebSocket\r\n\
             Connection: keep-alive, UPGRADE\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: {KEY}\r\n\r\n"
        );
        assert_eq!(check_upgrade(&request(&lists)).ok(), Some(KEY));
    }

    #[test]
    fn each_missing_piece_has_its_status() {
        let cases: [(&str, u16, &str); 9] = [
            ("POST / HTTP/1.1\r\nHost: h\r\n\r\n", 405, "GET"),
            ("GET / HTTP/1.0\r\nHost: h\r\n\r\n", 400, "HTTP/1.1"),
            ("GET / HTTP/1.1\r\n\r\n", 400, "Host"),
            ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "Upgrade"),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n",
                400,
                "Connection",
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                426,
                "13",
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                 Sec-WebSocket-Version: 8\r\n\r\n",
                426,
                "13",
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n",
                400,
                "Key",
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c2hvcnQ=\r\n\r\n",
                400,
                "16 bytes",
            ),
        ];
        for (head, status, says) in cases {
            let refusal = check_upgrade(&request(head)).err().unwrap();
            assert_eq!(refusal.status.as_u16(), status, "{head}");
            assert!(refusal.reason.contains(says), "{head}: {}", refusal.reason);
        }
    }

    #[test]
    fn keys_are_base64_of_16_bytes() {
        assert!(is_key(KEY.as_bytes()));
        let generated = tungstenite::handshake::client::generate_key();
        assert!(is_key(generated.as_bytes()));
        for bad in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=",
            "dGhlIHNhbXBsZSBub25j*Q==",
            "dGhlIHNhbXBsZSBub25jZSE=",
            "dGhlIHNhbXBsZSBub25jZQ===",
        ] {
            assert!(!is_key(bad.as_bytes()), "{bad}");
        }
    }

    /// Found by the property tests (upgrade_requests_are_judged_as_rfc_6455_says): upgrades
    /// RFC 6455 4.2.1 (and RFC 9112 3.2 for Host) refuses were accepted: a target that names
    /// no resource, a Host given twice or naming no host, a key with bits set past its 16
    /// bytes (which only a lenient decoder reads as 16 bytes).
    #[test]
    fn upgrades_the_rfc_refuses_are_refused() {
        let key = |k: &str| format!("Sec-WebSocket-Key: {k}\r\n");
        let valid = |target: &str, host: &str, key: &str| {
            format!(
                "GET {target} HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\n{key}\r\n"
            )
        };
        let ok = valid("/", "Host: h\r\n", &key(KEY));
        assert!(check_upgrade(&request(&ok)).is_ok());
        let cases = [
            (valid("*", "Host: h\r\n", &key(KEY)), "target"),
            (valid("h:80", "Host: h\r\n", &key(KEY)), "target"),
            (valid("ftp://h/", "Host: h\r\n", &key(KEY)), "target"),
            (
                valid("/", "Host: h\r\nhost: h\r\n", &key(KEY)),
                "more than one Host",
            ),
            (valid("/", "Host:\r\n", &key(KEY)), "does not name a host"),
            (
                valid("/", "Host: u@h\r\n", &key(KEY)),
                "does not name a host",
            ),
            (
                valid("/", "Host: h:x\r\n", &key(KEY)),
                "does not name a host",
            ),
            (
                valid("/", "Host: h\r\n", &key("AAAAAAAAAAAAAAAAAAAAAB==")),
                "16 bytes",
            ),
            (
                valid("/", "Host: h\r\n", &key("dGhlIHNhbXBsZSBub25jZR==")),
                "16 bytes",
            ),
        ];
        for (head, says) in cases {
            let refusal = check_upgrade(&request(&head)).err().unwrap();
            assert_eq!(refusal.status.as_u16(), 400, "{head}");
            assert!(refusal.reason.contains(says), "{head}: {}", refusal.reason);
        }
        // What they may be instead.
        for (target, host) in [
            ("http://h/chat", "Host: h\r\n"),
            ("HTTPS://h:443/x?y", "Host: h:443\r\n"),
            ("//x", "Host: [::1]:9001\r\n"),
            ("/", "Host: 127.0.0.1\r\n"),
            ("/", "Host: a%2Db.example\r\n"),
        ] {
            let head = valid(target, host, &key("/////////////////////w=="));
            assert!(check_upgrade(&request(&head)).is_ok(), "{head}");
        }
    }

    #[test]
    fn accept_refuses_headers_the_handshake_writes() {
        for name in [
            "Sec-WebSocket-Accept",
            "connection",
            "Sec-WebSocket-Protocol",
        ] {
            let a = Accept::new().header(name, "x");
            assert!(a.problems[0].contains("handshake itself"), "{name}");
        }
        assert!(!Accept::new().header("bad name", "x").problems.is_empty());
        assert!(Accept::new()
            .header("Set-Cookie", "a=b")
            .problems
            .is_empty());
    }
}
