//! Proxies: what one is ([`Proxy`], parsed from a URL; its `Debug` hides the password), where a
//! tunnel through it leads ([`Target`]), and how the exchange with it fails. Which proxy applies
//! to a connection is in `env`; the exchanges (HTTP CONNECT, SOCKS5), run before TLS and the
//! WebSocket upgrade, are in `http` and `socks5`, written for a blocking stream; `tunnel` runs
//! them on the dial's non-blocking socket too, by replaying them as the answer arrives.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::str::FromStr;

use url::{Host, Url};

use crate::error::{Error, ProxyStatus, TimeoutKind};
use crate::io_outcome::{io_outcome, IoOutcome};

pub(crate) mod env;
mod http;
mod socks5;
pub(crate) mod tunnel;

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

// ----- the tunnel's target and failures ----------------------------------------------------------

/// Where the tunnel leads: a name for the proxy to resolve, or an address.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

pub(super) fn refused(proxy: &Proxy, status: ProxyStatus) -> Error {
    Error::ProxyRefused {
        proxy: proxy.authority(),
        status,
    }
}

pub(super) fn protocol(proxy: &Proxy, reason: impl Into<String>) -> Error {
    Error::ProxyProtocol {
        proxy: proxy.authority(),
        reason: reason.into(),
    }
}

/// The one place that sorts I/O failures during the proxy exchange: the handshake deadline, the
/// proxy hanging up mid-answer, or a broken connection.
pub(super) fn io_error(proxy: &Proxy, e: io::Error) -> Error {
    if crate::error::is_deadline(&e) {
        return Error::Timeout(TimeoutKind::Handshake);
    }
    match io_outcome(&e) {
        IoOutcome::Ended => protocol(
            proxy,
            "the proxy closed the connection in the middle of the exchange",
        ),
        _ => Error::ProxyConnect {
            proxy: proxy.authority(),
            source: e,
        },
    }
}

/// An in-memory stream for the exchanges' tests: reads come from a script, writes are recorded.
#[cfg(test)]
mod duplex {
    use std::io::{self, Cursor, Read, Write};

    pub(crate) struct Duplex {
        input: Cursor<Vec<u8>>,
        pub(crate) output: Vec<u8>,
    }

    impl Duplex {
        pub(crate) fn new(input: &[u8]) -> Self {
            Duplex {
                input: Cursor::new(input.to_vec()),
                output: Vec::new(),
            }
        }
        pub(crate) fn unread(&self) -> usize {
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
