//! permessage-deflate (RFC 7692): what to offer, checking what was agreed, and the two halves of
//! the data path.
//!
//! tungstenite has no extension support and fails any frame with RSV1 set, so compression lives
//! around it rather than in it:
//!
//! - **Outgoing** ([`outbound`]): the session compresses a data message's payload itself and hands
//!   tungstenite a ready frame with RSV1 set (`Message::Frame`); tungstenite masks and queues it
//!   like any other, so queue limits and backpressure are unchanged.
//! - **Incoming** ([`inbound`]): a layer in [`Stream`](crate::stream::Stream), below tungstenite,
//!   rewrites the byte stream: frames of compressed messages are inflated (output bounded by the
//!   message size limit) and re-emitted as plain frames; every other frame passes through byte
//!   for byte. tungstenite then applies all of its checks (UTF-8, fragmentation rules, control
//!   frames, sizes, reserved bits) to what it sees.

pub(crate) mod inbound;
pub(crate) mod outbound;

use crate::Error;

/// Settings for permessage-deflate compression (RFC 7692), enabled with
/// [`ConfigBuilder::deflate`](crate::ConfigBuilder::deflate). Off by default.
///
/// A client offers the extension with these parameters; the server's answer decides what is used
/// (see [`Handshake::deflate`](crate::Handshake::deflate)). On a [`ServerConnection`](
/// crate::ServerConnection) the same settings say which offers to accept and what to ask of the
/// client.
///
/// ```
/// use syncws::{Config, DeflateConfig};
/// let config = Config::builder()
///     .deflate(Some(DeflateConfig::new().threshold(256).level(3)))
///     .build()?;
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct DeflateConfig {
    pub(crate) client_no_context_takeover: bool,
    pub(crate) server_no_context_takeover: bool,
    pub(crate) client_max_window_bits: Option<u8>,
    pub(crate) server_max_window_bits: Option<u8>,
    pub(crate) threshold: usize,
    pub(crate) level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            client_no_context_takeover: false,
            server_no_context_takeover: false,
            client_max_window_bits: None,
            server_max_window_bits: None,
            threshold: 64,
            level: 6,
        }
    }
}

impl DeflateConfig {
    /// The defaults: context takeover both ways, 32 KiB windows, compress messages of 64 bytes
    /// and more, zlib level 6.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client compresses every message on its own, without referring to earlier ones
    /// (`client_no_context_takeover`): less memory kept between messages, a worse ratio on
    /// small similar messages. A client offers it as a promise; a server asks it of the client.
    /// Defaults to false.
    pub fn client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }

    /// Ask that the server compress every message on its own (`server_no_context_takeover`).
    /// Defaults to false.
    pub fn server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }

    /// The largest LZ77 window, as a power of two from 8 to 15, the client compresses with
    /// (`client_max_window_bits`). A client always offers the parameter (without a value when
    /// this is `None`), so a server may lower it; a server with `Some` asks it of clients.
    /// Defaults to `None` (15).
    ///
    /// zlib cannot compress with a 256-byte window: a side held to 8 sends its messages
    /// uncompressed, which the protocol allows.
    pub fn client_max_window_bits(mut self, bits: Option<u8>) -> Self {
        self.client_max_window_bits = bits;
        self
    }

    /// The largest LZ77 window, from 8 to 15, the server may compress with
    /// (`server_max_window_bits`). Defaults to `None`: not asked for, 15.
    pub fn server_max_window_bits(mut self, bits: Option<u8>) -> Self {
        self.server_max_window_bits = bits;
        self
    }

    /// Messages shorter than this many bytes are sent uncompressed (compressing them costs
    /// more CPU than the bytes it saves). Defaults to 64.
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// zlib compression level, 0 (store) to 9 (smallest). Defaults to 6.
    pub fn level(mut self, level: u32) -> Self {
        self.level = level;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        for (name, bits) in [
            ("client_max_window_bits", self.client_max_window_bits),
            ("server_max_window_bits", self.server_max_window_bits),
        ] {
            if let Some(b) = bits {
                if !(8..=15).contains(&b) {
                    return Err(Error::Config(format!(
                        "deflate {name} must be from 8 to 15, not {b}"
                    )));
                }
            }
        }
        if self.level > 9 {
            return Err(Error::Config(format!(
                "deflate level must be from 0 to 9, not {}",
                self.level
            )));
        }
        Ok(())
    }
}

/// What the opening handshake agreed for permessage-deflate. Window sizes are powers of two
/// (15 is 32 KiB, the default when the answer left them out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateParams {
    /// The client compresses each message on its own.
    pub client_no_context_takeover: bool,
    /// The server compresses each message on its own.
    pub server_no_context_takeover: bool,
    /// The client's largest compression window.
    pub client_max_window_bits: u8,
    /// The server's largest compression window.
    pub server_max_window_bits: u8,
}

const NAME: &str = "permessage-deflate";

/// One extension from a `Sec-WebSocket-Extensions` header: its name and parameters (values
/// unquoted).
pub(crate) type Extension = (String, Vec<(String, Option<String>)>);

/// Split `Sec-WebSocket-Extensions` values (RFC 6455 9.1: comma-separated extensions, each a
/// token with `;`-separated parameters, values tokens or quoted strings).
pub(crate) fn parse_extensions<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Vec<Extension>, String> {
    let mut out = Vec::new();
    for value in values {
        for element in split_outside_quotes(value, ',') {
            if element.trim().is_empty() {
                continue;
            }
            let mut parts = split_outside_quotes(element, ';').into_iter();
            let name = parts.next().unwrap_or_default().trim();
            if !is_token(name) {
                return Err(format!("malformed extension {element:?}"));
            }
            let mut params = Vec::new();
            for param in parts {
                let (key, value) = match param.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
                    None => (param.trim(), None),
                };
                if !is_token(key) {
                    return Err(format!("malformed parameter {param:?} of {name}"));
                }
                params.push((key.to_ascii_lowercase(), value));
            }
            out.push((name.to_ascii_lowercase(), params));
        }
    }
    Ok(out)
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(v: &str) -> Result<String, String> {
    let malformed = || format!("malformed parameter value {v:?}");
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            // A backslash quotes the one character after it (RFC 9110 5.6.4), so `\\` is a
            // backslash, not nothing; and the value, unescaped, must still be a token (RFC 6455
            // 9.1), or `"1\\0"` would pass for 10.
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' {
                    chars.next().ok_or_else(malformed)?
                } else {
                    c
                });
            }
            if is_token(&out) {
                Ok(out)
            } else {
                Err(malformed())
            }
        }
        None if is_token(v) => Ok(v.to_owned()),
        None => Err(malformed()),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// RFC 7692 7.1.2: a window size is 8 to 15, written without leading zeros.
fn window_bits(value: Option<&str>) -> Option<u8> {
    let v = value?;
    if v.starts_with('0') {
        return None;
    }
    v.parse().ok().filter(|b| (8..=15).contains(b))
}

/// The `Sec-WebSocket-Extensions` value a client sends.
pub(crate) fn offer(config: &DeflateConfig) -> String {
    let mut s = String::from(NAME);
    if config.client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    if config.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    match config.client_max_window_bits {
        Some(b) => s.push_str(&format!("; client_max_window_bits={b}")),
        None => s.push_str("; client_max_window_bits"),
    }
    if let Some(b) = config.server_max_window_bits {
        s.push_str(&format!("; server_max_window_bits={b}"));
    }
    s
}

/// Check the server's `Sec-WebSocket-Extensions` answer against what we offered (RFC 7692
/// 5 and 7.1): `Ok(None)` when it declined, the agreed parameters when it accepted, an error
/// when the answer is not a valid acceptance of our offer.
pub(crate) fn client_verify<'a>(
    offered: Option<&DeflateConfig>,
    values: impl Iterator<Item = &'a str>,
) -> Result<Option<DeflateParams>, Error> {
    let bad = |why: String| Error::InvalidHandshake(format!("Sec-WebSocket-Extensions: {why}"));
    let extensions = parse_extensions(values).map_err(bad)?;
    let mut agreed = None;
    for (name, params) in extensions {
        let Some(config) = offered.filter(|_| name == NAME) else {
            return Err(bad(format!(
                "the server accepted extension {name:?}, which we did not offer"
            )));
        };
        if agreed.is_some() {
            return Err(bad(format!("{NAME} accepted twice")));
        }
        let mut p = DeflateParams {
            client_no_context_takeover: config.client_no_context_takeover,
            server_no_context_takeover: false,
            client_max_window_bits: config.client_max_window_bits.unwrap_or(15),
            server_max_window_bits: 15,
        };
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in &params {
            if seen.contains(&key.as_str()) {
                return Err(bad(format!("parameter {key} given twice")));
            }
            seen.push(key);
            match (key.as_str(), value) {
                ("server_no_context_takeover", None) => p.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => p.client_no_context_takeover = true,
                ("server_max_window_bits", v) => {
                    let bits = window_bits(v.as_deref())
                        .ok_or_else(|| bad(format!("server_max_window_bits={v:?} is not 8-15")))?;
                    if config.server_max_window_bits.is_some_and(|max| bits > max) {
                        return Err(bad(format!(
                            "server_max_window_bits={bits} is larger than the {} we asked for",
                            config.server_max_window_bits.unwrap_or(15)
                        )));
                    }
                    p.server_max_window_bits = bits;
                }
                ("client_max_window_bits", v) => {
                    let bits = window_bits(v.as_deref())
                        .ok_or_else(|| bad(format!("client_max_window_bits={v:?} is not 8-15")))?;
                    if bits > p.client_max_window_bits {
                        return Err(bad(format!(
                            "client_max_window_bits={bits} is larger than the {} we offered",
                            p.client_max_window_bits
                        )));
                    }
                    p.client_max_window_bits = bits;
                }
                (key, _) => return Err(bad(format!("unknown or malformed parameter {key}"))),
            }
        }
        if config.server_no_context_takeover && !p.server_no_context_takeover {
            return Err(bad(
                "the server did not accept server_no_context_takeover, which we asked for".into(),
            ));
        }
        if let Some(max) = config.server_max_window_bits {
            if !seen.contains(&"server_max_window_bits") {
                return Err(bad(format!(
                    "the server did not accept server_max_window_bits={max}, which we asked for"
                )));
            }
        }
        agreed = Some(p);
    }
    Ok(agreed)
}

/// Server side: pick the first acceptable permessage-deflate offer among the client's
/// `Sec-WebSocket-Extensions` values. Returns the agreed parameters and the answer to send, or
/// None to decline (offers we cannot parse are declined, not fatal, as RFC 7692 5.1 allows).
pub(crate) fn server_accept<'a>(
    config: &DeflateConfig,
    values: impl Iterator<Item = &'a str>,
) -> Option<(DeflateParams, String)> {
    let extensions = parse_extensions(values).ok()?;
    'offers: for (name, params) in extensions {
        if name != NAME {
            continue;
        }
        let mut p = DeflateParams {
            client_no_context_takeover: config.client_no_context_takeover,
            server_no_context_takeover: config.server_no_context_takeover,
            client_max_window_bits: 15,
            server_max_window_bits: config.server_max_window_bits.unwrap_or(15),
        };
        let mut client_bits_offered = None;
        let mut client_promised = false;
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in &params {
            if seen.contains(&key.as_str()) {
                continue 'offers;
            }
            seen.push(key);
            match (key.as_str(), value) {
                ("server_no_context_takeover", None) => p.server_no_context_takeover = true,
                // A promise by the client: nothing to answer, but part of what is agreed.
                ("client_no_context_takeover", None) => client_promised = true,
                ("server_max_window_bits", v) => match window_bits(v.as_deref()) {
                    Some(bits) => p.server_max_window_bits = p.server_max_window_bits.min(bits),
                    None => continue 'offers,
                },
                ("client_max_window_bits", None) => client_bits_offered = Some(15),
                ("client_max_window_bits", v) => match window_bits(v.as_deref()) {
                    Some(bits) => client_bits_offered = Some(bits),
                    None => continue 'offers,
                },
                _ => continue 'offers,
            }
        }
        let mut answer = String::from(NAME);
        if p.server_no_context_takeover {
            answer.push_str("; server_no_context_takeover");
        }
        if p.client_no_context_takeover {
            answer.push_str("; client_no_context_takeover");
        }
        // What the client will do whether we echo it or not, as its own check of our answer
        // records it: both ends describe the same agreement.
        p.client_no_context_takeover |= client_promised;
        if seen.contains(&"server_max_window_bits") || config.server_max_window_bits.is_some() {
            answer.push_str(&format!(
                "; server_max_window_bits={}",
                p.server_max_window_bits
            ));
        }
        if let Some(offered) = client_bits_offered {
            p.client_max_window_bits = offered;
            if let Some(ours) = config.client_max_window_bits {
                p.client_max_window_bits = offered.min(ours);
                answer.push_str(&format!(
                    "; client_max_window_bits={}",
                    p.client_max_window_bits
                ));
            }
        }
        return Some((p, answer));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(offer: &DeflateConfig, answer: &str) -> Result<Option<DeflateParams>, Error> {
        client_verify(Some(offer), std::iter::once(answer))
    }

    #[test]
    fn the_offer_names_every_requested_parameter() {
        assert_eq!(
            offer(&DeflateConfig::new()),
            "permessage-deflate; client_max_window_bits"
        );
        let all = DeflateConfig::new()
            .client_no_context_takeover(true)
            .server_no_context_takeover(true)
            .client_max_window_bits(Some(10))
            .server_max_window_bits(Some(12));
        assert_eq!(
            offer(&all),
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover; \
             client_max_window_bits=10; server_max_window_bits=12"
        );
    }

    #[test]
    fn valid_answers_give_the_agreed_parameters() {
        let d = DeflateConfig::new();
        let p = verify(&d, "permessage-deflate").unwrap().unwrap();
        assert_eq!(
            p,
            DeflateParams {
                client_no_context_takeover: false,
                server_no_context_takeover: false,
                client_max_window_bits: 15,
                server_max_window_bits: 15,
            }
        );
        let p = verify(
            &d,
            "Permessage-Deflate ; client_max_window_bits=\"9\"; server_no_context_takeover; \
             server_max_window_bits=10; client_no_context_takeover",
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.client_max_window_bits, 9);
        assert_eq!(p.server_max_window_bits, 10);
        assert!(p.client_no_context_takeover && p.server_no_context_takeover);
        assert_eq!(verify(&d, "").unwrap(), None);
        let asked = DeflateConfig::new()
            .server_no_context_takeover(true)
            .server_max_window_bits(Some(12));
        let p = verify(
            &asked,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.server_max_window_bits, 11);
    }

    #[test]
    fn answers_that_do_not_fit_the_offer_are_refused() {
        let d = DeflateConfig::new().client_max_window_bits(Some(10));
        for (answer, why) in [
            ("x-webkit-deflate-frame", "did not offer"),
            ("permessage-deflate, permessage-deflate", "twice"),
            ("permessage-deflate; server_max_window_bits", "not 8-15"),
            ("permessage-deflate; server_max_window_bits=16", "not 8-15"),
            ("permessage-deflate; server_max_window_bits=010", "not 8-15"),
            (
                "permessage-deflate; client_max_window_bits=12",
                "larger than the 10",
            ),
            ("permessage-deflate; client_max_window_bits", "not 8-15"),
            ("permessage-deflate; mystery", "unknown"),
            (
                "permessage-deflate; server_no_context_takeover=1",
                "unknown",
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                "twice",
            ),
            (
                "permessage-deflate; client_max_window_bits=\"1",
                "malformed",
            ),
        ] {
            let e = verify(&d, answer).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidHandshake(m) if m.contains(why)),
                "{answer}: {e}"
            );
        }
        let asked = DeflateConfig::new()
            .server_no_context_takeover(true)
            .server_max_window_bits(Some(10));
        let e = verify(&asked, "permessage-deflate; server_max_window_bits=10").unwrap_err();
        assert!(e.to_string().contains("server_no_context_takeover"), "{e}");
        let e = verify(&asked, "permessage-deflate; server_no_context_takeover").unwrap_err();
        assert!(e.to_string().contains("server_max_window_bits=10"), "{e}");
        let e = verify(
            &asked,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
        )
        .unwrap_err();
        assert!(e.to_string().contains("larger"), "{e}");
        let e = client_verify(None, std::iter::once("permessage-deflate")).unwrap_err();
        assert!(e.to_string().contains("did not offer"), "{e}");
    }

    /// Found by the property tests (extension_headers_follow_rfc_7692): every backslash was
    /// dropped, so an escaped backslash between two digits made a window size of what is not a
    /// token at all.
    #[test]
    fn quoted_values_are_unescaped_once_and_must_be_tokens() {
        let d = DeflateConfig::new();
        for answer in [
            r#"permessage-deflate; client_max_window_bits="1\\0""#,
            r#"permessage-deflate; server_max_window_bits="""#,
            r#"permessage-deflate; server_max_window_bits="1 2""#,
        ] {
            let e = verify(&d, answer).unwrap_err();
            assert!(e.to_string().contains("malformed"), "{answer}: {e}");
        }
        // A quoted-pair that stands for an ordinary character is still that character.
        let p = verify(&d, r#"permessage-deflate; client_max_window_bits="1\0""#)
            .unwrap()
            .unwrap();
        assert_eq!(p.client_max_window_bits, 10);
    }

    #[test]
    fn a_server_accepts_the_first_offer_it_can_meet() {
        let d = DeflateConfig::new();
        let offers = "permessage-deflate; mystery=1, \
                      permessage-deflate; server_max_window_bits=10; client_max_window_bits, \
                      permessage-deflate";
        let (p, answer) = server_accept(&d, std::iter::once(offers)).unwrap();
        assert_eq!(answer, "permessage-deflate; server_max_window_bits=10");
        assert_eq!(p.server_max_window_bits, 10);
        assert_eq!(p.client_max_window_bits, 15);
        let strict = DeflateConfig::new()
            .client_no_context_takeover(true)
            .client_max_window_bits(Some(9));
        let (p, answer) = server_accept(
            &strict,
            std::iter::once(
                "permessage-deflate; server_no_context_takeover; client_max_window_bits",
            ),
        )
        .unwrap();
        assert_eq!(
            answer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             client_max_window_bits=9"
        );
        assert!(p.client_no_context_takeover && p.server_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 9);
        // What the server answers, the client accepts.
        let client = DeflateConfig::new().server_no_context_takeover(true);
        let (_, answer) = server_accept(&strict, std::iter::once(offer(&client).as_str())).unwrap();
        assert!(
            client_verify(Some(&client), std::iter::once(answer.as_str()))
                .unwrap()
                .is_some()
        );
        assert!(server_accept(&d, std::iter::once("x-other, permessage-deflate; bad")).is_none());
        assert!(server_accept(&d, std::iter::empty()).is_none());
    }

    /// Found by the property tests (extension_headers_follow_rfc_7692, the round trip): the
    /// client agreed to its own promise of no context takeover, the server did not record it,
    /// so the two ends described different agreements.
    #[test]
    fn both_ends_agree_on_a_clients_promise_of_no_context_takeover() {
        let promising = DeflateConfig::new().client_no_context_takeover(true);
        let sent = offer(&promising);
        assert_eq!(
            sent,
            "permessage-deflate; client_no_context_takeover; client_max_window_bits"
        );
        let (p, answer) =
            server_accept(&DeflateConfig::new(), std::iter::once(sent.as_str())).unwrap();
        assert!(p.client_no_context_takeover);
        assert_eq!(answer, "permessage-deflate", "a promise needs no answer");
        let agreed = client_verify(Some(&promising), std::iter::once(answer.as_str()));
        assert_eq!(agreed.unwrap(), Some(p));
    }

    #[test]
    fn settings_out_of_range_are_config_errors() {
        assert!(DeflateConfig::new()
            .client_max_window_bits(Some(7))
            .validate()
            .is_err());
        assert!(DeflateConfig::new()
            .server_max_window_bits(Some(16))
            .validate()
            .is_err());
        assert!(DeflateConfig::new().level(10).validate().is_err());
        assert!(DeflateConfig::new()
            .client_max_window_bits(Some(8))
            .validate()
            .is_ok());
    }
}
