//! The reconnect supervisor: one loop owns the connection and heals it.
//!
//! A home connection drops, Telegram restarts a data center, a router reboots at night: the
//! daemon must ride through all of it without a human. The loop here connects (a real round
//! trip), then reads messages until the connection fails, and in between waits with
//! exponential backoff — 5 s, 10 s, 20 s … capped at 300 s, with a little jitter so a fleet of
//! boards behind one router does not reconnect in lockstep — reset to 5 s once a connection
//! worked. A FLOOD_WAIT is waited out exactly as Telegram asks. An authorization that is gone
//! ends the loop: reconnecting cannot fix it and would only hammer Telegram.
//!
//! Messages missed while disconnected are not this loop's concern: the connection catches up
//! on them after it reconnects, and the spool deduplicates any that come twice.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::daemon::messenger::{Connection, Incoming, MessengerError};
use crate::daemon::shutdown::Shutdown;

/// First wait after a failure.
pub const BASE_DELAY: Duration = Duration::from_secs(5);
/// Longest wait between attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// Jitter as a fraction of the delay (±).
pub const JITTER: f64 = 0.1;

/// Exponential backoff with a cap and optional jitter.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
    jitter: f64,
    rng: rand::rngs::StdRng,
}

impl Backoff {
    /// `base`, doubling up to `cap`, each delay varied by up to ±`jitter` of itself.
    pub fn new(base: Duration, cap: Duration, jitter: f64) -> Self {
        Self {
            base,
            cap,
            next: base,
            jitter: jitter.clamp(0.0, 1.0),
            rng: rand::rngs::StdRng::seed_from_u64(u64::from(std::process::id())),
        }
    }

    /// The daemon's schedule: 5 s doubling to 300 s, ±10 %.
    pub fn standard() -> Self {
        Self::new(BASE_DELAY, MAX_DELAY, JITTER)
    }

    /// The delay before the next attempt; the one after it doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        if self.jitter == 0.0 {
            return d;
        }
        let f = 1.0 + self.rng.random_range(-self.jitter..=self.jitter);
        d.mul_f64(f)
    }

    /// Back to the first delay (after a connection that worked).
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// Where the connection stands, for `/status` and `systemctl status`.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkState {
    /// Attempting to connect.
    Connecting,
    /// Connected and receiving.
    Connected,
    /// Waiting before the next attempt, until this instant.
    Waiting(Instant),
    /// The loop has ended.
    Stopped,
}

/// Connection status shared with the rest of the daemon.
#[derive(Debug, Clone)]
pub struct Link {
    /// Current state.
    pub state: LinkState,
    /// Connections established after the first one.
    pub reconnects: u32,
    /// Connection attempts made.
    pub attempts: u32,
    /// Most recent connection error.
    pub last_error: Option<String>,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            state: LinkState::Connecting,
            reconnects: 0,
            attempts: 0,
            last_error: None,
        }
    }
}

impl Link {
    /// One human line: "connected", "reconnecting in 40 s", …
    pub fn describe(&self) -> String {
        match &self.state {
            LinkState::Connecting => "connecting".into(),
            LinkState::Connected => "connected".into(),
            LinkState::Waiting(until) => format!(
                "reconnecting in {} s",
                until.saturating_duration_since(Instant::now()).as_secs()
            ),
            LinkState::Stopped => "stopped".into(),
        }
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The shutdown signal fired.
    Shutdown,
    /// The login is gone; the owner must log in again.
    Unauthorized(String),
}

/// Runs the connection until shutdown or lost authorization, handing each incoming message
/// to `handle` and checkpointing the update position after it was handled.
pub async fn supervise<C, F, Fut>(
    conn: &mut C,
    backoff: &mut Backoff,
    mut shutdown: Shutdown,
    link: &RefCell<Link>,
    mut handle: F,
) -> Stop
where
    C: Connection,
    F: FnMut(Incoming) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ever_connected = false;
    let stop = loop {
        link.borrow_mut().state = LinkState::Connecting;
        link.borrow_mut().attempts += 1;
        let attempt = tokio::select! {
            _ = shutdown.wait() => break Stop::Shutdown,
            r = conn.connect() => r,
        };
        let error = match attempt {
            Err(e) => {
                log::warn!("connection attempt failed: {e}");
                e
            }
            Ok(()) => {
                log::info!("connected to Telegram");
                {
                    let mut l = link.borrow_mut();
                    l.state = LinkState::Connected;
                    if ever_connected {
                        l.reconnects += 1;
                    }
                }
                ever_connected = true;
                backoff.reset();
                let e = loop {
                    let next = tokio::select! {
                        _ = shutdown.wait() => {
                            if let Err(e) = conn.checkpoint().await {
                                log::warn!("cannot save the update position: {e}");
                            }
                            return finish(link, Stop::Shutdown);
                        }
                        r = conn.next() => r,
                    };
                    match next {
                        Ok(message) => {
                            handle(message).await;
                            if let Err(e) = conn.checkpoint().await {
                                log::warn!("cannot save the update position: {e}");
                            }
                        }
                        Err(e) => break e,
                    }
                };
                log::warn!("disconnected from Telegram: {e}");
                e
            }
        };
        link.borrow_mut().last_error = Some(error.to_string());
        let delay = match error {
            MessengerError::Unauthorized(why) => break Stop::Unauthorized(why),
            MessengerError::FloodWait(d) => d,
            _ => backoff.next_delay(),
        };
        log::info!("reconnecting in {:.1} s", delay.as_secs_f64());
        link.borrow_mut().state = LinkState::Waiting(Instant::now() + delay);
        tokio::select! {
            _ = shutdown.wait() => break Stop::Shutdown,
            _ = tokio::time::sleep(delay) => {}
        }
    };
    finish(link, stop)
}

fn finish(link: &RefCell<Link>, stop: Stop) -> Stop {
    link.borrow_mut().state = LinkState::Stopped;
    stop
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A connection that follows a script and records when each attempt was made.
    struct Scripted {
        connects: VecDeque<Result<(), MessengerError>>,
        nexts: VecDeque<Result<Incoming, MessengerError>>,
        attempts_at: Vec<Instant>,
        start: Instant,
        checkpoints: usize,
    }

    impl Scripted {
        fn new(
            connects: Vec<Result<(), MessengerError>>,
            nexts: Vec<Result<Incoming, MessengerError>>,
        ) -> Self {
            Self {
                connects: connects.into(),
                nexts: nexts.into(),
                attempts_at: Vec::new(),
                start: Instant::now(),
                checkpoints: 0,
            }
        }

        /// Seconds between consecutive connect attempts.
        fn gaps(&self) -> Vec<u64> {
            let mut last = self.start;
            self.attempts_at
                .iter()
                .map(|t| {
                    let g = t.duration_since(last).as_secs();
                    last = *t;
                    g
                })
                .collect()
        }
    }

    fn net() -> MessengerError {
        MessengerError::Network("refused".into())
    }

    fn msg(id: i32) -> Incoming {
        Incoming {
            chat: 1,
            id,
            sender: Some(1),
            sender_name: "A".into(),
            outgoing: false,
            text: String::new(),
            media: None,
            reply_to: None,
        }
    }

    impl Connection for Scripted {
        async fn connect(&mut self) -> Result<(), MessengerError> {
            self.attempts_at.push(Instant::now());
            match self.connects.pop_front() {
                Some(r) => r,
                // Script exhausted: stay unreachable forever.
                None => std::future::pending().await,
            }
        }
        async fn next(&mut self) -> Result<Incoming, MessengerError> {
            match self.nexts.pop_front() {
                Some(r) => r,
                None => Err(net()),
            }
        }
        async fn checkpoint(&mut self) -> Result<(), MessengerError> {
            self.checkpoints += 1;
            Ok(())
        }
    }

    async fn run_until_pending(conn: &mut Scripted, backoff: &mut Backoff) -> Vec<u64> {
        let (_trigger, shutdown) = crate::daemon::shutdown::channel();
        let link = RefCell::new(Link::default());
        let run = supervise(conn, backoff, shutdown, &link, |_| async {});
        // The script ends in a connect that never returns; a day is far beyond the schedule.
        let _ = tokio::time::timeout(Duration::from_secs(86_400), run).await;
        conn.gaps()
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_doubles_to_the_cap() {
        let mut conn = Scripted::new((0..9).map(|_| Err(net())).collect(), vec![]);
        let mut backoff = Backoff::new(BASE_DELAY, MAX_DELAY, 0.0);
        let gaps = run_until_pending(&mut conn, &mut backoff).await;
        assert_eq!(gaps, vec![0, 5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_working_connection_resets_the_schedule() {
        let connects = vec![
            Err(net()),
            Err(net()),
            Err(net()),
            Ok(()),
            Err(net()),
            Err(net()),
        ];
        let mut conn = Scripted::new(connects, vec![Ok(msg(1)), Err(net())]);
        let mut backoff = Backoff::new(BASE_DELAY, MAX_DELAY, 0.0);
        let gaps = run_until_pending(&mut conn, &mut backoff).await;
        // Three failures (5, 10, 20), a connection that worked, then from 5 s again.
        assert_eq!(gaps, vec![0, 5, 10, 20, 5, 10, 20]);
        assert_eq!(conn.checkpoints, 1, "handled message checkpointed");
    }

    #[tokio::test(start_paused = true)]
    async fn flood_wait_is_waited_exactly_without_growing_the_backoff() {
        let connects = vec![
            Err(net()),
            Err(MessengerError::FloodWait(Duration::from_secs(42))),
            Err(net()),
        ];
        let mut conn = Scripted::new(connects, vec![]);
        let mut backoff = Backoff::new(BASE_DELAY, MAX_DELAY, 0.0);
        let gaps = run_until_pending(&mut conn, &mut backoff).await;
        assert_eq!(gaps, vec![0, 5, 42, 10]);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_authorization_stops_at_once() {
        let mut conn = Scripted::new(
            vec![Ok(()), Err(net())],
            vec![Err(MessengerError::Unauthorized("SESSION_REVOKED".into()))],
        );
        let (_trigger, shutdown) = crate::daemon::shutdown::channel();
        let link = RefCell::new(Link::default());
        let mut backoff = Backoff::standard();
        let stop = supervise(&mut conn, &mut backoff, shutdown, &link, |_| async {}).await;
        assert_eq!(stop, Stop::Unauthorized("SESSION_REVOKED".into()));
        assert_eq!(conn.attempts_at.len(), 1, "no reconnect after revocation");
        assert_eq!(link.borrow().state, LinkState::Stopped);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_interrupts_a_backoff_sleep() {
        let mut conn = Scripted::new((0..5).map(|_| Err(net())).collect(), vec![]);
        let (trigger, shutdown) = crate::daemon::shutdown::channel();
        let link = RefCell::new(Link::default());
        let mut backoff = Backoff::new(BASE_DELAY, MAX_DELAY, 0.0);
        let start = Instant::now();
        let run = supervise(&mut conn, &mut backoff, shutdown, &link, |_| async {});
        let stopper = async {
            // Mid-way through the 20 s wait after the third failure.
            tokio::time::sleep(Duration::from_secs(5 + 10 + 7)).await;
            assert!(matches!(link.borrow().state, LinkState::Waiting(_)));
            trigger.fire();
        };
        let (stop, ()) = tokio::join!(run, stopper);
        assert_eq!(stop, Stop::Shutdown);
        assert_eq!(start.elapsed(), Duration::from_secs(22));
        assert_eq!(conn.attempts_at.len(), 3);
    }

    #[test]
    fn jitter_stays_within_bounds_and_varies() {
        let mut b = Backoff::new(BASE_DELAY, MAX_DELAY, JITTER);
        let mut seen = std::collections::HashSet::new();
        for nominal in [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0] {
            let d = b.next_delay().as_secs_f64();
            assert!(
                (d - nominal).abs() <= nominal * JITTER + 1e-9,
                "{d} vs {nominal}"
            );
            seen.insert((d * 1000.0) as u64);
        }
        assert!(seen.len() > 5, "jitter varies delays");
    }

    #[test]
    fn link_describes_itself() {
        let mut l = Link::default();
        assert_eq!(l.describe(), "connecting");
        l.state = LinkState::Connected;
        assert_eq!(l.describe(), "connected");
    }
}
