//! The on-disk job spool: every voice message to transcribe is a file before work starts.
//!
//! A job is keyed by (chat id, message id), so the same message offered twice — by Telegram's
//! catch-up after a restart, or by an owner's `/transcribe` of something already queued — is
//! done once. Each job is its own small JSON file in `<state>/spool/`, written atomically; the
//! file leaves the spool only after the reply was sent, and the key is then appended to
//! `done.log` (fsync'd) so a late duplicate of a finished job is recognised too. On start the
//! spool is read back and pending jobs resume in arrival order.
//!
//! The spool is bounded ([`CAPACITY`] jobs, an in-memory `heapless` queue of keys): a flood of
//! voice messages beyond that is refused with a logged reason instead of filling the SD card.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::daemon::fsutil::{sync_dir, write_atomic};
use crate::daemon::messenger::{ChatId, MsgId};

/// Most jobs the spool holds.
pub const CAPACITY: usize = 1024;
/// Finished keys remembered for deduplication.
const DONE_REMEMBERED: usize = 4096;

/// A job's identity: the message to transcribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// Chat of the voice message.
    pub chat: ChatId,
    /// The voice message.
    pub msg: MsgId,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.chat, self.msg)
    }
}

/// Why a job exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A tracked person's (or the owner's own) message, transcribed automatically.
    Auto,
    /// The owner asked with `/transcribe`; the answer goes into that command message.
    Command,
}

/// One unit of work, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Which message.
    pub key: Key,
    /// Why.
    pub origin: Origin,
    /// Message whose text shows progress and then the (first part of the) transcript: a
    /// placeholder reply, or the owner's `/transcribe` command. Set once it exists.
    pub placeholder: Option<MsgId>,
    /// Parts of the final text already delivered (long texts are split).
    pub parts_sent: usize,
    /// Attempts started (a crash during an attempt counts, so a message that crashes the
    /// process cannot loop forever).
    pub attempts: u32,
    /// Arrival order.
    pub seq: u64,
    /// Last failure, for the error reply and `/status`.
    pub last_error: Option<String>,
    /// Where the `random_id`s of this job's messages start (the placeholder, each part, the
    /// error reply: see [`Job::random_id_of`]), chosen when the job is created, so that a
    /// message sent again — after an answer lost with the connection, or in a later attempt
    /// after a crash — carries the same one and Telegram posts it once. `None` only in jobs
    /// written before it existed.
    #[serde(default)]
    pub random_id: Option<i64>,
}

/// A new unpredictable 64-bit number for [`Job::random_id`] (std's hasher keys come from
/// the operating system's random source).
pub fn fresh_random_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish() as i64
}

/// Which of a job's messages a `random_id` is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Post {
    /// The placeholder shown while long audio is transcribed.
    Placeholder,
    /// Part `n` (from 0) of the transcript.
    Part(usize),
    /// The reply saying the job failed.
    Failure,
}

impl Job {
    /// The `random_id` of one of this job's messages, if the job has its base.
    pub fn random_id_of(&self, post: Post) -> Option<i64> {
        let offset = match post {
            Post::Placeholder => 0,
            Post::Part(n) => 1 + n as i64,
            Post::Failure => -1,
        };
        self.random_id.map(|base| base.wrapping_add(offset))
    }
}

/// Why the spool refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({CAPACITY} jobs waiting)")]
    Full,
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`Spool::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// A new job.
    New,
    /// The message is already waiting.
    Pending,
    /// The message was already answered.
    Done,
}

/// The spool directory and its index.
pub struct Spool {
    dir: PathBuf,
    queue: heapless::Deque<Key, CAPACITY>,
    jobs: HashMap<Key, Job>,
    done: HashSet<Key>,
    done_order: VecDeque<Key>,
    next_seq: u64,
}

impl Spool {
    /// Opens (creating) `<state>/spool` and loads pending jobs and finished keys.
    pub fn open(state_dir: &Path) -> Result<Self, SpoolError> {
        let dir = state_dir.join("spool");
        let io = |source| SpoolError::Io {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io)?;
        let mut spool = Self {
            dir: dir.clone(),
            queue: heapless::Deque::new(),
            jobs: HashMap::new(),
            done: HashSet::new(),
            done_order: VecDeque::new(),
            next_seq: 0,
        };
        let done_text = match fs::read_to_string(spool.done_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        for line in done_text.lines() {
            if let Some(key) = parse_done_line(line) {
                spool.remember_done(key);
            }
        }
        let mut loaded = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_none_or(|e| e != "job") {
                continue;
            }
            match fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Job>(&b).ok())
            {
                Some(job) if spool.done.contains(&job.key) => {
                    // Answered, but the process stopped before removing the file.
                    let _ = fs::remove_file(&path);
                }
                Some(job) => loaded.push(job),
                None => {
                    log::error!("{}: unreadable job file, removed", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        loaded.sort_by_key(|j| j.seq);
        for job in loaded {
            spool.next_seq = spool.next_seq.max(job.seq + 1);
            if spool.queue.push_back(job.key).is_err() {
                log::error!("job {} is beyond the spool's capacity; dropped", job.key);
                continue;
            }
            spool.jobs.insert(job.key, job);
        }
        if done_text.lines().count() > 2 * DONE_REMEMBERED {
            spool.compact_done().map_err(io)?;
        }
        Ok(spool)
    }

    fn done_path(&self) -> PathBuf {
        self.dir.join("done.log")
    }

    fn job_path(&self, key: Key) -> PathBuf {
        self.dir.join(format!("{}_{}.job", key.chat, key.msg))
    }

    fn io_err(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    fn remember_done(&mut self, key: Key) {
        if self.done.insert(key) {
            self.done_order.push_back(key);
            if self.done_order.len() > DONE_REMEMBERED {
                if let Some(old) = self.done_order.pop_front() {
                    self.done.remove(&old);
                }
            }
        }
    }

    fn compact_done(&self) -> std::io::Result<()> {
        let text: String = self
            .done_order
            .iter()
            .map(|k| format!("{} {}\n", k.chat, k.msg))
            .collect();
        write_atomic(&self.done_path(), text.as_bytes(), 0o600)
    }

    /// Queues a job for `key` unless it is waiting or done. The job is on disk when this
    /// returns `Added::New`.
    pub fn add(
        &mut self,
        key: Key,
        origin: Origin,
        placeholder: Option<MsgId>,
    ) -> Result<Added, SpoolError> {
        if self.done.contains(&key) {
            return Ok(Added::Done);
        }
        if self.jobs.contains_key(&key) {
            return Ok(Added::Pending);
        }
        if self.queue.is_full() {
            return Err(SpoolError::Full);
        }
        let job = Job {
            key,
            origin,
            placeholder,
            parts_sent: 0,
            attempts: 0,
            seq: self.next_seq,
            last_error: None,
            random_id: Some(fresh_random_id()),
        };
        self.write(&job)?;
        self.next_seq += 1;
        self.queue.push_back(key).map_err(|_| SpoolError::Full)?;
        self.jobs.insert(key, job);
        Ok(Added::New)
    }

    /// Saves a changed job (attempts, placeholder, parts sent).
    pub fn update(&mut self, job: &Job) -> Result<(), SpoolError> {
        self.write(job)?;
        self.jobs.insert(job.key, job.clone());
        Ok(())
    }

    fn write(&self, job: &Job) -> Result<(), SpoolError> {
        let bytes = serde_json::to_vec(job).expect("job serializes");
        write_atomic(&self.job_path(job.key), &bytes, 0o600).map_err(|e| self.io_err(e))
    }

    /// The job at the front of the queue, if any.
    pub fn front(&self) -> Option<&Job> {
        self.queue.front().and_then(|k| self.jobs.get(k))
    }

    /// Moves the front job to the back (after a failed attempt, so it does not block others).
    pub fn requeue_front(&mut self) {
        if let Some(k) = self.queue.pop_front() {
            // Cannot fail: one slot was just freed.
            let _ = self.queue.push_back(k);
        }
    }

    /// Marks a job finished: its key goes to `done.log` (fsync'd) before its file is removed,
    /// so a crash in between leaves a job that is recognised as done on the next start.
    pub fn complete(&mut self, key: Key) -> Result<(), SpoolError> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.done_path())
            .map_err(|e| self.io_err(e))?;
        log.write_all(format!("{} {}\n", key.chat, key.msg).as_bytes())
            .and_then(|_| log.sync_data())
            .map_err(|e| self.io_err(e))?;
        self.remember_done(key);
        match fs::remove_file(self.job_path(key)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_err(e)),
        }
        sync_dir(&self.dir).map_err(|e| self.io_err(e))?;
        self.jobs.remove(&key);
        if let Some(pos) = self.queue.iter().position(|k| *k == key) {
            let mut rest = heapless::Deque::<Key, CAPACITY>::new();
            for (i, k) in self.queue.iter().enumerate() {
                if i != pos {
                    let _ = rest.push_back(*k);
                }
            }
            self.queue = rest;
        }
        Ok(())
    }

    /// Jobs waiting (including the one in hand).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// True when `key` was answered (as far as the spool remembers).
    pub fn is_done(&self, key: Key) -> bool {
        self.done.contains(&key)
    }
}

fn parse_done_line(line: &str) -> Option<Key> {
    let (chat, msg) = line.trim().split_once(' ')?;
    Some(Key {
        chat: chat.parse().ok()?,
        msg: msg.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(chat: ChatId, msg: MsgId) -> Key {
        Key { chat, msg }
    }

    #[test]
    fn jobs_survive_reopen_in_order_and_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.add(key(1, 5), Origin::Auto, None).unwrap(), Added::New);
        assert_eq!(
            s.add(key(-100, 2), Origin::Command, Some(9)).unwrap(),
            Added::New
        );
        assert_eq!(
            s.add(key(1, 5), Origin::Auto, None).unwrap(),
            Added::Pending
        );
        let mut j = s.front().unwrap().clone();
        j.attempts = 1;
        s.update(&j).unwrap();
        drop(s);

        let mut s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.len(), 2);
        let front = s.front().unwrap().clone();
        assert_eq!((front.key, front.attempts), (key(1, 5), 1));
        s.complete(front.key).unwrap();
        assert_eq!(s.add(key(1, 5), Origin::Auto, None).unwrap(), Added::Done);
        assert_eq!(s.front().unwrap().placeholder, Some(9));
        drop(s);

        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.len(), 1);
        assert!(s.is_done(key(1, 5)));
    }

    #[test]
    fn requeue_moves_a_failing_job_behind_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        s.add(key(1, 1), Origin::Auto, None).unwrap();
        s.add(key(1, 2), Origin::Auto, None).unwrap();
        s.requeue_front();
        assert_eq!(s.front().unwrap().key, key(1, 2));
        s.complete(key(1, 1)).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.front().unwrap().key, key(1, 2));
    }

    #[test]
    fn a_job_file_left_after_completion_is_not_redone() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        s.add(key(3, 3), Origin::Auto, None).unwrap();
        let saved = fs::read(s.job_path(key(3, 3))).unwrap();
        s.complete(key(3, 3)).unwrap();
        // As if the process died between the done.log append and the removal.
        fs::write(s.job_path(key(3, 3)), saved).unwrap();
        let s = Spool::open(dir.path()).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn capacity_is_enforced_and_corrupt_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        for m in 0..CAPACITY as MsgId {
            s.add(key(1, m), Origin::Auto, None).unwrap();
        }
        assert!(matches!(
            s.add(key(2, 0), Origin::Auto, None),
            Err(SpoolError::Full)
        ));
        fs::write(dir.path().join("spool/7_7.job"), b"garbage").unwrap();
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.len(), CAPACITY);
    }
}
