//! Explicit shutdown: every long-running task takes a [`Shutdown`] and returns when it fires.

use tokio::sync::watch;

/// Fires shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownSignal(watch::Sender<bool>);

/// Resolves when shutdown was signalled. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl ShutdownSignal {
    pub fn new() -> (ShutdownSignal, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownSignal(sender), Shutdown(receiver))
    }

    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Waits until shutdown is signalled (or its signal dropped).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }

    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }
}
