//! A terminal client for the chat server: lines you type are said in your current room; a line
//! starting with `{` is sent as a protocol message (`{"op":"join","room":"rust"}`); every event
//! the server sends is printed.
//!
//! ```text
//! cargo run --release -p syncws-chat                                    # the server
//! cargo run --release -p syncws-chat --example chat_client -- ws://127.0.0.1:8080/ ann
//! ```

use std::io::BufRead;

use syncws::{Config, Event, ThreadedClient};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/".into());
    let nick = args.next();
    let client = match ThreadedClient::connect(&url, &Config::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {url}: {e}");
            std::process::exit(1);
        }
    };
    if let Some(nick) = nick {
        let hello = serde_json::json!({"op": "hello", "nick": nick});
        let _ = client.control_tx.send_text(hello.to_string());
    }
    // Typed lines go out from their own thread; end of input closes the connection.
    let tx = client.control_tx.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if !line.trim().is_empty() && tx.send_text(line).is_err() {
                return;
            }
        }
        let _ = tx.close(1000, "bye");
    });
    for event in client.event_rx.iter() {
        match event {
            Event::TextMessage(t) => println!("{}", t.as_str()),
            Event::ConnectionClosed(c) => println!("closed: {} {}", u16::from(c.code), c.reason),
            Event::Error(e) => eprintln!("error: {e}"),
            Event::Quit => break,
            _ => {}
        }
    }
}
