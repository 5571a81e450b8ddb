//! The client's upgrade (`handshake::ClientUpgrade`): the request written as the socket takes
//! it, the server's answer read as it arrives and checked, against a reference written from
//! RFC 6455 4.1.

use url::Url;

use super::deflate_params;
use super::input::{blank_line_end, find, End, Input, Wire};
use crate::handshake::ClientUpgrade;
use crate::http_head::MAX_HEADERS;
use crate::{Config, DeflateParams, Error};

/// Where the answer carries the accept hash for the request's (random) key, so that the
/// fuzzer can write valid answers: every `{A}` in the input is replaced with it.
const ACCEPT_MARK: &[u8] = b"{A}";

/// Largest answer head (as in `handshake`).
const LIMIT: usize = 64 << 10;

/// What the reference makes of an answer head.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Open {
        subprotocol: Option<String>,
        deflate: Option<DeflateParams>,
    },
    Rejected(u16),
    Invalid,
}

/// Choices: the subprotocols offered (none, one, two), whether permessage-deflate is offered
/// and with what (two bytes), whether the server closes or goes quiet at the end, how the
/// server's bytes are cut and how the socket takes ours. The rest is the server's answer, with
/// `{A}` standing for the accept hash.
///
/// Checks: the request is written once, whole, in order, before the answer is read; the
/// connection opens exactly when RFC 6455 4.1 says it may (status 101, `Upgrade: websocket`,
/// `Connection: upgrade`, the accept hash of our key, a subprotocol we offered if any, a
/// permessage-deflate answer that fits our offer if any, each single-valued header once), with
/// the subprotocol and parameters the answer gives; a refusal carries the status; the bytes
/// after the head are handed on exactly.
pub fn upgrade_answer(data: &[u8]) {
    let mut input = Input::new(data);
    let choice = input.byte();
    let deflate = deflate_params::settings(input.byte(), input.byte());
    let cuts = (input.byte(), input.byte());
    let mut config = Config::builder();
    for p in ["chat", "superchat"]
        .iter()
        .take(usize::from(choice & 3).min(2))
    {
        config = config.subprotocol(p);
    }
    if choice & 4 != 0 {
        config = config.deflate(Some(deflate));
    }
    let config = config.build().expect("valid settings");
    let end = if choice & 8 == 0 {
        End::Closed
    } else {
        End::Quiet
    };

    let url = Url::parse("ws://example.test:9001/feed?x=1").expect("a valid url");
    let mut upgrade = ClientUpgrade::new(&url, &config);
    let accept = tungstenite::handshake::derive_accept_key(upgrade.key().as_bytes());
    let answer = replace(input.rest(), ACCEPT_MARK, accept.as_bytes());

    let mut wire = Wire::new(&answer, end, cuts.0, cuts.1);
    let mut rounds = 0;
    let result = loop {
        match upgrade.advance(&mut wire, &config) {
            Ok(None) => {
                if wire.drained() && wire.written.len() == upgrade.request().len() {
                    break None;
                }
                rounds += 1;
                assert!(rounds < 4 * (answer.len() + upgrade.request().len() + 16));
            }
            Ok(Some(done)) => break Some(Ok(done)),
            Err(e) => break Some(Err(e)),
        }
    };
    assert_eq!(wire.written, upgrade.request(), "the request, once");

    let head_end = blank_line_end(&answer).filter(|&e| e <= LIMIT);
    let Some(head_end) = head_end else {
        // No head: the client waits, or gives up with a typed error.
        match result {
            None => assert!(end == End::Quiet && answer.len() < LIMIT),
            Some(Err(Error::InvalidHandshake(_))) => {}
            other => panic!("{other:?} without a head"),
        }
        return;
    };
    let head = &answer[..head_end];
    let verdict = reference(head, &accept, &config);
    match result {
        None => panic!("waiting with a whole head read"),
        Some(Ok((handshake, leftover))) => {
            assert_eq!(
                verdict,
                Verdict::Open {
                    subprotocol: handshake.subprotocol().map(str::to_owned),
                    deflate: handshake.deflate().copied(),
                },
                "{:?}",
                String::from_utf8_lossy(head)
            );
            assert_eq!(
                leftover,
                &wire.consumed()[head_end..],
                "the bytes past the head"
            );
        }
        Some(Err(Error::HandshakeRejected { status })) => {
            assert_eq!(verdict, Verdict::Rejected(status.as_u16()));
        }
        Some(Err(Error::InvalidHandshake(why))) => {
            // The http types hold less than httparse reads (then the head is malformed).
            if crate::http_head::parse_response(head).is_ok() {
                assert_eq!(
                    verdict,
                    Verdict::Invalid,
                    "{why}: {:?}",
                    String::from_utf8_lossy(head)
                );
            }
        }
        Some(Err(e)) => panic!("an in-memory upgrade fails in no other way: {e:?}"),
    }
}

fn replace(input: &[u8], mark: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 64);
    let mut rest = input;
    while let Some(at) = find(rest, mark) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + mark.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// RFC 6455 4.1: what the client must make of the answer `head` to its request (whose accept
/// hash is `accept`). A header that may appear once is judged by its combined value (RFC 9110
/// 5.3), so two of them are never a match.
fn reference(head: &[u8], accept: &str, config: &Config) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    if !matches!(response.parse(head), Ok(httparse::Status::Complete(_))) {
        return Verdict::Invalid;
    }
    let code = match response.code {
        Some(c) if c >= 100 => c,
        _ => return Verdict::Invalid,
    };
    let fields = |name: &str| -> Vec<&[u8]> {
        response
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let combined = |name: &str| fields(name).join(&b", "[..]);
    // 1. Anything but 101 is handled as HTTP: for us, a refusal.
    if code != 101 {
        return Verdict::Rejected(code);
    }
    // 2. Upgrade: websocket (case-insensitive).
    if !combined("upgrade").eq_ignore_ascii_case(b"websocket") {
        return Verdict::Invalid;
    }
    // 3. Connection: a token `upgrade` (case-insensitive) among the list. A value with bytes
    // past ASCII (obs-text) is opaque (RFC 9110 5.5): no tokens in it.
    let upgrade_token = fields("connection")
        .iter()
        .filter(|v| v.is_ascii())
        .flat_map(|v| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if !upgrade_token {
        return Verdict::Invalid;
    }
    // 4. Sec-WebSocket-Accept: the hash of our key.
    if combined("sec-websocket-accept") != accept.as_bytes() {
        return Verdict::Invalid;
    }
    // 5. Sec-WebSocket-Extensions: only what we offered, as we offered it.
    let values: Vec<String> = fields("sec-websocket-extensions")
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    let Ok(extensions) = deflate_params::parse(&values) else {
        return Verdict::Invalid;
    };
    let deflate = match config.deflate() {
        Some(offered) => match deflate_params::client_check(offered, &extensions) {
            Some(agreed) => agreed,
            None => return Verdict::Invalid,
        },
        None if extensions.is_empty() => None,
        None => return Verdict::Invalid,
    };
    // 6. Sec-WebSocket-Protocol: one we offered, if any.
    let subprotocol = if fields("sec-websocket-protocol").is_empty() {
        None
    } else {
        let chosen = combined("sec-websocket-protocol");
        match config
            .subprotocols()
            .iter()
            .find(|p| p.as_bytes() == &chosen[..])
        {
            Some(p) => Some(p.clone()),
            None => return Verdict::Invalid,
        }
    };
    Verdict::Open {
        subprotocol,
        deflate,
    }
}
