//! What an operator relies on: every flag settable from the environment, metrics a Prometheus
//! server accepts, and a log that warns only about what needs the operator.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use serde_json::json;
use util::*;

/// Every option `--help` lists, but help and version.
fn flags(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', ',']).next().unwrap().to_owned())
        .filter(|f| f != "help" && f != "version")
        .collect()
}

#[test]
fn every_flag_has_an_environment_variable_and_the_flag_wins_over_it() {
    let help = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let flags = flags(&help);
    assert!(
        flags.len() >= 30,
        "the flags were found in --help: {flags:?}"
    );
    for flag in &flags {
        let var = format!("[env: CHAT_{}", flag.to_uppercase().replace('-', "_"));
        assert!(
            help.contains(&var),
            "--{flag} is not read from {var}] in --help"
        );
    }

    // Set from the environment, as a systemd unit's Environment= would.
    let dir = tempfile::tempdir().unwrap();
    let env = [("CHAT_MAX_MESSAGE", "1000")];
    let server = Binary::start_with_env(dir.path(), &[], &env, Stdio::null());
    let c = Chat::connect(&server.url);
    assert_eq!(c.welcome["limits"]["max_message"], 1000);
    drop(server);

    // Both given: the flag wins.
    let dir = tempfile::tempdir().unwrap();
    let server =
        Binary::start_with_env(dir.path(), &["--max-message", "2000"], &env, Stdio::null());
    let c = Chat::connect(&server.url);
    assert_eq!(c.welcome["limits"]["max_message"], 2000);
}

/// GET `path` on `url`'s host: the status line, the headers and the body.
fn get(url: &str, path: &str) -> (String, String) {
    let host = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut tcp = TcpStream::connect(host).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[test]
#[ignore = "needs promtool: bash scripts/operator-tests.sh installs it"]
fn metrics_pass_promtool_after_traffic_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(dir.path(), &["--max-message", "100"]);
    // Traffic, and each kind of ending, so that labelled series and histograms are not empty.
    let mut ann = Chat::connect(&format!("{}?nick=ann", server.url));
    ann.join("room");
    ann.send(json!({"op": "say", "room": "room", "text": "hello"}));
    ann.msg("room");
    let big = Chat::connect(&server.url);
    big.send_raw(&"x".repeat(200));
    let mut big = big;
    assert_eq!(big.closed(), Some(1009));

    let (head, body) = get(&server.url, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "the exposition format's content type: {head}"
    );
    assert!(body.contains("chat_messages_total"), "{body}");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn clients_that_vanish_misbehave_or_die_are_not_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let data = dir.path().join("data");
    let mut server = Binary::start_with_stderr(
        &data,
        &[
            "--max-message",
            "100",
            "--ping-interval",
            "1",
            "--pong-timeout",
            "1",
        ],
        std::fs::File::create(&log).unwrap(),
    );

    // One closes properly, one is too big (1009), one sends a frame that breaks the protocol.
    Chat::connect(&server.url).close();
    let mut big = Chat::connect(&server.url);
    big.send_raw(&"x".repeat(200));
    assert_eq!(big.closed(), Some(1009));
    let host = server.url.trim_start_matches("ws://").trim_end_matches('/');
    let upgrade = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut raw = TcpStream::connect(host).unwrap();
    raw.write_all(upgrade.as_bytes()).unwrap();
    // An unmasked frame from a client: a protocol error, closed with 1002.
    raw.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(
        rest.windows(4).any(|w| w == [0x88, 0x02, 0x03, 0xea]),
        "closed with 1002: {rest:?}"
    );
    // One vanishes: the socket is cut without a Close.
    let vanish = Chat::connect(&server.url);
    vanish.client.control_tx.force_quit().unwrap();
    // One stops answering: a real socket that reads nothing after the upgrade, so pings go
    // unanswered and the heartbeat ends it.
    let mut silent = TcpStream::connect(host).unwrap();
    silent.write_all(upgrade.as_bytes()).unwrap();
    wait_until("the silent client is found dead", || {
        metric_of(&server, "chat_dead_peers_total") >= 1
    });

    signal_term(&mut server);
    let text = std::fs::read_to_string(&log).unwrap();
    let loud: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        loud.is_empty(),
        "a client's ending is routine, not a warning:\n{}",
        loud.join("\n")
    );
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes in a log that is not a terminal"
    );
}

/// A counter on `server`'s /metrics.
fn metric_of(server: &Binary, name: &str) -> u64 {
    metric_in(&get(&server.url, "/metrics").1, name)
}

/// Stops the server as systemd does, and waits for it to exit.
fn signal_term(server: &mut Binary) {
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.child.wait().unwrap();
    assert!(exit.success(), "a graceful stop exits 0: {exit:?}");
}

/// A free port on 127.0.0.1 (bound and released: nginx binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `deploy/nginx-chat.conf` with its placeholders (ports, certificate) replaced; each one must
/// be there, so the file cannot drift away from what is tested.
fn nginx_conf(chat: u16, tls: u16, plain: u16, cert: &str, key: &str) -> String {
    let mut conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/nginx-chat.conf"
    ))
    .unwrap();
    for (from, to) in [
        (
            "server 127.0.0.1:8080;",
            format!("server 127.0.0.1:{chat};"),
        ),
        ("listen 443 ssl;", format!("listen 127.0.0.1:{tls} ssl;")),
        ("listen [::]:443 ssl;", String::new()),
        ("listen 80;", format!("listen 127.0.0.1:{plain};")),
        ("listen [::]:80;", String::new()),
        (
            "/etc/letsencrypt/live/chat.example.org/fullchain.pem",
            cert.to_owned(),
        ),
        (
            "/etc/letsencrypt/live/chat.example.org/privkey.pem",
            key.to_owned(),
        ),
    ] {
        assert!(conf.contains(from), "deploy/nginx-chat.conf has {from:?}");
        conf = conf.replace(from, &to);
    }
    conf
}

/// nginx in the foreground, as this user, every file in `dir`; stopped when dropped.
struct Nginx(std::process::Child);

impl Nginx {
    fn start(dir: &std::path::Path, site: &str, port: u16) -> Nginx {
        let d = dir.display();
        std::fs::write(dir.join("chat.conf"), site).unwrap();
        let main = format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             include {d}/chat.conf; }}\n"
        );
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, main).unwrap();
        let nginx = |test: bool| {
            let mut cmd = Command::new("nginx");
            cmd.arg("-p").arg(dir).arg("-c").arg(&conf);
            if test {
                cmd.arg("-t");
            }
            cmd
        };
        let checked = nginx(true)
            .output()
            .expect("nginx (Debian's nginx-light; scripts/operator-tests.sh installs it)");
        assert!(
            checked.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
        let child = nginx(false).stderr(Stdio::null()).spawn().unwrap();
        let n = Nginx(child);
        wait_until("nginx listens", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        n
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` over TLS from nginx at `port`: the status code.
fn https_status(port: u16, cert_pem: &[u8], path: &str) -> u16 {
    let cert = native_tls::Certificate::from_pem(cert_pem).unwrap();
    let tls = native_tls::TlsConnector::builder()
        .add_root_certificate(cert)
        .build()
        .unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut s = tls.connect("localhost", tcp).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs nginx: bash scripts/operator-tests.sh installs it"]
fn a_chat_goes_through_the_deploy_folders_nginx_and_the_operator_pages_do_not() {
    // The chat server as deploy/syncws-chat.service runs it: plain, on loopback; its generated
    // development certificate (for localhost) stands in for the real one in nginx.
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&dir.path().join("data"), &[]);
    opts.tls_listen = "127.0.0.1:0".into();
    let server = syncws_chat::Server::start(&opts).unwrap();
    let files = server.tls_files.clone().unwrap();
    let (tls, plain) = (free_port(), free_port());
    let site = nginx_conf(
        server.ws_addr.unwrap().port(),
        tls,
        plain,
        files.cert.to_str().unwrap(),
        files.key.to_str().unwrap(),
    );
    let _nginx = Nginx::start(dir.path(), &site, tls);

    let pem = std::fs::read(&files.cert).unwrap();
    let config = syncws::Config::builder()
        .root_certificate_pem(&pem)
        .build()
        .unwrap();
    let url = format!("wss://localhost:{tls}/");
    let mut ann = Chat::connect_with(&format!("{url}?nick=ann"), &config);
    let mut bob = Chat::connect_with(&format!("{url}?nick=bob"), &config);
    ann.join("room");
    bob.join("room");
    ann.send(json!({"op": "say", "room": "room", "text": "through nginx"}));
    assert_eq!(bob.msg("room")["text"], "through nginx");
    assert_eq!(ann.msg("room")["text"], "through nginx");

    // The chat page and the health probe go through; the operator's pages do not, although
    // every request reaches the server from 127.0.0.1.
    assert_eq!(https_status(tls, &pem, "/"), 200);
    assert_eq!(https_status(tls, &pem, "/healthz"), 200);
    for page in ["/report", "/logs", "/metrics"] {
        let status = https_status(tls, &pem, page);
        assert!(
            status == 401 || status == 403 || status == 404,
            "{page} through the proxy: {status}"
        );
    }
    // Plain HTTP sends browsers to HTTPS.
    let mut tcp = TcpStream::connect(("127.0.0.1", plain)).unwrap();
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 301"), "{answer}");
    ann.close();
    bob.close();
    server.shutdown(std::time::Duration::from_secs(5));
}
