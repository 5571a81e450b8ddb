//! An idle readiness-mode client wakes only at its heartbeat's instants (README, "Heartbeat"):
//! once when the ping is due and once when the pong arrives, nothing in between. Its thread's
//! wake-ups are its voluntary context switches, read from /proc. One test in its own binary, so
//! the only `syncws-worker` thread in the process is the one under test. Linux only: it reads
//! /proc/thread-self and /proc/self/task.
#![cfg(target_os = "linux")]

mod util;

use std::time::{Duration, Instant};

use syncws::{Config, Event, ThreadedClient};
use tungstenite::Message;
use util::*;

const INTERVAL: Duration = Duration::from_millis(40);
/// Heartbeats counted, between the first pong and the last.
const BEATS: u64 = 8;
/// Wake-ups per heartbeat: the ping's deadline, then the pong's arrival.
const PER_BEAT: u64 = 2;
/// For whatever else may wake a thread now and then, and for reading the count a moment early
/// or late at each end.
const SLACK: u64 = 3;

/// What a thread has done so far: its voluntary context switches (each one a wait that slept,
/// so a wake-up after it) and the CPU time it has run.
#[derive(Debug, Clone, Copy)]
struct Counts {
    wakeups: u64,
    cpu: Duration,
}

/// [`Counts`] of the thread whose /proc directory is `task`.
fn counts(task: &std::path::Path) -> Counts {
    let status = std::fs::read_to_string(task.join("status")).expect("status");
    let wakeups = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .expect("voluntary_ctxt_switches")
        .trim()
        .parse()
        .unwrap();
    // The first field of schedstat: nanoseconds on the CPU.
    let schedstat = std::fs::read_to_string(task.join("schedstat")).expect("schedstat");
    let ns = schedstat
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    Counts {
        wakeups,
        cpu: Duration::from_nanos(ns),
    }
}

/// The /proc directory of this process's thread named `name`.
fn task_named(name: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .map(|task| task.path())
        .find(|path| {
            std::fs::read_to_string(path.join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
}

/// Counts at the first pong and at the pong `BEATS` later, with the time between them.
#[derive(Debug)]
struct Window {
    first: Counts,
    last: Counts,
    elapsed: Duration,
}

impl Window {
    /// Fails if the thread woke more often than its heartbeat needs, or spent its time on the
    /// CPU (a thread that spins never sleeps, so it has no wake-ups to count).
    fn check(&self, what: &str) {
        let wakeups = self.last.wakeups - self.first.wakeups;
        let cpu = self.last.cpu - self.first.cpu;
        println!("{what}: {wakeups} wake-ups and {cpu:?} on the CPU in {BEATS} heartbeats");
        let bound = BEATS * PER_BEAT + SLACK;
        assert!(
            wakeups <= bound,
            "{what}: {wakeups} wake-ups in {BEATS} heartbeats (at most {bound})"
        );
        assert!(
            cpu < self.elapsed / 10,
            "{what}: {cpu:?} on the CPU in {:?} of idling",
            self.elapsed
        );
    }
}

/// A peer that answers pings (tungstenite does, as it reads) and says nothing else.
fn quiet_peer() -> (String, std::thread::JoinHandle<usize>) {
    ws_server(|mut ws| {
        let mut pings = 0;
        loop {
            match ws.read() {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(Message::Close(_)) => {
                    let _ = ws.flush();
                }
                Ok(_) => {}
                Err(_) => return pings,
            }
        }
    })
}

fn heartbeat() -> syncws::ConfigBuilder {
    Config::builder()
        .ping_interval(Some(INTERVAL))
        .pong_timeout(Duration::from_secs(5))
}

/// The thread that runs the hooks (the client's own), from the first pong to the pong `BEATS`
/// later.
fn window_in(mode: Mode) -> Window {
    let (url, server) = quiet_peer();
    let (window_tx, window_rx) = crossbeam_channel::bounded(1);
    let mut pongs = 0;
    let mut first = None;
    let out = drive(
        mode,
        &url,
        heartbeat(),
        Box::new(move |rec, act| {
            if let Rec::Pong(_) = rec {
                pongs += 1;
                let now = (
                    counts(std::path::Path::new("/proc/thread-self")),
                    Instant::now(),
                );
                if pongs == 1 {
                    first = Some(now);
                } else if pongs == 1 + BEATS {
                    let (first, started) = first.unwrap();
                    let _ = window_tx.try_send(Window {
                        first,
                        last: now.0,
                        elapsed: now.1 - started,
                    });
                    act.close(1000, "").unwrap();
                }
            }
        }),
    );
    assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
    assert!(server.join().unwrap() as u64 > BEATS, "{mode:?}");
    window_rx.try_recv().expect("counted")
}

/// The threaded worker, read from the application's thread at each pong event.
fn window_of_the_worker() -> Window {
    let (url, server) = quiet_peer();
    let client = ThreadedClient::connect(&url, &heartbeat().build().unwrap()).unwrap();
    let mut worker = None;
    let mut pongs = 0;
    let mut first = None;
    let mut window = None;
    for event in events(&client.event_rx) {
        if let Event::Pong(_) = event {
            pongs += 1;
            let task = worker.get_or_insert_with(|| task_named("syncws-worker").expect("worker"));
            let now = (counts(task), Instant::now());
            if pongs == 1 {
                first = Some(now);
            } else if pongs == 1 + BEATS {
                let (first, started) = first.unwrap();
                window = Some(Window {
                    first,
                    last: now.0,
                    elapsed: now.1 - started,
                });
                client.control_tx.close(1000, "").unwrap();
            }
        }
    }
    assert!(server.join().unwrap() as u64 > BEATS);
    window.expect("counted")
}

#[test]
fn an_idle_readiness_client_wakes_only_for_its_heartbeat() {
    for mode in [
        Mode::Blocking,
        Mode::NonBlocking(syncws::WaitStrategy::Readiness),
        Mode::Set,
    ] {
        window_in(mode).check(&format!("{mode:?}"));
    }
    window_of_the_worker().check("Threaded");
}
