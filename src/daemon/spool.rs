//! The on-disk job spool: every voice message to transcribe is on disk before work starts.
//!
//! A job is keyed by (chat id, message id), so the same message offered twice — by Telegram's
//! catch-up after a restart, or by an owner's `/transcribe` of something already queued — is
//! done once. On start the spool is read back and pending jobs resume in arrival order.
//!
//! The spool is one append-only journal, `<state>/spool/journal.jsonl`: a line per event — a job
//! added, a job's progress (attempts, placeholder, parts sent), a job done. A board's SD card
//! wears with every block written and each flush to it costs tens of milliseconds, so the
//! journal flushes (`fdatasync`) only where a crash would otherwise lose a message or answer
//! it twice, and never syncs a directory:
//!
//! - **added**: flushed before [`Spool::add`] returns, because the caller then lets the
//!   Telegram update position move past the message.
//! - **done**: flushed, so a late duplicate of an answered message is recognised after any
//!   crash.
//! - **progress**: written, not flushed. A process that crashes or is killed leaves its writes
//!   in the kernel's page cache, so the attempt count still stops a message that crashes the
//!   daemon from looping. Only a power cut can lose such a line: the attempt then goes
//!   uncounted, and a part sent again carries the same `random_id`, which Telegram posts once.
//!
//! A voice message therefore costs two flushes and a few hundred bytes of journal. The journal
//! is rewritten (atomically, [`crate::daemon::fsutil::write_atomic`]) with only what is still
//! needed — pending jobs and the last [`DONE_REMEMBERED`] finished keys — when it has grown
//! past [`COMPACT_BYTES`], and at start when its tail was torn by a power cut. A line that
//! cannot be read is skipped with a log line; the lines around it still count.
//!
//! The spool is bounded ([`CAPACITY`] jobs, an in-memory `heapless` queue of keys): a flood of
//! voice messages beyond that is refused with a logged reason instead of filling the SD card.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::daemon::fsutil::{sync_dir, write_atomic};
use crate::daemon::messenger::{ChatId, MsgId};

/// Most jobs the spool holds.
pub const CAPACITY: usize = 1024;
/// Finished keys remembered for deduplication.
pub const DONE_REMEMBERED: usize = 4096;
/// Journal size past which it is rewritten with only what is still needed (about a thousand
/// voice messages; the rewrite holds at most [`CAPACITY`] jobs and [`DONE_REMEMBERED`] keys).
pub const COMPACT_BYTES: u64 = 512 * 1024;
/// File name of the journal inside `<state>/spool/`.
pub const JOURNAL_FILE_NAME: &str = "journal.jsonl";

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

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    /// A new job, or a job's state after progress: the whole job, so replay needs no merging.
    Job(Job),
    /// A job finished (answered, given up, or its message deleted).
    Done(Key),
}

/// The spool directory, its journal and the index rebuilt from it.
pub struct Spool {
    dir: PathBuf,
    journal: File,
    /// Bytes in the journal, for [`COMPACT_BYTES`].
    journal_len: u64,
    queue: heapless::Deque<Key, CAPACITY>,
    jobs: HashMap<Key, Job>,
    done: Remembered,
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
        let path = dir.join(JOURNAL_FILE_NAME);
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(e)),
        };
        let mut jobs: HashMap<Key, Job> = HashMap::new();
        let mut done = Remembered::default();
        let mut unreadable = 0usize;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Record>(line) {
                Ok(Record::Job(job)) if !done.set.contains(&job.key) => {
                    jobs.insert(job.key, job);
                }
                Ok(Record::Job(_)) => {}
                Ok(Record::Done(key)) => {
                    jobs.remove(&key);
                    done.insert(key);
                }
                Err(_) => unreadable += 1,
            }
        }
        // A power cut can leave the last line half-written: appending after it would glue the
        // next record to the fragment, so the journal is rewritten clean.
        let torn = text.last().is_some_and(|&b| b != b'\n');
        if unreadable > 0 {
            log::error!(
                "{}: {unreadable} unreadable line(s) skipped",
                path.display()
            );
        }
        let old_files = read_old_layout(&dir, &mut jobs, &mut done).map_err(io)?;

        let mut loaded: Vec<Job> = jobs.into_values().collect();
        loaded.sort_by_key(|j| j.seq);
        let mut queue = heapless::Deque::new();
        let mut kept = HashMap::new();
        let mut next_seq = 0;
        for job in loaded {
            next_seq = u64::max(next_seq, job.seq + 1);
            if queue.push_back(job.key).is_err() {
                log::error!("job {} is beyond the spool's capacity; dropped", job.key);
                continue;
            }
            kept.insert(job.key, job);
        }
        let journal = open_journal(&path).map_err(io)?;
        let mut spool = Self {
            dir: dir.clone(),
            journal,
            journal_len: text.len() as u64,
            queue,
            jobs: kept,
            done,
            next_seq,
        };
        if torn || unreadable > 0 || !old_files.is_empty() || spool.journal_len > COMPACT_BYTES {
            spool.compact().map_err(io)?;
        }
        for path in old_files {
            fs::remove_file(&path).map_err(io)?;
        }
        Ok(spool)
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL_FILE_NAME)
    }

    fn io_err(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.journal_path(),
            source,
        }
    }

    /// Appends one record; with `flush`, it is on the disk when this returns.
    fn append(&mut self, record: &Record, flush: bool) -> Result<(), SpoolError> {
        let mut line = serde_json::to_vec(record).expect("spool records serialize");
        line.push(b'\n');
        self.journal
            .write_all(&line)
            .and_then(|_| {
                if flush {
                    self.journal.sync_data()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| self.io_err(e))?;
        self.journal_len += line.len() as u64;
        Ok(())
    }

    /// Rewrites the journal with the pending jobs and the remembered finished keys only.
    fn compact(&mut self) -> std::io::Result<()> {
        let mut text = Vec::new();
        for key in &self.done.order {
            serde_json::to_writer(&mut text, &Record::Done(*key)).expect("serializes");
            text.push(b'\n');
        }
        for key in &self.queue {
            serde_json::to_writer(&mut text, &Record::Job(self.jobs[key].clone()))
                .expect("serializes");
            text.push(b'\n');
        }
        let path = self.journal_path();
        write_atomic(&path, &text, 0o600)?;
        self.journal = open_journal(&path)?;
        self.journal_len = text.len() as u64;
        Ok(())
    }

    /// Queues a job for `key` unless it is waiting or done. The job is on disk when this
    /// returns `Added::New`.
    pub fn add(
        &mut self,
        key: Key,
        origin: Origin,
        placeholder: Option<MsgId>,
    ) -> Result<Added, SpoolError> {
        if self.done.set.contains(&key) {
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
        self.append(&Record::Job(job.clone()), true)?;
        self.next_seq += 1;
        self.queue.push_back(key).map_err(|_| SpoolError::Full)?;
        self.jobs.insert(key, job);
        Ok(Added::New)
    }

    /// Records a changed job (attempts, placeholder, parts sent). Written but not flushed: it
    /// survives the process dying, not a power cut (see the module's documentation).
    pub fn update(&mut self, job: &Job) -> Result<(), SpoolError> {
        self.append(&Record::Job(job.clone()), false)?;
        self.jobs.insert(job.key, job.clone());
        Ok(())
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

    /// Marks a job finished; the record is on disk when this returns.
    pub fn complete(&mut self, key: Key) -> Result<(), SpoolError> {
        self.append(&Record::Done(key), true)?;
        self.done.insert(key);
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
        if self.journal_len > COMPACT_BYTES {
            self.compact().map_err(|e| self.io_err(e))?;
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
        self.done.set.contains(&key)
    }
}

/// Finished keys in the order they finished, the oldest forgotten past [`DONE_REMEMBERED`].
#[derive(Default)]
struct Remembered {
    set: HashSet<Key>,
    order: VecDeque<Key>,
}

impl Remembered {
    fn insert(&mut self, key: Key) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > DONE_REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// The journal, opened for appending (created with mode 0600, its directory entry flushed).
fn open_journal(path: &Path) -> std::io::Result<File> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if !existed {
        file.sync_all()?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(file)
}

/// Folds in a spool written by earlier versions — a JSON file per job and a `done.log` of
/// finished keys — and returns those files, for the caller to remove once the journal
/// holding their contents is written (a crash before that leaves them to be read again).
fn read_old_layout(
    dir: &Path,
    jobs: &mut HashMap<Key, Job>,
    done: &mut Remembered,
) -> std::io::Result<Vec<PathBuf>> {
    let done_log = dir.join("done.log");
    let mut found = false;
    match fs::read_to_string(&done_log) {
        Ok(text) => {
            found = true;
            for line in text.lines() {
                let key = line.trim().split_once(' ').and_then(|(chat, msg)| {
                    Some(Key {
                        chat: chat.parse().ok()?,
                        msg: msg.parse().ok()?,
                    })
                });
                if let Some(key) = key {
                    jobs.remove(&key);
                    done.insert(key);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut old = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "job") {
            if let Some(job) = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Job>(&b).ok())
            {
                if !done.set.contains(&job.key) {
                    jobs.entry(job.key).or_insert(job);
                }
            }
            old.push(path);
        }
    }
    if found {
        old.push(done_log);
    }
    Ok(old)
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
    fn a_torn_last_line_is_skipped_and_the_journal_rewritten_clean() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        s.add(key(3, 3), Origin::Auto, None).unwrap();
        s.add(key(3, 4), Origin::Auto, None).unwrap();
        drop(s);
        // As a power cut can leave it: half of a record that completes 3/4.
        let path = dir.path().join("spool").join(JOURNAL_FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"done":{"chat":3,"#).unwrap();
        drop(f);
        let mut s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.len(), 2, "the torn record did not count");
        s.complete(key(3, 4)).unwrap();
        drop(s);
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.len(), 1, "the record after the fragment was read");
        assert!(s.is_done(key(3, 4)));
        assert!(fs::read(&path).unwrap().ends_with(b"\n"));
    }

    #[test]
    fn a_spool_of_the_old_layout_is_folded_in_and_its_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        fs::create_dir_all(&spool).unwrap();
        let job = |msg, seq| Job {
            key: key(5, msg),
            origin: Origin::Command,
            placeholder: Some(77),
            parts_sent: 0,
            attempts: 1,
            seq,
            last_error: None,
            random_id: Some(42),
        };
        for (msg, seq) in [(1, 0), (2, 1)] {
            let path = spool.join(format!("5_{msg}.job"));
            fs::write(path, serde_json::to_vec(&job(msg, seq)).unwrap()).unwrap();
        }
        fs::write(spool.join("done.log"), "5 1\n5 9\n").unwrap();
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.front().unwrap(), &job(2, 1));
        assert!(s.is_done(key(5, 1)) && s.is_done(key(5, 9)));
        drop(s);
        let left: Vec<_> = fs::read_dir(&spool)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [JOURNAL_FILE_NAME]);
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.front().unwrap(), &job(2, 1));
        assert!(s.is_done(key(5, 9)));
    }

    #[test]
    fn a_long_journal_is_compacted_to_what_is_still_needed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        let path = dir.path().join("spool").join(JOURNAL_FILE_NAME);
        s.add(key(1, 0), Origin::Auto, None).unwrap();
        let mut grew = 0;
        let mut msg = 1;
        // Until a compaction shrinks it, with one job pending throughout.
        loop {
            s.add(key(2, msg), Origin::Auto, None).unwrap();
            let mut j = s.jobs[&key(2, msg)].clone();
            j.attempts = 1;
            s.update(&j).unwrap();
            s.complete(key(2, msg)).unwrap();
            let len = fs::metadata(&path).unwrap().len();
            if len < grew {
                break;
            }
            grew = len;
            msg += 1;
        }
        // The last length seen before the rewrite was within one round of the limit.
        assert!(
            grew > COMPACT_BYTES - 4096,
            "rewritten early, at {grew} bytes"
        );
        // One line per finished key and one for the pending job: no progress records.
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), msg as usize + 1, "{}", &text[..200]);
        drop(s);
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.front().unwrap().key, key(1, 0));
        assert!((1..=msg).all(|m| s.is_done(key(2, m))));
    }

    #[test]
    fn finished_keys_are_forgotten_past_the_limit() {
        let mut done = Remembered::default();
        for m in 0..=DONE_REMEMBERED as MsgId {
            done.insert(key(1, m));
        }
        assert!(!done.set.contains(&key(1, 0)));
        assert!(done.set.contains(&key(1, 1)));
        assert_eq!(done.order.len(), DONE_REMEMBERED);
    }

    #[test]
    fn capacity_is_enforced_and_unreadable_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path()).unwrap();
        for m in 0..CAPACITY as MsgId {
            s.add(key(1, m), Origin::Auto, None).unwrap();
        }
        assert!(matches!(
            s.add(key(2, 0), Origin::Auto, None),
            Err(SpoolError::Full)
        ));
        drop(s);
        let path = dir.path().join("spool").join(JOURNAL_FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"garbage\n").unwrap();
        drop(f);
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.len(), CAPACITY);
    }
}
