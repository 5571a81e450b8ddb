//! A threaded worker that waits for its application parks instead of spinning (defect 5 of
//! "Core, part 2"): its CPU time is read from /proc. One test in its own binary, so the only
//! `syncws-worker` thread in the process is the one under test. Linux only: it reads
//! /proc/self/task.
#![cfg(target_os = "linux")]

mod util;

use std::time::Duration;

use crossbeam_channel::bounded;
use syncws::{Command, Config, Event, ThreadedClient};
use util::*;

/// CPU time (user + system, in clock ticks) of this process's thread named `name`.
fn thread_cpu_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        // A thread that ends while we look is simply skipped.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if comm.trim() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        return Some(fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?);
    }
    None
}

/// A worker whose connection has failed, while the application reads none of its events and
/// keeps sending commands, parks: it does not spin until the application reads. (A parked thread
/// uses no CPU however loaded the machine is, so this cannot fail for a correct worker.)
#[test]
fn a_worker_waiting_for_the_application_at_teardown_does_not_spin() {
    // The server hangs up at once, without a close handshake.
    let (url, server) = ws_server(drop);
    let config = Config::builder().event_capacity(1).build().unwrap();
    let client = ThreadedClient::connect(&url, &config).unwrap();
    server.join().unwrap();
    // The worker has run (and named its thread) once its first event is in the channel.
    let deadline = std::time::Instant::now() + TEST_DEADLINE;
    while client.event_rx.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never reported"
        );
        std::thread::yield_now();
    }
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let control = client.control_tx.clone();
    let sender = std::thread::spawn(move || {
        // Keep a command waiting, a few hundred per second, until told to stop.
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            stop_rx.recv_timeout(Duration::from_millis(2))
        {
            let _ = control.try_send(Command::SendText("late".into()));
        }
    });
    let before = thread_cpu_ticks("syncws-worker").expect("the worker thread");
    let window = Duration::from_millis(500);
    std::thread::sleep(window);
    let spent = thread_cpu_ticks("syncws-worker").expect("the worker thread") - before;
    drop(stop_tx);
    sender.join().unwrap();
    // Clock ticks are 10 ms: a spinning worker spends most of the 50 in the window.
    assert!(
        spent < 12,
        "the worker spent {spent} ticks of 50 while it should wait"
    );
    let events: Vec<Event> = events(&client.event_rx).collect();
    assert!(matches!(events.last(), Some(Event::Quit)), "{events:?}");
}
