//! `--jwt-secret`: HS256 tokens (through the `jsonwebtoken` crate). The WebSocket upgrade then
//! needs one, as `?token=` or `Authorization: Bearer`, and its `sub` is the nick (fixed for the
//! connection); `/report` and `/logs` take the same token unless they are served on
//! `--admin-listen` only.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use syncws::Incoming;

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
    pub fn new(secret: &str) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        // `sub` names the user; `exp` is checked when the token has one (it is not required,
        // so long-lived tokens for bots work), as are `nbf` and the signature always.
        validation.set_required_spec_claims(&["sub"]);
        validation.validate_nbf = true;
        Auth {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
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

fn token_of(incoming: &Incoming) -> Option<String> {
    let from_query = incoming.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    from_query.or_else(|| {
        let value = incoming.headers().get("authorization")?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    })
}
