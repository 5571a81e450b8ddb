//! The clients: one `ClientSet` thread drives every connection of a scenario; a scheduler thread
//! sends on a fixed schedule through their `CommandSender`s (open loop: a late send is timed from
//! when it was due, not from when it went out); each connection accounts for what it received,
//! per sender, from the numbers in the messages and the room's sequence numbers.
//!
//! A message's text is `SENDER:CONV:K:DUE_US:` and padding: who sent it, in which of its
//! conversations (pair mode: each match is a new one; 0 in rooms), its number in that stream
//! (0, 1, ...), and when it was due (microseconds since the scenario began).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use serde::Deserialize;
use syncws::{ClientSet, CloseInfo, CommandSender, Config, Context, Handler, SetHandle};

// ----- what every connection adds to --------------------------------------------------------

/// Deliveries and latency in one second of the run.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub deliveries: u64,
    pub latency: Histogram<u64>,
}

/// Shared by every connection (they run on one thread; the lock is never contended there).
pub struct Totals {
    pub start: Instant,
    /// `start` on the wall clock, in ms (the server stamps messages with wall-clock ms).
    pub start_wall_ms: i64,
    /// Milliseconds from due to the server's stamp, and from the stamp to delivery: which
    /// side the time was spent on.
    pub to_server: Histogram<u64>,
    pub from_server: Histogram<u64>,
    /// Microseconds from when a message was due to its delivery, over the whole run.
    pub latency: Histogram<u64>,
    pub series: Vec<Bucket>,
    pub deliveries: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Sequence numbers a receiver skipped in a room (another view of loss, any sender).
    pub seq_gaps: u64,
    /// Own copies received (the server's acknowledgements).
    pub acks: u64,
    pub close_codes: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub replayed: u64,
    pub last_delivery: Option<Instant>,
    pub last_ack: Option<Instant>,
}

pub fn histogram() -> Histogram<u64> {
    // 1 us to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are allowed"))
    })
}

impl Totals {
    pub fn new(start: Instant) -> Totals {
        let start_wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
            - start.elapsed().as_millis() as i64;
        Totals {
            start,
            start_wall_ms,
            to_server: histogram(),
            from_server: histogram(),
            latency: histogram(),
            series: Vec::new(),
            deliveries: 0,
            duplicates: 0,
            out_of_order: 0,
            seq_gaps: 0,
            acks: 0,
            close_codes: BTreeMap::new(),
            errors: BTreeMap::new(),
            replayed: 0,
            last_delivery: None,
            last_ack: None,
        }
    }

    fn delivered(&mut self, now: Instant, due_us: u64, stamped_ms: Option<i64>) {
        let at_us = now.duration_since(self.start).as_micros() as u64;
        if let Some(ts) = stamped_ms {
            let stamped_us = (ts - self.start_wall_ms).max(0) as u64 * 1000;
            let _ = self
                .to_server
                .record(stamped_us.saturating_sub(due_us).max(1));
            let _ = self
                .from_server
                .record(at_us.saturating_sub(stamped_us).max(1));
        }
        let latency = at_us.saturating_sub(due_us).max(1);
        let _ = self.latency.record(latency);
        let second = (at_us / 1_000_000) as usize;
        while self.series.len() <= second {
            self.series.push(Bucket {
                deliveries: 0,
                latency: histogram(),
            });
        }
        let bucket = &mut self.series[second];
        bucket.deliveries += 1;
        let _ = bucket.latency.record(latency);
        self.deliveries += 1;
        self.last_delivery = Some(now);
    }
}

pub type SharedTotals = Arc<Mutex<Totals>>;

pub fn lock_totals(t: &SharedTotals) -> std::sync::MutexGuard<'_, Totals> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- one receiver's view of one sender ----------------------------------------------------

/// What a receiver got from one sender: every number below `next` was seen once, except those
/// in `missing`.
#[derive(Debug, Default, Clone)]
pub struct Track {
    pub next: u64,
    pub missing: BTreeSet<u64>,
    pub unique: u64,
}

impl Track {
    /// Whether `k` was received.
    pub fn has(&self, k: u64) -> bool {
        k < self.next && !self.missing.contains(&k)
    }

    /// Returns whether `k` is new.
    pub(crate) fn saw(&mut self, k: u64, totals: &mut Totals) -> bool {
        if k == self.next {
            self.next += 1;
        } else if k > self.next {
            self.missing.extend(self.next..k);
            self.next = k + 1;
        } else if self.missing.remove(&k) {
            totals.out_of_order += 1;
        } else {
            totals.duplicates += 1;
            return false;
        }
        self.unique += 1;
        true
    }
}

// ----- the connection handler ---------------------------------------------------------------

/// What a connection does once open.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Join these rooms (with `since` when recovering).
    Join(Vec<String>),
    /// Ask for a stranger (pair mode).
    Match,
    /// Nothing: an idle connection.
    Idle,
}

/// What connections tell the controller.
#[derive(Debug)]
pub enum Note {
    Opened {
        after: Duration,
    },
    Joined,
    Matched {
        client: usize,
        room: String,
        conv: u32,
        waited: Duration,
    },
    PeerLeft {
        client: usize,
        room: String,
    },
    Quit {
        client: usize,
        report: Box<Report>,
    },
}

/// A connection's account, sent when it quits.
#[derive(Debug, Default)]
pub struct Report {
    pub tracks: HashMap<Stream, Track>,
    /// Own messages the server took: (conversation, k, seq).
    pub acked: Vec<(u32, u64, u64)>,
    /// The last seq seen in each room.
    pub last_seq: HashMap<String, u64>,
    pub close: Option<CloseInfo>,
    pub errors: Vec<String>,
}

/// One connection of a scenario. Its account of what it received moves to its successor when
/// it reconnects (`recovery`), so loss and duplication are counted across both connections.
pub struct Member {
    pub client: usize,
    pub plan: Plan,
    pub totals: SharedTotals,
    pub notes: Sender<Note>,
    pub tracks: HashMap<Stream, Track>,
    /// The conversation under way (pair mode: one per match).
    pub conv: u32,
    pub acked: Vec<(u32, u64, u64)>,
    /// Own messages the server took so far (the scheduler's window reads it).
    pub ack_count: Arc<std::sync::atomic::AtomicU64>,
    /// Last sequence number seen per room (for `since` and gap counting).
    pub last_seq: HashMap<String, u64>,
    pub opened_at: Instant,
    pub match_asked: Option<Instant>,
    pub report: Report,
    /// Quit on purpose after this many deliveries, and come back (`recovery`).
    pub drop_after: Option<u64>,
    pub received: u64,
    /// Where to come back, when it drops on purpose.
    pub comeback: Option<(SetHandle<Member>, String, Config)>,
    /// How long it stays away before coming back.
    pub away: Duration,
    pub epoch: Option<String>,
}

#[derive(Deserialize)]
struct In<'a> {
    #[serde(borrow)]
    ev: Cow<'a, str>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    msgs: Option<Vec<InMsg<'a>>>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    recovered: bool,
}

#[derive(Deserialize)]
struct InMsg<'a> {
    #[serde(borrow)]
    room: Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// A sender's stream: which client, which conversation.
pub type Stream = (usize, u32);

/// `SENDER:CONV:K:DUE_US:...` -> (stream, k, due).
fn stamp(text: &str) -> Option<(Stream, u64, u64)> {
    let mut parts = text.splitn(5, ':');
    let sender = parts.next()?.parse().ok()?;
    let conv = parts.next()?.parse().ok()?;
    let k = parts.next()?.parse().ok()?;
    let due = parts.next()?.parse().ok()?;
    Some(((sender, conv), k, due))
}

impl Member {
    pub fn new(client: usize, plan: Plan, totals: &SharedTotals, notes: &Sender<Note>) -> Member {
        Member {
            client,
            plan,
            totals: totals.clone(),
            notes: notes.clone(),
            tracks: HashMap::new(),
            conv: 0,
            acked: Vec::new(),
            ack_count: Arc::default(),
            last_seq: HashMap::new(),
            opened_at: Instant::now(),
            match_asked: None,
            report: Report::default(),
            drop_after: None,
            received: 0,
            comeback: None,
            away: Duration::ZERO,
            epoch: None,
        }
    }

    fn message(
        &mut self,
        now: Instant,
        room: &str,
        seq: u64,
        text: &str,
        ts: Option<i64>,
        replay: bool,
    ) {
        let mut totals = lock_totals(&self.totals);
        if let Some(last) = self.last_seq.get(room).copied() {
            if seq <= last {
                // Already seen (a replay overlapping what arrived live).
                if !replay {
                    totals.out_of_order += 1;
                }
                return;
            }
            totals.seq_gaps += seq - last - 1;
        }
        self.last_seq.insert(room.to_owned(), seq);
        let Some((sender, k, due)) = stamp(text) else {
            return;
        };
        if sender.0 == self.client {
            totals.acks += 1;
            totals.last_ack = Some(now);
            self.acked.push((sender.1, k, seq));
            self.ack_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        if replay {
            totals.replayed += 1;
        }
        if self.tracks.entry(sender).or_default().saw(k, &mut totals) {
            totals.delivered(now, due, if replay { None } else { ts });
            self.received += 1;
        }
    }
}

impl Handler for Member {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        let _ = self.notes.send(Note::Opened {
            after: self.opened_at.elapsed(),
        });
        match &self.plan {
            Plan::Join(rooms) => {
                for room in rooms {
                    let op = match (self.last_seq.get(room), &self.epoch) {
                        (Some(since), Some(epoch)) => format!(
                            r#"{{"op":"join","room":"{room}","since":{since},"epoch":"{epoch}"}}"#
                        ),
                        (Some(since), None) => {
                            format!(r#"{{"op":"join","room":"{room}","since":{since}}}"#)
                        }
                        _ => format!(r#"{{"op":"join","room":"{room}"}}"#),
                    };
                    let _ = ctx.send_text(&op);
                }
            }
            Plan::Match => {
                self.match_asked = Some(Instant::now());
                let _ = ctx.send_text(r#"{"op":"match"}"#);
            }
            Plan::Idle => {}
        }
    }

    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        let now = Instant::now();
        let Ok(ev) = serde_json::from_str::<In<'_>>(text) else {
            return;
        };
        match &*ev.ev {
            "msg" => {
                if let (Some(room), Some(seq), Some(t)) = (&ev.room, ev.seq, &ev.text) {
                    self.message(now, room, seq, t, ev.ts, false);
                }
            }
            "history" => {
                for m in ev.msgs.unwrap_or_default() {
                    self.message(now, &m.room, m.seq, &m.text, None, true);
                }
            }
            "joined" => {
                if let Some(room) = &ev.room {
                    if let Some(epoch) = ev.epoch {
                        self.epoch = Some(epoch.into_owned());
                    }
                    // A fresh join starts counting from the room's current seq, unless a
                    // replay from the start follows (a pair made by another node of a
                    // cluster: the partner may have written before this side joined).
                    if let (false, Some(seq)) = (self.last_seq.contains_key(&**room), ev.seq) {
                        let from = if ev.recovered { 0 } else { seq };
                        self.last_seq.insert(room.to_string(), from);
                    }
                    // Every connection is put in the lobby first; only the planned rooms count.
                    if matches!(&self.plan, Plan::Join(rooms) if rooms.iter().any(|r| r == &**room))
                    {
                        let _ = self.notes.send(Note::Joined);
                    }
                }
            }
            "matched" => {
                if let Some(room) = &ev.room {
                    let waited = self.match_asked.map_or(Duration::ZERO, |t| t.elapsed());
                    self.conv += 1;
                    self.last_seq.entry(room.to_string()).or_insert(0);
                    let _ = self.notes.send(Note::Matched {
                        client: self.client,
                        room: room.to_string(),
                        conv: self.conv,
                        waited,
                    });
                    // Re-queued after a partner left: the next match is timed from here.
                    self.match_asked = Some(Instant::now());
                }
            }
            "peer_left" => {
                if let Some(room) = &ev.room {
                    self.match_asked = Some(Instant::now());
                    let _ = self.notes.send(Note::PeerLeft {
                        client: self.client,
                        room: room.to_string(),
                    });
                }
            }
            "error" => {
                let code = ev.code.as_deref().unwrap_or("?").to_owned();
                *lock_totals(&self.totals).errors.entry(code).or_default() += 1;
            }
            _ => {}
        }
        if self.drop_after.is_some_and(|n| self.received >= n) {
            self.drop_after = None;
            ctx.force_quit();
        }
    }

    fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &CloseInfo) {
        *lock_totals(&self.totals)
            .close_codes
            .entry(u16::from(close.code))
            .or_default() += 1;
        self.report.close = Some(close.clone());
    }

    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &syncws::Error) {
        self.report.errors.push(error.to_string());
    }

    fn on_quit(&mut self) {
        if let Some((handle, url, config)) = self.comeback.take() {
            // Come back as a new connection that carries this one's account and asks for
            // everything after the last seq it saw.
            let successor = Member {
                client: self.client,
                plan: self.plan.clone(),
                totals: self.totals.clone(),
                notes: self.notes.clone(),
                tracks: std::mem::take(&mut self.tracks),
                conv: self.conv,
                acked: std::mem::take(&mut self.acked),
                ack_count: self.ack_count.clone(),
                last_seq: std::mem::take(&mut self.last_seq),
                opened_at: Instant::now(),
                match_asked: None,
                report: Report::default(),
                drop_after: None,
                received: self.received,
                comeback: None,
                away: Duration::ZERO,
                epoch: self.epoch.take(),
            };
            // Stay away a while (a phone in a tunnel), then come back asking for what was
            // missed. The wait is the scenario's shape, on a thread of its own.
            let away = self.away;
            std::thread::spawn(move || {
                std::thread::sleep(away);
                if let Err(e) = handle.add(&url, &config, successor) {
                    eprintln!("chat-load: coming back failed: {e}");
                }
            });
            return;
        }
        let mut report = std::mem::take(&mut self.report);
        report.tracks = std::mem::take(&mut self.tracks);
        report.acked = std::mem::take(&mut self.acked);
        report.last_seq = std::mem::take(&mut self.last_seq);
        let _ = self.notes.send(Note::Quit {
            client: self.client,
            report: Box::new(report),
        });
    }
}

// ----- the set's thread ---------------------------------------------------------------------

/// The thread that runs the set, and the handle that adds to it.
pub struct Runner {
    pub handle: SetHandle<Member>,
    /// Dropped to let the thread end once the set is empty.
    again: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Runner {
    pub fn start() -> Result<Runner, std::io::Error> {
        let mut set: ClientSet<Member> = ClientSet::new()?;
        let handle = set.handle();
        let (again, wake) = crossbeam_channel::unbounded::<()>();
        let thread = std::thread::Builder::new()
            .name("chat-load-set".into())
            .spawn(move || {
                // `run` returns whenever the set is empty; connections added later start it
                // again, until the controller is done.
                while wake.recv().is_ok() {
                    set.run();
                }
            })?;
        Ok(Runner {
            handle,
            again: Some(again),
            thread: Some(thread),
        })
    }

    /// Add a connection and make sure the set runs it.
    pub fn add(
        &self,
        url: &str,
        config: &Config,
        member: Member,
    ) -> Result<CommandSender, syncws::Error> {
        let (_, sender) = self.handle.add(url, config, member)?;
        if let Some(again) = &self.again {
            let _ = again.send(());
        }
        Ok(sender)
    }

    pub fn finish(mut self) {
        drop(self.again.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ----- the scheduler ------------------------------------------------------------------------

/// One sender's schedule.
pub struct SendPlan {
    pub client: usize,
    pub conv: u32,
    pub sender: CommandSender,
    pub room: String,
    /// Explicit offsets from `start` for each message (instead of `interval` and `count`).
    pub times: Option<Vec<Duration>>,
    /// Send a `typing` right after each message (the pause to the next one is the typing).
    pub typing: bool,
    /// When the first message is due.
    pub start: Instant,
    /// Between messages; zero: as fast as the connection takes them (then a message is "due"
    /// when it is handed over, and latency is from there).
    pub interval: Duration,
    pub count: Option<u64>,
    pub until: Option<Instant>,
    pub size: usize,
    /// As fast as accepted, with at most this many messages not yet taken by the server (its
    /// copy not yet back): a publisher that outruns its own acknowledgements would fill its
    /// outbox with them and be closed as a slow consumer, as a real client would.
    pub window: Option<(u64, Arc<std::sync::atomic::AtomicU64>)>,
}

/// How many messages each stream handed over.
pub type Sent = Arc<Mutex<HashMap<Stream, u64>>>;

/// Streams to stop (a pair whose partner left): (client, room).
pub type Cancelled = Arc<Mutex<std::collections::HashSet<(usize, String)>>>;

/// Runs every sender's schedule on one thread; new senders can join through `more` (pair mode)
/// until it is dropped. Returns once every schedule is done and `more` is closed.
pub fn schedule(
    start: Instant,
    first: Vec<SendPlan>,
    more: Receiver<SendPlan>,
    sent: Sent,
    cancelled: Cancelled,
    active: Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::Ordering::SeqCst;
    struct Due(Instant, usize);
    impl PartialEq for Due {
        fn eq(&self, o: &Self) -> bool {
            self.0 == o.0 && self.1 == o.1
        }
    }
    impl Eq for Due {}
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (self.0, self.1).cmp(&(o.0, o.1))
        }
    }
    let mut plans: Vec<(SendPlan, u64, bool)> = Vec::new();
    let mut heap: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let add = |plan: SendPlan,
               plans: &mut Vec<(SendPlan, u64, bool)>,
               heap: &mut BinaryHeap<Reverse<Due>>| {
        let first = match &plan.times {
            Some(times) => times.first().map(|t| plan.start + *t),
            None => Some(plan.start),
        };
        if let Some(first) = first {
            heap.push(Reverse(Due(first, plans.len())));
            plans.push((plan, 0, false));
            active.fetch_add(1, SeqCst);
        }
    };
    for p in first {
        add(p, &mut plans, &mut heap);
    }
    let mut more_open = true;
    let pad = "x".repeat(64 << 10);
    loop {
        // New senders first (pair mode), without waiting while others are due.
        while more_open {
            match more.try_recv() {
                Ok(p) => add(p, &mut plans, &mut heap),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => more_open = false,
            }
        }
        let Some(Reverse(Due(due, i))) = heap.pop() else {
            if !more_open {
                break;
            }
            match more.recv() {
                Ok(p) => add(p, &mut plans, &mut heap),
                Err(_) => more_open = false,
            }
            continue;
        };
        let now = Instant::now();
        if due > now {
            // Wait for the next due send, or a new sender.
            heap.push(Reverse(Due(due, i)));
            if more_open {
                match more.recv_timeout(due - now) {
                    Ok(p) => add(p, &mut plans, &mut heap),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => more_open = false,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                }
            } else {
                std::thread::sleep(due - now);
            }
            continue;
        }
        let (plan, k, done) = &mut plans[i];
        if *done {
            continue;
        }
        if cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(plan.client, plan.room.clone()))
        {
            *done = true;
            active.fetch_sub(1, SeqCst);
            continue;
        }
        let asap = plan.interval.is_zero() && plan.times.is_none();
        if let Some((window, acked)) = &plan.window {
            let taken = acked.load(std::sync::atomic::Ordering::Relaxed);
            if *k >= taken + window {
                // Look again shortly: the acknowledgements are on their way.
                heap.push(Reverse(Due(now + Duration::from_micros(200), i)));
                continue;
            }
        }
        let due_us = if asap { now } else { due }
            .saturating_duration_since(start)
            .as_micros() as u64;
        let head = format!("{}:{}:{}:{}:", plan.client, plan.conv, k, due_us);
        let fill = plan.size.saturating_sub(head.len()).min(pad.len());
        let op = format!(
            r#"{{"op":"say","room":"{}","text":"{head}{}"}}"#,
            plan.room,
            &pad[..fill]
        );
        if plan.sender.send_text(op).is_err() {
            *done = true;
            active.fetch_sub(1, SeqCst);
            continue;
        }
        if plan.typing {
            let _ = plan
                .sender
                .send_text(format!(r#"{{"op":"typing","room":"{}"}}"#, plan.room));
        }
        *k += 1;
        let next = match &plan.times {
            Some(times) => times.get(*k as usize).map(|t| plan.start + *t),
            None if asap => Some(now),
            None => Some(due + plan.interval),
        };
        let over = plan.count.is_some_and(|c| *k >= c)
            || plan.until.is_some_and(|u| Instant::now() >= u)
            || next.is_none();
        match next {
            Some(next) if !over => heap.push(Reverse(Due(next, i))),
            _ => {
                *done = true;
                active.fetch_sub(1, SeqCst);
            }
        }
    }
    let mut out = sent.lock().unwrap_or_else(|e| e.into_inner());
    for (plan, k, _) in plans {
        *out.entry((plan.client, plan.conv)).or_default() += k;
    }
}

/// A line on stderr every second while a scenario runs: elapsed time, deliveries so far and
/// their rate, duplicates and seq gaps (rewritten in place on a terminal).
pub struct Progress {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    pub fn start(name: &str, totals: &SharedTotals) -> Progress {
        use std::io::{IsTerminal, Write};
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, totals, name) = (stop.clone(), totals.clone(), name.to_owned());
        let thread = std::thread::spawn(move || {
            let tty = std::io::stderr().is_terminal();
            let begun = Instant::now();
            let mut last = 0;
            let mut next = begun + Duration::from_secs(1);
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() < next {
                    continue;
                }
                next += Duration::from_secs(1);
                let t = lock_totals(&totals);
                let line = format!(
                    "{name}: {:>4.0} s  {} deliveries ({}/s)  {} acks  {} duplicates  {} seq gaps",
                    begun.elapsed().as_secs_f64(),
                    t.deliveries,
                    t.deliveries - last,
                    t.acks,
                    t.duplicates,
                    t.seq_gaps
                );
                last = t.deliveries;
                drop(t);
                let mut err = std::io::stderr().lock();
                let _ = if tty {
                    write!(err, "\r{line}\x1b[K")
                } else {
                    writeln!(err, "{line}")
                };
                let _ = err.flush();
            }
            if tty {
                eprintln!();
            }
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
