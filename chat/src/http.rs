//! Plain HTTP on the chat port: `/healthz`, `/metrics`, and the place for the browser pages.

use std::io::Write;

use syncws::http::Method;
use syncws::Incoming;

use crate::metrics::Metrics;

/// Answer a request that is not a WebSocket upgrade.
pub fn answer(incoming: Incoming, metrics: &Metrics) {
    let get = incoming.method() == Method::GET || incoming.method() == Method::HEAD;
    let head_only = incoming.method() == Method::HEAD;
    let (status, content_type, body): (&str, &str, String) = match (get, incoming.path()) {
        (true, "/healthz") => ("200 OK", "text/plain", "ok\n".into()),
        (true, "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        // The browser pages (chat, report, logs) are served here.
        (true, "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "syncws chat server: connect a WebSocket to this URL; /metrics, /healthz\n".into(),
        ),
        (true, _) => ("404 Not Found", "text/plain", "no such page\n".into()),
        (false, _) => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".into(),
        ),
    };
    let mut http = incoming.into_http();
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = http.write_all(&response);
    let _ = http.close();
}
