//! The daemon: Telegram update → durable job → audio decode → Whisper → reply.
//!
//! Three loops share one current-thread runtime and one [`Daemon`]:
//!
//! - the **receiver** ([`crate::daemon::supervisor::supervise`]) takes each incoming message, runs the
//!   owner's commands and turns tracked people's voice messages into spool jobs — fast, so the
//!   update stream never backs up;
//! - the **worker** takes jobs from the spool one at a time: fetch the message, download its
//!   audio, hand it to the inference thread, show progress on long audio, deliver the text,
//!   and only then remove the job;
//! - the **heartbeat** pings systemd's watchdog and refreshes the status line. It runs on the
//!   same runtime as the networking, so a wedged runtime stops the pings and systemd restarts
//!   the service.
//!
//! A job that fails is retried (after the jobs behind it) up to the configured number of
//! attempts and then answered with a short error; network trouble and flood waits are waited
//! out without spending attempts. On shutdown the job in hand gets a few seconds to finish and
//! otherwise stays in the spool for the next start.

pub mod commands;
pub mod config;
pub mod fsutil;
pub mod inference;
pub mod localchat;
pub mod messenger;
pub mod notify;
pub mod reply;
pub mod shutdown;
pub mod spool;
pub mod state;
pub mod supervisor;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use crate::whisper::catalog::Catalog;
use crate::whisper::decode::Options;
use commands::{Command, Who};
use config::Config;
use inference::{Inference, ModelInfo};
use messenger::{ChatId, Connection, Incoming, MediaKind, Messenger, MessengerError, MsgId};
use notify::Notifier;
use shutdown::{Shutdown, Trigger};
use spool::{Added, Job, Key, Origin, Spool, SpoolError};
use state::State;
use supervisor::{Backoff, Link, LinkState, Stop};

/// How long the job in hand may still run after a stop signal.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Wait after a network error before trying a job again.
const JOB_RETRY_DELAY: Duration = Duration::from_secs(10);
/// How often the status line is refreshed when systemd asks for no watchdog.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
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
    done: u64,
    failed: u64,
    audio_s: f64,
    busy_s: f64,
    last_error: Option<String>,
}

/// Everything the three loops share.
pub struct Daemon {
    config: Config,
    state: RefCell<State>,
    state_path: PathBuf,
    spool: RefCell<Spool>,
    tmp_dir: PathBuf,
    catalog: Catalog,
    inference: Inference,
    model: RefCell<ModelInfo>,
    link: RefCell<Link>,
    stats: RefCell<Stats>,
    started: Instant,
    wake: Notify,
    busy: Cell<bool>,
    sent: RefCell<VecDeque<(ChatId, MsgId)>>,
    fatal: RefCell<Option<String>>,
}

/// What a failed job attempt means for the job.
enum JobError {
    /// Try again later without spending an attempt.
    Transient(MessengerError),
    /// The message is gone; drop the job.
    Gone,
    /// This attempt failed; retry until the attempts run out.
    Failed(String),
    /// The login is gone.
    Fatal(String),
}

impl From<MessengerError> for JobError {
    fn from(e: MessengerError) -> Self {
        match e {
            MessengerError::NotFound => JobError::Gone,
            MessengerError::Unauthorized(why) => JobError::Fatal(why),
            MessengerError::Rejected(why) => JobError::Failed(why),
            e => JobError::Transient(e),
        }
    }
}

impl From<SpoolError> for JobError {
    fn from(e: SpoolError) -> Self {
        JobError::Failed(e.to_string())
    }
}

impl Daemon {
    /// Loads state, spool and the model (state's choice, else the config's), blocking.
    pub fn open(config: Config, state_dir: PathBuf, catalog: Catalog) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", state_dir.display()))?;
        let state_path = State::path(&state_dir);
        let state = State::load(&state_path)?;
        let spool = Spool::open(&state_dir)?;
        let tmp_dir = state_dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir)?;
        let threads = crate::whisper::engine::ThreadConfig {
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

    fn media_enabled(&self, kind: MediaKind) -> bool {
        let t = &self.config.transcribe;
        match kind {
            MediaKind::Voice => t.voice,
            MediaKind::VideoNote => t.video_notes,
            MediaKind::Audio => t.audio_files,
        }
    }

    fn enqueue(
        &self,
        key: Key,
        origin: Origin,
        placeholder: Option<MsgId>,
    ) -> Result<Added, SpoolError> {
        let added = self.spool.borrow_mut().add(key, origin, placeholder)?;
        if added == Added::New {
            self.wake.notify_one();
        }
        Ok(added)
    }

    /// The receiver's work for one incoming message.
    pub async fn on_message<M: Messenger + Clone + 'static>(self: &Rc<Self>, tg: &M, m: Incoming) {
        if m.outgoing && self.sent.borrow().contains(&(m.chat, m.id)) {
            return;
        }
        if m.outgoing {
            if let Some(cmd) = commands::parse(&m.text) {
                self.run_command(tg, &m, cmd).await;
                return;
            }
        }
        let Some(media) = &m.media else { return };
        if !self.media_enabled(media.kind) {
            return;
        }
        let wanted = if m.outgoing {
            self.config.transcribe.own_messages
        } else {
            m.sender.is_some_and(|s| self.state.borrow().is_tracked(s))
        };
        if !wanted {
            return;
        }
        let key = Key {
            chat: m.chat,
            msg: m.id,
        };
        match self.enqueue(key, Origin::Auto, None) {
            Ok(Added::New) => log::info!(
                "queued {} {key} from {} ({:.0} s)",
                media.kind.label(),
                m.sender_name,
                media.duration_s
            ),
            Ok(other) => log::debug!("{key} already {other:?}"),
            Err(e) => {
                log::error!("cannot queue {key}: {e}");
                self.stats.borrow_mut().last_error = Some(e.to_string());
            }
        }
    }

    /// Answers a command by editing the command message (falling back to a reply).
    async fn answer<M: Messenger>(&self, tg: &M, m: &Incoming, text: &str) {
        if let Err(e) = tg.edit(m.chat, m.id, text).await {
            log::warn!("cannot edit command message: {e}; replying instead");
            match tg.reply(m.chat, m.id, text).await {
                Ok(id) => self.remember_sent(m.chat, id),
                Err(e) => log::warn!("cannot answer command: {e}"),
            }
        }
    }

    async fn run_command<M: Messenger + Clone + 'static>(
        self: &Rc<Self>,
        tg: &M,
        m: &Incoming,
        cmd: Command,
    ) {
        log::info!("command {cmd:?} in chat {}", m.chat);
        let text = match cmd {
            Command::Help => commands::HELP.to_string(),
            Command::Status => self.status_text(),
            Command::Tracked => self.tracked_text(),
            Command::Model(None) => {
                let installed = self.catalog.installed();
                format!(
                    "model: {}\ninstalled: {}\nswitch with /model NAME",
                    self.model_name(),
                    installed.join(", ")
                )
            }
            Command::Model(Some(name)) => {
                let installed = self.catalog.resolve(&name).is_ok();
                if let (false, Err(e)) = (installed, crate::whisper::catalog::lookup(&name)) {
                    format!("/model {name}: {e}")
                } else {
                    let doing = if installed { "loading" } else { "downloading" };
                    self.answer(tg, m, &format!("/model {name}: {doing}…"))
                        .await;
                    // Loading takes seconds; the receiver goes on meanwhile.
                    let (this, tg, m) = (Rc::clone(self), tg.clone(), m.clone());
                    tokio::task::spawn_local(async move {
                        let text = this.switch_model(&name).await;
                        this.answer(&tg, &m, &text).await;
                    });
                    return;
                }
            }
            Command::Lang(None) => format!("language: {}", self.language()),
            Command::Lang(Some(code)) => self.set_language(&code),
            Command::Track(arg) => self.track(tg, m, arg.as_deref(), true).await,
            Command::Untrack(arg) => self.track(tg, m, arg.as_deref(), false).await,
            Command::Transcribe => match m.reply_to {
                None => "/transcribe: send it as a reply to a voice, video or audio message".into(),
                Some(target) => {
                    let key = Key {
                        chat: m.chat,
                        msg: target,
                    };
                    match self.enqueue(key, Origin::Command, Some(m.id)) {
                        Ok(Added::New) => {
                            format!("⏳ queued ({} waiting)", self.queue_depth())
                        }
                        Ok(Added::Pending) => "⏳ already queued".into(),
                        Ok(Added::Done) => "already transcribed (see the reply to it)".into(),
                        Err(e) => format!("/transcribe: {e}"),
                    }
                }
            },
            Command::Unknown(name) => format!("unknown command /{name} — /help lists the commands"),
        };
        self.answer(tg, m, &text).await;
    }

    async fn switch_model(&self, name: &str) -> String {
        match self.inference.load(name).await {
            Ok(info) => {
                log::info!("model switched to {}", info.name);
                let text = format!("model: {} ✓", info.name);
                *self.model.borrow_mut() = info;
                self.state.borrow_mut().model = Some(name.to_string());
                match self.save_state() {
                    Ok(()) => text,
                    Err(e) => format!("{text} (not saved: {e})"),
                }
            }
            Err(e) => {
                log::error!("cannot load model {name}: {e}");
                format!("/model {name}: {e}\nstill using {}", self.model_name())
            }
        }
    }

    fn set_language(&self, code: &str) -> String {
        let code = code.to_ascii_lowercase();
        if !crate::daemon::config::is_language_setting(&code) {
            return format!("/lang: {code:?} is not a language code (en, ru, de, …) or auto");
        }
        if code != "auto" && code != "en" && !self.model.borrow().multilingual {
            return format!(
                "/lang: {} is English-only; switch to a multilingual model (e.g. /model base) first",
                self.model_name()
            );
        }
        self.state.borrow_mut().language = Some(code.clone());
        match self.save_state() {
            Ok(()) => format!("language: {code} ✓"),
            Err(e) => format!("language: {code} (not saved: {e})"),
        }
    }

    fn tracked_text(&self) -> String {
        let state = self.state.borrow();
        if state.tracked.is_empty() {
            return "nobody is tracked; /track @username, or reply /track to their message".into();
        }
        let lines: Vec<String> = state
            .tracked
            .iter()
            .map(|t| format!("• {} ({})", t.name, t.id))
            .collect();
        format!("tracked:\n{}", lines.join("\n"))
    }

    async fn track<M: Messenger>(
        &self,
        tg: &M,
        m: &Incoming,
        arg: Option<&str>,
        add: bool,
    ) -> String {
        let verb = if add { "/track" } else { "/untrack" };
        let who = match (arg, m.reply_to) {
            (Some(a), _) => match commands::parse_who(a) {
                Some(Who::Id(id)) => {
                    let name = self
                        .state
                        .borrow()
                        .tracked
                        .iter()
                        .find(|t| t.id == id)
                        .map_or_else(|| id.to_string(), |t| t.name.clone());
                    Ok((id, name))
                }
                Some(Who::Username(u)) => match tg.resolve_username(&u).await {
                    Ok(Some(found)) => Ok(found),
                    Ok(None) => Err(format!("{verb}: no user @{u}")),
                    Err(e) => Err(format!("{verb}: cannot look up @{u}: {e}")),
                },
                None => Err(format!(
                    "{verb}: {a:?} is neither a user id nor a @username"
                )),
            },
            (None, Some(target)) => match tg.fetch(m.chat, target).await {
                Ok(Some(t)) => match t.sender {
                    Some(id) if !t.outgoing => Ok((id, t.sender_name)),
                    _ => Err(format!(
                        "{verb}: that message has no other person as its author"
                    )),
                },
                Ok(None) => Err(format!("{verb}: that message no longer exists")),
                Err(e) => Err(format!("{verb}: {e}")),
            },
            (None, None) => Err(format!(
                "{verb}: give a user id or @username, or send it as a reply to their message"
            )),
        };
        let (id, name) = match who {
            Ok(w) => w,
            Err(e) => return e,
        };
        let changed = if add {
            self.state.borrow_mut().track(id, &name)
        } else {
            self.state.borrow_mut().untrack(id)
        };
        let saved = if changed { self.save_state() } else { Ok(()) };
        let text = match (add, changed) {
            (true, true) => format!("tracking {name} ({id}) ✓"),
            (true, false) => format!("{name} ({id}) is already tracked"),
            (false, true) => format!("no longer tracking {name} ({id}) ✓"),
            (false, false) => format!("{name} ({id}) was not tracked"),
        };
        match saved {
            Ok(()) => text,
            Err(e) => format!("{text} (not saved: {e})"),
        }
    }

    /// Runs `call` until it succeeds, waiting out flood waits and network errors (a bounded
    /// number of times, and never past a stop signal).
    async fn persist<T, F, Fut>(
        &self,
        shutdown: &Shutdown,
        mut call: F,
    ) -> Result<T, MessengerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, MessengerError>>,
    {
        let mut delay = Duration::from_secs(2);
        let mut tries = 0;
        loop {
            match call().await {
                Err(e) if e.is_transient() && tries < 8 && !shutdown.is_set() => {
                    let wait = match &e {
                        MessengerError::FloodWait(d) => *d,
                        _ => {
                            delay = (delay * 2).min(Duration::from_secs(60));
                            delay
                        }
                    };
                    log::warn!("{e}; trying again in {} s", wait.as_secs());
                    tries += 1;
                    let mut stop = shutdown.clone();
                    tokio::select! {
                        _ = stop.wait() => return Err(e),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// One attempt at a job.
    async fn attempt<M: Messenger>(
        &self,
        tg: &M,
        job: &mut Job,
        shutdown: &Shutdown,
    ) -> Result<(), JobError> {
        let Key { chat, msg } = job.key;
        let message = self
            .persist(shutdown, || tg.fetch(chat, msg))
            .await?
            .ok_or(JobError::Gone)?;
        let Some(media) = message.media.clone() else {
            return Err(JobError::Failed(
                "that message has no voice message, video message or audio file".into(),
            ));
        };
        let file = self.tmp_dir.join(format!("{chat}_{msg}.media"));
        let bytes = self
            .persist(shutdown, || tg.download(chat, msg, &file))
            .await?;
        log::info!(
            "transcribing {} {} from {} ({bytes} bytes, {:.0} s)",
            media.kind.label(),
            job.key,
            message.sender_name,
            media.duration_s
        );
        let prefix = self.config.reply.prefix.clone();
        let long = self.config.reply.progress_after_s > 0.0
            && media.duration_s > self.config.reply.progress_after_s;
        let header = |done_s: f64| {
            format!(
                "⏳ transcribing… {} of {}",
                reply::clock(done_s),
                reply::clock(media.duration_s)
            )
        };
        if long && job.placeholder.is_none() && job.parts_sent == 0 {
            let text = reply::progress(&prefix, &header(0.0), "");
            let id = self
                .persist(shutdown, || tg.reply(chat, msg, &text))
                .await?;
            self.remember_sent(chat, id);
            job.placeholder = Some(id);
            self.spool.borrow_mut().update(job)?;
        }
        let language = self.language();
        let opts = Options {
            language: (language != "auto").then_some(language),
            ..Options::default()
        };
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<(f64, String)>();
        let run = self.inference.transcribe(file.clone(), opts, progress_tx);
        tokio::pin!(run);
        let mut so_far = String::new();
        let mut last_edit = Instant::now();
        let interval = Duration::from_secs_f64(self.config.reply.edit_interval_s);
        let outcome = loop {
            tokio::select! {
                r = &mut run => break r,
                Some((end_s, text)) = progress_rx.recv() => {
                    if !so_far.is_empty() {
                        so_far.push(' ');
                    }
                    so_far.push_str(&text);
                    let (Some(ph), true) = (job.placeholder, long) else { continue };
                    if job.parts_sent > 0 || last_edit.elapsed() < interval {
                        continue;
                    }
                    last_edit = Instant::now();
                    // Progress is best effort: a failed edit costs nothing but freshness.
                    let shown = reply::progress(&prefix, &header(end_s), &so_far);
                    if let Err(e) = tg.edit(chat, ph, &shown).await {
                        log::debug!("progress edit: {e}");
                    }
                }
            }
        };
        let _ = std::fs::remove_file(&file);
        let outcome = outcome.map_err(JobError::Failed)?;
        {
            let mut s = self.stats.borrow_mut();
            s.audio_s += outcome.audio_s;
            s.busy_s += outcome.elapsed_s;
        }
        log::info!(
            "transcribed {} ({}, {:.1} s of audio in {:.1} s): {} characters",
            job.key,
            outcome.language,
            outcome.audio_s,
            outcome.elapsed_s,
            outcome.text.chars().count()
        );
        let parts = reply::messages(&prefix, &outcome.text);
        self.deliver(tg, job, &parts, shutdown).await
    }

    /// Sends the parts not yet sent, recording each in the spool as it goes.
    async fn deliver<M: Messenger>(
        &self,
        tg: &M,
        job: &mut Job,
        parts: &[String],
        shutdown: &Shutdown,
    ) -> Result<(), JobError> {
        let Key { chat, msg } = job.key;
        for (i, text) in parts.iter().enumerate().skip(job.parts_sent) {
            match (i, job.placeholder) {
                (0, Some(ph)) => {
                    self.persist(shutdown, || tg.edit(chat, ph, text)).await?;
                }
                _ => {
                    let id = self.persist(shutdown, || tg.reply(chat, msg, text)).await?;
                    self.remember_sent(chat, id);
                }
            }
            job.parts_sent = i + 1;
            self.spool.borrow_mut().update(job)?;
        }
        Ok(())
    }

    /// Tells the owner that a job failed for good.
    async fn report_failure<M: Messenger>(
        &self,
        tg: &M,
        job: &Job,
        reason: &str,
        shutdown: &Shutdown,
    ) {
        let text = format!("⚠️ could not transcribe this message: {reason}");
        let Key { chat, msg } = job.key;
        let sent = match job.placeholder {
            Some(ph) => self.persist(shutdown, || tg.edit(chat, ph, &text)).await,
            None => self
                .persist(shutdown, || tg.reply(chat, msg, &text))
                .await
                .map(|id| self.remember_sent(chat, id)),
        };
        if let Err(e) = sent {
            log::warn!("cannot send the error reply for {}: {e}", job.key);
        }
    }

    /// Takes one job through one attempt and settles its fate in the spool.
    async fn work_one<M: Messenger>(
        &self,
        tg: &M,
        mut job: Job,
        shutdown: &Shutdown,
    ) -> Option<Duration> {
        let key = job.key;
        job.attempts += 1;
        if let Err(e) = self.spool.borrow_mut().update(&job) {
            log::error!("{e}");
            return Some(JOB_RETRY_DELAY);
        }
        let result = self.attempt(tg, &mut job, shutdown).await;
        let settle = |r: Result<(), SpoolError>| {
            if let Err(e) = r {
                log::error!("{e}");
            }
        };
        match result {
            Ok(()) => {
                settle(self.spool.borrow_mut().complete(key));
                self.stats.borrow_mut().done += 1;
                None
            }
            Err(JobError::Gone) => {
                log::warn!("{key}: the message was deleted; job dropped");
                settle(self.spool.borrow_mut().complete(key));
                None
            }
            Err(JobError::Transient(e)) => {
                log::warn!("{key}: {e}; will try again");
                job.attempts -= 1;
                job.last_error = Some(e.to_string());
                settle(self.spool.borrow_mut().update(&job));
                self.spool.borrow_mut().requeue_front();
                Some(match e {
                    MessengerError::FloodWait(d) => d,
                    _ => JOB_RETRY_DELAY,
                })
            }
            Err(JobError::Fatal(why)) => {
                log::error!("{key}: authorization is gone: {why}");
                job.attempts -= 1;
                settle(self.spool.borrow_mut().update(&job));
                *self.fatal.borrow_mut() = Some(why);
                Some(JOB_RETRY_DELAY)
            }
            Err(JobError::Failed(reason)) => {
                self.stats.borrow_mut().last_error = Some(format!("{key}: {reason}"));
                if job.attempts >= self.config.transcribe.max_attempts {
                    log::error!("{key}: failed {} times, giving up: {reason}", job.attempts);
                    self.report_failure(tg, &job, &reason, shutdown).await;
                    settle(self.spool.borrow_mut().complete(key));
                    self.stats.borrow_mut().failed += 1;
                } else {
                    log::warn!("{key}: attempt {} failed: {reason}", job.attempts);
                    job.last_error = Some(reason);
                    settle(self.spool.borrow_mut().update(&job));
                    self.spool.borrow_mut().requeue_front();
                }
                None
            }
        }
    }

    /// The worker loop: jobs one at a time until shutdown.
    async fn worker<M: Messenger>(&self, tg: &M, mut shutdown: Shutdown) {
        loop {
            if shutdown.is_set() || self.fatal.borrow().is_some() {
                return;
            }
            let job = self.spool.borrow().front().cloned();
            let Some(job) = job else {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = self.wake.notified() => continue,
                }
            };
            self.busy.set(true);
            let job_stop = shutdown.clone();
            let work = self.work_one(tg, job, &job_stop);
            tokio::pin!(work);
            let pause = tokio::select! {
                p = &mut work => p,
                _ = shutdown.wait() => {
                    log::info!("stopping: giving the job in hand {} s to finish", STOP_GRACE.as_secs());
                    match tokio::time::timeout(STOP_GRACE, &mut work).await {
                        Ok(_) => {}
                        Err(_) => log::info!("the job in hand stays in the spool for the next start"),
                    }
                    self.busy.set(false);
                    return;
                }
            };
            self.busy.set(false);
            if let Some(pause) = pause {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    /// Pings the watchdog and refreshes the status line while the runtime is alive.
    async fn heartbeat(&self, notifier: &Notifier, mut shutdown: Shutdown) {
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

/// Fault injection for the watchdog test: block the runtime after this many seconds.
fn debug_wedge_after() -> Option<Duration> {
    std::env::var("VOICE_TRANSCRIBER_DEBUG_WEDGE_AFTER_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
}
