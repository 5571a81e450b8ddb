//! The floor (raw TCP) and the anchor (tungstenite, blocking, one flush per message).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use tungstenite::{Bytes, Message, Utf8Bytes};

use crate::job::{bin64k, Job, Params, Test, TEXT32};

fn io_err(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Raw TCP, blocking socket. Each batch the job asks for goes out in one `write`; one `read`
/// takes whatever has come back. The server reads everything it is sent, so a blocking write
/// cannot deadlock.
pub fn raw_tcp(job: &mut Job, addr: SocketAddr, p: &Params) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(io_err("connect"))?;
    s.set_nodelay(true).map_err(io_err("nodelay"))?;
    if job.test() == Test::Idle {
        s.set_read_timeout(Some(p.idle))
            .map_err(io_err("timeout"))?;
        job.start();
        let mut b = [0u8; 64];
        let r = s.read(&mut b);
        job.idle_end();
        return match r {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            other => Err(format!("idle read returned {other:?}")),
        };
    }
    s.set_read_timeout(Some(p.stall))
        .map_err(io_err("timeout"))?;
    let size = job.test().size();
    let unit: Vec<u8> = if job.test().binary() {
        bin64k()
    } else {
        TEXT32.as_bytes().to_vec()
    };
    let out: Vec<u8> = unit.repeat(job.window().max(1));
    let mut inbuf = vec![0u8; 256 << 10];
    let mut partial = 0usize;
    let mut k = job.start();
    loop {
        if k > 0 {
            s.write_all(&out[..k * size]).map_err(io_err("write"))?;
        }
        if job.is_done() {
            break;
        }
        let n = s.read(&mut inbuf).map_err(io_err("read"))?;
        if n == 0 {
            return Err("server closed".into());
        }
        partial += n;
        k = 0;
        while partial >= size && !job.is_done() {
            partial -= size;
            k += job.on_echo(size);
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn ws_err(what: &str) -> impl Fn(tungstenite::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// tungstenite, blocking socket, default `WebSocketConfig`, `send` (write + flush: one
/// `write(2)` per message), `read` for each echo.
pub fn tungstenite(job: &mut Job, url: &str, p: &Params) -> Result<(), String> {
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_string();
    let tcp = TcpStream::connect(&addr).map_err(io_err("connect"))?;
    tcp.set_nodelay(true).map_err(io_err("nodelay"))?;
    tcp.set_read_timeout(Some(p.stall))
        .map_err(io_err("timeout"))?;
    let (mut ws, _) = tungstenite::client(url, tcp).map_err(|e| format!("handshake: {e}"))?;
    if job.test() == Test::Idle {
        ws.get_mut()
            .set_read_timeout(Some(p.idle))
            .map_err(io_err("timeout"))?;
        job.start();
        let r = ws.read();
        job.idle_end();
        return match r {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            other => Err(format!("idle read returned {other:?}")),
        };
    }
    let msg = if job.test().binary() {
        Message::Binary(Bytes::from(bin64k()))
    } else {
        Message::Text(Utf8Bytes::from_static(TEXT32))
    };
    let mut k = job.start();
    loop {
        for _ in 0..k {
            ws.send(msg.clone()).map_err(ws_err("send"))?;
        }
        if job.is_done() {
            break;
        }
        k = match ws.read().map_err(ws_err("read"))? {
            Message::Text(t) => job.on_echo(t.len()),
            Message::Binary(b) => job.on_echo(b.len()),
            _ => 0,
        };
    }
    // Close, reading the echoes still in flight until the server's Close (bounded by the read
    // timeout).
    let _ = ws.close(None);
    while ws.read().is_ok() {}
    Ok(())
}
