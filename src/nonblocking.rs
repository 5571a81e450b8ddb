//! The non-blocking client: polls on the caller's thread with a chosen wait strategy.

use crate::command::CommandSender;
use crate::connect::connect;
use crate::driver::Driver;
use crate::handler::Callbacks;
use crate::session::Session;
use crate::{Config, Error, Handler, Handshake};

/// A client that runs on the caller's thread over a non-blocking socket, waiting between passes
/// as [`Config::wait_strategy`] says: busy spin, sleep, or OS readiness (the default).
///
/// Every pass reads all that is readable, carries out commands from other threads, and writes
/// everything queued in one go, so the wait never caps throughput. [`handle`](Self::handle)
/// gives other threads a [`CommandSender`] that sends and closes through the client and wakes
/// it.
///
/// ```no_run
/// use std::time::Duration;
/// use syncws::{Config, Context, Handler, NonBlockingClient, WaitStrategy};
///
/// struct Print;
/// impl Handler for Print {
///     fn on_text_message(&mut self, _ctx: &mut Context<'_>, text: &str) {
///         println!("{text}");
///     }
/// }
///
/// let config = Config::builder()
///     .wait_strategy(WaitStrategy::Sleep(Duration::from_millis(1)))
///     .build()?;
/// let client = NonBlockingClient::connect("ws://127.0.0.1:9001", &config)?;
/// let handle = client.handle();
/// std::thread::spawn(move || {
///     handle.send_text("from another thread").ok();
///     handle.close(1000, "bye").ok();
/// });
/// client.run(&mut Print);
/// # Ok::<(), syncws::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a client does nothing until `run`; dropped unrun it closes its connection (1001)"]
pub struct NonBlockingClient {
    /// Taken by `run`; still here when the client is dropped unrun.
    driver: Option<Box<Driver>>,
    handle: CommandSender,
}

impl NonBlockingClient {
    /// Open a connection (TCP, TLS for `wss://`, HTTP upgrade), bounded by the config's timeouts.
    ///
    /// # Errors
    ///
    /// Connect-time [`Error`]s, as for [`BlockingClient::connect`](crate::BlockingClient::connect).
    pub fn connect(url: &str, config: &Config) -> Result<Self, Error> {
        let (ws, handshake) = connect(url, config)?;
        let session = Session::new(ws, Some(handshake), config);
        let (driver, handle, _) = Driver::new(session, config.wait_strategy(), config, None)?;
        let driver = driver.redial_to(url, config);
        Ok(NonBlockingClient {
            driver: Some(driver),
            handle,
        })
    }

    /// This connection's counters; the `Arc` can be read from any thread while it runs.
    pub fn metrics(&self) -> std::sync::Arc<crate::Metrics> {
        self.driver().session.metrics().clone()
    }

    /// The server's handshake response.
    pub fn handshake(&self) -> &Handshake {
        // Client sessions are always built with their handshake.
        self.driver().session.handshake().expect("client handshake")
    }

    /// A cloneable, thread-safe sender of [`Command`](crate::Command)s into this client. Usable
    /// before and during [`run`](Self::run); once the connection has ended its sends fail with
    /// the command handed back.
    pub fn handle(&self) -> CommandSender {
        self.handle.clone()
    }

    /// Run until the connection ends, calling `handler`'s hooks on this thread. Returns after
    /// [`Handler::on_quit`].
    pub fn run<H: Handler + ?Sized>(mut self, handler: &mut H) {
        let driver = self.driver.take().expect("run takes the client once");
        // Our own sender must not keep the channel alive past the run.
        drop(self);
        driver.run(&mut Callbacks(handler, None));
    }

    fn driver(&self) -> &Driver {
        // Only `run` takes it, and `run` consumes the client.
        self.driver
            .as_deref()
            .expect("a client not yet run holds its driver")
    }
}

/// Dropped without [`run`](NonBlockingClient::run): a best-effort Close 1001, and the handle's later
/// sends fail. Commands its handle sent before are not carried out (there is no handler to
/// report them to; they are counted in the log): run the client to have each one carried out
/// or reported.
impl Drop for NonBlockingClient {
    fn drop(&mut self) {
        if let Some(driver) = &mut self.driver {
            driver.drop_unrun();
        }
    }
}
