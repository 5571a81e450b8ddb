//! HTTP/1.x heads, read and parsed in one place for every exchange that has one: a proxy's
//! answer to `CONNECT`, a server's answer to our upgrade request, and a client's request to a
//! [`ServerConnection`](crate::ServerConnection).
//!
//! The reader works on any `Read` (a `TcpConn`, or TLS over one): it stops at the blank line
//! that ends the head, never reads more than a bound without finding it, and hands back the
//! bytes it read past the head, which already belong to whatever follows (WebSocket frames a
//! peer sent at once, a request body). On a blocking stream [`read`] runs to the end; on a
//! non-blocking one a [`HeadReader`] keeps what arrived across "would block" (the client's
//! dial). An I/O error is returned as it came, so the caller sorts deadline from failure with
//! [`crate::error::handshake_io`] or [`crate::error::is_deadline`].

use std::fmt;
use std::io::{self, Read};

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};

use crate::io_outcome::{io_outcome, IoOutcome};

/// Most header lines we parse in one head.
pub(crate) const MAX_HEADERS: usize = 100;

/// Bytes asked of the stream per read.
pub(crate) const CHUNK: usize = 2048;

/// A head as read off the stream.
#[derive(Debug)]
pub(crate) struct Head {
    /// The head, through the blank line that ends it.
    pub(crate) head: Vec<u8>,
    /// What was read past the head.
    pub(crate) leftover: Vec<u8>,
}

/// Why no head could be read.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The peer ended the stream before the head was complete (possibly before sending
    /// anything).
    Closed,
    /// No blank line within `limit` bytes: the head is longer than the bound.
    TooLarge { limit: usize },
    /// The stream failed, or the handshake deadline passed (see `error::is_deadline`).
    Io(io::Error),
}

/// Read from `src` until the end of a head (`\r\n\r\n`); the head may be at most `limit` bytes.
pub(crate) fn read<R: Read + ?Sized>(src: &mut R, limit: usize) -> Result<Head, HeadError> {
    HeadReader::new(limit).read(src)
}

/// A head being read, kept across calls: on a non-blocking stream, [`HeadReader::read`] stops
/// at "would block" (an [`HeadError::Io`] whose outcome is `WouldBlock`) with what it has, and
/// the next call goes on from there.
#[derive(Debug)]
pub(crate) struct HeadReader {
    buf: Vec<u8>,
    limit: usize,
}

impl HeadReader {
    /// A reader for a head of at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        HeadReader {
            buf: Vec::with_capacity(1024),
            limit,
        }
    }

    /// Bytes kept so far (the fuzz target checks the bound).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Read from `src` until the end of the head. Any error but "would block" ends the head.
    pub(crate) fn read<R: Read + ?Sized>(&mut self, src: &mut R) -> Result<Head, HeadError> {
        let limit = self.limit;
        let mut chunk = [0u8; CHUNK];
        loop {
            let n = match src.read(&mut chunk) {
                Ok(0) => return Err(HeadError::Closed),
                Ok(n) => n,
                Err(e) if io_outcome(&e) == IoOutcome::Interrupted => continue,
                Err(e) => return Err(HeadError::Io(e)),
            };
            // The end may straddle two reads.
            let buf = &mut self.buf;
            let searched = buf.len().saturating_sub(3);
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = head_end(buf, searched) {
                if end > limit {
                    return Err(HeadError::TooLarge { limit });
                }
                let mut head = std::mem::take(buf);
                let leftover = head.split_off(end);
                return Ok(Head { head, leftover });
            }
            if buf.len() >= limit {
                return Err(HeadError::TooLarge { limit });
            }
        }
    }
}

/// Where the head in `buf` ends (just past its blank line), looking from `from`: the first
/// line break followed by an empty line. Lines end with CRLF, but a bare LF is taken as a line
/// end too, as RFC 9112 section 2.2 allows (and httparse parses): a peer that ends its head with
/// `\n\n` gets its answer at once instead of waiting out the handshake's deadline.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(pos) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let lf = i + pos;
        match buf.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// Why a head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// More than [`MAX_HEADERS`] header lines.
    TooManyHeaders,
    /// Not an HTTP/1.x head, or a part that does not fit its type; says which.
    Malformed(String),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooManyHeaders => write!(f, "more than {MAX_HEADERS} header lines"),
            ParseError::Malformed(why) => f.write_str(why),
        }
    }
}

impl From<httparse::Error> for ParseError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
            other => ParseError::Malformed(other.to_string()),
        }
    }
}

/// Append one header line (`name: value\r\n`) to a head being written.
pub(crate) fn write_header(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A response head: its status and headers (in order, repeats kept).
pub(crate) fn parse_response(head: &[u8]) -> Result<(StatusCode, HeaderMap), ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    complete(response.parse(head)?, head)?;
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| ParseError::Malformed("no valid status".into()))?;
    Ok((status, header_map(response.headers)?))
}

/// A request head, as an `http::Request` without a body.
pub(crate) fn parse_request(head: &[u8]) -> Result<Request<()>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    complete(request.parse(head)?, head)?;
    // A complete parse has all three.
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(ParseError::Malformed("incomplete request line".into()));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| ParseError::Malformed(format!("bad method {method:?}")))?;
    let uri = target
        .parse::<Uri>()
        .map_err(|_| ParseError::Malformed(format!("bad request target {target:?}")))?;
    let version = match minor {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut out = Request::new(());
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    *out.version_mut() = version;
    *out.headers_mut() = header_map(request.headers)?;
    Ok(out)
}

/// The parse took all of `head`. [`HeadReader`] ends a head at its first blank line, as httparse
/// does, so anything else is a head httparse reads differently: malformed, not cut short.
fn complete(status: httparse::Status<usize>, head: &[u8]) -> Result<(), ParseError> {
    match status {
        httparse::Status::Complete(n) if n == head.len() => Ok(()),
        httparse::Status::Complete(_) => Err(ParseError::Malformed(
            "the head goes on past its blank line".into(),
        )),
        httparse::Status::Partial => Err(ParseError::Malformed("incomplete head".into())),
    }
}

fn header_map(headers: &[httparse::Header<'_>]) -> Result<HeaderMap, ParseError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for h in headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ParseError::Malformed(format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| ParseError::Malformed(format!("bad value for header {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ended_by_bare_line_feeds_is_read_at_once() {
        for input in [
            &b"GET / HTTP/1.1\nHost: h\n\nframe"[..],
            &b"GET / HTTP/1.1\r\nHost: h\r\n\nframe"[..],
            &b"GET / HTTP/1.1\nHost: h\n\r\nframe"[..],
        ] {
            // No CRLFCRLF ever comes: before, the reader waited for it until the deadline.
            let mut src = input;
            let head = HeadReader::new(1024).read(&mut src).expect("a head");
            assert_eq!(head.leftover, b"frame", "{input:?}");
            let request = parse_request(&head.head).expect("parsed");
            assert_eq!(request.headers()["host"], "h");
        }
        assert_eq!(head_end(b"A\r\n\r", 0), None, "not yet");
        assert_eq!(head_end(b"A\r\nB\r\n\r\n", 0), Some(8));
    }

    /// Hands out its input a few bytes at a time, then says `then`.
    struct Trickle<'a> {
        input: &'a [u8],
        step: usize,
        then: Option<io::ErrorKind>,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() {
                return match self.then {
                    Some(kind) => Err(kind.into()),
                    None => Ok(0),
                };
            }
            let n = self.step.min(buf.len()).min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input = &self.input[n..];
            Ok(n)
        }
    }

    fn trickle(input: &[u8], step: usize) -> Trickle<'_> {
        Trickle {
            input,
            step,
            then: None,
        }
    }

    #[test]
    fn the_head_ends_at_the_blank_line_and_what_follows_is_kept() {
        let input = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\x81\x85frame";
        // Every split of the end marker across reads.
        for step in 1..input.len() {
            let mut t = trickle(input, step);
            let head = read(&mut t, 1024).unwrap();
            assert_eq!(
                head.head, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
                "step {step}"
            );
            // What was read past the head, then what is still in the stream: nothing lost.
            let mut rest = head.leftover;
            rest.extend_from_slice(t.input);
            assert_eq!(rest, b"\x81\x85frame", "step {step}");
        }
    }

    #[test]
    fn a_head_interrupted_by_would_block_goes_on_where_it_stopped() {
        let input = b"HTTP/1.1 101 OK\r\nA: b\r\n\r\nframe";
        let end = input.len() - b"frame".len();
        for split in 1..input.len() {
            let mut reader = HeadReader::new(1024);
            let mut first = Trickle {
                input: &input[..split],
                step: 3,
                then: Some(io::ErrorKind::WouldBlock),
            };
            // The head, and what the stream still holds after it.
            let (head, unread) = match reader.read(&mut first) {
                Ok(head) => {
                    assert!(split >= end, "split {split}: a head from half of it");
                    // The first read saw only up to `split`; the rest never reached it.
                    let mut unread = first.input.to_vec();
                    unread.extend_from_slice(&input[split..]);
                    (head, unread)
                }
                Err(HeadError::Io(e)) if io_outcome(&e) == IoOutcome::WouldBlock => {
                    assert!(split < end, "split {split}");
                    assert!(first.input.is_empty(), "split {split}: read to would-block");
                    let mut second = trickle(&input[split..], 5);
                    let head = reader.read(&mut second).unwrap();
                    (head, second.input.to_vec())
                }
                Err(e) => panic!("split {split}: {e:?}"),
            };
            assert_eq!(head.head, &input[..end], "split {split}");
            // What was read past the head, then what is still in the stream: nothing lost,
            // nothing doubled.
            let mut rest = head.leftover;
            rest.extend_from_slice(&unread);
            assert_eq!(rest, b"frame", "split {split}");
        }
    }

    #[test]
    fn the_bound_holds_however_the_bytes_arrive() {
        let head = b"GET / HTTP/1.1\r\nX: 0123456789\r\n\r\n";
        assert!(read(&mut trickle(head, 7), head.len()).is_ok());
        for step in [1, 7, 4096] {
            let r = read(&mut trickle(head, step), head.len() - 1);
            assert!(
                matches!(r, Err(HeadError::TooLarge { limit }) if limit == head.len() - 1),
                "{r:?}"
            );
        }
        // An endless head stops at the bound (plus at most one read).
        let endless = vec![b'a'; 1 << 20];
        let mut t = trickle(&endless, 4096);
        assert!(matches!(
            read(&mut t, 8192),
            Err(HeadError::TooLarge { .. })
        ));
        assert!(t.input.len() >= endless.len() - 8192 - CHUNK);
    }

    #[test]
    fn an_early_end_or_a_socket_error_is_reported_as_such() {
        assert!(matches!(
            read(&mut trickle(b"", 1), 64),
            Err(HeadError::Closed)
        ));
        assert!(matches!(
            read(&mut trickle(b"HTTP/1.1 200 OK\r\n", 3), 64),
            Err(HeadError::Closed)
        ));
        let mut stalled = Trickle {
            input: b"GET /",
            step: 2,
            then: Some(io::ErrorKind::TimedOut),
        };
        match read(&mut stalled, 64) {
            Err(HeadError::Io(e)) => assert!(crate::error::is_deadline(&e)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_parse_into_http_types() {
        let r = parse_request(
            b"GET /chat?room=a&since=3 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().path(), "/chat");
        assert_eq!(r.uri().query(), Some("room=a&since=3"));
        assert_eq!(r.version(), Version::HTTP_11);
        let a: Vec<_> = r.headers().get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        let old = parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(old.version(), Version::HTTP_10);
        for bad in [
            &b"GET\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad), Err(ParseError::Malformed(_))),
                "{bad:?}"
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse_request(head.as_bytes()),
            Err(ParseError::TooManyHeaders)
        ));
    }

    #[test]
    fn responses_parse_into_status_and_headers() {
        let (status, headers) =
            parse_response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(headers["upgrade"], "websocket");
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 042 Odd\r\n\r\n").is_err());
    }

    /// Found by fuzzing (http_head): httparse ended these heads at the blank line ended by a
    /// bare LF, while `read` had read on to CRLFCRLF, and the header between the two vanished:
    /// neither a header nor a byte past the head.
    #[test]
    fn a_bare_lf_blank_line_ends_the_head_and_a_parse_must_take_it_all() {
        // The first blank line ends the head, however its line ends: what follows is the
        // connection's (here: bytes that will not parse as frames).
        let early = b"GET /chat HTTP/1.1\r\n\nUpgr: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let head = read(&mut &early[..], 1024).unwrap();
        assert_eq!(head.head, b"GET /chat HTTP/1.1\r\n\n");
        assert!(parse_request(&head.head).is_ok());
        // A head handed to a parser whole must end at its blank line.
        let early = b"HTTP/1.1 101 Switching Protocols\r\n\nUpgrade: websocket\r\n\r\n";
        assert!(matches!(
            parse_response(early),
            Err(ParseError::Malformed(m)) if m.contains("blank line")
        ));
    }
}
