//! A stand-in for Telegram backed by a directory, for tests and trials without an account.
//!
//! `voice-transcriber run --local-chat DIR` runs the real daemon — spool, commands, inference,
//! signals, notify — against this instead of Telegram. The directory plays the server:
//!
//! - `inbox/*.json`: incoming messages ([`Incoming`] as JSON), delivered in file-name order.
//!   A message delivered but not yet checkpointed is delivered again after a restart, exactly
//!   as Telegram's catch-up re-sends updates past the saved position; checkpointed ones move
//!   to `delivered/`.
//! - `messages/<chat>_<id>.json`: what [`Messenger::fetch`] finds (copied there on delivery;
//!   delete one to simulate a deleted message). `media/<chat>_<id>`: the audio to download.
//! - `users.json`: `{"username": [id, "name"]}` for `/track @username`.
//! - `outbox.jsonl`: every reply and edit the daemon made, one JSON object per line, fsync'd.
//! - Control files: `offline` (every call fails with a network error while it exists),
//!   `revoked` (authorization gone), `flood` (holding N: the next reply or edit gets a
//!   FLOOD_WAIT of N seconds, once).

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::daemon::download::Download;
use crate::daemon::messenger::{
    ChatId, Connection, Incoming, Messenger, MessengerError, MsgId, UserId,
};

/// Ids of messages the daemon sends start here, far from test message ids.
const FIRST_SENT_ID: MsgId = 1_000_000;
/// How often the inbox is looked at.
const POLL: Duration = Duration::from_millis(50);

/// One line of `outbox.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Sent {
    /// A new message replying to `to`.
    Reply {
        chat: ChatId,
        to: MsgId,
        id: MsgId,
        text: String,
    },
    /// An edit of message `id`.
    Edit {
        chat: ChatId,
        id: MsgId,
        text: String,
    },
}

/// The messenger half (cheap to clone).
#[derive(Clone)]
pub struct LocalChat {
    dir: Rc<PathBuf>,
    next_id: Rc<Cell<MsgId>>,
}

/// The connection half.
pub struct LocalUpdates {
    dir: PathBuf,
    handed_out: HashSet<PathBuf>,
    unsaved: Vec<PathBuf>,
    chat: LocalChat,
}

/// Opens (creating) a local chat directory.
pub fn open(dir: &Path) -> std::io::Result<(LocalChat, LocalUpdates)> {
    for sub in ["inbox", "delivered", "messages", "media"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let last = read_outbox(dir)?
        .iter()
        .filter_map(|s| match s {
            Sent::Reply { id, .. } => Some(*id),
            Sent::Edit { .. } => None,
        })
        .max()
        .unwrap_or(FIRST_SENT_ID - 1);
    let chat = LocalChat {
        dir: Rc::new(dir.to_path_buf()),
        next_id: Rc::new(Cell::new(last + 1)),
    };
    let updates = LocalUpdates {
        dir: dir.to_path_buf(),
        handed_out: HashSet::new(),
        unsaved: Vec::new(),
        chat: chat.clone(),
    };
    Ok((chat, updates))
}

/// Everything the daemon sent so far, in order.
pub fn read_outbox(dir: &Path) -> std::io::Result<Vec<Sent>> {
    match fs::read_to_string(dir.join("outbox.jsonl")) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Drops a message into the inbox (atomically, so the daemon never reads half a file).
pub fn post(dir: &Path, seq: u64, message: &Incoming) -> std::io::Result<()> {
    let inbox = dir.join("inbox");
    fs::create_dir_all(&inbox)?;
    let bytes = serde_json::to_vec(message).expect("message serializes");
    crate::daemon::fsutil::write_atomic(&inbox.join(format!("{seq:012}.json")), &bytes, 0o644)
}

fn io(e: std::io::Error) -> MessengerError {
    MessengerError::Network(e.to_string())
}

impl LocalChat {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The state the control files set: offline, revoked, or fine.
    fn reachable(&self) -> Result<(), MessengerError> {
        if self.path("revoked").exists() {
            return Err(MessengerError::Unauthorized("SESSION_REVOKED".into()));
        }
        if self.path("offline").exists() {
            return Err(MessengerError::Network("connection refused".into()));
        }
        Ok(())
    }

    fn flood(&self) -> Result<(), MessengerError> {
        let p = self.path("flood");
        if let Ok(text) = fs::read_to_string(&p) {
            let _ = fs::remove_file(&p);
            let secs = text.trim().parse().unwrap_or(1);
            return Err(MessengerError::FloodWait(Duration::from_secs(secs)));
        }
        Ok(())
    }

    fn append(&self, sent: &Sent) -> Result<(), MessengerError> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("outbox.jsonl"))
            .map_err(io)?;
        let mut line = serde_json::to_string(sent).expect("serializes");
        line.push('\n');
        f.write_all(line.as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)
    }

    fn message_path(&self, chat: ChatId, id: MsgId) -> PathBuf {
        self.path("messages").join(format!("{chat}_{id}.json"))
    }
}

impl Messenger for LocalChat {
    async fn reply(&self, chat: ChatId, to: MsgId, text: &str) -> Result<MsgId, MessengerError> {
        self.reachable()?;
        self.flood()?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.append(&Sent::Reply {
            chat,
            to,
            id,
            text: text.to_string(),
        })?;
        Ok(id)
    }

    async fn edit(&self, chat: ChatId, id: MsgId, text: &str) -> Result<(), MessengerError> {
        self.reachable()?;
        self.flood()?;
        self.append(&Sent::Edit {
            chat,
            id,
            text: text.to_string(),
        })
    }

    async fn fetch(&self, chat: ChatId, id: MsgId) -> Result<Option<Incoming>, MessengerError> {
        self.reachable()?;
        match fs::read(self.message_path(chat, id)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| MessengerError::Rejected(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    async fn download(
        &self,
        chat: ChatId,
        id: MsgId,
        into: &mut Download,
    ) -> Result<u64, MessengerError> {
        self.reachable()?;
        let src = self.path("media").join(format!("{chat}_{id}"));
        match fs::read(&src) {
            Ok(bytes) => {
                into.truncate(0).map_err(io)?;
                into.append(&bytes).map_err(io)?;
                Ok(into.len())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MessengerError::NotFound),
            Err(e) => Err(io(e)),
        }
    }

    async fn resolve_username(
        &self,
        username: &str,
    ) -> Result<Option<(UserId, String)>, MessengerError> {
        self.reachable()?;
        let users: std::collections::HashMap<String, (UserId, String)> =
            match fs::read(self.path("users.json")) {
                Ok(b) => serde_json::from_slice(&b)
                    .map_err(|e| MessengerError::Rejected(e.to_string()))?,
                Err(_) => Default::default(),
            };
        Ok(users.get(&username.to_ascii_lowercase()).cloned())
    }
}

impl Connection for LocalUpdates {
    async fn connect(&mut self) -> Result<(), MessengerError> {
        self.chat.reachable()
    }

    async fn next(&mut self) -> Result<Incoming, MessengerError> {
        loop {
            self.chat.reachable()?;
            let mut names: Vec<PathBuf> = fs::read_dir(self.dir.join("inbox"))
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .filter(|p| !self.handed_out.contains(p))
                .collect();
            names.sort();
            if let Some(path) = names.into_iter().next() {
                let bytes = fs::read(&path).map_err(io)?;
                self.handed_out.insert(path.clone());
                let message: Incoming = match serde_json::from_slice(&bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        log::warn!("{}: not a message: {e}", path.display());
                        continue;
                    }
                };
                let copy = self.chat.message_path(message.chat, message.id);
                if !copy.exists() {
                    fs::write(&copy, &bytes).map_err(io)?;
                }
                self.unsaved.push(path);
                return Ok(message);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn checkpoint(&mut self) -> Result<(), MessengerError> {
        for path in self.unsaved.drain(..) {
            if let Some(name) = path.file_name() {
                fs::rename(&path, self.dir.join("delivered").join(name)).map_err(io)?;
            }
        }
        Ok(())
    }
}
