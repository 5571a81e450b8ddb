//! What is particular to each mode: wait strategies, idle hooks, handles from other threads, the
//! threaded client's channels and its worker's life.

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError};
use syncws::{
    Command, Config, Context, Event, Handler, NonBlockingClient, ThreadedClient, WaitStrategy,
};
use tungstenite::Message;
use util::*;

#[test]
fn echo_text_binary_and_ping_pong_in_every_mode() {
    for mode in MODES {
        let (url, server) = ws_server(|mut ws| {
            ws.send(Message::Ping(b"from-server".to_vec().into()))
                .unwrap();
            let mut pongs = Vec::new();
            loop {
                match ws.read() {
                    Ok(m @ (Message::Text(_) | Message::Binary(_))) => ws.send(m).unwrap(),
                    Ok(Message::Pong(p)) => pongs.push(p.to_vec()),
                    Ok(_) => {}
                    Err(_) => return pongs,
                }
            }
        });
        let out = drive(
            mode,
            &url,
            Config::builder(),
            Box::new(|rec, act| match rec {
                Rec::Activated(_) => {
                    act.text("héllo").unwrap();
                    act.binary(&[0, 1, 2, 255]).unwrap();
                    act.ping(b"from-client").unwrap();
                }
                Rec::Binary(_) => act.close(1000, "").unwrap(),
                _ => {}
            }),
        );
        assert_eq!(out.texts(), ["héllo"], "{mode:?}");
        assert!(
            out.recs.contains(&Rec::Binary(vec![0, 1, 2, 255])),
            "{mode:?}"
        );
        assert!(
            out.recs.contains(&Rec::Ping(b"from-server".to_vec())),
            "{mode:?}"
        );
        assert!(
            out.recs.contains(&Rec::Pong(b"from-client".to_vec())),
            "{mode:?}"
        );
        assert_eq!(
            server.join().unwrap(),
            [b"from-server".to_vec()],
            "{mode:?}: our automatic pong"
        );
    }
}

#[test]
fn a_sleep_strategy_never_caps_throughput() {
    const N: usize = 10_000;
    const SLEEP: Duration = Duration::from_millis(10);
    let (url, server) = ws_server(|mut ws| {
        for i in 0..N {
            ws.write(Message::text(format!("{i}"))).unwrap();
        }
        ws.flush().unwrap();
        read_until_close(&mut ws);
    });
    let sleeps = Arc::new(AtomicUsize::new(0));
    let s = sleeps.clone();
    let started = Instant::now();
    let out = drive(
        Mode::NonBlocking(WaitStrategy::Sleep(SLEEP)),
        &url,
        Config::builder(),
        Box::new(move |rec, act| match rec {
            Rec::Idle => {
                s.fetch_add(1, Ordering::Relaxed);
            }
            Rec::Text(t) if t == &format!("{}", N - 1) => act.close(1000, "").unwrap(),
            _ => {}
        }),
    );
    let elapsed = started.elapsed();
    let texts = out.texts();
    assert_eq!(texts.len(), N);
    assert!(texts.iter().enumerate().all(|(i, t)| *t == i.to_string()));
    // One message per sleep would take N sleeps (100 s); reading everything readable per pass
    // takes a handful of sleeps. (Empty polls also count the strategy's short hot polling
    // after activity, so they bound sleeps only loosely.)
    let empty_polls = sleeps.load(Ordering::Relaxed);
    assert!(
        empty_polls < N,
        "{empty_polls} empty polls for {N} messages"
    );
    assert!(elapsed < SLEEP * N as u32 / 10, "took {elapsed:?}");
    server.join().unwrap();
}

#[test]
fn read_timeout_calls_on_idle_and_the_client_keeps_waiting() {
    for mode in [Mode::Blocking, Mode::NonBlocking(WaitStrategy::Readiness)] {
        let (url, server) = ws_server(|mut ws| read_until_close(&mut ws).1.map(|f| f.code));
        let idles = Arc::new(AtomicUsize::new(0));
        let i = idles.clone();
        let out = drive(
            mode,
            &url,
            Config::builder().read_timeout(Some(Duration::from_millis(30))),
            Box::new(move |rec, act| {
                if let Rec::Idle = rec {
                    if i.fetch_add(1, Ordering::Relaxed) + 1 == 3 {
                        act.close(1000, "bored").unwrap();
                    }
                }
            }),
        );
        assert!(idles.load(Ordering::Relaxed) >= 3, "{mode:?}");
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        assert_eq!(server.join().unwrap(), Some(1000.into()), "{mode:?}");
    }
}

/// Records text messages; nothing else.
#[derive(Default)]
struct Texts(Vec<String>);

impl Handler for Texts {
    fn on_text_message(&mut self, _ctx: &mut Context<'_>, text: &str) {
        self.0.push(text.to_owned());
    }
}

#[test]
fn a_handle_on_another_thread_wakes_an_idle_loop_in_every_strategy() {
    for strategy in [
        WaitStrategy::Readiness,
        WaitStrategy::Sleep(Duration::from_millis(5)),
        WaitStrategy::BusySpin,
    ] {
        let (url, server) = ws_server(echo);
        let config = Config::builder().wait_strategy(strategy).build().unwrap();
        let client = NonBlockingClient::connect(&url, &config).unwrap();
        let handle = client.handle();
        let (done_tx, done_rx) = bounded(1);
        std::thread::spawn(move || {
            let mut texts = Texts::default();
            client.run(&mut texts);
            done_tx.send(texts.0).unwrap();
        });
        // The loop is idle (nothing arrives); only the handle can make it act.
        for i in 0..20 {
            handle.send_text(format!("from afar {i}")).unwrap();
        }
        handle.close(1000, "bye").unwrap();
        let texts = done_rx
            .recv_timeout(TEST_DEADLINE)
            .expect("client finished");
        let expected: Vec<String> = (0..20).map(|i| format!("from afar {i}")).collect();
        assert_eq!(texts, expected, "{strategy:?}");
        assert_eq!(server.join().unwrap(), 20, "{strategy:?}");
        // Once the client has ended, the handle says so and hands the command back.
        let err = handle.send(Command::SendText("late".into())).unwrap_err();
        assert_eq!(err.0, Command::SendText("late".into()));
    }
}

#[test]
fn dropping_a_threaded_client_stops_and_joins_its_worker() {
    let (url, server) = ws_server(|mut ws| close_code_from_client(&mut ws));
    let client = ThreadedClient::connect(&url, &Config::default()).unwrap();
    let events = client.event_rx.clone();
    let control = client.control_tx.clone();
    assert!(matches!(
        events.recv_timeout(TEST_DEADLINE),
        Ok(Event::Activated(_))
    ));
    let started = Instant::now();
    drop(client);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drop is bounded"
    );
    // The worker has ended: it sent Quit, then its channel ends reported disconnection.
    let rest: Vec<Event> = events.iter().collect();
    assert!(matches!(rest.last(), Some(Event::Quit)), "{rest:?}");
    assert!(control.send(Command::ForceQuit).is_err());
    assert_eq!(
        server.join().unwrap(),
        Some(1001),
        "a going-away Close on drop"
    );
}

#[test]
fn a_slow_application_loses_no_events() {
    const N: usize = 2_000;
    let (sent_tx, sent_rx) = bounded(1);
    let (url, server) = ws_server(move |mut ws| {
        for i in 0..N {
            ws.send(Message::text(i.to_string())).unwrap();
        }
        sent_tx.send(()).unwrap();
        read_until_close(&mut ws);
    });
    let config = Config::builder().event_capacity(4).build().unwrap();
    let client = ThreadedClient::connect(&url, &config).unwrap();
    // Read nothing until the server has written everything: the worker must hold back.
    sent_rx.recv_timeout(TEST_DEADLINE).unwrap();
    let mut got = 0;
    for event in events(&client.event_rx) {
        match event {
            Event::TextMessage(t) => {
                assert_eq!(t.as_str(), got.to_string(), "in order");
                got += 1;
                if got == N {
                    client.control_tx.close(1000, "").unwrap();
                }
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    assert_eq!(got, N);
    server.join().unwrap();
}

#[test]
fn force_quit_gets_through_while_the_event_channel_is_full() {
    let (url, server) = ws_server(|mut ws| {
        // Flood until the client goes away.
        let mut i = 0u64;
        while ws.send(Message::text(i.to_string())).is_ok() {
            i += 1;
        }
    });
    let config = Config::builder().event_capacity(1).build().unwrap();
    let client = ThreadedClient::connect(&url, &config).unwrap();
    // Wait until the worker is certainly blocked on the full channel, without reading.
    let deadline = Instant::now() + TEST_DEADLINE;
    while !client.event_rx.is_full() {
        assert!(Instant::now() < deadline, "channel never filled");
        std::thread::yield_now();
    }
    client.control_tx.send(Command::ForceQuit).unwrap();
    let mut saw_quit = false;
    loop {
        match client.event_rx.recv_timeout(TEST_DEADLINE) {
            Ok(Event::Quit) => saw_quit = true,
            Ok(_) => assert!(!saw_quit, "nothing after Quit"),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("worker did not stop"),
        }
    }
    assert!(saw_quit);
    server.join().unwrap();
}

/// The worker reads ahead of a full event channel; when the application makes room just as the
/// worker decides how to wait, the messages already read must still come out (the demo hung
/// about one run in four here). Many bursts, each ending with everything read into our buffers
/// and nothing left on the socket, give the race many chances.
#[test]
fn messages_read_ahead_of_a_full_channel_are_delivered_when_room_comes() {
    const ROUNDS: usize = 300;
    const BURST: usize = 400;
    let (url, server) = ws_server(|mut ws| {
        for round in 0..ROUNDS {
            for i in 0..BURST {
                ws.write(Message::text(format!("{round}:{i}"))).unwrap();
            }
            ws.flush().unwrap();
            // The next burst only once the client has seen all of this one.
            loop {
                match ws.read().unwrap() {
                    Message::Text(t) if t.as_str() == "ack" => break,
                    _ => {}
                }
            }
        }
        read_until_close(&mut ws);
    });
    let config = Config::builder().event_capacity(2).build().unwrap();
    let client = ThreadedClient::connect(&url, &config).unwrap();
    let (mut round, mut i) = (0, 0);
    while round < ROUNDS {
        // A stall shows within seconds; a healthy burst takes milliseconds.
        match client.event_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Event::TextMessage(t)) => {
                assert_eq!(t.as_str(), format!("{round}:{i}"), "in order");
                i += 1;
                if i == BURST {
                    (round, i) = (round + 1, 0);
                    client.control_tx.send_text("ack").unwrap();
                }
            }
            Ok(Event::Error(e)) => panic!("{e}"),
            Ok(Event::Quit) => panic!("ended early at round {round}"),
            Ok(_) => {}
            Err(e) => panic!("round {round}, message {i}: stalled ({e})"),
        }
    }
    client.control_tx.close(1000, "").unwrap();
    for event in events(&client.event_rx) {
        if let Event::Error(e) = event {
            panic!("{e}");
        }
    }
    server.join().unwrap();
}
