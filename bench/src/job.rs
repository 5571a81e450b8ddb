//! What a test does, independent of the client that carries it: when to send, what to time,
//! when to stop. Every client calls [`Job::start`] once it is connected and [`Job::on_echo`] for
//! each echo; both return how many messages to send now.

use std::time::{Duration, Instant};

use crate::sys;

/// The 32-byte text payload (ASCII).
pub const TEXT32: &str = "syncws-bench 32-byte payload ...";
/// The size of the large binary payload.
pub const BIN_SIZE: usize = 64 << 10;

const _: () = assert!(TEXT32.len() == 32);

/// The 64 KiB binary payload.
pub fn bin64k() -> Vec<u8> {
    (0..BIN_SIZE).map(|i| (i % 251) as u8).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Test {
    Rtt32,
    Tput32,
    Tput64k,
    Idle,
}

impl Test {
    pub const ALL: [Test; 4] = [Test::Rtt32, Test::Tput32, Test::Tput64k, Test::Idle];

    pub fn name(self) -> &'static str {
        match self {
            Test::Rtt32 => "rtt32",
            Test::Tput32 => "tput32",
            Test::Tput64k => "tput64k",
            Test::Idle => "idle",
        }
    }

    pub fn parse(s: &str) -> Option<Test> {
        Test::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Payload size of each message.
    pub fn size(self) -> usize {
        match self {
            Test::Tput64k => BIN_SIZE,
            _ => TEXT32.len(),
        }
    }

    /// Binary (64 KiB) or text (32 B).
    pub fn binary(self) -> bool {
        self == Test::Tput64k
    }
}

/// Knobs shared by every client.
#[derive(Debug, Clone)]
pub struct Params {
    /// Round trips before timing starts.
    pub rtt_warmup: usize,
    /// Round trips timed (at most).
    pub rtt_count: usize,
    /// Cap on the timed part of the RTT test (a client slower than this gets fewer samples).
    pub rtt_max: Duration,
    /// Pipelined traffic before the throughput window opens.
    pub tput_warmup: Duration,
    /// Length of the throughput window.
    pub tput_time: Duration,
    /// Messages in flight, 32 B test.
    pub window32: usize,
    /// Messages in flight, 64 KiB test.
    pub window64k: usize,
    /// How long the idle test waits.
    pub idle: Duration,
    /// Longest wait for any single echo before a client gives up.
    pub stall: Duration,
    /// The sleep of `syncws-nonblocking-sleep`.
    pub sleep: Duration,
    /// Override syncws's `read_buffer_size` (experiments; None = the library default).
    pub syncws_read_buf: Option<usize>,
}

/// What one run of one test produced. Runs of the same test (slices of a round) merge.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Round-trip times in ns (unsorted), the timed span and the CPU time spent in it.
    Rtt {
        samples: Vec<u32>,
        secs: f64,
        cpu_ns: u64,
    },
    Tput {
        msgs: u64,
        bytes: u64,
        secs: f64,
        cpu_ns: u64,
    },
    Idle {
        cpu_ns: u64,
        wall_ns: u64,
    },
}

impl Outcome {
    /// Combine two runs of the same test (samples pooled, counts and times added).
    pub fn merge(self, other: Outcome) -> Outcome {
        match (self, other) {
            (
                Outcome::Rtt {
                    mut samples,
                    secs,
                    cpu_ns,
                },
                Outcome::Rtt {
                    samples: s2,
                    secs: t2,
                    cpu_ns: c2,
                },
            ) => {
                samples.extend(s2);
                Outcome::Rtt {
                    samples,
                    secs: secs + t2,
                    cpu_ns: cpu_ns + c2,
                }
            }
            (
                Outcome::Tput {
                    msgs,
                    bytes,
                    secs,
                    cpu_ns,
                },
                Outcome::Tput {
                    msgs: m2,
                    bytes: b2,
                    secs: t2,
                    cpu_ns: c2,
                },
            ) => Outcome::Tput {
                msgs: msgs + m2,
                bytes: bytes + b2,
                secs: secs + t2,
                cpu_ns: cpu_ns + c2,
            },
            (
                Outcome::Idle { cpu_ns, wall_ns },
                Outcome::Idle {
                    cpu_ns: c2,
                    wall_ns: w2,
                },
            ) => Outcome::Idle {
                cpu_ns: cpu_ns + c2,
                wall_ns: wall_ns + w2,
            },
            (a, _) => a,
        }
    }
}

/// Percentiles (nearest rank) of round-trip samples, in microseconds: (p50, p99, p99.9).
pub fn percentiles(samples: &[u32]) -> Option<(f64, f64, f64)> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let n = v.len();
    let pct = |q: f64| {
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        v[rank - 1] as f64 / 1000.0
    };
    Some((pct(0.50), pct(0.99), pct(0.999)))
}

enum State {
    Rtt {
        samples: Vec<u32>,
        seen: usize,
        started: Instant,
        last: Instant,
        from: Option<(Instant, u64)>,
        to: Option<(Instant, u64)>,
    },
    Tput {
        window: usize,
        sent: u64,
        received: u64,
        started: Instant,
        /// Check the clock every `mask + 1` echoes.
        mask: u64,
        from: Option<(Instant, u64, u64)>,
        to: Option<(Instant, u64, u64)>,
    },
    Idle {
        from: Option<(Instant, u64)>,
        to: Option<(Instant, u64)>,
    },
}

pub struct Job {
    test: Test,
    p: Params,
    state: State,
    error: Option<String>,
}

impl Job {
    pub fn new(test: Test, p: &Params) -> Job {
        let now = Instant::now();
        let state = match test {
            Test::Rtt32 => State::Rtt {
                samples: Vec::with_capacity(p.rtt_count),
                seen: 0,
                started: now,
                last: now,
                from: None,
                to: None,
            },
            Test::Tput32 | Test::Tput64k => State::Tput {
                window: if test == Test::Tput64k {
                    p.window64k
                } else {
                    p.window32
                }
                .max(1),
                sent: 0,
                received: 0,
                started: now,
                mask: if test == Test::Tput64k { 0 } else { 63 },
                from: None,
                to: None,
            },
            Test::Idle => State::Idle {
                from: None,
                to: None,
            },
        };
        Job {
            test,
            p: p.clone(),
            state,
            error: None,
        }
    }

    pub fn test(&self) -> Test {
        self.test
    }

    /// Messages in flight at most (1 for the RTT test, 0 for idle).
    pub fn window(&self) -> usize {
        match &self.state {
            State::Rtt { .. } => 1,
            State::Tput { window, .. } => *window,
            State::Idle { .. } => 0,
        }
    }

    /// Connected: start the clock. Returns how many messages to send now.
    pub fn start(&mut self) -> usize {
        let now = Instant::now();
        match &mut self.state {
            State::Rtt {
                last,
                from,
                seen,
                started,
                ..
            } => {
                if self.p.rtt_warmup == 0 {
                    *from = Some((now, sys::process_cpu_ns()));
                }
                *seen = 0;
                *started = now;
                *last = Instant::now();
                1
            }
            State::Tput {
                window,
                sent,
                started,
                ..
            } => {
                *started = now;
                *sent = *window as u64;
                *window
            }
            State::Idle { from, .. } => {
                *from = Some((now, sys::process_cpu_ns()));
                0
            }
        }
    }

    /// One echo of `len` payload bytes arrived. Returns how many messages to send now (0 once
    /// the test is done; later echoes are ignored).
    pub fn on_echo(&mut self, len: usize) -> usize {
        if self.is_done() {
            return 0;
        }
        if len != self.test.size() {
            self.error = Some(format!(
                "echo of {len} bytes, expected {}",
                self.test.size()
            ));
            return 0;
        }
        match &mut self.state {
            State::Rtt {
                samples,
                seen,
                started,
                last,
                from,
                to,
            } => {
                let now = Instant::now();
                *seen += 1;
                if from.is_some() {
                    samples.push((now - *last).as_nanos().min(u32::MAX as u128) as u32);
                }
                let mut next = now;
                // Warm-up ends after `rtt_warmup` round trips or `tput_warmup` of time (so a
                // slow client, e.g. a 1 ms sleeper, does not spend seconds warming up).
                if from.is_none()
                    && (*seen >= self.p.rtt_warmup || now - *started >= self.p.tput_warmup)
                {
                    *from = Some((now, sys::process_cpu_ns()));
                    next = Instant::now();
                }
                if let Some((t0, _)) = from {
                    if samples.len() >= self.p.rtt_count || now - *t0 >= self.p.rtt_max {
                        *to = Some((now, sys::process_cpu_ns()));
                        return 0;
                    }
                }
                *last = next;
                1
            }
            State::Tput {
                window,
                sent,
                received,
                started,
                mask,
                from,
                to,
            } => {
                *received += 1;
                if *received & *mask == 0 {
                    let now = Instant::now();
                    match from {
                        None if now - *started >= self.p.tput_warmup => {
                            *from = Some((now, sys::process_cpu_ns(), *received));
                        }
                        Some((t0, _, _)) if now - *t0 >= self.p.tput_time => {
                            *to = Some((now, sys::process_cpu_ns(), *received));
                            return 0;
                        }
                        _ => {}
                    }
                }
                let inflight = (*sent - *received) as usize;
                let k = window.saturating_sub(inflight);
                *sent += k as u64;
                k
            }
            State::Idle { .. } => 0,
        }
    }

    /// Idle test: true (and the clock stopped) once the idle time has passed.
    pub fn idle_check(&mut self) -> bool {
        if let State::Idle {
            from: Some((t0, _)),
            to,
        } = &mut self.state
        {
            if to.is_none() && t0.elapsed() >= self.p.idle {
                *to = Some((Instant::now(), sys::process_cpu_ns()));
            }
            return to.is_some();
        }
        false
    }

    /// Idle test: stop the clock now (clients that waited with a timeout).
    pub fn idle_end(&mut self) {
        if let State::Idle { from: Some(_), to } = &mut self.state {
            if to.is_none() {
                *to = Some((Instant::now(), sys::process_cpu_ns()));
            }
        }
    }

    /// The measurement is complete (or failed); stop sending and close.
    pub fn is_done(&self) -> bool {
        self.error.is_some()
            || match &self.state {
                State::Rtt { to, .. } | State::Idle { to, .. } => to.is_some(),
                State::Tput { to, .. } => to.is_some(),
            }
    }

    /// Record a failure (the first one wins).
    pub fn fail(&mut self, e: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(e.into());
        }
    }

    pub fn outcome(self) -> Result<Outcome, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let unfinished = || format!("{} did not finish", self.test.name());
        match self.state {
            State::Rtt {
                samples, from, to, ..
            } => {
                let (Some((t0, c0)), Some((t1, c1))) = (from, to) else {
                    return Err(unfinished());
                };
                if samples.is_empty() {
                    return Err(unfinished());
                }
                Ok(Outcome::Rtt {
                    samples,
                    secs: (t1 - t0).as_secs_f64(),
                    cpu_ns: c1.saturating_sub(c0),
                })
            }
            State::Tput { from, to, .. } => {
                let (Some((t0, c0, r0)), Some((t1, c1, r1))) = (from, to) else {
                    return Err(unfinished());
                };
                let msgs = r1 - r0;
                Ok(Outcome::Tput {
                    msgs,
                    bytes: msgs * self.test.size() as u64,
                    secs: (t1 - t0).as_secs_f64(),
                    cpu_ns: c1.saturating_sub(c0),
                })
            }
            State::Idle { from, to } => {
                let (Some((t0, c0)), Some((t1, c1))) = (from, to) else {
                    return Err(unfinished());
                };
                Ok(Outcome::Idle {
                    cpu_ns: c1.saturating_sub(c0),
                    wall_ns: (t1 - t0).as_nanos() as u64,
                })
            }
        }
    }
}
