//! A fake Telegram data center on 127.0.0.1 for the real grammers client inside the real
//! `voice-transcriber` binary.
//!
//! It speaks MTProto 2.0 over the "full" TCP transport with permanent keys that it writes into
//! the daemon's session itself (so the client skips the key exchange, which no fake can do
//! without Telegram's private keys), answers the API methods the daemon uses from a
//! **scenario** (accounts, chats, messages, audio files), pushes messages as updates or keeps
//! them for `updates.getDifference` / `updates.getChannelDifference`, and logs every request it
//! decodes as one JSON object per line.
//!
//! Data centers 1 to 5 each listen on a port of their own, each with its own pre-shared key.
//! The owner is logged in on the home one only: elsewhere every method but `help.getConfig` and
//! `auth.importAuthorization` answers 401 AUTH_KEY_UNREGISTERED until the authorization is
//! exported from home (`auth.exportAuthorization`) and imported there, as on Telegram. A file
//! asked for on a data center that does not hold it answers 303 FILE_MIGRATE_<dc>.
//!
//! Used two ways: in-process by the integration tests (`tests/telegram_fake_dc.rs`:
//! [`FakeDc::start`]), and as a program,
//! `cargo run --example fake-telegram -- --scenario FILE --state-dir DIR [--log FILE]`, which
//! writes a session, `config.toml` and `state.json` aimed at itself into DIR and serves until
//! SIGTERM / ctrl-c; then `voice-transcriber --state-dir DIR --config DIR/config.toml run`
//! (add `--models-dir`) talks to it.
//!
//! # Scenario format (TOML)
//!
//! ```toml
//! # The logged-in account (required).
//! [owner]
//! id = 1000                 # user id
//! first_name = "Olga"
//! last_name = "Owner"       # optional
//! username = "olga"         # optional
//! phone = "15550001000"     # optional
//! access_hash = 42          # optional
//!
//! # Server settings (all optional).
//! [server]
//! home_dc = 2               # the account's data center (default 2)
//! pts = 100                 # update position written into the session (default 100);
//!                           # offline messages get the pts values after it
//! auth_key = "…"            # 512 hex digits; default: a fixed test key
//! gzip_over = 1024          # answers bigger than this are sent gzip_packed (0: never;
//!                           # file chunks never are)
//! check_salt = true         # a message with a wrong salt gets bad_server_salt and is
//!                           # ignored, as on Telegram (default true)
//! difference_limit = 100    # most updates per updates.getDifference; the rest follow in
//!                           # further calls (updates.differenceSlice)
//! channel_too_long_over = 0 # a supergroup with more updates pending than this answers
//!                           # updates.getChannelDifference with channelDifferenceTooLong
//!                           # (dialog and newest message only; 0: never)
//!
//! # Other accounts; `key` is how chats and messages name them.
//! [[users]]
//! key = "ann"
//! id = 111
//! access_hash = 5555
//! first_name = "Ann"
//! last_name = "Lee"         # optional
//! username = "ann"          # optional; contacts.resolveUsername finds it
//! contact = true            # in the owner's contacts (default false)
//! tracked = true            # written into the daemon's state.json as tracked (default false)
//! known = true              # the session already has the user's access hash (default false)
//!
//! # Groups. Private chats need no entry: a user key names the chat with that user, and
//! # "self" names Saved Messages.
//! [[chats]]
//! key = "family"
//! kind = "group"            # "group" (basic group) or "supergroup"
//! id = 500                  # bare chat_id / channel_id
//! access_hash = 777         # supergroups only
//! title = "Family"
//! members = ["ann", "bob"]  # informational
//! pts = 1                   # supergroups: the group's pts when the session is written
//! known = true              # supergroups: the session already knows the group (hash, pts),
//!                           # so the client catches up with updates.getChannelDifference
//! forum = false             # supergroups: a group with topics
//!
//! # Messages, in delivery order.
//! [[messages]]
//! chat = "ann"              # user key, chat key or "self"
//! from = "ann"              # user key or "owner"; default: the other side of a private chat
//! id = 7                    # optional; default: the next id of its box (private chats and
//!                           # basic groups share one, each supergroup has its own)
//! text = "hi"               # caption for media
//! reply_to = 5              # optional, same chat
//! topic = 1                 # optional: posted in the forum topic that message 1 opened
//!                           # (reply header with forum_topic; reply_to_top_id when it also
//!                           # replies to a message)
//! delivery = "live"         # "live": pushed as `updates` after_s seconds after the client's
//!                           # first updates.getState / updates.getDifference (default);
//!                           # "offline": already there, only updates.getDifference has it
//! after_s = 2.0
//! form = "full"             # live texts: "full" (updates with users and chats, default) or
//!                           # "short" (updateShortMessage / updateShortChatMessage, nothing
//!                           # attached, as Telegram pushes plain texts)
//! deleted = false          # true: deleted right after delivery (the update arrives, but
//!                           # messages.getMessages finds nothing)
//! [messages.voice]          # optional: an audio document served by upload.getFile
//! file = "../data/audio_jfk_ask_not.ogg"   # relative to the scenario file's folder
//! duration_s = 11
//! kind = "voice"            # "voice" (default), "audio" or "video_note"
//! mime_type = "audio/ogg"   # default by kind
//! dc = 2                    # data center holding the file (default: home)
//! listed_dc = 1             # data center the document names (default: dc); when it differs,
//!                           # that one answers FILE_MIGRATE_<dc>
//! size = 157286400          # instead of `file`: serve this many generated bytes (not audio)
//!
//! # A login still to make (optional). Without it the session is written logged in; with it
//! # the session holds every data center's key but no owner, every data center answers 401
//! # until `auth.signIn` / `auth.checkPassword` succeed, and `voice-transcriber login` asks.
//! [login]
//! phone = "+1 555 000 1000" # digits compared
//! code = "12345"            # the code every auth.sendCode "sends"
//! password = "hunter2"      # optional cloud password: auth.signIn answers 401
//!                           # SESSION_PASSWORD_NEEDED, account.getPassword hands out an SRP
//!                           # challenge and auth.checkPassword really checks the proof
//! hint = "the usual"        # optional password hint
//! phone_dc = 4              # optional: the account's data center; auth.sendCode elsewhere
//!                           # answers 303 PHONE_MIGRATE_4 (default: server.home_dc)
//! expired_codes = 1         # the first N codes sent answer PHONE_CODE_EXPIRED (default 0)
//!
//! # Misbehaviour on chosen calls (method names as in the TL schema).
//! [[faults]]
//! method = "upload.getFile"
//! call = 1                  # the first call of that method (counting from 1)
//! times = 1                 # this many calls in a row (default 1)
//! action = "error"          # "error" (rpc_error), "drop" (close the connection instead of
//!                           # answering), "stall" (never answer this call), "freeze"
//!                           # (from this call on the connection answers nothing, but stays
//!                           # open: a silently dead link) or "process_then_drop" (carry the
//!                           # call out, then close the connection instead of answering)
//!                           # or "slow" (answer after delay_s + answer bytes / bytes_per_s)
//! error = "FLOOD_WAIT_5"    # FILE_REFERENCE_EXPIRED also expires every file reference handed
//!                           # out so far: only a message fetched again has a valid one
//! code = 420                # default from the name: FLOOD_WAIT_* 420, *_MIGRATE_* 303,
//!                           # AUTH_KEY_* / SESSION_REVOKED 401, else 400
//! delay_s = 1.5             # "slow": fixed delay (default 0)
//! bytes_per_s = 100000      # "slow": link speed for the answer's bytes (default 0: none)
//! ```
//!
//! # Request log
//! One JSON object per line. Requests carry `method` (TL name, e.g. "messages.sendMessage"),
//! `call` (how many of that method so far), `dc`, `conn`, `msg_id`, `answer` ("ok",
//! "420 FLOOD_WAIT_5", "drop", "stall", "freeze"), `fault` when one applied, `delay_s` (a slow
//! answer's delay), `t` (seconds since start),
//! and per method: `peer` ({"user": id, "access_hash": h} / {"chat": id} /
//! {"channel": id, "access_hash": h} / "self"), `reply_to`, `message`, `random_id`, `sent_id`
//! (sendMessage; a second message with a used `random_id` is refused with
//! RANDOM_ID_DUPLICATE, as Telegram does); `peer`, `id`, `message` (editMessage); `ids`
//! (getMessages, getUsers); `location` ({"document": id, "access_hash": h}), `offset`, `limit` (upload.getFile); `pts`,
//! `date`, `qts`, `new_messages`, `slice` (getDifference); `channel`, `pts`, `limit`
//! (getChannelDifference); `limit` (messages.getDialogs: one page of every chat with a
//! message, its users and chats); `processed` (a process_then_drop fault); `dc_id`
//! (auth.exportAuthorization); `username`; `phone`, `phone_code_hash`, `code` (auth.sendCode,
//! auth.signIn); `srp_id`, `proof` ("right" / "wrong", auth.checkPassword); `peer`,
//! `offset_id`, `limit`, `min_id`, `max_id` (messages.getHistory); and `layer`, `init`
//! on the first request of a connection. Server events carry `event` instead: "connect",
//! "disconnect", "new_session", "bad_server_salt", "synced", "push" (`again`: a redelivery),
//! "ping", "gzip_packed", "frozen", "key_exchange_refused", "outage", "refused".
//!
//! # Events a test causes
//! Besides the scenario's timed messages, a test holding the [`FakeDc`] can deliver a message
//! at any moment ([`FakeDc::deliver`]), hand a stored one over again
//! ([`FakeDc::redeliver`]), drop every connection ([`FakeDc::drop_connections`]) or take the
//! data centers down for a while ([`FakeDc::outage`]).
#![allow(dead_code)]

pub mod api;
pub mod crypto;
pub mod scenario;
pub mod server;
pub mod srp;
pub mod transport;
pub mod world;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grammers_session::types::{
    ChannelState, DcOption, PeerAuth, PeerInfo, UpdateState, UpdatesState,
};
use grammers_session::Session as _;
use serde_json::Value;

pub use scenario::Scenario;
use server::{RequestLog, Shared};

/// api_id and api_hash written into the config (any valid-looking pair will do).
pub const API_ID: i32 = 12345;
pub const API_HASH: &str = "0123456789abcdef0123456789abcdef";

/// Data center ids served, each on a port of its own.
pub const DCS: std::ops::RangeInclusive<i32> = 1..=5;

/// The permanent key of a data center other than the home one (the home key is the
/// scenario's). Pre-shared like the home key, since the fake cannot do the key exchange.
fn other_dc_key(home: &[u8; 256], dc: i32) -> [u8; 256] {
    let mut key = *home;
    for (i, b) in key.iter_mut().enumerate() {
        *b = b
            .wrapping_add((dc as u8).wrapping_mul(37))
            .rotate_left((i % 7) as u32);
    }
    key
}

/// A running fake data center. Dropping it stops the server.
pub struct FakeDc {
    /// The home data center's address.
    pub addr: SocketAddrV4,
    /// Every data center's address.
    pub dcs: Vec<(i32, SocketAddrV4)>,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeDc {
    /// Binds 127.0.0.1 on a free port and serves the scenario on a thread of its own. With
    /// `log_file`, the request log is also appended there.
    pub fn start(scenario: Scenario, log_file: Option<&Path>) -> Result<FakeDc, String> {
        let home_key = scenario.server.key()?;
        let home = scenario.server.home_dc;
        if !DCS.contains(&home) {
            return Err(format!("server.home_dc must be in {DCS:?}"));
        }
        let world = world::World::new(scenario)?;
        let mut keys = Vec::new();
        let mut listeners = Vec::new();
        let mut dcs = Vec::new();
        for dc in DCS {
            let key = if dc == home {
                home_key
            } else {
                other_dc_key(&home_key, dc)
            };
            keys.push((dc, crypto::AuthKey::new(key)));
            let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| format!("bind: {e}"))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("listener: {e}"))?;
            let std::net::SocketAddr::V4(addr) =
                listener.local_addr().map_err(|e| e.to_string())?
            else {
                unreachable!("bound to an IPv4 address")
            };
            dcs.push((dc, addr));
            listeners.push((dc, listener));
        }
        let addr = dcs.iter().find(|(dc, _)| *dc == home).unwrap().1;
        let file = match log_file {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("{}: {e}", p.display()))?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared::new(
            world,
            keys,
            dcs.iter().map(|(dc, a)| (*dc, a.port())).collect(),
            RequestLog::new(file),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fake-telegram".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime for the fake data center");
                rt.block_on(async move {
                    for (dc, listener) in listeners {
                        let listener = tokio::net::TcpListener::from_std(listener)
                            .expect("listener into the runtime");
                        tokio::spawn(server::serve(Arc::clone(&serving), listener, dc));
                    }
                    let _ = stopped.await;
                });
            })
            .map_err(|e| format!("thread: {e}"))?;
        Ok(FakeDc {
            addr,
            dcs,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Writes the daemon's files into `dir`: the session (`telegram.session`, aimed at this
    /// server with the shared key, logged in as the owner, at the scenario's update position),
    /// `state.json` with the tracked users, and `config.toml` (api_id / api_hash, then
    /// `extra_config`, which may set `model`, `models_dir`, `threads`, …). Returns the config's
    /// path.
    pub fn write_state_dir(&self, dir: &Path, extra_config: &str) -> Result<PathBuf, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (home, owner, pts, tracked, channels, known_users, logged_in) = {
            let w = self.shared.world.lock().unwrap();
            let tracked: Vec<(i64, String)> = w
                .scenario
                .users
                .iter()
                .filter(|u| u.tracked)
                .map(|u| {
                    let name = match &u.last_name {
                        Some(l) => format!("{} {l}", u.first_name),
                        None => u.first_name.clone(),
                    };
                    (u.id, name)
                })
                .collect();
            let channels: Vec<(i64, i64, i32)> = w
                .scenario
                .chats
                .iter()
                .filter(|c| c.kind == scenario::ChatKind::Supergroup && c.known)
                .map(|c| (c.id, c.access_hash, c.pts))
                .collect();
            let known_users: Vec<(i64, i64)> = w
                .scenario
                .users
                .iter()
                .filter(|u| u.known)
                .map(|u| (u.id, u.access_hash))
                .collect();
            (
                w.home_dc,
                (w.scenario.owner.id, w.scenario.owner.access_hash),
                w.scenario.server.pts,
                tracked,
                channels,
                known_users,
                w.scenario.login.is_none(),
            )
        };
        let path = voice_transcriber::telegram::session_path(dir);
        let _ = std::fs::remove_file(&path);
        let session = voice_transcriber::telegram::FileSession::new(&path);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            session.set_home_dc_id(home).await?;
            for &(id, addr) in &self.dcs {
                let key = self.shared.keys.iter().find(|(dc, _)| *dc == id);
                session
                    .set_dc_option(&DcOption {
                        id,
                        ipv4: addr,
                        ipv6: std::net::SocketAddrV6::new(
                            addr.ip().to_ipv6_mapped(),
                            addr.port(),
                            0,
                            0,
                        ),
                        auth_key: key.map(|(_, k)| k.bytes()),
                    })
                    .await?;
            }
            // With a login still to make: keys for every data center, but no owner.
            if logged_in {
                session
                    .cache_peer(PeerInfo::User {
                        id: owner.0,
                        auth: Some(PeerAuth::from_hash(owner.1)),
                        bot: Some(false),
                        is_self: Some(true),
                    })
                    .await?;
            }
            for &(id, hash) in &known_users {
                session
                    .cache_peer(PeerInfo::User {
                        id,
                        auth: Some(PeerAuth::from_hash(hash)),
                        bot: Some(false),
                        is_self: Some(false),
                    })
                    .await?;
            }
            for &(id, hash, _) in &channels {
                session
                    .cache_peer(PeerInfo::Channel {
                        id,
                        auth: Some(PeerAuth::from_hash(hash)),
                        kind: None,
                    })
                    .await?;
            }
            session
                .set_update_state(UpdateState::All(UpdatesState {
                    pts,
                    qts: 0,
                    date: world::now() - 60,
                    seq: 0,
                    channels: channels
                        .iter()
                        .map(|&(id, _, pts)| ChannelState { id, pts })
                        .collect(),
                }))
                .await
        })
        .map_err(|e| format!("session: {e}"))?;
        session.flush().map_err(|e| format!("session: {e}"))?;

        let mut state = voice_transcriber::daemon::state::State::default();
        for (id, name) in &tracked {
            state.track(*id, name);
        }
        state
            .save(&voice_transcriber::daemon::state::State::path(dir))
            .map_err(|e| e.to_string())?;

        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!("{extra_config}\n[telegram]\napi_id = {API_ID}\napi_hash = \"{API_HASH}\"\n"),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        Ok(config)
    }

    /// Every log entry so far (requests and events).
    pub fn log(&self) -> Vec<Value> {
        self.shared.log.lock().unwrap().entries.clone()
    }

    /// The requests of one method so far.
    pub fn calls(&self, method: &str) -> Vec<Value> {
        self.log()
            .into_iter()
            .filter(|e| e["method"] == method)
            .collect()
    }

    /// Waits until `found` picks something out of the log; `Err` with the log after `timeout`.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        found: impl Fn(&[Value]) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(t) = found(&log) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what}; fake data center log:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log as JSON lines.
    pub fn log_text(&self) -> String {
        self.log()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Delivers a message now (pushed as an update); returns its id.
    pub fn deliver(&self, message: &scenario::Message) -> Result<i32, String> {
        self.shared.deliver(message)
    }

    /// Closes every open connection.
    pub fn drop_connections(&self) {
        self.shared.drop_connections();
    }

    /// Pushes a stored message once more, under a new update position, as Telegram's
    /// catch-up sometimes hands the same message over twice; returns how many connections
    /// got it.
    pub fn redeliver(&self, chat_key: &str, id: i32) -> Result<usize, String> {
        self.shared.redeliver(chat_key, id)
    }

    /// An outage of `duration`: every connection is dropped and new ones are closed at once
    /// (logged as "outage" and "refused"); messages delivered meanwhile wait for
    /// `updates.getDifference`.
    pub fn outage(&self, duration: Duration) {
        self.shared.outage(Instant::now() + duration);
    }

    /// The texts of the owner's stored messages in a chat that reply to message `to`: what
    /// the chat really shows, however many requests it took.
    pub fn replies_in(&self, chat_key: &str, to: i32) -> Vec<String> {
        let w = self.shared.world.lock().unwrap();
        let Some(peer) = w.peer_of_key(chat_key) else {
            return Vec::new();
        };
        w.messages
            .iter()
            .filter(|m| m.peer == peer && m.out && m.reply_to == Some(to))
            .map(|m| m.text.clone())
            .collect()
    }

    /// A stored message's current text.
    pub fn message_text(&self, chat_key: &str, id: i32) -> Option<String> {
        let w = self.shared.world.lock().unwrap();
        let peer = w.peer_of_key(chat_key)?;
        w.messages
            .iter()
            .find(|m| m.peer == peer && m.id == id)
            .map(|m| m.text.clone())
    }
}

impl Drop for FakeDc {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
