//! Plain HTTP on the chat ports and the admin port: the chat page, `/healthz`, and the
//! operator's pages (`/report`, `/logs`, `/metrics`), which are private by default: with no
//! admin port they answer this host (loopback peers), and other hosts only with a valid token
//! (`--jwt-secret`); with `--admin-listen` they are served there only. `/healthz` is answered
//! everywhere, for load balancers.

use std::io::Write;
use std::net::IpAddr;
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
    /// With `--jwt-secret`: the upgrade needs a token, and the operator's pages take one from
    /// other hosts (on a chat port).
    pub auth: Option<Arc<Auth>>,
    /// What this listener serves.
    pub role: Role,
    /// Cluster mode: Redis reachable (commands, subscriber); /healthz fails while one is not.
    pub health: Vec<Arc<std::sync::atomic::AtomicBool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Chat, and the operator's pages too (for this host, or with a token) when there is no
    /// admin port.
    Chat { operator_pages: bool },
    /// `--admin-listen`: the operator's pages, to anyone who reaches it, with no token; no chat.
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

/// Who sees the operator's pages (`/report`, `/logs`, `/metrics`) on a chat port, when there is
/// no admin port.
#[derive(Debug, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// From another host, and no `--jwt-secret`: 403.
    Forbidden,
    /// From another host, without a valid token: 401, and why.
    Unauthorized(String),
}

/// The decision for a request from `peer`: this host (a loopback peer) is let in; anyone else
/// needs a valid token, and without `--jwt-secret` cannot get in at all. `forwarded`: the
/// request carries a proxy's forwarding header, so a proxy on this host relays someone else's
/// request and its loopback address says nothing about who asks.
pub fn operator_access(
    peer: IpAddr,
    forwarded: bool,
    auth: Option<&Auth>,
    token: Option<&str>,
) -> Access {
    // `::ffff:127.0.0.1` (a listener on `[::]`) is loopback too.
    if peer.to_canonical().is_loopback() && !forwarded {
        return Access::Granted;
    }
    match (auth, token) {
        (None, _) => Access::Forbidden,
        (Some(_), None) => Access::Unauthorized("a token is required".into()),
        (Some(auth), Some(token)) => match auth.subject(token) {
            Ok(_) => Access::Granted,
            Err(why) => Access::Unauthorized(why),
        },
    }
}

/// Headers a proxy adds to the requests it relays.
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

/// The operator's pages are drawn by the server with no inline script or style: they load only
/// their own files and talk only to their own origin, cannot be framed, and send no referrer
/// (their addresses may carry a token).
const OPERATOR_HEADERS: &str = "Content-Security-Policy: default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'\r\nReferrer-Policy: no-referrer\r\n";

fn route(incoming: &Incoming, site: &Site) -> Response {
    let path = incoming.path();
    if path == "/healthz" {
        // Load balancers probe the chat ports: answered on every listener, to anyone.
        return if site
            .health
            .iter()
            .all(|up| up.load(std::sync::atomic::Ordering::SeqCst))
        {
            Response::text("200 OK", "ok\n")
        } else {
            Response::text("503 Service Unavailable", "redis: unreachable\n")
        };
    }
    let operator_page = matches!(path, "/report" | "/logs" | "/metrics");
    let operator_file = operator_page || crate::web::is_operator_asset(path);
    // The token the pages' links carry on: only where one can be needed.
    let mut token = None;
    match site.role {
        Role::Admin if !operator_file => {
            return Response::text(
                "404 Not Found",
                "the admin port serves /report, /logs, /metrics, /healthz\n",
            )
        }
        Role::Chat {
            operator_pages: false,
        } if operator_file => {
            return Response::text(
                "404 Not Found",
                "served on the admin port (--admin-listen)\n",
            )
        }
        Role::Chat {
            operator_pages: true,
        } if operator_page => {
            let forwarded = FORWARDING_HEADERS
                .iter()
                .any(|h| incoming.headers().contains_key(*h));
            let presented = crate::auth::token_of(incoming);
            match operator_access(
                incoming.peer_addr().ip(),
                forwarded,
                site.auth.as_deref(),
                presented.as_deref(),
            ) {
                Access::Granted => token = crate::auth::query_token(incoming),
                Access::Forbidden => {
                    return Response::text(
                        "403 Forbidden",
                        "/report, /logs and /metrics answer requests from this host only. To reach them from elsewhere, \
                         serve them on a port of their own with --admin-listen ADDR, or start the server with \
                         --jwt-secret and send a token (?token= or Authorization: Bearer).\n",
                    )
                }
                Access::Unauthorized(why) => {
                    let mut r = Response::text(
                        "401 Unauthorized",
                        &format!(
                            "{why}: from another host, /report, /logs and /metrics need a token (?token= or Authorization: Bearer)\n"
                        ),
                    );
                    r.headers.push_str("WWW-Authenticate: Bearer\r\n");
                    return r;
                }
            }
        }
        _ => {}
    }
    match path {
        "/metrics" => Response::new("200 OK", "text/plain; version=0.0.4", site.metrics.render()),
        "/report" => {
            let window = query_value(incoming.query(), "window").unwrap_or_default();
            let page = StatsDb::open(&site.stats)
                .and_then(|db| report::page(&db, &window, crate::now_ms(), token.as_deref()));
            match page {
                Ok(html) => operator(Response::new("200 OK", "text/html; charset=utf-8", html)),
                Err(e) => Response::text(
                    "500 Internal Server Error",
                    &format!("cannot read the stats: {e}\n"),
                ),
            }
        }
        "/logs" => {
            let (ok, content_type, body) = logs::answer(
                &site.log_dir,
                &logs::Query::parse(incoming.query()),
                token.as_deref(),
            );
            let status = if ok { "200 OK" } else { "400 Bad Request" };
            operator(Response::new(status, content_type, body))
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

/// `response` with the operator's pages' policy.
fn operator(mut response: Response) -> Response {
    response.headers.push_str(OPERATOR_HEADERS);
    response
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token(sub: &str) -> String {
        use jsonwebtoken::{encode, EncodingKey, Header};
        encode(
            &Header::default(),
            &serde_json::json!({ "sub": sub }),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("a token")
    }

    #[test]
    fn operator_pages_let_in_this_host_and_others_only_with_a_token() {
        let local: [IpAddr; 4] = [
            "127.0.0.1".parse().unwrap(),
            "127.8.9.10".parse().unwrap(),
            "::1".parse().unwrap(),
            "::ffff:127.0.0.1".parse().unwrap(),
        ];
        let remote: [IpAddr; 4] = [
            "192.0.2.2".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
            "::ffff:10.0.0.1".parse().unwrap(),
        ];
        let auth = Auth::new(SECRET, None).unwrap();
        let good = token("ops");
        for ip in local {
            assert_eq!(
                operator_access(ip, false, None, None),
                Access::Granted,
                "{ip}"
            );
            assert_eq!(
                operator_access(ip, false, Some(&auth), None),
                Access::Granted,
                "{ip}"
            );
            // Relayed by a proxy on this host: someone else's request.
            assert_eq!(
                operator_access(ip, true, None, None),
                Access::Forbidden,
                "{ip}"
            );
        }
        for ip in remote {
            assert_eq!(
                operator_access(ip, false, None, None),
                Access::Forbidden,
                "{ip}"
            );
            assert_eq!(
                operator_access(ip, false, None, Some(&good)),
                Access::Forbidden,
                "{ip}: no secret, so no token opens them"
            );
            assert!(matches!(
                operator_access(ip, false, Some(&auth), None),
                Access::Unauthorized(_)
            ));
            assert!(matches!(
                operator_access(ip, false, Some(&auth), Some("nonsense")),
                Access::Unauthorized(_)
            ));
            assert_eq!(
                operator_access(ip, false, Some(&auth), Some(&good)),
                Access::Granted,
                "{ip}"
            );
        }
    }
}
