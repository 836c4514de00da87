//! The scenario file: who exists, what they send, and (later) what goes wrong. The format is
//! documented in the module comment of `mod.rs`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The logged-in account.
    pub owner: Owner,
    /// Server-wide settings.
    #[serde(default)]
    pub server: Server,
    /// Other accounts.
    #[serde(default)]
    pub users: Vec<User>,
    /// Groups and supergroups (private chats need no entry: they are named by a user key).
    #[serde(default)]
    pub chats: Vec<Chat>,
    /// Messages, in the order they are delivered.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// Misbehaviour on chosen calls.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// When present, the owner is not logged in yet: `voice-transcriber login` signs in
    /// with the phone, code and password named here.
    #[serde(default)]
    pub login: Option<Login>,
}

/// A login still to be made (`[login]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The owner's phone number as typed (digits compared, other characters ignored).
    pub phone: String,
    /// The code every `auth.sendCode` "sends".
    pub code: String,
    /// The cloud password (two-step verification); none: the account has none.
    #[serde(default)]
    pub password: Option<String>,
    /// The password's hint.
    #[serde(default)]
    pub hint: Option<String>,
    /// The data center the account lives in; `auth.sendCode` elsewhere answers
    /// 303 PHONE_MIGRATE_<dc>. Default: the home one.
    #[serde(default)]
    pub phone_dc: Option<i32>,
    /// The first this many codes sent have expired by the time they are typed:
    /// `auth.signIn` answers PHONE_CODE_EXPIRED even for the right code.
    #[serde(default)]
    pub expired_codes: u32,
}

/// The logged-in account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Owner {
    pub id: i64,
    #[serde(default = "default_owner_hash")]
    pub access_hash: i64,
    pub first_name: String,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

fn default_owner_hash() -> i64 {
    0x0123_4567_89ab_cdef
}

/// Server-wide settings; every one has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// The home data center's id.
    pub home_dc: i32,
    /// The update position (`pts`) the written session starts at; offline messages come after it.
    pub pts: i32,
    /// The permanent key as 512 hex digits; default: a fixed test key.
    pub auth_key: Option<String>,
    /// Answers bigger than this many bytes (file chunks aside) are sent gzip-packed; 0: never.
    pub gzip_over: usize,
    /// Messages with another salt than the server's are answered with `bad_server_salt` and
    /// ignored, as Telegram does (a client with a saved key starts with salt 0).
    pub check_salt: bool,
    /// Most updates one `updates.getDifference` returns; more come as `differenceSlice`s.
    pub difference_limit: usize,
    /// A supergroup with more than this many updates pending answers
    /// `updates.getChannelDifference` with `updates.channelDifferenceTooLong` (its dialog and
    /// newest message only), as Telegram does past the request's limit; 0: never.
    pub channel_too_long_over: usize,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            home_dc: 2,
            pts: 100,
            auth_key: None,
            gzip_over: 1024,
            check_salt: true,
            difference_limit: 100,
            channel_too_long_over: 0,
        }
    }
}

impl Server {
    /// The permanent key.
    pub fn key(&self) -> Result<[u8; 256], String> {
        let Some(hex) = &self.auth_key else {
            let mut key = [0u8; 256];
            for (i, b) in key.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(113).wrapping_add(7);
            }
            return Ok(key);
        };
        let bytes: Result<Vec<u8>, _> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
            .collect();
        bytes
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "server.auth_key must be 512 hex digits".to_string())
    }
}

/// Another account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// How chats and messages refer to this user.
    pub key: String,
    pub id: i64,
    pub access_hash: i64,
    pub first_name: String,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// In the owner's contacts.
    #[serde(default)]
    pub contact: bool,
    /// Written into the daemon's state file as a tracked person.
    #[serde(default)]
    pub tracked: bool,
    /// The session already has this user's access hash (as after an earlier run).
    #[serde(default)]
    pub known: bool,
}

/// What kind of group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// A basic group (`chat`); shares the account's message ids and `pts`.
    Group,
    /// A supergroup (`channel` with `megagroup`); its own message ids and `pts`.
    Supergroup,
}

/// A group or supergroup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chat {
    pub key: String,
    pub kind: ChatKind,
    /// The bare id (a basic group's `chat_id`, a supergroup's `channel_id`).
    pub id: i64,
    /// Supergroups only.
    #[serde(default)]
    pub access_hash: i64,
    pub title: String,
    /// User keys of the members besides the owner (informational for now).
    #[serde(default)]
    pub members: Vec<String>,
    /// Supergroups: the group's update position (`pts`) when the session is written; offline
    /// messages come after it.
    #[serde(default = "one_pts")]
    pub pts: i32,
    /// Supergroups: the session already knows the group (its access hash and `pts`), as after
    /// an earlier run, so the client catches up on it with `updates.getChannelDifference`.
    #[serde(default = "yes")]
    pub known: bool,
    /// Supergroups: a forum (a group with topics).
    #[serde(default)]
    pub forum: bool,
}

fn one_pts() -> i32 {
    1
}

fn yes() -> bool {
    true
}

/// How a message reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Pushed as an update, `after_s` seconds after the client first asked for its update
    /// state (`updates.getState` or `updates.getDifference`).
    #[default]
    Live,
    /// Already there when the session was written: only `updates.getDifference` returns it.
    Offline,
}

/// A message in a chat.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// A user key (the private chat with them), a chat key, or "self" (Saved Messages).
    pub chat: String,
    /// A user key or "owner"; default: the other side of a private chat.
    #[serde(default)]
    pub from: Option<String>,
    /// Message id; default: the next one in its box.
    #[serde(default)]
    pub id: Option<i32>,
    #[serde(default)]
    pub text: String,
    /// Id of the message this one answers, in the same chat.
    #[serde(default)]
    pub reply_to: Option<i32>,
    #[serde(default)]
    pub delivery: Delivery,
    /// Live delivery delay (seconds).
    #[serde(default)]
    pub after_s: f64,
    /// Attached voice message or audio file.
    #[serde(default)]
    pub voice: Option<Voice>,
    /// How a live text message is pushed.
    #[serde(default)]
    pub form: Form,
    /// Supergroups with topics: the id of the first message of the forum topic this message
    /// is posted in. Its reply header then carries `forum_topic`, as Telegram sends it: a
    /// plain message in a topic "replies" to the topic's first message, a real reply names
    /// the topic in `reply_to_top_id`.
    #[serde(default)]
    pub topic: Option<i32>,
    /// Deleted as soon as it is delivered: the update arrives, but fetching the message
    /// again finds nothing (a voice deleted before the daemon got to it).
    #[serde(default)]
    pub deleted: bool,
}

/// The shape of a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// `updates` with `updateNewMessage` (or `updateNewChannelMessage`) and the users and
    /// chats it names.
    #[default]
    Full,
    /// `updateShortMessage` (private chat) or `updateShortChatMessage` (basic group): no
    /// users or chats attached, as Telegram sends plain texts. Text only; supergroups and
    /// media fall back to `full`.
    Short,
}

/// What kind of audio document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AudioKind {
    /// A voice message (`documentAttributeAudio` with `voice`).
    #[default]
    Voice,
    /// A music file (`documentAttributeAudio` without `voice`).
    Audio,
    /// A round video (`documentAttributeVideo` with `round_message`).
    VideoNote,
}

/// An audio document served from a real file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Voice {
    /// The file served by `upload.getFile`; relative paths are from the scenario file's folder.
    /// May be left out when `size` is given.
    #[serde(default)]
    pub file: PathBuf,
    /// Instead of `file`: serve this many generated bytes (a fixed pseudo-random pattern, see
    /// [`generated_payload`]; not decodable audio), for big-file tests without big files.
    #[serde(default)]
    pub size: Option<u64>,
    /// Duration in seconds, as the attribute says.
    pub duration_s: f64,
    #[serde(default)]
    pub kind: AudioKind,
    /// Default: audio/ogg for voice, audio/mpeg for audio, video/mp4 for round videos.
    #[serde(default)]
    pub mime_type: Option<String>,
    /// The data center holding the file; default: the home one.
    #[serde(default)]
    pub dc: Option<i32>,
    /// The data center the document claims to be on (default: `dc`); when they differ, that
    /// one answers FILE_MIGRATE_<dc>.
    #[serde(default)]
    pub listed_dc: Option<i32>,
}

/// What a fault does instead of the normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer with `rpc_error` (`error`, `code`).
    #[default]
    Error,
    /// Close the connection without answering.
    Drop,
    /// Never answer this call (the connection stays open and answers others).
    Stall,
    /// From this call on the connection answers nothing at all, but stays open: a silently
    /// dead link, as a middlebox that drops everything makes it.
    Freeze,
    /// Carry the call out (a message is sent, an edit made), then close the connection
    /// without answering: the client cannot tell whether it took effect.
    ProcessThenDrop,
    /// Answer normally, but late: `delay_s` seconds plus the answer's size divided by
    /// `bytes_per_s` (a slow link); other calls on the connection are not held up.
    Slow,
}

/// Misbehaviour on the `call`-th call of `method`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Method name as in the TL schema, e.g. "upload.getFile".
    pub method: String,
    /// Which call, counting from 1.
    #[serde(default = "one")]
    pub call: u32,
    /// How many calls in a row from there (default 1).
    #[serde(default = "one")]
    pub times: u32,
    #[serde(default)]
    pub action: FaultAction,
    /// The error's name, e.g. "FLOOD_WAIT_5".
    #[serde(default)]
    pub error: Option<String>,
    /// The error's code; default from the name (FLOOD_WAIT_ 420, _MIGRATE_ 303, else 400).
    #[serde(default)]
    pub code: Option<i32>,
    /// `slow`: a fixed delay before the answer, in seconds.
    #[serde(default)]
    pub delay_s: f64,
    /// `slow`: the link's speed for the answer's bytes (0: no size-dependent delay).
    #[serde(default)]
    pub bytes_per_s: u64,
}

impl Fault {
    /// How long a `slow` fault holds back an answer of `bytes` bytes.
    pub fn slow_delay(&self, bytes: usize) -> std::time::Duration {
        let by_size = if self.bytes_per_s > 0 {
            bytes as f64 / self.bytes_per_s as f64
        } else {
            0.0
        };
        std::time::Duration::from_secs_f64((self.delay_s + by_size).max(0.0))
    }
}

/// The bytes of a generated file of `size` bytes: a xorshift sequence seeded by the size, so a
/// test can rebuild the same bytes to compare with what was downloaded.
pub fn generated_payload(size: u64) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ size;
    let mut bytes = Vec::with_capacity(size as usize + 8);
    while (bytes.len() as u64) < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(size as usize);
    bytes
}

fn one() -> u32 {
    1
}

impl Fault {
    /// The error code to send.
    pub fn error_code(&self) -> i32 {
        let name = self.error.as_deref().unwrap_or("");
        self.code.unwrap_or(if name.starts_with("FLOOD_WAIT_") {
            420
        } else if name.contains("_MIGRATE_") {
            303
        } else if name.starts_with("AUTH_KEY") || name == "SESSION_REVOKED" {
            401
        } else {
            400
        })
    }
}

impl Scenario {
    /// Parses a scenario; relative file paths are taken from `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Scenario, String> {
        let mut s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        for m in &mut s.messages {
            if let Some(v) = &mut m.voice {
                if v.file.is_relative() && v.size.is_none() {
                    v.file = base.join(&v.file);
                }
            }
        }
        s.check()?;
        Ok(s)
    }

    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Checks that every key a message names exists.
    pub fn check(&self) -> Result<(), String> {
        self.server.key()?;
        for m in &self.messages {
            let chat_ok = m.chat == "self"
                || self.users.iter().any(|u| u.key == m.chat)
                || self.chats.iter().any(|c| c.key == m.chat);
            if !chat_ok {
                return Err(format!("message names an unknown chat {:?}", m.chat));
            }
            if let Some(from) = &m.from {
                if from != "owner" && !self.users.iter().any(|u| &u.key == from) {
                    return Err(format!("message names an unknown sender {from:?}"));
                }
            }
            if let Some(v) = &m.voice {
                if v.size.is_none() && !v.file.is_file() {
                    return Err(format!("voice file {} does not exist", v.file.display()));
                }
            }
        }
        Ok(())
    }
}
