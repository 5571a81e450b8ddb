//! A threaded worker whose application is behind (its `event_rx` full) sleeps, whatever its
//! timers: review scenario F2, with `read_timeout` set, spun at 100% of a core because the
//! idle deadline stayed in the past while reading was paused. One test in its own binary, so
//! the only `syncws-worker` thread in the process is the one under test. Linux only: it reads
//! /proc/self/task.
#![cfg(target_os = "linux")]

mod util;

use std::time::Duration;

use syncws::{Config, Event, ThreadedClient};
use tungstenite::Message;
use util::*;

/// CPU time (user + system, in clock ticks) of this process's thread named `name`.
fn thread_cpu_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        return Some(fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?);
    }
    None
}

#[test]
fn a_paused_worker_with_every_timer_set_sleeps() {
    // The server sends more than the event channel holds, then waits for the close.
    let (url, server) = ws_server(|mut ws| {
        for i in 0..20 {
            ws.send(Message::text(format!("m{i}"))).unwrap();
        }
        read_until_close(&mut ws)
    });
    let config = Config::builder()
        .event_capacity(1)
        .read_timeout(Some(Duration::from_millis(50)))
        .ping_interval(Some(Duration::from_millis(50)))
        .pong_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let client = ThreadedClient::connect(&url, &config).unwrap();
    // The worker is paused once the first message fills the channel.
    let deadline = std::time::Instant::now() + TEST_DEADLINE;
    while client.event_rx.is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing arrived");
        std::thread::yield_now();
    }
    let before = thread_cpu_ticks("syncws-worker").expect("the worker thread");
    let window = Duration::from_millis(600);
    std::thread::sleep(window);
    let spent = thread_cpu_ticks("syncws-worker").expect("the worker thread") - before;
    // Clock ticks are 10 ms: a spinning worker spends most of the 60 in the window.
    assert!(spent < 10, "the paused worker spent {spent} ticks of 60");
    let mut texts = 0;
    client.control_tx.close(1000, "done").unwrap();
    for e in events(&client.event_rx) {
        match e {
            Event::TextMessage(_) => texts += 1,
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    assert_eq!(texts, 20);
    server.join().unwrap();
}
