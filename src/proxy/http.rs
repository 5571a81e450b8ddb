//! The HTTP CONNECT exchange (RFC 9110 9.3.6): ask an HTTP proxy for a tunnel, with Basic
//! credentials when the proxy URL has them.

use std::io::{Read, Write};
use std::net::SocketAddr;

use super::{io_error, protocol, refused, Proxy, Target};
use crate::error::{Error, ProxyStatus};
use crate::http_head::{self, HeadError};

/// Largest response head we accept from an HTTP proxy.
const MAX_PROXY_RESPONSE_HEAD: usize = 16 << 10;

/// Ask the HTTP proxy `proxy`, connected on `stream`, for a tunnel to `target:port`.
pub(super) fn connect<S: Read + Write>(
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
    use crate::proxy::duplex::Duplex;
    use std::net::Ipv6Addr;

    fn run(
        proxy: &str,
        target: Target<'_>,
        port: u16,
        input: &[u8],
    ) -> (Duplex, Result<(), Error>) {
        let proxy = Proxy::parse(proxy).unwrap();
        let mut stream = Duplex::new(input);
        let result = connect(&mut stream, &proxy, target, port);
        (stream, result)
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
}
