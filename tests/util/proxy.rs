//! Small proxies for tests, written from the RFCs on raw TCP (independent of the code under
//! test): an HTTP CONNECT proxy and a SOCKS5 proxy. Each binds 127.0.0.1:0, serves every
//! connection on its own thread, relays bytes both ways until either side closes (bounded by
//! socket timeouts), and reports what it saw on each connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use super::{bind, SERVER_IO_TIMEOUT, TEST_DEADLINE};

/// What a proxy saw on one client connection.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The target asked for: `host:port` as the client wrote it (HTTP), or as decoded from the
    /// SOCKS5 request (`name:port` for a domain, `ip:port` / `[ip]:port` for an address).
    pub target: String,
    /// SOCKS5 only: the address type of the request (1 IPv4, 3 domain, 4 IPv6).
    pub socks_atyp: Option<u8>,
    /// HTTP only: the request head as received.
    pub head: String,
    /// The credentials presented: the `Proxy-Authorization` value (HTTP) or `user:password`
    /// (SOCKS5).
    pub auth: Option<String>,
    /// Bytes relayed from the client to the target.
    pub up: Vec<u8>,
    /// Bytes relayed from the target to the client.
    pub down: Vec<u8>,
}

/// A running proxy; dropping it stops accepting (connections in progress finish on their own).
pub struct ProxyServer {
    pub addr: SocketAddr,
    seen: Receiver<Seen>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl ProxyServer {
    /// What the proxy saw on the next connection to finish (after its relay ended).
    pub fn next_seen(&self) -> Seen {
        self.seen
            .recv_timeout(TEST_DEADLINE)
            .expect("the proxy reports each connection within the test deadline")
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn serve(handler: impl Fn(TcpStream) -> Seen + Send + Sync + 'static) -> ProxyServer {
    let (listener, addr) = bind();
    let (tx, seen) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let handler = Arc::new(handler);
    let accept = std::thread::spawn({
        let stop = stop.clone();
        move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = conn else { continue };
                tcp.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
                tcp.set_write_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
                let (handler, tx) = (handler.clone(), tx.clone());
                std::thread::spawn(move || {
                    let _ = tx.send(handler(tcp));
                });
            }
        }
    });
    ProxyServer {
        addr,
        seen,
        stop,
        accept: Some(accept),
    }
}

/// Connect to the target the way a proxy does (every address of a name), with timeouts.
fn dial(target: &str) -> Option<TcpStream> {
    let upstream = TcpStream::connect(target).ok()?;
    upstream.set_read_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
    upstream.set_write_timeout(Some(SERVER_IO_TIMEOUT)).unwrap();
    Some(upstream)
}

/// Copy both ways until each side has finished sending; returns (up, down).
fn relay(client: TcpStream, upstream: TcpStream) -> (Vec<u8>, Vec<u8>) {
    fn pump(mut from: TcpStream, mut to: TcpStream) -> Vec<u8> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 16 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        // Pass the end on, so the other side sees EOF as it would without a proxy.
        let _ = to.shutdown(Shutdown::Write);
        seen
    }
    let client2 = client.try_clone().unwrap();
    let upstream2 = upstream.try_clone().unwrap();
    let up = std::thread::spawn(move || pump(client, upstream));
    let down = pump(upstream2, client2);
    (up.join().unwrap(), down)
}

// ----- HTTP CONNECT ------------------------------------------------------------------------------

/// How the HTTP proxy behaves.
#[derive(Debug, Clone, Default)]
pub struct HttpProxy {
    /// When set, a `Proxy-Authorization` header with exactly this value is required; without
    /// it the proxy answers 407.
    pub require_auth: Option<String>,
    /// When set, the proxy answers every CONNECT with this status line (e.g. "403 Forbidden").
    pub refuse_with: Option<&'static str>,
}

impl HttpProxy {
    pub fn start(self) -> ProxyServer {
        serve(move |tcp| self.handle(tcp))
    }

    fn handle(&self, mut client: TcpStream) -> Seen {
        let mut seen = Seen::default();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 16 << 10 || client.read_exact(&mut byte).is_err() {
                return seen;
            }
            head.push(byte[0]);
        }
        seen.head = String::from_utf8_lossy(&head).into_owned();
        let mut lines = seen.head.lines();
        let request_line: Vec<&str> = lines.next().unwrap_or("").split(' ').collect();
        if let ["CONNECT", target, "HTTP/1.1"] = request_line[..] {
            seen.target = target.to_owned();
        } else {
            let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n");
            return seen;
        }
        seen.auth = lines.find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("proxy-authorization")
                .then(|| value.trim().to_owned())
        });
        let answer = |client: &mut TcpStream, status: &str| {
            let _ = write!(
                client,
                "HTTP/1.1 {status}\r\nProxy-Authenticate: Basic realm=\"test\"\r\n\
                 Content-Length: 0\r\n\r\n"
            );
        };
        if let Some(status) = self.refuse_with {
            answer(&mut client, status);
            return seen;
        }
        if self.require_auth.is_some() && seen.auth != self.require_auth {
            answer(&mut client, "407 Proxy Authentication Required");
            return seen;
        }
        let Some(upstream) = dial(&seen.target) else {
            answer(&mut client, "502 Bad Gateway");
            return seen;
        };
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .unwrap();
        (seen.up, seen.down) = relay(client, upstream);
        seen
    }
}

// ----- SOCKS5 -------------------------------------------------------------------------------------

/// How the SOCKS5 proxy behaves.
#[derive(Debug, Clone, Default)]
pub struct Socks5Proxy {
    /// When set, username/password authentication with exactly these is required.
    pub credentials: Option<(String, String)>,
    /// The address type of the bound address in the success reply (1 IPv4, 3 domain, 4 IPv6):
    /// a client must read each exactly. Defaults to IPv4.
    pub bound_atyp: Option<u8>,
    /// When set, the proxy answers every CONNECT with this reply code.
    pub refuse_with: Option<u8>,
}

impl Socks5Proxy {
    pub fn start(self) -> ProxyServer {
        serve(move |tcp| self.handle(tcp))
    }

    fn handle(&self, mut client: TcpStream) -> Seen {
        let mut seen = Seen::default();
        // Greeting.
        let Some(hello) = read_exact(&mut client, 2) else {
            return seen;
        };
        assert_eq!(hello[0], 5, "socks version");
        let Some(methods) = read_exact(&mut client, usize::from(hello[1])) else {
            return seen;
        };
        let wanted = if self.credentials.is_some() { 2 } else { 0 };
        let reply = |client: &mut TcpStream, bytes: &[u8]| {
            let _ = client.write_all(bytes);
        };
        if !methods.contains(&wanted) {
            reply(&mut client, &[5, 0xff]);
            return seen;
        }
        reply(&mut client, &[5, wanted]);
        // RFC 1929.
        if let Some((user, pass)) = &self.credentials {
            let Some(head) = read_exact(&mut client, 2) else {
                return seen;
            };
            let Some(u) = read_exact(&mut client, usize::from(head[1])) else {
                return seen;
            };
            let Some(plen) = read_exact(&mut client, 1) else {
                return seen;
            };
            let Some(p) = read_exact(&mut client, usize::from(plen[0])) else {
                return seen;
            };
            let (u, p) = (String::from_utf8(u).unwrap(), String::from_utf8(p).unwrap());
            seen.auth = Some(format!("{u}:{p}"));
            let ok = (&u, &p) == (user, pass);
            reply(&mut client, &[1, if ok { 0 } else { 1 }]);
            if !ok {
                return seen;
            }
        }
        // The request.
        let Some(request) = read_exact(&mut client, 4) else {
            return seen;
        };
        assert_eq!(request[..3], [5, 1, 0], "socks CONNECT");
        seen.socks_atyp = Some(request[3]);
        let host = match request[3] {
            1 => {
                let Some(a) = read_exact(&mut client, 4) else {
                    return seen;
                };
                std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
            }
            4 => {
                let Some(a) = read_exact(&mut client, 16) else {
                    return seen;
                };
                let a: [u8; 16] = a.try_into().unwrap();
                format!("[{}]", std::net::Ipv6Addr::from(a))
            }
            3 => {
                let Some(len) = read_exact(&mut client, 1) else {
                    return seen;
                };
                let Some(name) = read_exact(&mut client, usize::from(len[0])) else {
                    return seen;
                };
                String::from_utf8(name).unwrap()
            }
            other => panic!("address type {other}"),
        };
        let Some(port) = read_exact(&mut client, 2) else {
            return seen;
        };
        seen.target = format!("{host}:{}", u16::from_be_bytes([port[0], port[1]]));

        let failure = |code: u8| [5, code, 0, 1, 0, 0, 0, 0, 0, 0];
        if let Some(code) = self.refuse_with {
            reply(&mut client, &failure(code));
            return seen;
        }
        let Some(upstream) = dial(&seen.target) else {
            reply(&mut client, &failure(5));
            return seen;
        };
        let mut success = vec![5, 0, 0];
        match self.bound_atyp.unwrap_or(1) {
            1 => success.extend_from_slice(&[1, 127, 0, 0, 1]),
            4 => {
                success.push(4);
                success.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            }
            3 => {
                success.extend_from_slice(&[3, 10]);
                success.extend_from_slice(b"relay.test");
            }
            other => panic!("bound address type {other}"),
        }
        success.extend_from_slice(&upstream.local_addr().unwrap().port().to_be_bytes());
        reply(&mut client, &success);
        (seen.up, seen.down) = relay(client, upstream);
        seen
    }
}

fn read_exact(tcp: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    tcp.read_exact(&mut buf).ok().map(|()| buf)
}

// ----- a proxy that never answers -------------------------------------------------------------------

/// Accepts one connection and reads until the client gives up; returns the address.
pub fn silent_proxy() -> (SocketAddr, JoinHandle<Vec<u8>>) {
    super::raw_server(|mut tcp| super::read_to_end(&mut tcp))
}
