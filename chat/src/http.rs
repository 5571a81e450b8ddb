//! Plain HTTP on the chat port: the browser pages, `/healthz` and `/metrics`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use syncws::http::Method;
use syncws::Incoming;

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::stats::StatsDb;
use crate::web::Web;
use crate::{logs, report};

/// What the pages read, and who may see which.
pub struct Site {
    pub metrics: Arc<Metrics>,
    pub web: Web,
    /// `stats.db`, the samples `/report` draws.
    pub stats: PathBuf,
    /// The event log's directory, for `/logs`.
    pub log_dir: PathBuf,
    /// With `--jwt-secret`: `/report` and `/logs` need a token (on a chat port).
    pub auth: Option<Arc<Auth>>,
    /// What this listener serves.
    pub role: Role,
    /// Cluster mode: Redis reachable (commands, subscriber); /healthz fails while one is not.
    pub health: Vec<Arc<std::sync::atomic::AtomicBool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Chat, and the operator's pages too when there is no admin port.
    Chat { operator_pages: bool },
    /// `--admin-listen`: the operator's pages, no chat, no token.
    Admin,
}

/// One answer.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    /// Extra header lines, each ending in CRLF.
    headers: String,
}

impl Response {
    fn new(status: &'static str, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: String::new(),
        }
    }

    fn text(status: &'static str, body: &str) -> Self {
        Response::new(status, "text/plain; charset=utf-8", body)
    }
}

/// Answer a request that is not a WebSocket upgrade.
pub fn answer(incoming: Incoming, site: &Site) {
    let method = incoming.method().clone();
    let head_only = method == Method::HEAD;
    let response = if method == Method::GET || head_only {
        route(&incoming, site)
    } else {
        Response::text("405 Method Not Allowed", "only GET and HEAD\n")
    };
    send(incoming, &response, head_only);
}

/// Refuse an upgrade with `status` (e.g. "503 Service Unavailable"), extra header lines (each
/// ending in CRLF) and a plain-text `body`.
pub fn refuse(incoming: Incoming, status: &'static str, headers: &str, body: &str) {
    let mut response = Response::text(status, body);
    response.headers.push_str(headers);
    send(incoming, &response, false);
}

/// Write `response` and close: the one place an HTTP answer is put on the wire.
fn send(incoming: Incoming, response: &Response, head_only: bool) {
    let mut http = incoming.into_http();
    let mut bytes = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{}Connection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        response.headers
    )
    .into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    let _ = http.write_all(&bytes);
    let _ = http.close();
}

fn route(incoming: &Incoming, site: &Site) -> Response {
    let path = incoming.path();
    match path {
        "/healthz" => {
            return if site
                .health
                .iter()
                .all(|up| up.load(std::sync::atomic::Ordering::SeqCst))
            {
                Response::text("200 OK", "ok\n")
            } else {
                Response::text("503 Service Unavailable", "redis: unreachable\n")
            }
        }
        "/metrics" => {
            return Response::new("200 OK", "text/plain; version=0.0.4", site.metrics.render())
        }
        _ => {}
    }
    let operator_page = matches!(path, "/report" | "/logs");
    match site.role {
        Role::Admin if !operator_page => {
            return Response::text(
                "404 Not Found",
                "the admin port serves /report, /logs, /metrics, /healthz\n",
            )
        }
        Role::Chat {
            operator_pages: false,
        } if operator_page => {
            return Response::text(
                "404 Not Found",
                "served on the admin port (--admin-listen)\n",
            )
        }
        Role::Chat { .. } if operator_page => {
            if let Some(auth) = &site.auth {
                if let Err(why) = auth.check(incoming) {
                    let mut r = Response::text("401 Unauthorized", &format!("{why}\n"));
                    r.headers.push_str("WWW-Authenticate: Bearer\r\n");
                    return r;
                }
            }
        }
        _ => {}
    }
    match path {
        "/report" => {
            let window = query_value(incoming.query(), "window").unwrap_or_default();
            let page = StatsDb::open(&site.stats)
                .and_then(|db| report::page(&db, &window, crate::now_ms()));
            match page {
                Ok(html) => Response::new("200 OK", "text/html; charset=utf-8", html),
                Err(e) => Response::text(
                    "500 Internal Server Error",
                    &format!("cannot read the stats: {e}\n"),
                ),
            }
        }
        "/logs" => {
            let (ok, content_type, body) =
                logs::answer(&site.log_dir, &logs::Query::parse(incoming.query()));
            let status = if ok { "200 OK" } else { "400 Bad Request" };
            Response::new(status, content_type, body)
        }
        path => match site.web.asset(path) {
            Some((content_type, body)) => {
                let mut r = Response::new("200 OK", content_type, body);
                // The chat page loads only its own files and talks only to its own origin
                // (ws: and wss: included in 'self'); no inline script, no framing.
                r.headers.push_str(
                    "Content-Security-Policy: default-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n",
                );
                r
            }
            None => Response::text("404 Not Found", "no such page\n"),
        },
    }
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}
