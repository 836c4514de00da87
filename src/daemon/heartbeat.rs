//! The heartbeat: systemd's watchdog and the status line.
//!
//! Every few seconds `Daemon::heartbeat` pings the watchdog (when the unit asks for one) and
//! sends the one-line status `systemctl status` shows. It runs on the networking runtime on
//! purpose: if that runtime ever wedges, the pings stop and systemd restarts the service. The
//! `/status` answer is written here too, from the same counters.

use std::time::Duration;

use super::notify::Notifier;
use super::shutdown::Shutdown;
use super::Daemon;

/// How often the status line is refreshed when systemd asks for no watchdog.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

impl Daemon {
    /// The one-line status for systemd.
    pub fn status_line(&self) -> String {
        let s = self.stats.borrow();
        format!(
            "{} · model {} · queue {} · done {} · failed {}",
            self.link.borrow().describe(),
            self.model.borrow().name,
            self.queue_depth(),
            s.done,
            s.failed
        )
    }

    /// The `/status` answer.
    pub fn status_text(&self) -> String {
        let s = self.stats.borrow();
        let link = self.link.borrow();
        let model = self.model.borrow();
        let up = self.started.elapsed().as_secs();
        let rtf = if s.audio_s > 0.0 {
            format!("{:.2}", s.busy_s / s.audio_s)
        } else {
            "–".into()
        };
        format!(
            "voice-transcriber {}\nup {}h {:02}m · Telegram: {} · reconnects {}\nmodel {}{} · language {} · {}\nqueue {}{} · done {} · failed {} · real-time factor {}\ntracked people: {}\nlast error: {}",
            env!("CARGO_PKG_VERSION"),
            up / 3600,
            up / 60 % 60,
            link.describe(),
            link.reconnects,
            model.name,
            if model.multilingual { "" } else { " (English only)" },
            self.language(),
            self.threads_line(),
            self.queue_depth(),
            if self.busy.get() { " (1 in progress)" } else { "" },
            s.done,
            s.failed,
            rtf,
            self.state.borrow().tracked.len(),
            s.last_error
                .as_deref()
                .or(link.last_error.as_deref())
                .unwrap_or("none"),
        )
    }

    /// Pings the watchdog and refreshes the status line while the runtime is alive.
    pub(super) async fn heartbeat(&self, notifier: &Notifier, mut shutdown: Shutdown) {
        let every = notifier
            .watchdog_interval()
            .unwrap_or(STATUS_INTERVAL)
            .min(STATUS_INTERVAL);
        let wedge_after = debug_wedge_after();
        let mut last_status = String::new();
        loop {
            if notifier.watchdog_interval().is_some() {
                notifier.watchdog();
            }
            let status = self.status_line();
            if status != last_status {
                notifier.status(&status);
                last_status = status;
            }
            if wedge_after.is_some_and(|w| self.started.elapsed() >= w) {
                log::error!(
                    "VOICE_TRANSCRIBER_DEBUG_WEDGE_AFTER_S: blocking the runtime on purpose"
                );
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// Fault injection for the watchdog test: block the runtime after this many seconds.
fn debug_wedge_after() -> Option<Duration> {
    std::env::var("VOICE_TRANSCRIBER_DEBUG_WEDGE_AFTER_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
}
