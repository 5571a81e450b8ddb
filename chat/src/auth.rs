//! `--jwt-secret`: HS256 tokens (through the `jsonwebtoken` crate). The WebSocket upgrade then
//! needs one, as `?token=` or `Authorization: Bearer`, and its `sub` is the nick (fixed for the
//! connection); with `--jwt-audience` its `aud` must name this server. The operator's pages take
//! the same token from hosts other than this one (see [`crate::http`]). Tokens are never written
//! to a log: [`redact`] takes them out of anything that quotes a request.

use std::borrow::Cow;

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use syncws::Incoming;

/// The shortest secret accepted: HS256's key is as strong as its bytes, and a short or empty
/// one (an unset variable in a template) would let anyone mint tokens.
pub const MIN_SECRET_BYTES: usize = 32;

/// Checks tokens signed with the server's secret.
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Auth {
    /// Tokens signed with `secret` (at least [`MIN_SECRET_BYTES`]); with `audience`, only those
    /// whose `aud` names it.
    ///
    /// # Errors
    ///
    /// A secret shorter than [`MIN_SECRET_BYTES`], or an empty audience.
    pub fn new(secret: &str, audience: Option<&str>) -> Result<Auth, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "--jwt-secret (or CHAT_JWT_SECRET) must be at least {MIN_SECRET_BYTES} bytes; \
                 this one is {} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        // `sub` names the user; `exp` is checked when the token has one (it is not required,
        // so long-lived tokens for bots work), as are `nbf` and the signature always. A token
        // that names an audience is refused unless it is ours (jsonwebtoken's rule).
        validation.validate_nbf = true;
        match audience {
            Some("") => return Err("--jwt-audience must not be empty".into()),
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.set_required_spec_claims(&["sub", "aud"]);
            }
            None => validation.set_required_spec_claims(&["sub"]),
        }
        Ok(Auth {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        })
    }

    /// The subject of a valid token, or why it is refused.
    pub fn subject(&self, token: &str) -> Result<String, String> {
        decode::<Claims>(token, &self.key, &self.validation)
            .map(|t| t.claims.sub)
            .map_err(|e| format!("invalid token: {e}"))
    }

    /// The subject of the token `incoming` carries: `?token=` first, then the header.
    pub fn check(&self, incoming: &Incoming) -> Result<String, String> {
        let token = token_of(incoming).ok_or_else(|| "a token is required".to_owned())?;
        self.subject(&token)
    }
}

/// The token a request carries: `?token=`, else `Authorization: Bearer`.
pub fn token_of(incoming: &Incoming) -> Option<String> {
    query_token(incoming).or_else(|| {
        let value = incoming.headers().get("authorization")?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    })
}

/// The `?token=` of a request, if it has one.
pub fn query_token(incoming: &Incoming) -> Option<String> {
    incoming.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    })
}

/// `text` with the value of every `token=` (query parameters such as `token`, `access_token`)
/// and every `Bearer` credential replaced by `[redacted]`: for logging what a client sent.
///
/// A value ends at `&`, `#`, white space or an unescaped `"` (so a target quoted by `{:?}`
/// keeps its closing quote); a backslash takes the character after it along, so an escaped
/// quote inside the value is redacted too.
pub fn redact(text: &str) -> Cow<'_, str> {
    const MARKERS: [&str; 2] = ["token=", "bearer "];
    let lower = text.to_ascii_lowercase();
    let mut out = String::new();
    let mut done = 0;
    let mut at = 0;
    while let Some((start, marker)) = MARKERS
        .iter()
        .filter_map(|m| lower[at..].find(m).map(|i| (at + i, *m)))
        .min_by_key(|(i, _)| *i)
    {
        let value = start + marker.len();
        let mut end = value;
        let bytes = text.as_bytes();
        while end < bytes.len() {
            match bytes[end] {
                b'&' | b'#' | b'"' => break,
                b if b.is_ascii_whitespace() => break,
                b'\\' => end = (end + 2).min(bytes.len()),
                _ => end += 1,
            }
        }
        // `end` only stops on ASCII or the text's end, so it is a char boundary; a backslash
        // before a multi-byte character is moved past the whole character.
        while !text.is_char_boundary(end) {
            end += 1;
        }
        if end > value {
            out.push_str(&text[done..value]);
            out.push_str("[redacted]");
            done = end;
        }
        at = end.max(value);
    }
    if done == 0 {
        Cow::Borrowed(text)
    } else {
        out.push_str(&text[done..]);
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_shorter_than_32_bytes_are_refused() {
        for secret in ["", "s3cret", &"x".repeat(31)] {
            let e = Auth::new(secret, None).err().unwrap();
            assert!(e.contains("32 bytes"), "{e}");
        }
        assert!(Auth::new(&"x".repeat(32), None).is_ok());
        assert!(Auth::new(&"x".repeat(32), Some("")).is_err());
    }

    #[test]
    fn tokens_and_bearer_credentials_are_redacted() {
        for (text, want) in [
            ("nothing here", "nothing here"),
            ("GET /?token=abc.def.ghi", "GET /?token=[redacted]"),
            (
                "bad request target \"/?nick=ann&token=eyJ.SECRET\\\"x\" (400)",
                "bad request target \"/?nick=ann&token=[redacted]\" (400)",
            ),
            (
                "/?access_token=one&x=1&TOKEN=two#frag",
                "/?access_token=[redacted]&x=1&TOKEN=[redacted]#frag",
            ),
            (
                "authorization: Bearer abc.def more",
                "authorization: Bearer [redacted] more",
            ),
            ("token=", "token="),
            ("token=é\\é\\", "token=[redacted]"),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
    }
}
