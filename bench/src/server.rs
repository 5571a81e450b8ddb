//! The echo servers, run in a child process (`syncws-bench --serve`) so that the client's
//! `getrusage(RUSAGE_SELF)` counts only the client.
//!
//! Two listeners on 127.0.0.1:0, thread per connection, TCP_NODELAY, every socket non-blocking
//! and waited on with `poll(2)`:
//!
//! - raw TCP: echo the bytes back. Everything readable is read, then written in one `write`.
//! - WebSocket, plain tungstenite: read every frame that is readable, queue its echo with
//!   `WebSocket::write`, and `flush` once nothing more is readable, so a burst of N messages
//!   costs one `write(2)`, and a lone message is answered at once.
//!
//! Both read until a short read (fewer bytes than asked for means the socket queue was empty;
//! `poll` is level-triggered, so data that arrives later wakes it), which saves the extra
//! `read` that would return EAGAIN. Each connection reports on stdout, as one JSON line when it
//! ends, what it did: messages, read/write/poll system calls and its thread's CPU time.
//!
//! The process ends when its stdin closes (the parent exited) or after `max_life`.

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::sys;

/// Longest a single connection may live (every loop is bounded).
const CONN_MAX_LIFE: Duration = Duration::from_secs(600);
/// The echo server's message and frame limit.
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, Default)]
struct Counters {
    msgs: u64,
    bytes_in: u64,
    bytes_out: u64,
    reads: u64,
    writes: u64,
    polls: u64,
}

/// A TCP socket that counts system calls and answers "would block" without a system call after
/// a short read, until the next poll. For the WebSocket server it also buffers reads (one
/// `read(2)` of up to 256 KiB, handed to tungstenite in the small pieces it asks for), so that
/// tungstenite's read buffer can stay small (it zero-fills it on every read call) while large
/// messages still take few system calls.
struct Counted {
    tcp: TcpStream,
    drained: bool,
    hint: bool,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    c: Counters,
}

impl Counted {
    fn new(tcp: TcpStream, buffered: bool) -> Counted {
        Counted {
            tcp,
            drained: false,
            hint: false,
            rbuf: if buffered {
                vec![0; 256 << 10]
            } else {
                Vec::new()
            },
            rpos: 0,
            rlen: 0,
            c: Counters::default(),
        }
    }

    fn sys_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.hint && self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.c.reads += 1;
        let r = self.tcp.read(buf);
        match &r {
            Ok(n) => {
                self.c.bytes_in += *n as u64;
                if *n < buf.len() {
                    self.drained = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained = true,
            Err(_) => {}
        }
        r
    }
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rbuf.is_empty() {
            return self.sys_read(buf);
        }
        if self.rpos == self.rlen {
            let mut rbuf = std::mem::take(&mut self.rbuf);
            let r = self.sys_read(&mut rbuf);
            self.rbuf = rbuf;
            self.rlen = r?;
            self.rpos = 0;
        }
        let n = buf.len().min(self.rlen - self.rpos);
        buf[..n].copy_from_slice(&self.rbuf[self.rpos..self.rpos + n]);
        self.rpos += n;
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.c.writes += 1;
        let r = self.tcp.write(buf);
        if let Ok(n) = &r {
            self.c.bytes_out += *n as u64;
        }
        r
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Counted {
    fn poll(&mut self, want_write: bool) -> io::Result<()> {
        self.c.polls += 1;
        sys::poll_one(self.tcp.as_raw_fd(), want_write, Duration::from_secs(1))?;
        self.drained = false;
        Ok(())
    }
}

fn report(kind: &str, peer: &str, c: &Counters, cpu_ns: u64, wall: Duration) {
    let line = serde_json::json!({
        "kind": kind,
        "peer": peer,
        "msgs": c.msgs,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "reads": c.reads,
        "writes": c.writes,
        "polls": c.polls,
        "cpu_ns": cpu_ns,
        "wall_ns": wall.as_nanos() as u64,
    });
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

/// Serve one WebSocket connection: echo text and binary messages.
fn ws_conn(tcp: TcpStream, read_buf: usize) {
    let t0 = Instant::now();
    let cpu0 = sys::thread_cpu_ns();
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buf)
        // Finite, far above the 64 KiB the jobs send: tungstenite allocates a frame's announced
        // length before reading it.
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let stream = Counted::new(tcp, true);
    let mut ws: WebSocket<Counted> = match tungstenite::accept_with_config(stream, Some(config)) {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("echo server: handshake: {e}");
            return;
        }
    };
    let _ = ws.get_mut().tcp.set_read_timeout(None);
    if ws.get_mut().tcp.set_nonblocking(true).is_err() {
        return;
    }
    ws.get_mut().hint = true;
    'conn: while t0.elapsed() < CONN_MAX_LIFE {
        loop {
            match ws.read() {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                    ws.get_mut().c.msgs += 1;
                    match ws.write(m) {
                        Ok(()) => {}
                        Err(e) if is_would_block(&e) => {}
                        Err(_) => break 'conn,
                    }
                }
                // Pings are answered by tungstenite, a Close is answered and ends the next read.
                Ok(_) => {}
                Err(e) if is_would_block(&e) => break,
                Err(_) => break 'conn,
            }
        }
        let pending = match ws.flush() {
            Ok(()) => false,
            Err(e) if is_would_block(&e) => true,
            Err(_) => break,
        };
        if ws.get_mut().poll(pending).is_err() {
            break;
        }
    }
    let c = std::mem::take(&mut ws.get_mut().c);
    report("ws", &peer, &c, sys::thread_cpu_ns() - cpu0, t0.elapsed());
}

/// Serve one raw TCP connection: echo bytes.
fn tcp_conn(tcp: TcpStream) {
    let t0 = Instant::now();
    let cpu0 = sys::thread_cpu_ns();
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let _ = tcp.set_nodelay(true);
    if tcp.set_nonblocking(true).is_err() {
        return;
    }
    let mut s = Counted::new(tcp, false);
    s.hint = true;
    let mut buf = vec![0u8; 256 << 10];
    let mut out: Vec<u8> = Vec::new();
    'conn: while t0.elapsed() < CONN_MAX_LIFE {
        // Read what is there (bounded, so a fast sender cannot starve the writes).
        let mut got = 0;
        while got < 4 << 20 {
            match s.read(&mut buf) {
                Ok(0) => break 'conn,
                Ok(n) => {
                    got += n;
                    out.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break 'conn,
            }
        }
        let mut written = 0;
        while written < out.len() {
            match s.write(&out[written..]) {
                Ok(0) => break 'conn,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break 'conn,
            }
        }
        out.drain(..written);
        if s.poll(!out.is_empty()).is_err() {
            break;
        }
    }
    let c = std::mem::take(&mut s.c);
    report("tcp", &peer, &c, sys::thread_cpu_ns() - cpu0, t0.elapsed());
}

fn accept_loop(listener: TcpListener, handle: impl Fn(TcpStream) + Send + Clone + 'static) {
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let handle = handle.clone();
            let _ = std::thread::Builder::new()
                .name("echo-conn".into())
                .spawn(move || handle(tcp));
        }
    });
}

/// Run the servers: print `{"ws": "ws://127.0.0.1:P/", "tcp": "127.0.0.1:Q"}` on the first line
/// of stdout, then serve until stdin closes or `max_life` passes.
pub fn serve(read_buf: usize, max_life: Duration) -> ! {
    let ws = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let ws_addr = ws.local_addr().expect("local addr");
    let tcp_addr = tcp.local_addr().expect("local addr");
    accept_loop(ws, move |t| ws_conn(t, read_buf));
    accept_loop(tcp, tcp_conn);
    {
        let mut out = io::stdout().lock();
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({"ws": format!("ws://{ws_addr}/"), "tcp": tcp_addr.to_string()})
        );
        let _ = out.flush();
    }
    std::thread::spawn(|| {
        // EOF (or an error) on stdin: the parent is gone.
        let mut line = String::new();
        let stdin = io::stdin();
        let mut lock = stdin.lock();
        while matches!(lock.read_line(&mut line), Ok(n) if n > 0) {
            line.clear();
        }
        std::process::exit(0);
    });
    std::thread::sleep(max_life);
    eprintln!("echo server: lifetime of {max_life:?} passed, exiting");
    std::process::exit(0);
}
