//! The daemon wing: Telegram update → durable job → audio decode → Whisper → reply.
//!
//! A voice message walks through these rooms, in this order:
//!
//! ```text
//!  Telegram ──► supervisor ──► receiver ──► spool ──► worker ──► inference ──► reply ──► Telegram
//!  (messenger)  (reconnect)    (commands)   (disk)    (one job)  (own thread)  (split)
//! ```
//!
//! - [`supervisor`] owns the connection: connects, reads messages, reconnects with backoff.
//! - [`receiver`] looks at each message: the owner's [`commands`] are answered at once, a
//!   tracked person's voice message becomes a job in the [`spool`] — quickly, so the update
//!   stream never backs up.
//! - [`spool`] keeps every job on disk until its reply is sent, so nothing is lost to a crash,
//!   a power cut or an outage.
//! - [`worker`] takes jobs one at a time: fetch the message, download its audio, hand it to
//!   [`inference`] (the thread that owns the Whisper engine), show progress on long audio,
//!   deliver the text cut by [`reply`], and only then remove the job.
//! - [`heartbeat`] pings systemd's watchdog through [`notify`] and keeps the status line fresh.
//!   It runs on the same runtime as the networking, so a wedged runtime stops the pings and
//!   systemd restarts the service.
//!
//! Around them: [`state`] (what the owner changed at runtime: tracked people, model,
//! language), [`config`] (the file the owner writes once), [`download`] (where a message's
//! audio is kept: memory, else the temporary directory), [`shutdown`] (the stop signal passed
//! down to every loop), [`messenger`] (the narrow interface to Telegram, implemented by
//! [`crate::telegram`]), [`fsutil`] (crash-safe writes).
//!
//! The three loops — receiver, worker, heartbeat — share one current-thread runtime and one
//! [`Daemon`], and [`Daemon::run`] joins them.

pub mod commands;
pub mod config;
pub mod download;
pub mod fsutil;
pub mod heartbeat;
pub mod inference;
pub mod messenger;
pub mod notify;
pub mod receiver;
pub mod reply;
pub mod shutdown;
pub mod spool;
pub mod state;
pub mod supervisor;
pub mod worker;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::whisper::catalog::Catalog;
use crate::whisper::engine::ThreadConfig;
use config::Config;
use inference::{Inference, ModelInfo};
use messenger::{ChatId, Connection, Messenger, MsgId};
use notify::Notifier;
use shutdown::{Shutdown, Trigger};
use spool::Spool;
use state::State;
use supervisor::{Backoff, Link, LinkState, Stop};

/// How long the job in hand may still run after a stop signal.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Own messages remembered so that the daemon never treats its replies as commands.
const SENT_REMEMBERED: usize = 256;

/// How the daemon run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Exit {
    /// Stopped by a signal.
    Stopped,
    /// Telegram says the login is gone.
    Unauthorized(String),
}

/// Counters for `/status`.
#[derive(Debug, Default)]
struct Stats {
    /// Jobs answered with a transcript.
    done: u64,
    /// Jobs that ran out of attempts and were answered with an error.
    failed: u64,
    /// Seconds of audio transcribed, for the real-time factor.
    audio_s: f64,
    /// Seconds the inference thread spent on them.
    busy_s: f64,
    /// The latest job failure, shown until the next one.
    last_error: Option<String>,
}

/// Everything the three loops share. One current-thread runtime holds it in an `Rc`, so its
/// mutable parts are `RefCell`s borrowed only between awaits.
pub struct Daemon {
    /// The owner's config file, as loaded at start.
    config: Config,
    /// Tracked people, model and language as changed at runtime.
    state: RefCell<State>,
    /// Where `state` is saved after every change.
    state_path: PathBuf,
    /// The durable job queue.
    spool: RefCell<Spool>,
    /// Where downloads too big for memory go ([`download::temp_dir`]): never the state
    /// directory, which is on the SD card.
    tmp_dir: PathBuf,
    /// The download of the job in hand, kept across its attempts so that a retry goes on
    /// from the bytes already received.
    download: RefCell<Option<(spool::Key, download::Download)>>,
    /// Installed models, for `/model`.
    catalog: Catalog,
    /// The thread that owns the Whisper engine.
    inference: Inference,
    /// What that thread has loaded now.
    model: RefCell<ModelInfo>,
    /// The connection as the supervisor last saw it.
    link: RefCell<Link>,
    /// Counters for `/status`.
    stats: RefCell<Stats>,
    /// When the daemon started, for the uptime.
    started: Instant,
    /// Wakes the worker when the receiver adds a job.
    wake: Notify,
    /// Whether the worker has a job in hand.
    busy: Cell<bool>,
    /// Our own recent messages, so their echoes are never taken for commands.
    sent: RefCell<VecDeque<(ChatId, MsgId)>>,
    /// Set when Telegram says the login is gone; every loop then stops.
    fatal: RefCell<Option<String>>,
}

impl Daemon {
    /// Loads state, spool and the model (state's choice, else the config's), blocking.
    pub fn open(config: Config, state_dir: PathBuf, catalog: Catalog) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", state_dir.display()))?;
        let state_path = State::path(&state_dir);
        let state = State::load(&state_path)?;
        let spool = Spool::open(&state_dir)?;
        let tmp_dir = download::temp_dir(&state_dir);
        // Downloads used to go to `<state dir>/tmp`, on the SD card; nothing there is needed.
        let _ = std::fs::remove_dir_all(state_dir.join("tmp"));
        let threads = ThreadConfig {
            threads: config.effective_threads(),
            cores: config.cores.clone(),
            nice: config.nice,
        };
        let wanted = state.model.clone().unwrap_or_else(|| config.model.clone());
        let (inference, model) = match Inference::start(catalog.clone(), &wanted, threads.clone()) {
            Ok(x) => x,
            Err(e) if wanted != config.model => {
                log::error!(
                    "model {wanted} (chosen with /model): {e}; using {}",
                    config.model
                );
                Inference::start(catalog.clone(), &config.model, threads)?
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            config,
            state: RefCell::new(state),
            state_path,
            spool: RefCell::new(spool),
            tmp_dir,
            download: RefCell::new(None),
            catalog,
            inference,
            model: RefCell::new(model),
            link: RefCell::new(Link::default()),
            stats: RefCell::new(Stats::default()),
            started: Instant::now(),
            wake: Notify::new(),
            busy: Cell::new(false),
            sent: RefCell::new(VecDeque::new()),
            fatal: RefCell::new(None),
        })
    }

    /// Jobs waiting.
    pub fn queue_depth(&self) -> usize {
        self.spool.borrow().len()
    }

    /// The loaded model's name.
    pub fn model_name(&self) -> String {
        self.model.borrow().name.clone()
    }

    /// Threads and cores in use, e.g. "2 threads on cores 2,3".
    pub fn threads_line(&self) -> String {
        let t = &self.inference.threads;
        if t.cores.is_empty() {
            format!("{} threads, any core, nice {}", t.threads, t.nice)
        } else {
            let cores: Vec<String> = t.cores.iter().map(|c| c.to_string()).collect();
            format!(
                "{} threads on cores {}, nice {}",
                t.threads,
                cores.join(","),
                t.nice
            )
        }
    }

    fn language(&self) -> String {
        self.state
            .borrow()
            .language
            .clone()
            .unwrap_or_else(|| self.config.language.clone())
    }

    fn save_state(&self) -> Result<(), String> {
        self.state
            .borrow()
            .save(&self.state_path)
            .map_err(|e| e.to_string())
    }

    fn remember_sent(&self, chat: ChatId, id: MsgId) {
        let mut sent = self.sent.borrow_mut();
        sent.push_back((chat, id));
        if sent.len() > SENT_REMEMBERED {
            sent.pop_front();
        }
    }

    /// Runs the daemon until a stop signal or lost authorization. Must run inside a
    /// `tokio::task::LocalSet` on a current-thread runtime.
    pub async fn run<C, M>(
        self: Rc<Self>,
        conn: &mut C,
        tg: M,
        notifier: &Notifier,
        trigger: &Trigger,
        shutdown: Shutdown,
    ) -> Exit
    where
        C: Connection,
        M: Messenger + Clone + 'static,
    {
        log::info!(
            "model {} · {} · {} jobs waiting in the spool",
            self.model_name(),
            self.threads_line(),
            self.queue_depth()
        );
        notifier.ready(&self.status_line());
        let mut backoff = Backoff::standard();
        let receiver = async {
            let stop =
                supervisor::supervise(conn, &mut backoff, shutdown.clone(), &self.link, |m| {
                    let (this, tg) = (Rc::clone(&self), tg.clone());
                    async move { this.on_message(&tg, m).await }
                })
                .await;
            // Whatever ended the receiver ends the other loops.
            trigger.fire();
            stop
        };
        let worker = async {
            self.worker(&tg, shutdown.clone()).await;
            if let Some(why) = self.fatal.borrow().clone() {
                log::error!("stopping: {why}");
            }
            trigger.fire();
        };
        let (stop, (), ()) =
            tokio::join!(receiver, worker, self.heartbeat(notifier, shutdown.clone()));
        notifier.stopping();
        self.link.borrow_mut().state = LinkState::Stopped;
        if let Some(why) = self.fatal.borrow().clone() {
            return Exit::Unauthorized(why);
        }
        match stop {
            Stop::Shutdown => Exit::Stopped,
            Stop::Unauthorized(why) => Exit::Unauthorized(why),
        }
    }
}
