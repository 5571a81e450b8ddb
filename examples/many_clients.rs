//! Many connections on one thread: a `ClientSet` opens N connections to a local echo server
//! (started in this process, or the URL you give), sends each one's messages, checks every echo,
//! closes them all, and prints one summary line.
//!
//! ```text
//! cargo run --release --example many_clients               # 1,000 connections x 10 messages
//! cargo run --release --example many_clients -- 5000 20    # 5,000 x 20
//! cargo run --release --example many_clients -- 100 10 ws://127.0.0.1:9001/
//! ```

#[path = "support/echo.rs"]
mod echo;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use syncws::{ClientSet, CloseCode, CloseInfo, Config, Context, Error, Handler};

/// What every connection adds to (the set runs on this thread, so `Rc<RefCell>` is enough).
#[derive(Default)]
struct Totals {
    opened: usize,
    echoes: usize,
    wrong: usize,
    clean_closes: usize,
    errors: Vec<String>,
}

/// Sends `count` numbered messages one after another, checks each echo, then closes.
struct Conn {
    count: usize,
    next: usize,
    totals: Rc<RefCell<Totals>>,
}

impl Conn {
    fn send_next(&mut self, ctx: &mut Context<'_>) {
        let id = ctx.id().map_or(0, |id| id.get());
        if let Err(e) = ctx.send_text(&format!("{id}:{}", self.next)) {
            self.totals.borrow_mut().errors.push(e.to_string());
        }
    }
}

impl Handler for Conn {
    fn on_activated(&mut self, ctx: &mut Context<'_>) {
        self.totals.borrow_mut().opened += 1;
        self.send_next(ctx);
    }
    fn on_text_message(&mut self, ctx: &mut Context<'_>, text: &str) {
        let id = ctx.id().map_or(0, |id| id.get());
        {
            let mut t = self.totals.borrow_mut();
            t.echoes += 1;
            if text != format!("{id}:{}", self.next) {
                t.wrong += 1;
            }
        }
        self.next += 1;
        if self.next == self.count {
            let _ = ctx.close(CloseCode::Normal, "done");
        } else {
            self.send_next(ctx);
        }
    }
    fn on_connection_closed(&mut self, _ctx: &mut Context<'_>, close: &CloseInfo) {
        if close.code == CloseCode::Normal {
            self.totals.borrow_mut().clean_closes += 1;
        }
    }
    fn on_error(&mut self, ctx: &mut Context<'_>, error: &Error) {
        let id = ctx.id().map_or(0, |id| id.get());
        self.totals
            .borrow_mut()
            .errors
            .push(format!("connection {id}: {error}"));
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let count: usize = args.next().map_or(Ok(10), |a| a.parse())?.max(1);
    let url = match args.next() {
        Some(url) => url,
        None => format!("ws://{}/", echo::spawn_echo_server("127.0.0.1:0", None)?),
    };
    let totals = Rc::new(RefCell::new(Totals::default()));
    let mut set = ClientSet::new()?;
    let config = Config::default();
    let started = Instant::now();
    for _ in 0..n {
        let conn = Conn {
            count,
            next: 0,
            totals: totals.clone(),
        };
        set.add(&url, &config, conn)?;
    }
    set.run();
    let elapsed = started.elapsed();
    let t = totals.borrow();
    println!(
        "{n} connections on one thread to {url}: {} opened, {} echoes ({} wrong), {} closed \
         cleanly, {} errors, in {:.0} ms",
        t.opened,
        t.echoes,
        t.wrong,
        t.clean_closes,
        t.errors.len(),
        elapsed.as_secs_f64() * 1000.0
    );
    for e in t.errors.iter().take(5) {
        eprintln!("  {e}");
    }
    if t.opened != n || t.echoes != n * count || t.wrong > 0 || t.clean_closes != n {
        return Err("not every connection completed its exchange".into());
    }
    Ok(())
}
