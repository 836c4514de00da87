//! The worker: one job at a time, from the spool to a delivered reply.
//!
//! For each job at the front of the [`spool`](super::spool): fetch the message again (it may
//! have been deleted), download its audio (into memory when small, else the temporary
//! directory: [`download`](super::download)), hand it to the [`inference`](super::inference)
//! thread, show progress on long audio by editing a
//! placeholder, and send the text in [`reply`]-sized parts — recording each part
//! in the spool as it goes, so a restart resumes after the last part sent instead of posting
//! it twice. Only then does the job leave the spool.
//!
//! A failed attempt is retried after the jobs behind it, up to the configured number of
//! attempts, and then answered with a short error; network trouble and flood waits are waited
//! out without spending attempts. On shutdown the job in hand gets [`STOP_GRACE`] to finish and
//! otherwise stays in the spool for the next start.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::download::{Audio, Download};
use super::messenger::{Messenger, MessengerError, MsgId};
use super::reply;
use super::shutdown::Shutdown;
use super::spool::{Job, Key, Post, SpoolError};
use super::{Daemon, STOP_GRACE};
use crate::whisper::decode::{EncoderWindow, Options};

/// Wait after a network error before trying a job again.
const JOB_RETRY_DELAY: Duration = Duration::from_secs(10);

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
            // Not a deleted message: the chat could not be named even after looking it up
            // again. Spend an attempt and try later, ending in an error reply, never silence.
            e @ MessengerError::UnknownChat(_) => JobError::Failed(e.to_string()),
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
        let download = self
            .download_audio(tg, job.key, media.size, shutdown)
            .await?;
        let bytes = download.len();
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
            match self
                .post(tg, job, Post::Placeholder, &text, shutdown)
                .await?
            {
                Some(id) => job.placeholder = Some(id),
                // Posted by an earlier try whose answer was lost: its id is unknown, so the
                // transcript comes as a reply of its own.
                None => log::warn!("{}: placeholder already posted; not edited", job.key),
            }
            self.spool.borrow_mut().update(job)?;
        }
        let language = self.language();
        let opts = Options {
            language: (language != "auto").then_some(language),
            encoder_window: match self.config.transcribe.encoder_margin_s {
                Some(margin_s) => EncoderWindow::Trimmed { margin_s },
                None => EncoderWindow::Full,
            },
            ..Options::default()
        };
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<(f64, String)>();
        let audio = download.into_audio();
        let file = match &audio {
            Audio::File(path) => Some(path.clone()),
            Audio::Bytes(_) => None,
        };
        let run = self.inference.transcribe(audio, opts, progress_tx);
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
        if let Some(file) = file {
            let _ = std::fs::remove_file(file);
        }
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

    /// Downloads the job's audio, going on from what an earlier attempt of the same job
    /// received. On failure the bytes so far are kept for the next attempt (the download is
    /// given back to [`Daemon::download`]), so a dropped connection never costs more than the
    /// part that was in flight.
    async fn download_audio<M: Messenger>(
        &self,
        tg: &M,
        key: Key,
        size: u64,
        shutdown: &Shutdown,
    ) -> Result<Download, JobError> {
        let kept = self.download.borrow_mut().take();
        let download = match kept {
            Some((k, d)) if k == key => d,
            other => {
                if let Some((_, d)) = other {
                    d.discard();
                }
                let path = self.tmp_dir.join(format!("{}_{}.media", key.chat, key.msg));
                Download::new(size, &path).map_err(|e| {
                    JobError::Failed(format!("download file {}: {e}", path.display()))
                })?
            }
        };
        // Each retry below borrows the download in turn; the lock is never contended.
        let lock = tokio::sync::Mutex::new(download);
        let cell = &lock;
        let result = self
            .persist(shutdown, || async move {
                let mut download = cell.lock().await;
                tg.download(key.chat, key.msg, &mut download).await
            })
            .await;
        let download = lock.into_inner();
        match result {
            Ok(_) => Ok(download),
            Err(e) => {
                *self.download.borrow_mut() = Some((key, download));
                Err(e.into())
            }
        }
    }

    /// Throws away a kept download of `key`: its job is over.
    fn forget_download(&self, key: Key) {
        let kept = self.download.borrow_mut().take();
        match kept {
            Some((k, d)) if k == key => d.discard(),
            other => *self.download.borrow_mut() = other,
        }
    }

    /// Sends the parts not yet sent, recording each in the spool as it goes.
    async fn deliver<M: Messenger>(
        &self,
        tg: &M,
        job: &mut Job,
        parts: &[String],
        shutdown: &Shutdown,
    ) -> Result<(), JobError> {
        let chat = job.key.chat;
        for (i, text) in parts.iter().enumerate().skip(job.parts_sent) {
            match (i, job.placeholder) {
                (0, Some(ph)) => {
                    self.persist(shutdown, || tg.edit(chat, ph, text)).await?;
                }
                _ => {
                    self.post(tg, job, Post::Part(i), text, shutdown).await?;
                }
            }
            job.parts_sent = i + 1;
            self.spool.borrow_mut().update(job)?;
        }
        Ok(())
    }

    /// Posts one of the job's replies at most once: its `random_id` comes from the job (see
    /// [`Job::random_id_of`]) and is the same in every try — a resend after a lost answer,
    /// the next attempt after a crash — so Telegram keeps a single copy. `None` when an
    /// earlier try had already posted it.
    async fn post<M: Messenger>(
        &self,
        tg: &M,
        job: &mut Job,
        post: Post,
        text: &str,
        shutdown: &Shutdown,
    ) -> Result<Option<MsgId>, JobError> {
        let Key { chat, msg } = job.key;
        if job.random_id.is_none() {
            // A job from before random_ids were kept: give it its base before sending.
            job.random_id = Some(super::spool::fresh_random_id());
            self.spool.borrow_mut().update(job)?;
        }
        let random_id = job.random_id_of(post).unwrap_or_default();
        let sent = self
            .persist(shutdown, || tg.reply_once(chat, msg, text, random_id))
            .await?;
        match sent {
            Some(id) => self.remember_sent(chat, id),
            None => log::info!("{}: reply already posted by an earlier try", job.key),
        }
        Ok(sent)
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
        let chat = job.key.chat;
        let sent = match job.placeholder {
            Some(ph) => self
                .persist(shutdown, || tg.edit(chat, ph, &text))
                .await
                .map_err(|e| e.to_string()),
            None => {
                let mut job = job.clone();
                self.post(tg, &mut job, Post::Failure, &text, shutdown)
                    .await
                    .map(|_| ())
                    .map_err(|e| match e {
                        JobError::Transient(e) => e.to_string(),
                        JobError::Gone => "message not found".into(),
                        JobError::Failed(why) | JobError::Fatal(why) => why,
                    })
            }
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
                self.forget_download(key);
                settle(self.spool.borrow_mut().complete(key));
                self.stats.borrow_mut().done += 1;
                None
            }
            Err(JobError::Gone) => {
                log::warn!("{key}: the message was deleted; job dropped");
                self.forget_download(key);
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
                    self.forget_download(key);
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
    pub(super) async fn worker<M: Messenger>(&self, tg: &M, mut shutdown: Shutdown) {
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
}
