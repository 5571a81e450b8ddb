//! Proxies: what one is (parsed from a URL), which one applies to a target (the configured one,
//! or the one the conventional environment variables name), and the tunnel handshakes (HTTP
//! CONNECT, SOCKS5) run on the blocking socket before TLS and the WebSocket upgrade.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use url::{Host, Url};

use crate::error::{Error, ProxyStatus, TimeoutKind};
use crate::http_head::{self, HeadError};
use crate::Config;

/// Which protocol a [`Proxy`] speaks, from its URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyKind {
    /// `http://`: an HTTP proxy asked for a tunnel with `CONNECT host:port`, for `ws://` and
    /// `wss://` alike. The proxy resolves the target's name.
    HttpConnect,
    /// `socks5://`: a SOCKS5 proxy (RFC 1928). The target's name is resolved here and the proxy
    /// is given its first address, as curl does.
    Socks5,
    /// `socks5h://`: a SOCKS5 proxy given the target's host name, which it resolves itself (the
    /// choice when local DNS cannot see the target's network).
    Socks5h,
}

impl ProxyKind {
    fn scheme(self) -> &'static str {
        match self {
            ProxyKind::HttpConnect => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            ProxyKind::HttpConnect => 80,
            ProxyKind::Socks5 | ProxyKind::Socks5h => 1080,
        }
    }
}

/// A proxy to open connections through: an HTTP proxy (tunnel with `CONNECT`) or a SOCKS5 proxy,
/// with optional credentials. Set it with
/// [`ConfigBuilder::proxy`](crate::ConfigBuilder::proxy), or let
/// [`ConfigBuilder::proxy_from_env`](crate::ConfigBuilder::proxy_from_env) pick one from the
/// environment.
///
/// Whatever the proxy, `wss://` traffic is encrypted end to end with the target: the proxy
/// carries TLS records it cannot read, and the certificate is checked against the target's host
/// name. The `Host` header of the upgrade request stays the target's.
///
/// The password never appears in `Debug` or `Display` output, nor in error messages.
///
/// ```
/// use syncws::{Proxy, ProxyKind};
/// let proxy = Proxy::parse("http://alice:s%3Acret@proxy.example:3128")?;
/// assert_eq!(proxy.kind(), ProxyKind::HttpConnect);
/// assert_eq!((proxy.host(), proxy.port()), ("proxy.example", 3128));
/// assert_eq!(proxy.username(), Some("alice"));
/// assert!(!format!("{proxy:?}").contains("s:cret"));
///
/// let socks: Proxy = "socks5h://127.0.0.1".parse()?;
/// assert_eq!((socks.kind(), socks.port()), (ProxyKind::Socks5h, 1080));
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    kind: ProxyKind,
    /// A domain name (lowercase, ASCII) or an IP address, without brackets.
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    username: String,
    password: String,
}

impl Proxy {
    /// Parse a proxy URL: `http://[user:password@]host[:port]` for an HTTP CONNECT proxy (port
    /// 80 when not given), `socks5://` or `socks5h://[user:password@]host[:port]` for SOCKS5
    /// (port 1080 when not given). A URL without a scheme (`proxy.example:3128`) is taken as
    /// `http://`, as curl does with the proxy environment variables. The user name and password
    /// are percent-decoded (`%40` for `@`, `%3A` for `:`). A trailing `/` is allowed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidProxy`] (with the credentials masked) when the URL does not parse, has no
    /// host, has a path, query or fragment, uses another scheme (`https://` proxies, spoken to
    /// over TLS, are not supported), or has SOCKS5 credentials longer than 255 bytes.
    pub fn parse(url: &str) -> Result<Proxy, Error> {
        let invalid = |reason: String| Error::InvalidProxy {
            url: redact(url),
            reason,
        };
        let text = url.trim();
        let with_scheme;
        let text = if text.contains("://") {
            text
        } else {
            with_scheme = format!("http://{text}");
            &with_scheme
        };
        let parsed = Url::parse(text).map_err(|e| invalid(e.to_string()))?;
        let kind = match parsed.scheme() {
            "http" => ProxyKind::HttpConnect,
            "socks5" => ProxyKind::Socks5,
            "socks5h" => ProxyKind::Socks5h,
            "https" => {
                return Err(invalid(
                    "https proxies (TLS to the proxy) are not supported; \
                     http:// proxies still carry wss:// encrypted end to end"
                        .into(),
                ))
            }
            other => {
                return Err(invalid(format!(
                    "unsupported proxy scheme {other:?}: expected http, socks5 or socks5h"
                )))
            }
        };
        if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
            return Err(invalid("a proxy url has no path or query".into()));
        }
        if parsed.fragment().is_some() {
            return Err(invalid("a proxy url has no fragment".into()));
        }
        // socks5 is not a "special" scheme to the URL standard, so its host is opaque: parse it
        // again the way http's is (IP literals recognised, names lowercased).
        let host = match parsed.host_str().filter(|h| !h.is_empty()) {
            None => return Err(invalid("no host".into())),
            Some(h) => match Host::parse(h).map_err(|e| invalid(format!("host: {e}")))? {
                Host::Domain(name) => name,
                Host::Ipv4(ip) => ip.to_string(),
                Host::Ipv6(ip) => ip.to_string(),
            },
        };
        let port = parsed.port().unwrap_or(kind.default_port());
        let username = percent_decode(parsed.username()).map_err(&invalid)?;
        let password = parsed
            .password()
            .map(percent_decode)
            .transpose()
            .map_err(&invalid)?;
        let credentials = if username.is_empty() && password.is_none() {
            None
        } else {
            Some(Credentials {
                username,
                password: password.unwrap_or_default(),
            })
        };
        if let (ProxyKind::Socks5 | ProxyKind::Socks5h, Some(c)) = (kind, &credentials) {
            if c.username.len() > 255 || c.password.len() > 255 {
                return Err(invalid(
                    "socks5 user name and password are limited to 255 bytes each".into(),
                ));
            }
        }
        Ok(Proxy {
            kind,
            host,
            port,
            credentials,
        })
    }

    /// The protocol the proxy speaks.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The proxy's host: a domain name, or an IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name sent to the proxy, if the URL had credentials.
    pub fn username(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.username.as_str())
    }

    /// `host:port`, with IPv6 in brackets: how errors and logs name the proxy.
    pub(crate) fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether the target's name is resolved here rather than by the proxy.
    pub(crate) fn resolves_locally(&self) -> bool {
        self.kind == ProxyKind::Socks5
    }
}

impl FromStr for Proxy {
    type Err = Error;

    /// Same as [`Proxy::parse`].
    fn from_str(s: &str) -> Result<Proxy, Error> {
        Proxy::parse(s)
    }
}

/// `scheme://host:port`, without credentials.
impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.kind.scheme(), self.authority())
    }
}

/// Shows the user name but never the password.
impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username())
            .field("password", &self.credentials.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Mask everything between the scheme and the last `@`: user name and password.
fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)),
            _ => None,
        };
        match escaped {
            Some((hi, lo)) => {
                // Two hex digits make at most 0xff.
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "credentials are not UTF-8 once percent-decoded".into())
}

// ----- which proxy applies ----------------------------------------------------------------------

/// The proxy for a connection: the configured one, else (when the config opts in) the one the
/// environment names for this target, else none.
pub(crate) fn for_target(
    config: &Config,
    tls: bool,
    host: &Host<&str>,
    port: u16,
) -> Result<Option<Proxy>, Error> {
    if let Some(proxy) = &config.proxy {
        return Ok(Some(proxy.clone()));
    }
    if !config.proxy_from_env {
        return Ok(None);
    }
    // A variable that is not valid Unicode is treated as unset.
    from_env(tls, host, port, |name| std::env::var(name).ok())
}

/// The proxy the environment (read through `env`) names for a `ws://` (`tls` false) or `wss://`
/// target, or `None` for a direct connection.
///
/// - `wss://` uses `https_proxy`, then `HTTPS_PROXY`; `ws://` uses `http_proxy`, then
///   `HTTP_PROXY`; both fall back to `all_proxy`, then `ALL_PROXY`. Lowercase wins, as in curl;
///   an empty value counts as unset. `HTTP_PROXY` is ignored when `REQUEST_METHOD` is set: in a
///   CGI program it can come from a request's `Proxy:` header ("httpoxy"), as Go also guards.
/// - `no_proxy` (then `NO_PROXY`) is a comma-separated list; an entry matching the target means
///   a direct connection. `*` matches everything; `example.com` and `.example.com` both match
///   `example.com` and its subdomains (`*.example.com` too); an IP address matches that address,
///   `10.0.0.0/8` a network. An entry with a port (`example.com:8443`, `[::1]:9001`) matches only
///   that port. Matching is case-insensitive and against the host as written in the URL: names
///   are not resolved to check address entries.
///
/// # Errors
///
/// [`Error::InvalidProxy`] naming the variable when the chosen value is not a proxy URL.
pub(crate) fn from_env(
    tls: bool,
    host: &Host<&str>,
    port: u16,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, Error> {
    let first_set = |names: &[&'static str]| {
        names.iter().find_map(|&name| {
            env(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        })
    };
    let cgi = env("REQUEST_METHOD").is_some_and(|v| !v.is_empty());
    let scheme_vars: &[&'static str] = match (tls, cgi) {
        (true, _) => &["https_proxy", "HTTPS_PROXY"],
        (false, false) => &["http_proxy", "HTTP_PROXY"],
        (false, true) => &["http_proxy"],
    };
    let Some((name, value)) =
        first_set(scheme_vars).or_else(|| first_set(&["all_proxy", "ALL_PROXY"]))
    else {
        return Ok(None);
    };
    if let Some((list_name, list)) = first_set(&["no_proxy", "NO_PROXY"]) {
        if no_proxy_matches(&list, host, port) {
            tracing::debug!(variable = list_name, "target excluded from the proxy");
            return Ok(None);
        }
    }
    match Proxy::parse(&value) {
        Ok(proxy) => {
            tracing::debug!(variable = name, proxy = %proxy, "proxy from the environment");
            Ok(Some(proxy))
        }
        Err(Error::InvalidProxy { url, reason }) => Err(Error::InvalidProxy {
            url,
            reason: format!("{reason} (from the environment variable {name})"),
        }),
        Err(other) => Err(other),
    }
}

fn no_proxy_matches(list: &str, host: &Host<&str>, port: u16) -> bool {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .any(|entry| no_proxy_entry_matches(entry, host, port))
}

fn no_proxy_entry_matches(entry: &str, host: &Host<&str>, port: u16) -> bool {
    if entry == "*" {
        return true;
    }
    let (pattern, entry_port) = split_port(entry);
    if entry_port.is_some_and(|p| p != port) {
        return false;
    }
    let target_ip: Option<IpAddr> = match *host {
        Host::Domain(_) => None,
        Host::Ipv4(ip) => Some(ip.into()),
        Host::Ipv6(ip) => Some(ip.into()),
    };
    if let Some((network, bits)) = pattern.split_once('/') {
        return match (network.parse::<IpAddr>(), bits.parse::<u8>(), target_ip) {
            (Ok(network), Ok(bits), Some(ip)) => in_network(ip, network, bits),
            _ => false,
        };
    }
    if let Ok(ip) = pattern.parse::<IpAddr>() {
        return target_ip == Some(ip);
    }
    let Host::Domain(name) = *host else {
        return false;
    };
    let suffix = pattern.trim_start_matches("*.").trim_start_matches('.');
    let suffix = suffix.trim_end_matches('.').as_bytes();
    let name = name.trim_end_matches('.').as_bytes();
    if suffix.is_empty() {
        return false;
    }
    name.eq_ignore_ascii_case(suffix)
        || (name.len() > suffix.len()
            && name[name.len() - suffix.len() - 1] == b'.'
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
}

/// `host:port`, `[v6]:port`, `[v6]`, or a bare host or IPv6 address (more than one colon).
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((ip, after)) = rest.split_once(']') {
            return (ip, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match entry.split_once(':') {
        Some((name, port)) if !port.contains(':') => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn in_network(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

// ----- the tunnel -------------------------------------------------------------------------------

/// Where the tunnel leads: a name for the proxy to resolve, or an address.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

/// Largest response head we accept from an HTTP proxy.
const MAX_PROXY_RESPONSE_HEAD: usize = 16 << 10;

/// Ask `proxy`, connected on `stream` (blocking, under the handshake deadline), for a tunnel to
/// `target:port`. When this returns `Ok`, `stream` carries bytes to and from the target.
pub(crate) fn tunnel<S: Read + Write>(
    stream: &mut S,
    proxy: &Proxy,
    target: Target<'_>,
    port: u16,
) -> Result<(), Error> {
    match proxy.kind {
        ProxyKind::HttpConnect => http_connect(stream, proxy, target, port),
        ProxyKind::Socks5 | ProxyKind::Socks5h => socks5(stream, proxy, target, port),
    }
}

fn http_connect<S: Read + Write>(
    stream: &mut S,
    proxy: &Proxy,
    target: Target<'_>,
    port: u16,
) -> Result<(), Error> {
    let authority = match target {
        Target::Name(name) => format!("{name}:{port}"),
        Target::Ip(ip) => SocketAddr::new(ip, port).to_string(),
    };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(c) = &proxy.credentials {
        let token = base64(format!("{}:{}", c.username, c.password).as_bytes());
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| io_error(proxy, e))?;

    let head = http_head::read(stream, MAX_PROXY_RESPONSE_HEAD).map_err(|e| match e {
        HeadError::Closed => protocol(
            proxy,
            "the proxy closed the connection before answering CONNECT",
        ),
        HeadError::TooLarge { limit } => {
            protocol(proxy, format!("response head longer than {limit} bytes"))
        }
        HeadError::Io(e) => io_error(proxy, e),
    })?;
    let (status, _) = http_head::parse_response(&head.head)
        .map_err(|e| protocol(proxy, format!("malformed answer to CONNECT: {e}")))?;
    if !status.is_success() {
        return Err(refused(proxy, ProxyStatus::Http(status)));
    }
    // Neither TLS nor the WebSocket upgrade lets the target speak first, so bytes after the head
    // cannot be the target's: refuse rather than lose them.
    if !head.leftover.is_empty() {
        return Err(protocol(
            proxy,
            "the proxy sent data after accepting CONNECT, before the tunnel was used",
        ));
    }
    tracing::debug!(proxy = %proxy.authority(), status = status.as_u16(), "http tunnel open");
    Ok(())
}

const SOCKS_VERSION: u8 = 5;
const SOCKS_NO_AUTH: u8 = 0x00;
const SOCKS_USER_PASS: u8 = 0x02;
const SOCKS_NO_ACCEPTABLE: u8 = 0xff;
const SOCKS_CONNECT: u8 = 0x01;
const SOCKS_IPV4: u8 = 0x01;
const SOCKS_DOMAIN: u8 = 0x03;
const SOCKS_IPV6: u8 = 0x04;

fn socks5<S: Read + Write>(
    stream: &mut S,
    proxy: &Proxy,
    target: Target<'_>,
    port: u16,
) -> Result<(), Error> {
    let send = |stream: &mut S, bytes: &[u8]| {
        stream
            .write_all(bytes)
            .and_then(|()| stream.flush())
            .map_err(|e| io_error(proxy, e))
    };
    let recv = |stream: &mut S, buf: &mut [u8]| -> Result<(), Error> {
        stream.read_exact(buf).map_err(|e| io_error(proxy, e))
    };

    // RFC 1928 section 3: offer no authentication, and username/password when we have them.
    let greeting: &[u8] = match proxy.credentials {
        Some(_) => &[SOCKS_VERSION, 2, SOCKS_NO_AUTH, SOCKS_USER_PASS],
        None => &[SOCKS_VERSION, 1, SOCKS_NO_AUTH],
    };
    send(stream, greeting)?;
    let mut choice = [0u8; 2];
    recv(stream, &mut choice)?;
    if choice[0] != SOCKS_VERSION {
        return Err(protocol(
            proxy,
            format!("not a SOCKS5 server (version byte {:#04x})", choice[0]),
        ));
    }
    match (choice[1], &proxy.credentials) {
        (SOCKS_NO_AUTH, _) => {}
        (SOCKS_USER_PASS, Some(c)) => {
            // RFC 1929; `Proxy::parse` keeps both under 256 bytes.
            let mut auth = Vec::with_capacity(3 + c.username.len() + c.password.len());
            auth.extend_from_slice(&[1, c.username.len() as u8]);
            auth.extend_from_slice(c.username.as_bytes());
            auth.push(c.password.len() as u8);
            auth.extend_from_slice(c.password.as_bytes());
            send(stream, &auth)?;
            let mut status = [0u8; 2];
            recv(stream, &mut status)?;
            // The version byte of this reply varies between servers (1, or 5); only the status
            // matters, as in curl.
            if status[1] != 0 {
                return Err(refused(proxy, ProxyStatus::Socks5AuthRejected));
            }
        }
        (SOCKS_NO_ACCEPTABLE, _) => {
            return Err(refused(proxy, ProxyStatus::Socks5NoAcceptableAuth))
        }
        (other, _) => {
            return Err(protocol(
                proxy,
                format!(
                    "the proxy chose authentication method {other:#04x}, which we did not offer"
                ),
            ))
        }
    }

    // Section 4: CONNECT.
    let mut request = vec![SOCKS_VERSION, SOCKS_CONNECT, 0];
    match target {
        Target::Ip(IpAddr::V4(ip)) => {
            request.push(SOCKS_IPV4);
            request.extend_from_slice(&ip.octets());
        }
        Target::Ip(IpAddr::V6(ip)) => {
            request.push(SOCKS_IPV6);
            request.extend_from_slice(&ip.octets());
        }
        Target::Name(name) => {
            let len = u8::try_from(name.len()).map_err(|_| {
                protocol(
                    proxy,
                    format!(
                        "host name of {} bytes does not fit in SOCKS5's 255",
                        name.len()
                    ),
                )
            })?;
            request.extend_from_slice(&[SOCKS_DOMAIN, len]);
            request.extend_from_slice(name.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    send(stream, &request)?;

    // Section 6: the reply. A server that refuses may hang up right after the code, so the code
    // is read (and acted on) before the bound address.
    let mut head = [0u8; 2];
    recv(stream, &mut head)?;
    if head[0] != SOCKS_VERSION {
        return Err(protocol(
            proxy,
            format!("bad version byte {:#04x} in the CONNECT reply", head[0]),
        ));
    }
    if head[1] != 0 {
        return Err(refused(proxy, ProxyStatus::Socks5(head[1])));
    }
    let mut rsv_atyp = [0u8; 2];
    recv(stream, &mut rsv_atyp)?;
    let bound = match rsv_atyp[1] {
        SOCKS_IPV4 => {
            let mut addr = [0u8; 4 + 2];
            recv(stream, &mut addr)?;
            let port = u16::from_be_bytes([addr[4], addr[5]]);
            SocketAddr::from(([addr[0], addr[1], addr[2], addr[3]], port)).to_string()
        }
        SOCKS_IPV6 => {
            let mut addr = [0u8; 16 + 2];
            recv(stream, &mut addr)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&addr[..16]);
            let port = u16::from_be_bytes([addr[16], addr[17]]);
            SocketAddr::from((ip, port)).to_string()
        }
        SOCKS_DOMAIN => {
            let mut len = [0u8; 1];
            recv(stream, &mut len)?;
            let mut addr = vec![0u8; usize::from(len[0]) + 2];
            recv(stream, &mut addr)?;
            let (name, port) = addr.split_at(addr.len() - 2);
            format!(
                "{}:{}",
                String::from_utf8_lossy(name),
                u16::from_be_bytes([port[0], port[1]])
            )
        }
        other => {
            return Err(protocol(
                proxy,
                format!("unknown address type {other:#04x} in the CONNECT reply"),
            ))
        }
    };
    tracing::debug!(proxy = %proxy.authority(), %bound, "socks5 tunnel open");
    Ok(())
}

fn refused(proxy: &Proxy, status: ProxyStatus) -> Error {
    Error::ProxyRefused {
        proxy: proxy.authority(),
        status,
    }
}

fn protocol(proxy: &Proxy, reason: impl Into<String>) -> Error {
    Error::ProxyProtocol {
        proxy: proxy.authority(),
        reason: reason.into(),
    }
}

/// The one place that sorts I/O failures during the proxy exchange: the handshake deadline, the
/// proxy hanging up mid-answer, or a broken connection.
fn io_error(proxy: &Proxy, e: io::Error) -> Error {
    if crate::error::is_deadline(&e) {
        return Error::Timeout(TimeoutKind::Handshake);
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof => protocol(
            proxy,
            "the proxy closed the connection in the middle of the exchange",
        ),
        _ => Error::ProxyConnect {
            proxy: proxy.authority(),
            source: e,
        },
    }
}

/// Standard base64 with padding (RFC 4648 section 4), for `Proxy-Authorization: Basic`.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let triple = byte(0) << 16 | byte(1) << 8 | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(triple >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Cursor;
    use std::net::{Ipv4Addr, Ipv6Addr};

    // ----- parsing ------------------------------------------------------------------------------

    #[test]
    fn parses_each_kind_with_default_ports() {
        let cases = [
            (
                "http://proxy.example:3128",
                ProxyKind::HttpConnect,
                "proxy.example",
                3128,
            ),
            (
                "http://proxy.example",
                ProxyKind::HttpConnect,
                "proxy.example",
                80,
            ),
            (
                "http://proxy.example:80/",
                ProxyKind::HttpConnect,
                "proxy.example",
                80,
            ),
            (
                "proxy.example:8080",
                ProxyKind::HttpConnect,
                "proxy.example",
                8080,
            ),
            ("socks5://127.0.0.1", ProxyKind::Socks5, "127.0.0.1", 1080),
            ("socks5://127.0.0.1:80", ProxyKind::Socks5, "127.0.0.1", 80),
            ("socks5h://[::1]:9050", ProxyKind::Socks5h, "::1", 9050),
            (
                "SOCKS5H://Proxy.Example",
                ProxyKind::Socks5h,
                "proxy.example",
                1080,
            ),
            ("  http://[::1]:3128  ", ProxyKind::HttpConnect, "::1", 3128),
        ];
        for (url, kind, host, port) in cases {
            let p = Proxy::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((p.kind(), p.host(), p.port()), (kind, host, port), "{url}");
            assert_eq!(p.username(), None, "{url}");
        }
        assert_eq!(
            Proxy::parse("socks5h://[::1]:9050").unwrap().authority(),
            "[::1]:9050"
        );
    }

    #[test]
    fn credentials_are_percent_decoded_and_never_shown() {
        let p = Proxy::parse("http://al%20ice:p%40ss%3Aw0rd%25@proxy.example:3128").unwrap();
        assert_eq!(p.username(), Some("al ice"));
        let c = p.credentials.as_ref().unwrap();
        assert_eq!(c.password, "p@ss:w0rd%");
        let debug = format!("{p:?}");
        assert!(
            debug.contains("<redacted>") && !debug.contains("w0rd"),
            "{debug}"
        );
        assert_eq!(p.to_string(), "http://proxy.example:3128");
        // A user name alone, or a password alone, still makes credentials.
        let p = Proxy::parse("socks5://bob@h").unwrap();
        assert_eq!(p.credentials.as_ref().unwrap().password, "");
        let p = Proxy::parse("http://:secret@h").unwrap();
        assert_eq!(p.username(), Some(""));
    }

    #[test]
    fn bad_proxy_urls_are_typed_errors_with_credentials_masked() {
        let long = "x".repeat(256);
        let cases = [
            ("ftp://h:21", "unsupported proxy scheme \"ftp\""),
            ("https://user:hunter2@h", "https proxies"),
            ("http://h:3128/path", "no path"),
            ("http://h:3128?q", "no path"),
            ("http://h:3128#f", "no fragment"),
            ("socks5://", "no host"),
            ("socks5://:1080", "empty host"),
            ("http://user:hunter2@h:99999", "invalid port"),
        ];
        for (url, reason) in cases {
            match Proxy::parse(url) {
                Err(e @ Error::InvalidProxy { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(reason), "{url}: {text}");
                    assert!(!text.contains("hunter2"), "{url}: {text}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        let e = Proxy::parse(&format!("socks5://{long}:pw@h")).unwrap_err();
        assert!(e.to_string().contains("255 bytes"), "{e}");
        assert!(Proxy::parse(&format!("http://{long}:pw@h")).is_ok());
        assert_eq!(
            redact("http://u:p@ss@h:1/"),
            "http://***@h:1/",
            "the last @ ends the credentials"
        );
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    // ----- the environment ----------------------------------------------------------------------

    fn env_with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn chosen(tls: bool, host: &str, port: u16, vars: &[(&str, &str)]) -> Option<String> {
        let host = Host::parse(host).unwrap();
        let host = match &host {
            Host::Domain(d) => Host::Domain(d.as_str()),
            Host::Ipv4(ip) => Host::Ipv4(*ip),
            Host::Ipv6(ip) => Host::Ipv6(*ip),
        };
        from_env(tls, &host, port, env_with(vars))
            .unwrap()
            .map(|p| p.to_string())
    }

    #[test]
    fn the_scheme_picks_the_variable_and_all_proxy_is_the_fallback() {
        let all = [
            ("HTTPS_PROXY", "http://s:1"),
            ("HTTP_PROXY", "http://p:1"),
            ("ALL_PROXY", "socks5h://a:1"),
        ];
        assert_eq!(chosen(true, "h", 443, &all).as_deref(), Some("http://s:1"));
        assert_eq!(chosen(false, "h", 80, &all).as_deref(), Some("http://p:1"));
        let only_all = [("ALL_PROXY", "socks5h://a:1")];
        assert_eq!(
            chosen(true, "h", 443, &only_all).as_deref(),
            Some("socks5h://a:1")
        );
        assert_eq!(
            chosen(false, "h", 80, &only_all).as_deref(),
            Some("socks5h://a:1")
        );
        // The other scheme's variable is never used.
        assert_eq!(
            chosen(true, "h", 443, &[("HTTP_PROXY", "http://p:1")]),
            None
        );
        assert_eq!(
            chosen(false, "h", 80, &[("HTTPS_PROXY", "http://s:1")]),
            None
        );
        assert_eq!(chosen(true, "h", 443, &[]), None);
    }

    #[test]
    fn lowercase_wins_and_empty_means_unset() {
        let vars = [
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:1"),
            ("all_proxy", "http://all-lower:1"),
            ("ALL_PROXY", "http://all-upper:1"),
        ];
        assert_eq!(
            chosen(true, "h", 443, &vars).as_deref(),
            Some("http://lower:1")
        );
        let vars = [("http_proxy", ""), ("HTTP_PROXY", "http://upper:1")];
        assert_eq!(
            chosen(false, "h", 80, &vars).as_deref(),
            Some("http://upper:1")
        );
        let vars = [
            ("all_proxy", "socks5://all-lower:1"),
            ("ALL_PROXY", "http://x:1"),
        ];
        assert_eq!(
            chosen(false, "h", 80, &vars).as_deref(),
            Some("socks5://all-lower:1")
        );
    }

    #[test]
    fn uppercase_http_proxy_is_ignored_in_cgi() {
        let vars = [("REQUEST_METHOD", "GET"), ("HTTP_PROXY", "http://evil:1")];
        assert_eq!(chosen(false, "h", 80, &vars), None);
        let vars = [("REQUEST_METHOD", "GET"), ("http_proxy", "http://ok:1")];
        assert_eq!(
            chosen(false, "h", 80, &vars).as_deref(),
            Some("http://ok:1")
        );
    }

    #[test]
    fn no_proxy_excludes_matching_targets() {
        fn with(no_proxy: &str) -> impl Fn(&str, u16) -> bool + '_ {
            move |host: &str, port: u16| {
                chosen(
                    false,
                    host,
                    port,
                    &[("HTTP_PROXY", "http://p:1"), ("NO_PROXY", no_proxy)],
                )
                .is_none()
            }
        }
        let direct = with("*");
        assert!(direct("anything.example", 80) && direct("10.1.2.3", 80));
        for list in [
            "example.com",
            ".example.com",
            "*.example.com",
            "EXAMPLE.com.",
        ] {
            let direct = with(list);
            assert!(direct("example.com", 80), "{list}");
            assert!(direct("ws.Example.COM", 80), "{list}");
            assert!(direct("a.b.example.com", 80), "{list}");
            assert!(
                !direct("notexample.com", 80),
                "{list}: a suffix only at a dot"
            );
            assert!(!direct("example.com.evil", 80), "{list}");
        }
        let direct = with(" localhost , 10.0.0.0/8,  ::1 ,192.168.1.7");
        assert!(direct("localhost", 9001));
        assert!(direct("10.200.3.4", 80));
        assert!(!direct("11.0.0.1", 80));
        assert!(direct("[::1]", 80));
        assert!(direct("192.168.1.7", 80));
        assert!(!direct("192.168.1.8", 80));
        assert!(!direct("other", 80));
        let direct = with("example.com:8443,[::1]:9001,127.0.0.1:9002");
        assert!(direct("ws.example.com", 8443));
        assert!(
            !direct("ws.example.com", 443),
            "the entry's port must match"
        );
        assert!(direct("[::1]", 9001) && !direct("[::1]", 9000));
        assert!(direct("127.0.0.1", 9002) && !direct("127.0.0.1", 9003));
        let direct = with("fe80::/10, ,,.");
        assert!(direct("[fe80::1]", 80));
        assert!(!direct("[fd00::1]", 80));
        assert!(!direct("example", 80), "empty entries match nothing");
        // Lowercase wins for no_proxy too.
        let vars = [
            ("HTTP_PROXY", "http://p:1"),
            ("no_proxy", "a.example"),
            ("NO_PROXY", "*"),
        ];
        assert_eq!(
            chosen(false, "b.example", 80, &vars).as_deref(),
            Some("http://p:1")
        );
        assert_eq!(chosen(false, "a.example", 80, &vars), None);
    }

    #[test]
    fn a_bad_value_names_its_variable_unless_no_proxy_excludes_the_target() {
        let host = Host::Domain("h");
        let e = from_env(
            true,
            &host,
            443,
            env_with(&[("https_proxy", "ftp://u:pw@x")]),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, Error::InvalidProxy { .. }) && text.contains("https_proxy"),
            "{text}"
        );
        assert!(!text.contains("pw"), "{text}");
        let vars = [("https_proxy", "ftp://x"), ("no_proxy", "h")];
        assert!(from_env(true, &host, 443, env_with(&vars))
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_configured_proxy_wins_over_the_environment() {
        let host = Host::Domain("h");
        // The default reads no environment (whatever this machine's is) and connects directly.
        let config = Config::default();
        assert!(for_target(&config, false, &host, 80).unwrap().is_none());
        let proxy = Proxy::parse("socks5h://127.0.0.1:1").unwrap();
        let config = Config::builder()
            .proxy(Some(proxy.clone()))
            .proxy_from_env(true)
            .build()
            .unwrap();
        assert_eq!(for_target(&config, false, &host, 80).unwrap(), Some(proxy));
    }

    // ----- the tunnel, over an in-memory stream -------------------------------------------------

    /// Reads come from a script, writes are recorded.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Duplex {
        fn new(input: &[u8]) -> Self {
            Duplex {
                input: Cursor::new(input.to_vec()),
                output: Vec::new(),
            }
        }
        fn unread(&self) -> usize {
            self.input.get_ref().len() - self.input.position() as usize
        }
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn run(
        proxy: &str,
        target: Target<'_>,
        port: u16,
        input: &[u8],
    ) -> (Duplex, Result<(), Error>) {
        let proxy = Proxy::parse(proxy).unwrap();
        let mut stream = Duplex::new(input);
        let result = tunnel(&mut stream, &proxy, target, port);
        (stream, result)
    }

    #[test]
    fn http_connect_writes_the_request_and_accepts_any_2xx() {
        let (s, r) = run(
            "http://p:3128",
            Target::Name("ws.example"),
            443,
            b"HTTP/1.1 200 Connection established\r\n\r\n",
        );
        r.unwrap();
        assert_eq!(
            s.output,
            b"CONNECT ws.example:443 HTTP/1.1\r\nHost: ws.example:443\r\n\r\n"
        );
        let (s, r) = run(
            "http://Aladdin:open%20sesame@p",
            Target::Ip(Ipv6Addr::LOCALHOST.into()),
            9001,
            b"HTTP/1.0 204 OK\r\nProxy-Agent: x\r\n\r\n",
        );
        r.unwrap();
        assert_eq!(
            String::from_utf8(s.output).unwrap(),
            "CONNECT [::1]:9001 HTTP/1.1\r\nHost: [::1]:9001\r\n\
             Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n"
        );
    }

    #[test]
    fn http_connect_refusals_and_garbage_are_typed() {
        let target = Target::Name("t");
        let (_, r) = run(
            "http://127.0.0.1:3128",
            target,
            80,
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\nbody",
        );
        let e = r.unwrap_err();
        assert!(
            matches!(&e, Error::ProxyRefused { status: ProxyStatus::Http(s), .. } if s.as_u16() == 407),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "proxy 127.0.0.1:3128 refused the tunnel: HTTP 407 Proxy Authentication Required"
        );
        for (input, expected) in [
            (&b""[..], "closed the connection before answering"),
            (
                b"HTTP/1.1 200 OK\r\n",
                "closed the connection before answering",
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed answer"),
            (b"HTTP/1.1 200 OK\r\n\r\nearly", "sent data after accepting"),
        ] {
            let (_, r) = run("http://p", target, 80, input);
            match r {
                Err(e @ Error::ProxyProtocol { .. }) => {
                    assert!(e.to_string().contains(expected), "{e}")
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        let huge = format!(
            "HTTP/1.1 200 OK\r\nX: {}",
            "a".repeat(MAX_PROXY_RESPONSE_HEAD)
        );
        let (_, r) = run("http://p", target, 80, huge.as_bytes());
        assert!(matches!(r, Err(Error::ProxyProtocol { reason, .. }) if reason.contains("longer")));
    }

    fn socks_ok_reply(atyp_and_addr: &[u8]) -> Vec<u8> {
        let mut reply = vec![5, 0, 0];
        reply.extend_from_slice(atyp_and_addr);
        reply.extend_from_slice(&[0x1f, 0x90]);
        reply
    }

    #[test]
    fn socks5_sends_each_address_type_and_reads_each_bound_address_exactly() {
        let trailing = b"after";
        for (target, request_addr) in [
            (
                Target::Ip(Ipv4Addr::new(10, 1, 2, 3).into()),
                vec![1, 10, 1, 2, 3],
            ),
            (Target::Ip(Ipv6Addr::LOCALHOST.into()), {
                let mut v = vec![4];
                v.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
                v
            }),
            (Target::Name("ws.example"), {
                let mut v = vec![3, 10];
                v.extend_from_slice(b"ws.example");
                v
            }),
        ] {
            for bound in [
                vec![1, 127, 0, 0, 1],
                {
                    let mut v = vec![4];
                    v.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
                    v
                },
                {
                    let mut v = vec![3, 5];
                    v.extend_from_slice(b"relay");
                    v
                },
            ] {
                let mut input = vec![5, 0];
                input.extend(socks_ok_reply(&bound));
                input.extend_from_slice(trailing);
                let (s, r) = run("socks5h://p", target, 9001, &input);
                r.unwrap_or_else(|e| panic!("{target:?} {bound:?}: {e}"));
                let mut expected = vec![5, 1, 0, 5, 1, 0];
                expected.extend_from_slice(&request_addr);
                expected.extend_from_slice(&9001u16.to_be_bytes());
                assert_eq!(s.output, expected, "{target:?}");
                assert_eq!(
                    s.unread(),
                    trailing.len(),
                    "{bound:?}: the reply is read exactly"
                );
            }
        }
    }

    #[test]
    fn socks5_authenticates_with_username_and_password() {
        let mut input = vec![5, 2, 1, 0];
        input.extend(socks_ok_reply(&[1, 0, 0, 0, 0]));
        let (s, r) = run("socks5://us%3Ar:pw@p", Target::Name("t"), 80, &input);
        r.unwrap();
        let mut expected = vec![5, 2, 0, 2, 1, 4];
        expected.extend_from_slice(b"us:r");
        expected.push(2);
        expected.extend_from_slice(b"pw");
        expected.extend_from_slice(&[5, 1, 0, 3, 1, b't', 0, 80]);
        assert_eq!(s.output, expected);
        // The server may skip authentication even when we offer it.
        let mut input = vec![5, 0];
        input.extend(socks_ok_reply(&[1, 0, 0, 0, 0]));
        run("socks5://u:p@p", Target::Name("t"), 80, &input)
            .1
            .unwrap();
    }

    #[test]
    fn socks5_refusals_are_typed_with_readable_reasons() {
        let status = |proxy: &str, input: &[u8]| match run(proxy, Target::Name("t"), 80, input).1 {
            Err(Error::ProxyRefused { status, .. }) => status,
            other => panic!("{input:?}: {other:?}"),
        };
        assert_eq!(
            status("socks5h://p", &[5, 0xff]),
            ProxyStatus::Socks5NoAcceptableAuth
        );
        assert_eq!(
            status("socks5h://u:p@p", &[5, 2, 1, 1]),
            ProxyStatus::Socks5AuthRejected
        );
        assert_eq!(status("socks5h://p", &[5, 0, 5, 5]), ProxyStatus::Socks5(5));
        let e = Error::ProxyRefused {
            proxy: "127.0.0.1:1080".into(),
            status: ProxyStatus::Socks5(2),
        };
        assert_eq!(
            e.to_string(),
            "proxy 127.0.0.1:1080 refused the tunnel: \
             SOCKS5 reply 2: connection not allowed by ruleset"
        );
        assert!(ProxyStatus::Socks5(0x42).to_string().contains("unassigned"));
    }

    #[test]
    fn socks5_garbage_is_a_protocol_error() {
        for (proxy, input, expected) in [
            ("socks5h://p", &[4u8, 0][..], "not a SOCKS5 server"),
            ("socks5h://p", &[5, 2], "did not offer"),
            ("socks5h://p", &[5, 0, 5, 0, 0, 9], "unknown address type"),
            ("socks5h://p", &[5, 0, 4, 0], "bad version byte"),
            (
                "socks5h://p",
                &[5, 0, 5, 0, 0, 1, 127],
                "closed the connection",
            ),
            ("socks5h://p", &[5], "closed the connection"),
        ] {
            match run(proxy, Target::Name("t"), 80, input).1 {
                Err(e @ Error::ProxyProtocol { .. }) => {
                    assert!(e.to_string().contains(expected), "{input:?}: {e}")
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        let long = "a".repeat(256);
        let r = run("socks5h://p", Target::Name(&long), 80, &[5, 0]).1;
        assert!(matches!(r, Err(Error::ProxyProtocol { reason, .. }) if reason.contains("255")));
    }

    #[test]
    fn a_socket_timeout_during_the_exchange_is_the_handshake_timeout() {
        struct Stalled;
        impl Read for Stalled {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::TimedOut.into())
            }
        }
        impl Write for Stalled {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        for proxy in ["http://p", "socks5h://p"] {
            let r = tunnel(
                &mut Stalled,
                &Proxy::parse(proxy).unwrap(),
                Target::Name("t"),
                80,
            );
            assert!(
                matches!(r, Err(Error::Timeout(TimeoutKind::Handshake))),
                "{r:?}"
            );
        }
    }
}
