//! SIGINT (Ctrl-C) and SIGTERM handling.
//!
//! A task on the CLI's tokio runtime counts the signals; the command loops read
//! [`Signals::count`] between polls. With [`SignalPolicy::Stop`] (`run`, `demo`, the shell
//! reading a script) the first signal asks for a clean stop and the second exits at once
//! with code 130. With [`SignalPolicy::Interactive`] a Ctrl-C only stops what runs in the
//! foreground (a live query), and SIGTERM runs the `on_terminate` hook and exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::exit::EXIT_FORCED;

/// What signals do.
pub(crate) enum SignalPolicy {
    /// First signal: stop cleanly; second: exit at once (130).
    Stop,
    /// Ctrl-C: counted (stops a live query); SIGTERM: run the hook (shut the database
    /// down) and exit 0.
    Interactive {
        /// Called on SIGTERM before exiting.
        on_terminate: Box<dyn Fn() + Send + Sync>,
    },
}

/// Signals received so far.
#[derive(Debug, Default)]
pub(crate) struct Signals {
    count: AtomicUsize,
}

/// Which signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Interrupt,
    Terminate,
}

impl Signals {
    /// Installs the handlers (before returning, so no signal is missed) and starts the task
    /// that counts them.
    pub(crate) fn install(
        runtime: &tokio::runtime::Runtime,
        policy: SignalPolicy,
    ) -> std::io::Result<Arc<Signals>> {
        let signals = Arc::new(Signals::default());
        let mut listener = runtime.block_on(async { Listener::new() })?;
        let counted = signals.clone();
        runtime.spawn(async move {
            loop {
                let Some(kind) = listener.next().await else {
                    return;
                };
                let n = counted.count.fetch_add(1, Ordering::SeqCst) + 1;
                match &policy {
                    SignalPolicy::Stop if n >= 2 => {
                        eprintln!("\nlaminardb: interrupted again, exiting now");
                        std::process::exit(EXIT_FORCED);
                    }
                    SignalPolicy::Stop => {
                        eprintln!("\nlaminardb: stopping (interrupt again to exit at once)");
                    }
                    SignalPolicy::Interactive { on_terminate } if kind == Kind::Terminate => {
                        tokio::task::block_in_place(on_terminate);
                        std::process::exit(0);
                    }
                    SignalPolicy::Interactive { .. } => {}
                }
            }
        });
        Ok(signals)
    }

    /// Signals received so far.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// True once any signal arrived.
    pub(crate) fn received(&self) -> bool {
        self.count() > 0
    }
}

/// The OS signal streams.
struct Listener {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Listener {
    #[cfg(unix)]
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Listener {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> std::io::Result<Self> {
        Ok(Listener {})
    }

    #[cfg(unix)]
    async fn next(&mut self) -> Option<Kind> {
        tokio::select! {
            s = self.interrupt.recv() => s.map(|()| Kind::Interrupt),
            s = self.terminate.recv() => s.map(|()| Kind::Terminate),
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Option<Kind> {
        tokio::signal::ctrl_c().await.ok().map(|()| Kind::Interrupt)
    }
}
