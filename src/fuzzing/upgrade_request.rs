//! The server's check of an upgrade request (`incoming::check_upgrade`, RFC 6455 4.2.1),
//! against a reference written from the RFC on httparse's view of the head.

use http::StatusCode;

use crate::http_head::{self, parse_request, MAX_HEADERS};
use crate::incoming::{check_upgrade, switching_protocols, MAX_REQUEST_HEAD};

/// Choices: none. The input is what a client sends; its head is read as a server reads it.
///
/// Checks: a request the server accepts is one RFC 6455 4.2.1 allows (a GET, HTTP/1.1, a
/// request target that is a path or an absolute http(s) URI, one `Host` naming an authority,
/// `Upgrade: websocket` and `Connection: upgrade` among their lists, `Sec-WebSocket-Version: 13`
/// and nothing else, one `Sec-WebSocket-Key` that is the canonical base64 of 16 bytes), and
/// every request the RFC allows and the http types can hold is accepted; refusals say 405 for
/// a method other than GET, 426 for a version other than 13, 400 otherwise; the key of an
/// accepted request goes into a 101 that our own client accepts for that key.
pub fn upgrade_request(data: &[u8]) {
    let Ok(head) = http_head::read(&mut &data[..], MAX_REQUEST_HEAD) else {
        return;
    };
    let head = head.head;
    let reference = valid_upgrade(&head);
    let Ok(request) = parse_request(&head) else {
        // Refused before any check (400 or 431): nothing accepted.
        return;
    };
    match check_upgrade(&request) {
        Ok(key) => {
            let Some(expected) = &reference else {
                panic!("accepted a request RFC 6455 4.2.1 refuses: {request:?}");
            };
            assert_eq!(key.as_bytes(), &expected[..]);
            // The answer, as the client reads it: the accept hash is the one for this key.
            let answer = switching_protocols(key, None, None, &[]);
            let answer = http_head::read(&mut &answer[..], 64 << 10).expect("a whole head");
            assert!(answer.leftover.is_empty());
            let handshake =
                crate::handshake::check_answer(&answer.head, key, &crate::Config::default())
                    .expect("our client accepts our server's answer");
            assert_eq!(handshake.status(), StatusCode::SWITCHING_PROTOCOLS);
        }
        Err(refusal) => {
            assert!(
                reference.is_none(),
                "refused a valid request ({} {}): {request:?}",
                refusal.status,
                refusal.reason
            );
            let status = refusal.status.as_u16();
            assert_eq!(
                status == 405,
                request.method() != http::Method::GET,
                "{status}"
            );
            assert!(matches!(status, 400 | 405 | 426), "{status}");
            if status == 426 {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut req = httparse::Request::new(&mut headers);
                let _ = req.parse(&head);
                assert_ne!(
                    list(field(req.headers, "sec-websocket-version")),
                    [&b"13"[..]]
                );
            }
        }
    }
}

/// RFC 6455 4.2.1: the request's key when `head` is a valid opening handshake.
pub(crate) fn valid_upgrade(head: &[u8]) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    // 1. An HTTP/1.1 or higher GET, for a resource name or an absolute HTTP/HTTPS URI.
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let target = req.path?.as_bytes();
    let lower = target.to_ascii_lowercase();
    if !(target.starts_with(b"/")
        || lower.starts_with(b"http://")
        || lower.starts_with(b"https://"))
    {
        return None;
    }
    // 2. A Host header field containing the server's authority (one, RFC 9112 3.2).
    match field(req.headers, "host")[..] {
        [host] if is_authority(host) => {}
        _ => return None,
    }
    // 3, 4. Upgrade: websocket and Connection: Upgrade, ASCII case-insensitive, among lists.
    let has = |name: &str, token: &[u8]| {
        list(field(req.headers, name))
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    };
    if !has("upgrade", b"websocket") || !has("connection", b"upgrade") {
        return None;
    }
    // 6. Sec-WebSocket-Version: 13. A single value; empty list elements are tolerated as RFC
    // 9110 5.6.1.2 asks of recipients.
    if list(field(req.headers, "sec-websocket-version")) != [&b"13"[..]] {
        return None;
    }
    // 5. One Sec-WebSocket-Key, the base64 of 16 bytes.
    match field(req.headers, "sec-websocket-key")[..] {
        [key] if base64_strict(key).is_some_and(|k| k.len() == 16) => Some(key.to_vec()),
        _ => None,
    }
}

/// Every value of the header `name`, in order.
fn field<'a>(headers: &[httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

/// The elements of comma-separated lists, whitespace around them removed, empty ones skipped.
/// A value with bytes past ASCII (obs-text) is opaque (RFC 9110 5.5): no tokens in it.
fn list(values: Vec<&[u8]>) -> Vec<&[u8]> {
    values
        .into_iter()
        .filter(|v| v.is_ascii())
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
        .collect()
}

/// RFC 9110 7.2 `Host = uri-host [ ":" port ]`, with RFC 3986's uri-host (an IP literal in
/// brackets, or a reg-name that is not empty: a server's authority names it).
fn is_authority(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..close];
        let ok =
            std::str::from_utf8(literal).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !ok {
            return false;
        }
        (&b"x"[..], &rest[close + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(colon) => (&v[..colon], &v[colon..]),
            None => (v, &b""[..]),
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    // reg-name = *( unreserved / pct-encoded / sub-delims )
    let mut i = 0;
    let mut host_ok = !host.is_empty();
    while host_ok && i < host.len() {
        let b = host[i];
        if b == b'%' {
            host_ok = host.len() > i + 2
                && host[i + 1].is_ascii_hexdigit()
                && host[i + 2].is_ascii_hexdigit();
            i += 3;
        } else {
            host_ok = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b);
            i += 1;
        }
    }
    host_ok && port_ok
}

/// RFC 4648 section 4 base64, strictly: the padded length, the alphabet, `=` only at the end,
/// and the bits past the data zero (a canonical encoding, 3.5).
pub(crate) fn base64_strict(v: &[u8]) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if v.len() % 4 != 0 {
        return None;
    }
    let pad = v.iter().rev().take_while(|&&b| b == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::new();
    for &c in &v[..v.len() - pad] {
        let d = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = bits << 6 | d;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    (bits == 0).then_some(out)
}
