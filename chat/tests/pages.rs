//! The HTTP side of the chat server: the chat page's files, `/report` from the stored samples,
//! `/logs`, and who may see them (`--jwt-secret`, `--admin-listen`). Real sockets on 127.0.0.1.

mod util;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use syncws::{Config, Error};
use syncws_chat::Server;
use util::*;

/// One answer: status code, head (lower-cased header names) and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    /// The value of header `name` (lower case), if the answer has it.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One GET from this host's loopback address (or whatever `addr` is).
fn fetch(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// One GET: status code and body.
fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let a = fetch(addr, path, headers);
    (a.status, a.body)
}

/// What a reverse proxy on this host adds to the requests it relays for others.
const FORWARDED: (&str, &str) = ("X-Forwarded-For", "203.0.113.7");

/// An address of this host that is not loopback (e.g. eth0's), if it has one: the source
/// address the kernel would pick for a remote destination (a UDP connect sends nothing).
fn non_loopback_ip() -> Option<IpAddr> {
    let probe = UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("203.0.113.1:9").ok()?;
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A secret long enough for `--jwt-secret` (32 bytes or more).
const SECRET: &str = "test-secret-of-at-least-32-bytes-0123456789";

/// The number in `<td data-metric="NAME">N</td>`.
fn shown(html: &str, metric: &str) -> u64 {
    let key = format!("data-metric=\"{metric}\">");
    let at = html
        .find(&key)
        .unwrap_or_else(|| panic!("{metric} not on the page"))
        + key.len();
    html[at..].split('<').next().unwrap().parse().unwrap()
}

/// Ask for `/report` until `done` holds for it (a sample is taken every second here).
fn report_until(addr: SocketAddr, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (status, html) = get(addr, "/report?window=hour", &[]);
        assert_eq!(status, 200, "{html}");
        if done(&html) {
            return html;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the report never got there: {html}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_chat_page_and_its_files_are_served_from_the_binary() {
    let server = TestServer::start(&[]);
    let addr = server.server.as_ref().unwrap().ws_addr.unwrap();
    let (status, html) = get(addr, "/", &[]);
    assert_eq!(status, 200);
    assert!(html.contains("<script src=\"/chat.js\">"), "{html}");
    for file in ["/chat.js", "/chat.css"] {
        let (status, body) = get(addr, file, &[]);
        assert_eq!(status, 200, "{file}");
        assert!(!body.is_empty(), "{file}");
    }
    assert_eq!(get(addr, "/nope", &[]).0, 404);
}

#[test]
fn the_report_matches_metrics_and_its_totals_continue_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path(), &["--stats-every", "1"]);
    let server = Server::start(&opts).unwrap();
    let addr = server.ws_addr.unwrap();
    let url = format!("ws://{addr}/");
    let mut a = Chat::connect(&url);
    let mut b = Chat::connect(&url);
    a.join("r");
    b.join("r");
    for i in 0..5 {
        a.send(json!({"op": "say", "room": "r", "text": format!("m{i}")}));
        b.msg("r");
    }
    let metrics = server.metrics().render();
    let (messages, deliveries) = (
        metric_in(&metrics, "chat_messages_total"),
        metric_in(&metrics, "chat_deliveries_total"),
    );
    assert_eq!((messages, deliveries), (5, 10));
    let html = report_until(addr, |h| {
        h.contains("data-metric=\"chat_messages_total\"")
            && shown(h, "chat_deliveries_total") == deliveries
    });
    for metric in [
        "chat_connections_total",
        "chat_messages_total",
        "chat_deliveries_total",
        "chat_bytes_in_total",
        "chat_bytes_out_total",
        "chat_matches_total",
    ] {
        assert_eq!(
            shown(&html, metric),
            metric_in(&metrics, metric),
            "{metric}"
        );
    }
    for chart in [
        "connections",
        "messages",
        "bytes",
        "latency",
        "rss",
        "cpu",
        "threads",
    ] {
        assert!(html.contains(&format!("id=\"chart-{chart}\"")), "{chart}");
    }
    a.close();
    b.close();
    server.shutdown(Duration::from_secs(5));

    // A new process (same data): /metrics starts again, the report's totals go on.
    let server = Server::start(&opts).unwrap();
    let addr = server.ws_addr.unwrap();
    let mut c = Chat::connect(&format!("ws://{addr}/"));
    c.send_raw("after the restart");
    c.msg("lobby");
    assert_eq!(
        metric_in(&server.metrics().render(), "chat_messages_total"),
        1
    );
    let html = report_until(addr, |h| {
        h.contains("data-metric") && shown(h, "chat_messages_total") == 6
    });
    assert_eq!(shown(&html, "chat_connections_total"), 3);
    c.close();
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn the_logs_page_is_newest_first_filtered_and_paged() {
    let server = TestServer::start(&[]);
    let addr = server.server.as_ref().unwrap().ws_addr.unwrap();
    let mut c = Chat::connect(&server.url);
    for i in 0..30 {
        c.send_raw(&format!("m{i}"));
        c.msg("lobby");
    }
    server.server.as_ref().unwrap().flush_log();
    let (status, body) = get(addr, "/logs?kind=msg&limit=10&format=json", &[]);
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    let seqs: Vec<u64> = page["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (21..=30).rev().collect::<Vec<_>>());
    let older = page["older"].as_str().unwrap();
    let (_, body) = get(
        addr,
        &format!("/logs?kind=msg&limit=10&format=json&before={older}"),
        &[],
    );
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["lines"][0]["event"]["seq"], 20);
    let (status, html) = get(addr, "/logs?kind=connect", &[]);
    assert_eq!(status, 200);
    assert!(html.contains("<td>connect</td>"), "{html}");
    assert!(!html.contains("<td>msg</td>"), "filtered by kind");
    c.close();
}

fn token(secret: &str, claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn status_of(result: Result<syncws::ThreadedClient, Error>) -> u16 {
    match result {
        Err(Error::HandshakeRejected { status, .. }) => status.as_u16(),
        Err(e) => panic!("not an HTTP refusal: {e}"),
        Ok(_) => panic!("connected"),
    }
}

#[test]
fn tokens_guard_the_upgrade_and_the_operator_pages() {
    let server = TestServer::start(&["--jwt-secret", SECRET]);
    let addr = server.server.as_ref().unwrap().ws_addr.unwrap();
    let good = token(SECRET, json!({"sub": "ann", "exp": 4_000_000_000u64}));
    let refused = |query: String| {
        status_of(syncws::ThreadedClient::connect(
            &format!("{}{query}", server.url),
            &Config::default(),
        ))
    };
    assert_eq!(refused(String::new()), 401, "no token");
    for (why, bad) in [
        (
            "wrong signature",
            token(&format!("{SECRET}-other"), json!({"sub": "ann"})),
        ),
        (
            "expired",
            token(SECRET, json!({"sub": "ann", "exp": 1_000})),
        ),
        ("no sub", token(SECRET, json!({"name": "ann"}))),
        ("not a nick", token(SECRET, json!({"sub": " ann"}))),
        (
            "an audience this server was not told",
            token(SECRET, json!({"sub": "ann", "aud": "billing"})),
        ),
    ] {
        assert_eq!(refused(format!("?token={bad}")), 401, "{why}");
    }
    // The token's subject is the nick, and it stays.
    let mut c = Chat::connect(&format!("{}?token={good}&nick=mallory", server.url));
    assert_eq!(c.welcome["nick"], "ann");
    c.send(json!({"op": "hello", "nick": "mallory"}));
    assert_eq!(c.expect("error")["code"], "nick_fixed");
    // The header works too.
    let config = Config::builder()
        .header("Authorization", &format!("Bearer {good}"))
        .build()
        .unwrap();
    let d = Chat::connect_with(&server.url, &config);
    assert_eq!(d.welcome["nick"], "ann");
    assert_eq!(server.metric("chat_connections_unauthorized_total"), 6);
    // From elsewhere (here: relayed by a proxy on this host) the operator's pages need the
    // token; the chat page and the health probe do not.
    let remote = |path: &str, extra: &[(&str, &str)]| {
        let mut headers = vec![FORWARDED];
        headers.extend_from_slice(extra);
        fetch(addr, path, &headers)
    };
    for page in ["/report", "/logs", "/metrics"] {
        let a = remote(page, &[]);
        assert_eq!(a.status, 401, "{page} without a token: {}", a.body);
        assert_eq!(a.header("www-authenticate"), Some("Bearer"), "{page}");
        assert_eq!(
            remote(&format!("{page}?token={good}x"), &[]).status,
            401,
            "{page} with a bad token"
        );
        assert_eq!(
            remote(&format!("{page}?token={good}"), &[]).status,
            200,
            "{page}"
        );
    }
    let bearer = format!("Bearer {good}");
    assert_eq!(remote("/logs", &[("Authorization", &bearer)]).status, 200);
    for open in ["/", "/chat.js", "/healthz"] {
        assert_eq!(remote(open, &[]).status, 200, "{open}");
    }
    // This host needs none.
    for page in ["/report", "/logs", "/metrics"] {
        assert_eq!(get(addr, page, &[]).0, 200, "{page} from this host");
    }
    // Opened with ?token=, the pages' own links carry it (or they would answer 401).
    let report = remote(&format!("/report?token={good}"), &[]).body;
    for window in ["hour", "day", "week", "all"] {
        let link = format!("href=\"/report?window={window}&amp;token={good}\"");
        assert!(report.contains(&link), "{link} in {report}");
    }
    assert!(
        report.contains(&format!("href=\"/logs?token={good}\"")),
        "{report}"
    );
    let logs = remote(&format!("/logs?limit=1&token={good}"), &[]).body;
    let older = logs
        .split_once("id=\"older\" href=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(href, _)| href.replace("&amp;", "&"))
        .unwrap_or_else(|| panic!("no older link: {logs}"));
    assert!(older.contains(&format!("token={good}")), "{older}");
    assert_eq!(remote(&older, &[]).status, 200, "{older}");
    c.close();
    d.close();
}

#[test]
fn with_an_audience_tokens_must_name_it() {
    let server = TestServer::start(&["--jwt-secret", SECRET, "--jwt-audience", "chat"]);
    let status = |claims: Value| match syncws::ThreadedClient::connect(
        &format!("{}?token={}", server.url, token(SECRET, claims)),
        &Config::default(),
    ) {
        Ok(c) => {
            let _ = c.shutdown(DEADLINE);
            101
        }
        Err(e) => status_of(Err(e)),
    };
    assert_eq!(status(json!({"sub": "ann", "aud": "chat"})), 101);
    assert_eq!(
        status(json!({"sub": "ann", "aud": ["chat", "billing"]})),
        101
    );
    assert_eq!(status(json!({"sub": "ann", "aud": "billing"})), 401);
    assert_eq!(status(json!({"sub": "ann"})), 401, "no aud");
}

#[test]
fn a_short_or_empty_jwt_secret_refuses_to_start() {
    for secret in ["", "s3cret", &SECRET[..31]] {
        let dir = tempfile::tempdir().unwrap();
        match Server::start(&options(dir.path(), &["--jwt-secret", secret])) {
            Ok(s) => {
                s.shutdown(Duration::from_secs(5));
                panic!("started with the secret {secret:?}");
            }
            Err(e) => assert!(e.to_string().contains("32 bytes"), "{e}"),
        }
    }
    // CHAT_JWT_SECRET= from a template whose variable was not set: the binary says why and
    // exits, it does not run with a key everyone knows.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("CHAT_JWT_SECRET", "")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It either prints that it listens (wrong: killed) or ends, closing its stdout.
    let mut out = String::new();
    let started = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()))
        .map_while(Result::ok)
        .inspect(|l| out.push_str(l))
        .any(|l| l.starts_with("chat-server listening"));
    if started {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!started, "it started: {out}");
    assert!(!status.success(), "{status}");
    assert!(
        err.contains("--jwt-secret") && err.contains("32 bytes"),
        "{err}"
    );
    // 32 bytes are enough.
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&options(dir.path(), &["--jwt-secret", &SECRET[..32]])).unwrap();
    s.shutdown(Duration::from_secs(5));
}

#[test]
fn the_admin_port_serves_the_operator_pages_and_nothing_else() {
    let server = TestServer::start(&["--admin-listen", "127.0.0.1:0"]);
    let s = server.server.as_ref().unwrap();
    let (chat, admin) = (s.ws_addr.unwrap(), s.admin_addr.unwrap());
    for page in ["/report", "/logs", "/metrics", "/logs.js"] {
        assert_eq!(get(chat, page, &[]).0, 404, "{page} on the chat port");
        assert_eq!(get(admin, page, &[]).0, 200, "{page} on the admin port");
    }
    // Load balancers probe the chat port.
    assert_eq!(get(chat, "/healthz", &[]).0, 200);
    assert_eq!(get(admin, "/healthz", &[]).0, 200);
    assert_eq!(get(admin, "/", &[]).0, 404);
    assert_eq!(get(admin, "/chat.js", &[]).0, 404);
    let refused = syncws::ThreadedClient::connect(&format!("ws://{admin}/"), &Config::default());
    assert_eq!(status_of(refused), 404, "no chat on the admin port");
}

#[test]
fn operator_pages_answer_only_this_host_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&options(dir.path(), &["--listen", "0.0.0.0:0"])).unwrap();
    let port = server.ws_addr.unwrap().port();
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    let pages = ["/report", "/logs", "/metrics"];
    for page in pages {
        assert_eq!(get(local, page, &[]).0, 200, "{page} from this host");
    }
    let refused = |a: Answer, page: &str| {
        assert_eq!(a.status, 403, "{page}: {}", a.body);
        assert!(
            a.body.contains("--admin-listen") && a.body.contains("token"),
            "{page}: the refusal says how to get in: {}",
            a.body
        );
    };
    // A proxy on this host relays others' requests: they are not this host's.
    for page in pages {
        refused(fetch(local, page, &[FORWARDED]), page);
    }
    for open in ["/", "/chat.js", "/healthz"] {
        assert_eq!(fetch(local, open, &[FORWARDED]).status, 200, "{open}");
    }
    // A peer that is not loopback: this host's own address on another interface.
    match non_loopback_ip() {
        Some(ip) => {
            let remote = SocketAddr::new(ip, port);
            for page in pages {
                refused(fetch(remote, page, &[]), page);
            }
            for open in ["/", "/chat.js", "/healthz"] {
                assert_eq!(get(remote, open, &[]).0, 200, "{open} from {ip}");
            }
        }
        None => eprintln!(
            "this host has no address but loopback: the remote peer is covered by the \
             forwarded request above and by the unit tests of the decision (http.rs)"
        ),
    }
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn no_page_runs_inline_script_and_the_operator_pages_send_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&options(dir.path(), &["--stats-every", "1"])).unwrap();
    let addr = server.ws_addr.unwrap();
    let payload = "</script><script>alert(1)</script>";
    let encoded: String = url::form_urlencoded::byte_serialize(payload.as_bytes()).collect();
    // The report with its charts drawn (a sample is taken every second).
    report_until(addr, |h| h.contains("data-metric"));
    for path in [
        "/logs".to_owned(),
        format!("/logs?kind={encoded}"),
        "/logs?limit=1".to_owned(),
        "/report?window=hour".to_owned(),
        "/".to_owned(),
    ] {
        let a = fetch(addr, &path, &[]);
        assert_eq!(a.status, 200, "{path}");
        // Every script is a file of the server's own; no inline style or handler either.
        for (at, _) in a.body.match_indices("<script") {
            let tag = &a.body[at..at + a.body[at..].find('>').unwrap() + 1];
            assert!(
                tag.contains(" src=\"/") && a.body[at + tag.len()..].starts_with("</script>"),
                "{path}: inline script {tag}"
            );
        }
        for inline in ["<style", " style=", " onload=", " onerror=", " onclick="] {
            assert!(!a.body.contains(inline), "{path}: {inline} in {}", a.body);
        }
        let csp = a
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{path}: no Content-Security-Policy"));
        // Scripts from the server's own files only (the chat page through default-src).
        let script = if path == "/" {
            "default-src 'self'"
        } else {
            "script-src 'self'"
        };
        for directive in [
            "default-src 'self'",
            script,
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
    }
    let a = fetch(addr, &format!("/logs?kind={encoded}"), &[]);
    assert!(!a.body.contains("<script>alert"), "{}", a.body);
    assert!(
        a.body
            .contains("data-kind=\"&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""),
        "the kind reaches the script as an escaped attribute: {}",
        a.body
    );
    for (file, kind) in [("/logs.js", "text/javascript"), ("/pages.css", "text/css")] {
        let a = fetch(addr, file, &[]);
        assert_eq!(a.status, 200, "{file}");
        assert!(
            a.header("content-type").unwrap().starts_with(kind),
            "{file}"
        );
    }
    server.shutdown(Duration::from_secs(5));
}

#[test]
fn a_token_in_a_bad_request_is_never_logged() {
    let server = TestServer::start(&[]);
    let s = server.server.as_ref().unwrap();
    let addr = s.ws_addr.unwrap();
    let secret = "eyJhbGciOiJIUzI1NiJ9.SECRETPAYLOAD.SECRETSIGNATURE";
    // A target that does not parse (the quote), with a token in it.
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    tcp.write_all(
        format!("GET /?nick=ann&token={secret}\"x HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // The refusal is logged by the connection's thread: wait for its line.
    let start = Instant::now();
    let log = loop {
        s.flush_log();
        let mut all = String::new();
        for entry in std::fs::read_dir(server.dir.path().join("log")).unwrap() {
            all.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
        if all.contains("handshake_failed") {
            break all;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no handshake_failed line: {all}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let line = log
        .lines()
        .find(|l| l.contains("handshake_failed"))
        .unwrap();
    for part in ["SECRETPAYLOAD", "SECRETSIGNATURE", "eyJhbGciOiJIUzI1NiJ9"] {
        assert!(!log.contains(part), "{part} in the event log: {line}");
    }
    assert!(line.contains("token=[redacted]"), "{line}");
    assert!(
        line.contains("nick=ann"),
        "the rest of the target is kept: {line}"
    );
    for page in ["/logs", "/logs?format=json", "/logs?kind=handshake_failed"] {
        let (status, body) = get(addr, page, &[]);
        assert_eq!(status, 200);
        assert!(body.contains("handshake_failed"), "{page}: {body}");
        assert!(!body.contains("SECRET"), "{page}: {body}");
    }
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `dir` (itself included) with its permission bits.
fn modes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32, bool)> {
    let mut out = vec![(dir.to_owned(), mode(dir), true)];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((path.clone(), mode(&path), false));
        }
    }
    out
}

/// `chat-server` under `umask 000`, so nothing but the server's own choice keeps its files
/// private.
fn start_permissive(data: &std::path::Path) -> Binary {
    let mut child = std::process::Command::new("sh")
        .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_chat-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-listen",
            "off",
            "--stats-every",
            "1",
            "--data-dir",
        ])
        .arg(data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let url = loop {
        let line = lines.next().expect("the server printed its URL").unwrap();
        if let Some(rest) = line.strip_prefix("chat-server listening on ws://") {
            break format!("ws://{}", rest.split(' ').next().unwrap());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Binary { child, url }
}

#[test]
fn the_data_files_are_readable_by_the_server_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("chat-data");
    let server = start_permissive(&data);
    let mut c = Chat::connect(&server.url);
    c.send_raw("stored");
    c.msg("lobby");
    c.close();
    let names: Vec<String> = modes(&data)
        .iter()
        .map(|(p, _, _)| p.strip_prefix(&data).unwrap().display().to_string())
        .collect();
    for expected in ["chat.db", "chat.db-wal", "chat.db-shm", "stats.db", "log"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.starts_with("log/events-")),
        "{names:?}"
    );
    let check = |when: &str| {
        for (path, mode, is_dir) in modes(&data) {
            let want = if is_dir { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{when}: {} is {mode:o}", path.display());
        }
    };
    check("fresh");
    server.kill_9();
    // A store an older version left readable to everyone is made private at the next start.
    use std::os::unix::fs::PermissionsExt;
    for file in ["chat.db", "stats.db"] {
        std::fs::set_permissions(data.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let server = start_permissive(&data);
    let c = Chat::connect(&server.url);
    c.close();
    check("after a restart");
    drop(server);
}
