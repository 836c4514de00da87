//! The narrow interface between the daemon and Telegram.
//!
//! Everything the daemon needs from a chat network fits in two traits: [`Connection`] delivers
//! incoming messages one at a time and reports connection trouble as typed errors, and
//! [`Messenger`] performs the few actions the daemon takes (reply, edit, fetch a message again,
//! download its media, resolve a username). The Telegram implementation lives in
//! [`crate::telegram`]; tests drive the whole pipeline through an in-memory implementation, so
//! tracking, commands, the spool and replies are proven without a network.
//!
//! Ids are Telegram's own: a chat is named by its "dialog id" (users positive, basic groups
//! negative, channels and supergroups `-100…`), a message by its id within that chat. Both are
//! plain integers so that a job in the on-disk spool can name its message across restarts.

use std::time::Duration;

use super::download::Download;

/// A chat, by Telegram dialog id.
pub type ChatId = i64;
/// A message, by its id within its chat.
pub type MsgId = i32;
/// A user, by Telegram user id.
pub type UserId = i64;

/// Longest text Telegram accepts in one message, in characters (UTF-16 code units, which
/// the daemon approximates by `char`s and stays under with a margin).
pub const MAX_MESSAGE_CHARS: usize = 4096;

/// What kind of audio a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// A recorded voice message (OGG/Opus).
    Voice,
    /// A round video message (MP4 with AAC or Opus audio).
    VideoNote,
    /// An audio file (music player document: MP3, M4A, OGG, FLAC, WAV…).
    Audio,
}

impl MediaKind {
    /// Lower-case name for logs and replies.
    pub fn label(self) -> &'static str {
        match self {
            MediaKind::Voice => "voice message",
            MediaKind::VideoNote => "video message",
            MediaKind::Audio => "audio file",
        }
    }
}

/// Audio attached to a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
    /// Voice, round video or audio file.
    pub kind: MediaKind,
    /// Duration Telegram reports, in seconds (0 when unknown).
    pub duration_s: f64,
    /// Size in bytes (0 when unknown).
    pub size: u64,
}

/// One message as the daemon sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// Chat the message is in.
    pub chat: ChatId,
    /// Message id within the chat.
    pub id: MsgId,
    /// Author's user id (`None` for channel posts and anonymous admins).
    pub sender: Option<UserId>,
    /// Author's display name, for logs and `/tracked`.
    pub sender_name: String,
    /// True when the account owner wrote it (from any of the owner's devices).
    pub outgoing: bool,
    /// Text or caption.
    pub text: String,
    /// Audio the message carries, if any.
    pub media: Option<Media>,
    /// The message this one replies to, in the same chat.
    pub reply_to: Option<MsgId>,
}

/// Why a Telegram call failed, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessengerError {
    /// Telegram asks to wait this long before the next request (FLOOD_WAIT_X).
    #[error("Telegram asked to wait {0:?} (flood wait)")]
    FloodWait(Duration),
    /// The session is no longer valid (terminated from another device, account deleted,
    /// never logged in). Retrying cannot help; the owner must run `login` again.
    #[error("authorization is gone: {0}")]
    Unauthorized(String),
    /// The message or chat does not exist (deleted, or not visible to this account).
    #[error("message not found")]
    NotFound,
    /// Telegram did not recognise the chat as it was named (PEER_ID_INVALID,
    /// CHANNEL_INVALID): usually an access hash this side lacks or holds stale. The message
    /// may well exist; the chat has to be looked up again before the request can succeed.
    #[error("Telegram does not recognise the chat as named ({0})")]
    UnknownChat(String),
    /// Network trouble: refused, dropped, timed out, transport error. Retry later.
    #[error("network: {0}")]
    Network(String),
    /// Telegram refused this particular request for good (e.g. no right to write in the
    /// chat). Retrying the same request will not help; other requests may work.
    #[error("{0}")]
    Rejected(String),
}

impl MessengerError {
    /// True when the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            MessengerError::FloodWait(_) | MessengerError::Network(_)
        )
    }
}

/// A live (or re-establishable) connection that yields incoming messages.
///
/// The reconnect supervisor ([`crate::daemon::supervisor`]) owns it: it calls [`Connection::connect`]
/// until that succeeds, then [`Connection::next`] until that fails, backing off in between.
#[allow(async_fn_in_trait)]
pub trait Connection {
    /// Establishes (or checks) the connection with a real round trip. Messages that arrived
    /// while disconnected are delivered by the following `next` calls (catch-up).
    async fn connect(&mut self) -> Result<(), MessengerError>;

    /// Waits for the next incoming message.
    async fn next(&mut self) -> Result<Incoming, MessengerError>;

    /// Persists the position in the update stream, so that after a restart catch-up starts
    /// after what was already handled. Called after each handled message and at shutdown.
    async fn checkpoint(&mut self) -> Result<(), MessengerError>;
}

/// The actions the daemon takes in chats.
#[allow(async_fn_in_trait)]
pub trait Messenger {
    /// Sends `text` in `chat` as a reply to message `to`; returns the new message's id.
    async fn reply(&self, chat: ChatId, to: MsgId, text: &str) -> Result<MsgId, MessengerError>;

    /// Like [`Messenger::reply`], but safe to repeat: `random_id` names this one message,
    /// so sending it again after a lost answer or a crash posts nothing new. Returns the new
    /// message's id, or `None` when the message had already been posted by an earlier try
    /// (its id then unknown). The default has no such memory and simply replies.
    async fn reply_once(
        &self,
        chat: ChatId,
        to: MsgId,
        text: &str,
        random_id: i64,
    ) -> Result<Option<MsgId>, MessengerError> {
        let _ = random_id;
        self.reply(chat, to, text).await.map(Some)
    }

    /// Replaces the text of one of the owner's messages.
    async fn edit(&self, chat: ChatId, id: MsgId, text: &str) -> Result<(), MessengerError>;

    /// Fetches a message again by id (for `/transcribe` replies and jobs resumed after a
    /// restart). `Ok(None)` when it was deleted.
    async fn fetch(&self, chat: ChatId, id: MsgId) -> Result<Option<Incoming>, MessengerError>;

    /// Downloads the media of message `id` into `into`, going on from the bytes it already
    /// holds (an earlier try's); returns the file's size. On an error `into` keeps what
    /// arrived, so the next call asks only for the rest.
    async fn download(
        &self,
        chat: ChatId,
        id: MsgId,
        into: &mut Download,
    ) -> Result<u64, MessengerError>;

    /// Looks up a public username (without `@`); returns the user's id and display name.
    async fn resolve_username(
        &self,
        username: &str,
    ) -> Result<Option<(UserId, String)>, MessengerError>;
}
