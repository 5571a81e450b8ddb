//! What the opening handshake agreed.

use http::{HeaderMap, StatusCode};

use crate::DeflateParams;

/// The server's answer to the opening handshake: status, headers and the negotiated
/// subprotocol. Available from every client after connect, and in
/// [`Handler::on_activated`](crate::Handler::on_activated) through
/// [`Context::handshake`](crate::Context::handshake).
#[derive(Debug, Clone)]
pub struct Handshake {
    status: StatusCode,
    headers: HeaderMap,
    subprotocol: Option<String>,
    deflate: Option<DeflateParams>,
}

impl Handshake {
    /// The HTTP status of the upgrade response (101 for a client).
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers as the server sent them.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The subprotocol the server chose from those offered, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The permessage-deflate parameters agreed, or None when compression is off (not
    /// configured, or declined by the server).
    pub fn deflate(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref()
    }
}

// ----- the client side of the opening handshake ------------------------------------------------
//
// Written here rather than through tungstenite's client handshake so that request headers go
// out exactly as configured (order kept, names may repeat, `Host` may be overridden) and so that
// what the server agreed (subprotocol, extensions) is checked in one place.

use std::io::{self, Read, Write};

use http::header::{self, HeaderName};
use tungstenite::protocol::{Role, WebSocket};
use url::Url;

use crate::deflate::inbound::Inbound;
use crate::error::{handshake_io, Error};
use crate::http_head::{self, HeadError, HeadReader};
use crate::io_outcome::{io_outcome, IoOutcome};
use crate::stream::Stream;
use crate::Config;

/// Largest response head we accept from a server.
const MAX_RESPONSE_HEAD: usize = 64 << 10;

/// Headers the handshake writes itself; setting them through the config is refused.
pub(crate) const RESERVED_HEADERS: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// The client's upgrade exchange on a non-blocking stream: the request goes out, the answer
/// comes in and is checked, each as far as the socket allows per call (see
/// [`ClientUpgrade::advance`]).
#[derive(Debug)]
pub(crate) struct ClientUpgrade {
    request: Vec<u8>,
    /// The request's `Sec-WebSocket-Key`, which the answer must match.
    key: String,
    /// Bytes of `request` written so far.
    written: usize,
    /// The request is written and flushed (through TLS too): the answer is next.
    sent: bool,
    response: HeadReader,
}

impl ClientUpgrade {
    /// The upgrade request for `url` with the headers, subprotocols and extensions `config`
    /// asks for.
    pub(crate) fn new(url: &Url, config: &Config) -> Self {
        let key = tungstenite::handshake::client::generate_key();
        ClientUpgrade {
            request: request(url, &key, config),
            key,
            written: 0,
            sent: false,
            response: HeadReader::new(MAX_RESPONSE_HEAD),
        }
    }

    /// Write what is left of the request, then read the answer. `Ok(None)`: the stream would
    /// block (call again when it is ready; nothing is lost or sent twice). `Ok(Some)`: the
    /// answer passed every check; with what was agreed comes what was read past the head (the
    /// start of the frame stream, for [`websocket`]).
    pub(crate) fn advance<S: Read + Write>(
        &mut self,
        stream: &mut S,
        config: &Config,
    ) -> Result<Option<(Handshake, Vec<u8>)>, Error> {
        while !self.sent {
            let r = if self.written < self.request.len() {
                match stream.write(&self.request[self.written..]) {
                    Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.written += n;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            } else {
                // TLS may hold the last record until flushed.
                stream.flush().map(|()| self.sent = true)
            };
            if let Err(e) = r {
                match io_outcome(&e) {
                    IoOutcome::WouldBlock => return Ok(None),
                    IoOutcome::Interrupted => {}
                    _ => return Err(handshake_io(e)),
                }
            }
        }
        let head = match self.response.read(stream) {
            Ok(head) => head,
            Err(HeadError::Io(e)) if io_outcome(&e) == IoOutcome::WouldBlock => return Ok(None),
            Err(e) => return Err(head_error(e)),
        };
        let handshake = check_answer(&head.head, &self.key, config)?;
        Ok(Some((handshake, head.leftover)))
    }

    /// The request as it goes out (the fuzz target checks it is written exactly once).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn request(&self) -> &[u8] {
        &self.request
    }

    /// The request's `Sec-WebSocket-Key`.
    #[cfg(any(test, fuzzing))]
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}

/// The server's answer to a request with `key`, from its head: what was agreed, or why the
/// connection must not open (RFC 6455 4.1).
pub(crate) fn check_answer(head: &[u8], key: &str, config: &Config) -> Result<Handshake, Error> {
    let mut handshake = response(head)?;
    verify(&mut handshake, key, config)?;
    Ok(handshake)
}

/// The WebSocket over an upgraded `stream`, on either side. `leftover`, what was read past the
/// head, is the start of the frame stream and is never lost: with permessage-deflate agreed it
/// goes into the inflating layer (tungstenite must not see compressed frames), else straight to
/// tungstenite.
pub(crate) fn websocket(
    mut stream: Stream,
    leftover: Vec<u8>,
    role: Role,
    deflate: bool,
    config: &Config,
) -> WebSocket<Stream> {
    let leftover = if deflate {
        stream.set_inbound(Inbound::new(role, config, &leftover));
        Vec::new()
    } else {
        leftover
    };
    // `from_partially_read` sizes tungstenite's read buffer from `leftover`'s capacity, which is
    // 0 when the peer sent nothing after the head (the usual case). The buffer then remembers a
    // 0-byte "original capacity" and, whenever it must grow while received payloads are still
    // alive (the threaded client's events), allocates exactly one frame's worth: two reads and
    // an allocation per message. `from_raw_socket` allocates `read_buffer_size`.
    if leftover.is_empty() {
        WebSocket::from_raw_socket(stream, role, Some(config.websocket_config()))
    } else {
        WebSocket::from_partially_read(stream, leftover, role, Some(config.websocket_config()))
    }
}

fn request(url: &Url, key: &str, config: &Config) -> Vec<u8> {
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    let mut out = Vec::with_capacity(256);
    // Writes to a Vec cannot fail.
    let _ = write!(out, "GET {path} HTTP/1.1\r\n");
    let user_host = config.headers().iter().find(|(n, _)| n == header::HOST);
    match user_host {
        Some((_, value)) => {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None => {
            // `host_str` keeps the brackets of an IPv6 literal; `port` is None for the default.
            let host = url.host_str().unwrap_or_default();
            let _ = match url.port() {
                Some(port) => write!(out, "Host: {host}:{port}\r\n"),
                None => write!(out, "Host: {host}\r\n"),
            };
        }
    }
    let _ = write!(
        out,
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: {key}\r\n"
    );
    if !config.subprotocols().is_empty() {
        let _ = write!(
            out,
            "Sec-WebSocket-Protocol: {}\r\n",
            config.subprotocols().join(", ")
        );
    }
    if let Some(deflate) = config.deflate() {
        let _ = write!(
            out,
            "Sec-WebSocket-Extensions: {}\r\n",
            crate::deflate::offer(deflate)
        );
    }
    for (name, value) in config.headers().iter().filter(|(n, _)| n != header::HOST) {
        crate::http_head::write_header(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Why no response head could be read, as the library's error.
fn head_error(e: HeadError) -> Error {
    match e {
        HeadError::Closed => {
            Error::InvalidHandshake("the server closed the connection during the handshake".into())
        }
        HeadError::TooLarge { limit } => {
            Error::InvalidHandshake(format!("response head longer than {limit} bytes"))
        }
        HeadError::Io(e) => handshake_io(e),
    }
}

/// The server's answer, from its head (not yet checked).
fn response(head: &[u8]) -> Result<Handshake, Error> {
    let (status, map) = http_head::parse_response(head)
        .map_err(|e| Error::InvalidHandshake(format!("malformed response: {e}")))?;
    let subprotocol = map
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(Handshake {
        status,
        headers: map,
        subprotocol,
        deflate: None,
    })
}

/// RFC 6455 section 4.1: what the client must check before the connection is open.
fn verify(handshake: &mut Handshake, key: &str, config: &Config) -> Result<(), Error> {
    if handshake.status != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::HandshakeRejected {
            status: handshake.status,
        });
    }
    let headers = &handshake.headers;
    // A header that may appear once: its value, or None when it is missing or repeated (two
    // lines are one list, RFC 9110 5.3, which no single value matches).
    let single = |name: HeaderName| {
        let mut lines = headers.get_all(name).iter();
        match (lines.next(), lines.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        }
    };
    if !single(header::UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(Error::InvalidHandshake(
            "response lacks `Upgrade: websocket`".into(),
        ));
    }
    // A list: the token may be in any of the lines.
    let upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !upgrade {
        return Err(Error::InvalidHandshake(
            "response lacks `Connection: upgrade`".into(),
        ));
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    if single(header::SEC_WEBSOCKET_ACCEPT) != Some(expected.as_str()) {
        return Err(Error::InvalidHandshake(
            "Sec-WebSocket-Accept does not match our key".into(),
        ));
    }
    let mut chosen = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter();
    match (chosen.next(), chosen.next()) {
        (None, _) => {}
        (Some(_), Some(_)) => {
            return Err(Error::InvalidHandshake(
                "the server chose more than one subprotocol".into(),
            ))
        }
        // Not text (so not `handshake.subprotocol`) is not one we offered either.
        (Some(v), None) => {
            let offered = v
                .to_str()
                .is_ok_and(|v| config.subprotocols().iter().any(|p| p == v));
            if !offered {
                return Err(Error::InvalidHandshake(format!(
                    "server chose subprotocol {v:?}, which we did not offer"
                )));
            }
        }
    }
    let extensions = handshake
        .headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    handshake.deflate = crate::deflate::client_verify(config.deflate(), extensions)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::scripted::{ReadStep, Scripted};
    use crate::stream::Transport;

    fn scripted(stream: &mut Stream) -> &mut Scripted {
        match stream.transport_mut() {
            Transport::Scripted(s) => s,
            _ => unreachable!("a scripted stream"),
        }
    }

    /// An answer head to a request whose key is the RFC 6455 sample, with `lines` added.
    fn answer(lines: &[&[u8]]) -> Vec<u8> {
        let mut head = b"HTTP/1.1 101 Switching Protocols\r\n\
                         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            .to_vec();
        head.extend(lines.concat());
        head.extend_from_slice(b"\r\n");
        head
    }

    /// Found by the property tests and fuzzing (upgrade_answer): only the first line of each
    /// header was read, so a second subprotocol, a second Upgrade or a second accept hash went
    /// unseen, a `Connection: upgrade` on a second line was missed, and a subprotocol that is
    /// not text was taken for none at all.
    #[test]
    fn headers_that_may_appear_once_are_refused_twice_and_lists_are_read_whole() {
        const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
        let config = Config::builder().subprotocol("superchat").build().unwrap();
        let ok: &[u8] = b"Upgrade: websocket\r\nConnection: Upgrade\r\n";
        let h = check_answer(&answer(&[ok]), KEY, &config).unwrap();
        assert_eq!(h.subprotocol(), None);
        let chosen: &[u8] = b"Sec-WebSocket-Protocol: superchat\r\n";
        let h = check_answer(&answer(&[ok, chosen]), KEY, &config).unwrap();
        assert_eq!(h.subprotocol(), Some("superchat"));
        let cases: [(&[u8], &str); 5] = [
            (
                b"Sec-WebSocket-Protocol: superchat\r\nSec-WebSocket-Protocol: superchat\r\n",
                "more than one subprotocol",
            ),
            (b"Upgrade: websocket\r\n", "Upgrade"),
            (b"Upgrade: h2c\r\n", "Upgrade"),
            (b"Sec-WebSocket-Accept: x\r\n", "does not match"),
            (
                b"Sec-WebSocket-Protocol: superchat\xa0\r\n",
                "did not offer",
            ),
        ];
        for (lines, why) in cases {
            let e = check_answer(&answer(&[ok, lines]), KEY, &config).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidHandshake(m) if m.contains(why)),
                "{lines:?}: {e}"
            );
        }
        // Connection is a list, over as many lines as the server likes.
        let split: &[u8] =
            b"Upgrade: websocket\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n";
        assert!(check_answer(&answer(&[split]), KEY, &config).is_ok());
    }

    #[test]
    fn the_request_goes_out_once_and_the_answer_is_read_across_would_block() {
        let config = Config::builder().subprotocol("chat").build().unwrap();
        let url = Url::parse("ws://example.test:9001/feed?x=1").unwrap();
        let mut upgrade = ClientUpgrade::new(&url, &config);
        let mut stream = Stream::from(Transport::Scripted(Scripted::default()));
        // The socket takes the request 7 bytes at a time.
        let mut waits = 0;
        while scripted(&mut stream).written.len() < upgrade.request.len() {
            assert!(upgrade.advance(&mut stream, &config).unwrap().is_none());
            scripted(&mut stream).write_budget = 7;
            waits += 1;
        }
        assert!(waits > 10, "{waits}");
        let written = std::mem::take(&mut scripted(&mut stream).written);
        assert_eq!(written, upgrade.request, "exactly once, in order");
        let text = String::from_utf8(written).unwrap();
        assert!(text.starts_with("GET /feed?x=1 HTTP/1.1\r\nHost: example.test:9001\r\n"));

        let accept = tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat\r\n\r"
        )
        .into_bytes();
        // The last byte of the head arrives with the first of a frame.
        let last = vec![b'\n', 0x81];
        for byte in answer.drain(..) {
            assert!(upgrade.advance(&mut stream, &config).unwrap().is_none());
            let s = scripted(&mut stream);
            s.reads.push_back(ReadStep::Data(vec![byte]));
            s.reads.push_back(ReadStep::WouldBlock);
        }
        assert!(upgrade.advance(&mut stream, &config).unwrap().is_none());
        scripted(&mut stream).reads.push_back(ReadStep::Data(last));
        let (handshake, leftover) = upgrade.advance(&mut stream, &config).unwrap().unwrap();
        assert_eq!(handshake.subprotocol(), Some("chat"));
        assert_eq!(leftover, b"\x81", "the start of the first frame is kept");
        assert!(
            scripted(&mut stream).written.is_empty(),
            "nothing written twice"
        );
    }
}
