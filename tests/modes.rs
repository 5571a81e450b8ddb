//! What is particular to each mode: wait strategies, idle hooks, handles from other threads, the
//! threaded client's channels and its worker's life.

mod util;

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
    // The client thread's sleeps while the messages arrive: its voluntary context switches
    // between the first message and the last (the hooks run on that thread).
    let (sleeps_tx, sleeps_rx) = bounded(1);
    let mut first = None;
    let out = drive(
        Mode::NonBlocking(WaitStrategy::Sleep(SLEEP)),
        &url,
        Config::builder(),
        Box::new(move |rec, act| match rec {
            Rec::Text(t) if t == "0" => first = voluntary_switches(),
            Rec::Text(t) if t == &format!("{}", N - 1) => {
                let _ = sleeps_tx.try_send(first.zip(voluntary_switches()).map(|(a, b)| b - a));
                act.close(1000, "").unwrap();
            }
            _ => {}
        }),
    );
    let texts = out.texts();
    assert_eq!(texts.len(), N);
    assert!(texts.iter().enumerate().all(|(i, t)| *t == i.to_string()));
    server.join().unwrap();
    // Each pass reads everything readable, so the messages cost a handful of sleeps, not one
    // each (10,000), nor one per small batch. Linux only: elsewhere nothing counts them.
    let sleeps = sleeps_rx.try_recv().expect("the last message arrived");
    if let Some(sleeps) = sleeps {
        println!("{sleeps} sleeps for {N} messages");
        assert!(
            sleeps < N as u64 / 100,
            "{sleeps} sleeps for {N} messages: the wait caps throughput"
        );
    }
}

#[test]
fn read_timeout_calls_on_idle_and_the_client_keeps_waiting() {
    const READ_TIMEOUT: Duration = Duration::from_millis(30);
    for mode in [Mode::Blocking, Mode::NonBlocking(WaitStrategy::Readiness)] {
        let (url, server) = ws_server(|mut ws| {
            let (got, frame) = read_until_close(&mut ws);
            (got, frame.map(|f| f.code))
        });
        // When the connection opened, then each idle call.
        let times = Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = times.clone();
        let out = drive(
            mode,
            &url,
            Config::builder().read_timeout(Some(READ_TIMEOUT)),
            Box::new(move |rec, act| match rec {
                Rec::Activated(_) => t.lock().unwrap().push(Instant::now()),
                Rec::Idle => {
                    let mut t = t.lock().unwrap();
                    t.push(Instant::now());
                    // Still open after each idle: it says so, and closes at the third.
                    let idles = t.len() - 1;
                    if idles < 3 {
                        act.text(&format!("idle {idles}")).unwrap();
                    } else if idles == 3 {
                        act.close(1000, "bored").unwrap();
                    }
                }
                _ => {}
            }),
        );
        assert!(out.errors.is_empty(), "{mode:?}: {:?}", out.errors);
        // The connection outlived its idle calls: what it sent after them arrived, then the
        // close it sent after the third.
        let (got, code) = server.join().unwrap();
        assert_eq!(
            got,
            [Message::text("idle 1"), Message::text("idle 2")],
            "{mode:?}"
        );
        assert_eq!(code, Some(1000.into()), "{mode:?}");
        // Idle means no input for read_timeout: never sooner after the last input (nothing
        // but the opening came in) or the last idle call. The library measures from the
        // instant it took that input (or its last idle deadline), which comes a little before
        // the hook that the test times (CI saw 29.977 ms for 30): 1 ms of slack for that,
        // far less than any idle that did not wait.
        const HOOK_LAG: Duration = Duration::from_millis(1);
        let times = times.lock().unwrap();
        assert!(times.len() >= 4, "{mode:?}: {} idle calls", times.len() - 1);
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap + HOOK_LAG >= READ_TIMEOUT,
                "{mode:?}: idle after only {gap:?}"
            );
        }
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
    let rest: Vec<Event> = util::events(&events).collect();
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
