//! The Autobahn|Testsuite testee: runs every case of a `wstest -m fuzzingserver` against one
//! client mode, echoing each text and binary message back unchanged. `scripts/autobahn.sh` runs
//! it for all three modes and checks the results.
//!
//! ```text
//! autobahn_client --mode blocking|nonblocking|threaded --url ws://127.0.0.1:9001 --agent NAME
//! ```
//! Errors during a case are expected (the server sends bad data on purpose): they are logged to
//! stderr and the next case runs. The verdicts are in the server's report, not in our exit code.

use syncws::{
    BlockingClient, Command, Config, Context, DeflateConfig, Error, Event, Handler,
    NonBlockingClient, ThreadedClient,
};

/// The message and frame limit: cases 9.* send messages and frames of up to 16 MiB. Finite,
/// because a frame's announced length is allocated when its header arrives.
const LIMIT: usize = 32 << 20;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Blocking,
    NonBlocking,
    Threaded,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let (mut mode, mut url, mut agent) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--mode" => {
                mode = Some(match value()?.as_str() {
                    "blocking" => Mode::Blocking,
                    "nonblocking" => Mode::NonBlocking,
                    "threaded" => Mode::Threaded,
                    m => return Err(format!("unknown mode {m:?}")),
                })
            }
            "--url" => url = Some(value()?),
            "--agent" => agent = Some(value()?),
            _ => {
                return Err(format!(
                    "unknown argument {arg:?}; usage: autobahn_client \
                     --mode blocking|nonblocking|threaded --url URL --agent NAME"
                ))
            }
        }
    }
    let mode = mode.ok_or("--mode is required")?;
    let url = url.ok_or("--url is required")?;
    let agent = agent.ok_or("--agent is required")?;
    let url = url.trim_end_matches('/');
    let config = Config::builder()
        .max_message_size(Some(LIMIT))
        .max_frame_size(Some(LIMIT))
        .build()
        .map_err(|e| e.to_string())?;

    let count = connect(mode, &format!("{url}/getCaseCount"), &config, false)?
        .text
        .ok_or("getCaseCount sent no text message")?;
    let count: u32 = count
        .trim()
        .parse()
        .map_err(|e| format!("case count {count:?}: {e}"))?;
    eprintln!("{agent}: {count} cases");
    // Every case offers permessage-deflate; servers of cases before 12 decline it.
    let deflate = DeflateConfig::new().threshold(0);
    let compressed = Config::builder()
        .max_message_size(Some(LIMIT))
        .max_frame_size(Some(LIMIT))
        .deflate(Some(deflate.clone()))
        .build()
        .map_err(|e| e.to_string())?;
    // Cases 13.2, 13.5, 13.6 and 13.7 accept only an offer that promises no context takeover.
    let promised = Config::builder()
        .max_message_size(Some(LIMIT))
        .max_frame_size(Some(LIMIT))
        .deflate(Some(deflate.client_no_context_takeover(true)))
        .build()
        .map_err(|e| e.to_string())?;
    for case in 1..=count {
        let info = connect(
            mode,
            &format!("{url}/getCaseInfo?case={case}"),
            &config,
            false,
        )?;
        let id = info.text.as_deref().and_then(case_id).unwrap_or_default();
        let config = match id.split('.').take(2).collect::<Vec<_>>()[..] {
            ["13", "2" | "5" | "6" | "7"] => &promised,
            _ => &compressed,
        };
        let case_url = format!("{url}/runCase?case={case}&agent={agent}");
        match connect(mode, &case_url, config, true) {
            Ok(Outcome { error: None, .. }) => {}
            Ok(Outcome { error: Some(e), .. }) => eprintln!("case {case}: {e}"),
            Err(e) => eprintln!("case {case}: connect: {e}"),
        }
    }
    connect(
        mode,
        &format!("{url}/updateReports?agent={agent}"),
        &config,
        false,
    )?;
    eprintln!("{agent}: done");
    Ok(())
}

/// The `"id"` of a getCaseInfo answer (`{"id": "13.2.1", ...}`).
fn case_id(json: &str) -> Option<String> {
    let rest = &json[json.find("\"id\"")? + 4..];
    let rest = &rest[rest.find('"')? + 1..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// What one connection left behind: its first text message and its first error.
#[derive(Default)]
struct Outcome {
    text: Option<String>,
    error: Option<String>,
}

impl Outcome {
    fn error(&mut self, e: impl ToString) {
        self.error.get_or_insert_with(|| e.to_string());
    }
}

/// Connect, run until the connection ends, and report. With `echo`, every text and binary
/// message goes straight back; otherwise the first text message is kept.
fn connect(mode: Mode, url: &str, config: &Config, echo: bool) -> Result<Outcome, String> {
    let mut testee = Testee {
        echo,
        outcome: Outcome::default(),
    };
    match mode {
        Mode::Blocking => BlockingClient::connect(url, config)
            .map_err(|e| e.to_string())?
            .run(&mut testee),
        Mode::NonBlocking => NonBlockingClient::connect(url, config)
            .map_err(|e| e.to_string())?
            .run(&mut testee),
        Mode::Threaded => return threaded(url, config, echo),
    }
    Ok(testee.outcome)
}

/// The callback modes (blocking, non-blocking).
struct Testee {
    echo: bool,
    outcome: Outcome,
}

impl Handler for Testee {
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        if !self.echo {
            self.outcome.text.get_or_insert_with(|| text.to_owned());
        } else if let Err(e) = ctx.send_text(text) {
            self.outcome.error(format!("echo: {e}"));
        }
    }
    fn on_binary_message(&mut self, ctx: &mut Context<'_>, data: &[u8]) {
        if self.echo {
            if let Err(e) = ctx.send_binary(data) {
                self.outcome.error(format!("echo: {e}"));
            }
        }
    }
    fn on_error(&mut self, _ctx: &mut Context<'_>, error: &Error) {
        self.outcome.error(error);
    }
}

/// The threaded mode: events in, commands out. The received buffers go back as they are.
fn threaded(url: &str, config: &Config, echo: bool) -> Result<Outcome, String> {
    let client = ThreadedClient::connect(url, config).map_err(|e| e.to_string())?;
    let mut outcome = Outcome::default();
    for event in client.event_rx.iter() {
        let command = match event {
            Event::TextMessage(t) if echo => Command::SendText(t),
            Event::BinaryMessage(b) if echo => Command::SendBinary(b),
            Event::TextMessage(t) => {
                outcome.text.get_or_insert_with(|| t.to_string());
                continue;
            }
            Event::Error(e) => {
                outcome.error(e);
                continue;
            }
            Event::Quit => break,
            _ => continue,
        };
        // Fails only once the worker has ended; its Quit is then on the way.
        if client.control_tx.send(command).is_err() {
            outcome.error("echo: connection already ended");
        }
    }
    Ok(outcome)
}
