//! The permessage-deflate parameters (`deflate`): parsing `Sec-WebSocket-Extensions`, the
//! client's check of the server's answer, and the server's choice among offers, against a
//! reference written from RFC 6455 9.1 and RFC 7692 7.

use http::HeaderValue;

use super::input::Input;
use crate::deflate::{client_verify, offer, parse_extensions, server_accept, Extension};
use crate::{DeflateConfig, DeflateParams};

/// Choices: the client's settings (two bytes), the server's (two bytes). The rest is header
/// values, one per line, as a peer sends them.
///
/// Checks: the parser agrees with a grammar-based reference (the same extensions and
/// parameters, unquoted, or an error for both); the client accepts exactly the answers RFC 7692
/// lets it accept for its offer, with the parameters the answer gives; the server takes the
/// first offer RFC 7692 calls valid (none if any value is malformed) and answers with
/// parameters that fit both the offer and its settings; and what a server answers to our own
/// client's offer, that client accepts with the same parameters.
pub fn deflate_params(data: &[u8]) {
    let mut input = Input::new(data);
    let client = settings(input.byte(), input.byte());
    let server = settings(input.byte(), input.byte());
    // Header values as the callers see them: `HeaderValue`s, taken as text where they are.
    let values: Vec<HeaderValue> = input
        .rest()
        .split(|&b| b == b'\n')
        .filter_map(|v| HeaderValue::from_bytes(v).ok())
        .collect();
    let server_sees: Vec<&str> = values.iter().filter_map(|v| v.to_str().ok()).collect();
    let client_sees: Vec<&str> = values
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .collect();

    // The parser.
    let ours = parse_extensions(client_sees.iter().copied());
    let reference = parse(&client_sees);
    match (&ours, &reference) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{client_sees:?}"),
        (Err(_), Err(())) => {}
        _ => panic!("parser {ours:?} but reference {reference:?} for {client_sees:?}"),
    }

    // The client's check of an answer.
    let verdict = client_verify(Some(&client), client_sees.iter().copied());
    let expected = reference
        .as_ref()
        .ok()
        .and_then(|e| client_check(&client, e));
    match (&verdict, &expected) {
        (Ok(a), Some(b)) => assert_eq!(a, b, "{client_sees:?}"),
        (Err(crate::Error::InvalidHandshake(_)), None) => {}
        _ => panic!("client {verdict:?}, reference {expected:?} for {client_sees:?} ({client:?})"),
    }
    let offered_nothing = client_verify(None, client_sees.iter().copied());
    let declined = reference.as_ref().is_ok_and(|e| e.is_empty());
    assert_eq!(offered_nothing.is_ok_and(|p| p.is_none()), declined);

    // The server's choice among offers.
    let chosen = server_accept(&server, server_sees.iter().copied());
    let first_valid = parse(&server_sees)
        .ok()
        .and_then(|offers| offers.into_iter().find_map(|o| valid_offer(&o)));
    match (&chosen, first_valid) {
        (None, None) => {}
        (Some((params, answer)), Some(o)) => check_answer(&server, &o, params, answer),
        _ => panic!("server chose {chosen:?} among {server_sees:?} ({server:?})"),
    }

    // Round trip: our server answers our client's offer, and the client agrees.
    let sent = offer(&client);
    let (params, answer) =
        server_accept(&server, std::iter::once(sent.as_str())).expect("our own offer is valid");
    let agreed = client_verify(Some(&client), std::iter::once(answer.as_str()))
        .unwrap_or_else(|e| panic!("{sent:?} answered {answer:?}: {e}"));
    assert_eq!(agreed, Some(params), "{sent:?} answered {answer:?}");
}

/// Settings from two choice bytes: the context takeover flags and the two window sizes.
pub(crate) fn settings(a: u8, b: u8) -> DeflateConfig {
    let bits = |code: u8| match code & 0x0f {
        0..=7 => None,
        k => Some(k),
    };
    DeflateConfig::new()
        .client_no_context_takeover(a & 0x10 != 0)
        .server_no_context_takeover(a & 0x20 != 0)
        .client_max_window_bits(bits(a))
        .server_max_window_bits(bits(b))
}

// ----- the reference: RFC 6455 9.1 grammar ---------------------------------------------------

/// `Sec-WebSocket-Extensions` values, parsed by the grammar of RFC 6455 9.1 (a comma-separated
/// list of `token *( ";" param )`, `param = token [ "=" ( token / quoted-string ) ]`, a quoted
/// value a token once unescaped), with linear white space between words and empty list
/// elements tolerated (RFC 9110 5.6.1.2). Names compare case-insensitively (as the library
/// chose), so they come out lowercase.
pub(crate) fn parse(values: &[&str]) -> Result<Vec<Extension>, ()> {
    let mut out = Vec::new();
    for v in values {
        let mut p = Parser {
            s: v.as_bytes(),
            i: 0,
        };
        loop {
            p.ows();
            if p.eat(b',') {
                continue;
            }
            if p.done() {
                break;
            }
            let name = p.token()?.to_ascii_lowercase();
            let mut params = Vec::new();
            loop {
                p.ows();
                if !p.eat(b';') {
                    break;
                }
                p.ows();
                let key = p.token()?.to_ascii_lowercase();
                p.ows();
                let value = if p.eat(b'=') {
                    p.ows();
                    let value = if p.peek() == Some(b'"') {
                        p.quoted()?
                    } else {
                        p.token()?
                    };
                    if !is_token(&value) {
                        return Err(());
                    }
                    Some(value)
                } else {
                    None
                };
                params.push((key, value));
            }
            out.push((name, params));
            p.ows();
            if !p.done() && !p.eat(b',') {
                return Err(());
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i == self.s.len()
    }
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.i += usize::from(hit);
        hit
    }
    fn ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> Result<String, ()> {
        let start = self.i;
        while self.peek().is_some_and(tchar) {
            self.i += 1;
        }
        if self.i == start {
            return Err(());
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    /// A quoted-string, unescaped (RFC 9110 5.6.4).
    fn quoted(&mut self) -> Result<String, ()> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek().ok_or(())? {
                b'"' => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    let c = *self.s.get(self.i + 1).ok_or(())?;
                    if !(c == b'\t' || c == b' ' || c.is_ascii_graphic() || c >= 0x80) {
                        return Err(());
                    }
                    out.push(c);
                    self.i += 2;
                }
                c if c == b'\t'
                    || c == b' '
                    || (c.is_ascii_graphic() && c != b'"')
                    || c >= 0x80 =>
                {
                    out.push(c);
                    self.i += 1;
                }
                _ => return Err(()),
            }
        }
    }
}

/// RFC 9110 5.6.2 tchar.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(tchar)
}

// ----- the reference: RFC 7692 -----------------------------------------------------------------

const NAME: &str = "permessage-deflate";

/// RFC 7692 7.1.2: a window size is 8 to 15, in decimal without leading zeros.
fn bits(value: Option<&str>) -> Option<u8> {
    match value? {
        "8" => Some(8),
        "9" => Some(9),
        "10" => Some(10),
        "11" => Some(11),
        "12" => Some(12),
        "13" => Some(13),
        "14" => Some(14),
        "15" => Some(15),
        _ => None,
    }
}

/// The parameters of one element, or None when one is unknown or repeated.
fn by_name(params: &[(String, Option<String>)]) -> Option<Vec<(&str, Option<&str>)>> {
    let mut out: Vec<(&str, Option<&str>)> = Vec::new();
    for (k, v) in params {
        if out.iter().any(|(seen, _)| seen == k) {
            return None;
        }
        let known = matches!(
            k.as_str(),
            "server_no_context_takeover"
                | "client_no_context_takeover"
                | "server_max_window_bits"
                | "client_max_window_bits"
        );
        if !known {
            return None;
        }
        out.push((k, v.as_deref()));
    }
    Some(out)
}

/// RFC 7692 5 and 7.1, the client's side: what the answer `extensions` agrees to for the offer
/// made with `offered`; `None` when the client must fail the connection.
pub(crate) fn client_check(
    offered: &DeflateConfig,
    extensions: &[Extension],
) -> Option<Option<DeflateParams>> {
    let (name, params) = match extensions {
        [] => return Some(None),
        [one] => one,
        // We offered one extension; it cannot be accepted twice.
        _ => return None,
    };
    if name != NAME {
        return None;
    }
    let params = by_name(params)?;
    let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    let flag = |k: &str| match get(k) {
        None => Some(false),
        Some(None) => Some(true),
        Some(Some(_)) => None,
    };
    let server_nct = flag("server_no_context_takeover")?;
    let client_nct = flag("client_no_context_takeover")?;
    // The server must accept what we asked of it.
    if offered.server_no_context_takeover && !server_nct {
        return None;
    }
    let server_bits = match get("server_max_window_bits") {
        None if offered.server_max_window_bits.is_some() => return None,
        None => 15,
        Some(v) => {
            let b = bits(v)?;
            if offered
                .server_max_window_bits
                .is_some_and(|asked| b > asked)
            {
                return None;
            }
            b
        }
    };
    let offered_client_bits = offered.client_max_window_bits.unwrap_or(15);
    let client_bits = match get("client_max_window_bits") {
        None => offered_client_bits,
        Some(v) => {
            let b = bits(v)?;
            if b > offered_client_bits {
                return None;
            }
            b
        }
    };
    Some(Some(DeflateParams {
        client_no_context_takeover: offered.client_no_context_takeover || client_nct,
        server_no_context_takeover: server_nct,
        client_max_window_bits: client_bits,
        server_max_window_bits: server_bits,
    }))
}

/// An offer the server can accept (RFC 7692 7.1): its flags and window sizes.
#[derive(Debug)]
struct Offer {
    server_nct: bool,
    server_bits: Option<u8>,
    /// `Some(None)`: offered without a value.
    client_bits: Option<Option<u8>>,
}

fn valid_offer((name, params): &Extension) -> Option<Offer> {
    if name != NAME {
        return None;
    }
    let params = by_name(params)?;
    let mut offer = Offer {
        server_nct: false,
        server_bits: None,
        client_bits: None,
    };
    for (k, v) in params {
        match (k, v) {
            ("server_no_context_takeover", None) => offer.server_nct = true,
            ("client_no_context_takeover", None) => {}
            ("server_max_window_bits", v) => offer.server_bits = Some(bits(v)?),
            ("client_max_window_bits", None) => offer.client_bits = Some(None),
            ("client_max_window_bits", v) => offer.client_bits = Some(Some(bits(v)?)),
            _ => return None,
        }
    }
    Some(offer)
}

/// The server's answer to `offer` under `server`'s settings fits both (RFC 7692 7.1), and says
/// what `params` say.
fn check_answer(server: &DeflateConfig, offer: &Offer, params: &DeflateParams, answer: &str) {
    let parsed = parse(&[answer]).expect("the answer parses");
    let agreed = client_check(
        &DeflateConfig::new()
            .server_no_context_takeover(offer.server_nct)
            .server_max_window_bits(offer.server_bits)
            .client_max_window_bits(offer.client_bits.map(|b| b.unwrap_or(15))),
        &parsed,
    );
    // What the answer tells a client that made this offer.
    let Some(Some(told)) = agreed else {
        panic!("{answer:?} is no valid answer to {offer:?}");
    };
    assert_eq!(
        told.server_no_context_takeover,
        params.server_no_context_takeover
    );
    assert_eq!(told.server_max_window_bits, params.server_max_window_bits);
    assert_eq!(told.client_max_window_bits, params.client_max_window_bits);
    // The server's own settings hold.
    assert!(params.server_no_context_takeover >= server.server_no_context_takeover);
    assert!(params.client_no_context_takeover >= server.client_no_context_takeover);
    assert!(params.server_max_window_bits <= server.server_max_window_bits.unwrap_or(15));
    if offer.client_bits.is_some() {
        assert!(params.client_max_window_bits <= server.client_max_window_bits.unwrap_or(15));
    } else {
        // RFC 7692 7.1.2.2: no client_max_window_bits in an answer to an offer without it.
        assert!(!answer.contains("client_max_window_bits"), "{answer}");
        assert_eq!(params.client_max_window_bits, 15);
    }
}
