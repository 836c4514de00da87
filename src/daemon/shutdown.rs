//! The stop signal, passed down explicitly to every loop that must end cleanly.
//!
//! One [`Trigger`] (held by the signal handler) and any number of [`Shutdown`] listeners built
//! on a `tokio::sync::watch` channel: a loop `select!`s on [`Shutdown::wait`] next to its work
//! and returns when it fires. Nothing is torn down from the outside.

use tokio::sync::watch;

/// Fires the stop signal.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Listens for the stop signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and listener.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every listener to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// True once the signal fired.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when the signal fires (at once if it already has). Also completes when the
    /// trigger is dropped, so a lost trigger cannot leave loops running forever.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}
