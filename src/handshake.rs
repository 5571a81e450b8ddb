//! What the opening handshake agreed.

use http::{HeaderMap, StatusCode};

/// The server's answer to the opening handshake: status, headers and the negotiated
/// subprotocol. Available from every client after connect, and in
/// [`Handler::on_activated`](crate::Handler::on_activated) through
/// [`Context::handshake`](crate::Context::handshake).
#[derive(Debug, Clone)]
pub struct Handshake {
    status: StatusCode,
    headers: HeaderMap,
    subprotocol: Option<String>,
}

impl Handshake {
    pub(crate) fn from_response<B>(response: &http::Response<B>) -> Self {
        let subprotocol = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Handshake {
            status: response.status(),
            headers: response.headers().clone(),
            subprotocol,
        }
    }

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
}
