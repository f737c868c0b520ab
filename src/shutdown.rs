//! Shutdown is a value passed down: a [`CancellationToken`] cancelled on SIGTERM or ctrl-c.

use tokio_util::sync::CancellationToken;

/// Cancels the returned token on the first SIGTERM or SIGINT.
///
/// The handlers are installed before this returns, so a signal sent as soon as the proxy has
/// logged its listening line (an orchestrator stopping it at once, a test) shuts it down
/// cleanly rather than killing it.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    let signals = Signals::install();
    tokio::spawn(async move {
        signals.wait().await;
        // Cancel before logging: if stderr is gone, the log line must not stand in the way.
        trigger.cancel();
        tracing::info!("shutdown signal received");
    });
    token
}

/// The installed SIGTERM and SIGINT handlers (`None`: could not be installed; never fires).
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            terminate: signal(SignalKind::terminate()).ok(),
            interrupt: signal(SignalKind::interrupt()).ok(),
        }
    }

    #[cfg(not(unix))]
    fn install() -> Self {
        Self {}
    }

    #[cfg(unix)]
    async fn wait(self) {
        async fn recv(signal: Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = recv(self.terminate) => {}
            () = recv(self.interrupt) => {}
        }
    }

    #[cfg(not(unix))]
    async fn wait(self) {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
