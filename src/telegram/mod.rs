//! The daemon's link to Telegram: the owner's user account, through grammers.
//!
//! [`open`] turns a saved login into a [`Telegram`] (the actions: reply, edit, fetch, download,
//! resolve a username; cheap to clone) and a [`TelegramUpdates`] (the stream of new messages,
//! owned by the reconnect supervisor). [`login`] creates that saved login interactively.
//!
//! Submodules, one job each:
//! - [`session`]: the login and update position in one file, written atomically, mode 0600.
//! - [`errors`]: grammers errors sorted into the daemon's [`MessengerError`] categories.
//! - [`convert`]: grammers messages → [`Incoming`], including what audio they carry.
//! - [`login`]: the interactive phone / code / password dialogue.
//! - [`download`]: media part by part, sized to the link, resumable, across data centers.
//!
//! # Why a connection is sometimes rebuilt
//! grammers opens connections on demand inside one "pool runner" task, and that task waits for
//! a new connection's first answer before it serves any other request, with no time limit. A
//! server (or middlebox) that accepts the connection and then says nothing would freeze every
//! request forever. So every request here has a deadline ([`TelegramOptions::request_timeout`]);
//! when one passes, the pool is marked stalled, [`TelegramUpdates::next`] returns a network
//! error, and the supervisor's next [`Connection::connect`] throws the whole pool away and
//! starts a new one from the saved session (update position included, so nothing is missed).
//! Downloads are the exception: a part that misses its deadline is asked for again on the same
//! pool, and only a connection that stays silent is replaced ([`download`] says why).
//! While waiting for updates, a quiet connection is checked with a round trip every
//! [`TelegramOptions::idle_probe`], which catches a connection that died silently.

pub mod convert;
pub mod download;
pub mod errors;
mod login;
pub mod session;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddrV4;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grammers_client::client::UpdateStream;
use grammers_client::message::InputMessage;
use grammers_client::peer::Peer;
use grammers_client::update::Update;
use grammers_client::Client;
use grammers_mtsender::{
    AutoSleep, ConnectionParams, InvocationError, SenderPool, SenderPoolHandle,
    UpdatesConfiguration,
};
use grammers_session::types::{PeerId, PeerInfo, PeerKind, PeerRef};
use grammers_session::updates::UpdatesLike;
use grammers_session::Session;
use grammers_tl_types as tl;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use crate::daemon::download::Download;
use crate::daemon::messenger::{
    ChatId, Connection, Incoming, Messenger, MessengerError, MsgId, UserId,
};
use convert::Owner;
pub use login::login;
pub use session::{session_path, FileSession, SessionError};

/// Why the Telegram link could not be opened or the login could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum TelegramError {
    /// There is no saved login (file missing, or a login was never completed).
    #[error(
        "not logged in to Telegram: no authorized session at {0}; run `voice-transcriber login` first"
    )]
    NotLoggedIn(PathBuf),
    /// The session file could not be read or written.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Telegram or the network failed a request.
    #[error("Telegram: {0}")]
    Telegram(#[from] MessengerError),
    /// The phone number has no Telegram account; accounts are created in the official apps.
    #[error("no Telegram account uses this phone number (create one in an official app first)")]
    SignUpRequired,
    /// Wrong login codes or passwords were entered too many times.
    #[error("login failed: {0}")]
    LoginFailed(String),
    /// The terminal could not be read (closed stdin, no tty for the password).
    #[error("reading from the terminal: {0}")]
    Input(#[source] std::io::Error),
}

/// Deadlines and buffer sizes of the link; [`Default`] is what the daemon uses.
#[derive(Debug, Clone)]
pub struct TelegramOptions {
    /// Longest wait for the answer to one request (the connect round trip, a reply, an edit, a
    /// fetch). Past it the pool counts as stalled and is rebuilt — except for a download
    /// part, which is asked for again on the same pool ([`download`]).
    pub request_timeout: Duration,
    /// With no update for this long, [`TelegramUpdates::next`] checks the connection with a
    /// round trip, so a connection that died without a word is noticed.
    pub idle_probe: Duration,
    /// Updates buffered between the network task and [`TelegramUpdates::next`]; grammers drops
    /// (and later re-fetches, as a gap) what does not fit.
    pub updates_channel_capacity: usize,
}

impl Default for TelegramOptions {
    fn default() -> Self {
        TelegramOptions {
            request_timeout: Duration::from_secs(30),
            idle_probe: Duration::from_secs(5 * 60),
            updates_channel_capacity: 1000,
        }
    }
}

/// Flood waits up to this long are slept through inside grammers; longer ones come back as
/// [`MessengerError::FloodWait`] for the caller to wait out. Kept well under
/// [`TelegramOptions::request_timeout`] so a sleeping request is not mistaken for a stall.
const AUTO_SLEEP_THRESHOLD: Duration = Duration::from_secs(10);

/// How long [`TelegramUpdates::close`] waits for connections to shut down.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Opens the saved login at `session_file` without touching the network.
///
/// Fails with [`TelegramError::NotLoggedIn`] when the file is missing or holds no completed
/// login, so a daemon started before `login` stops with a clear message instead of waiting.
pub async fn open(
    api_id: i32,
    session_file: &Path,
) -> Result<(Telegram, TelegramUpdates), TelegramError> {
    open_with(api_id, session_file, TelegramOptions::default()).await
}

/// [`open`] with other deadlines (tests use short ones).
pub async fn open_with(
    api_id: i32,
    session_file: &Path,
    options: TelegramOptions,
) -> Result<(Telegram, TelegramUpdates), TelegramError> {
    let session = match FileSession::load(session_file)? {
        Some(session) if session.is_logged_in() => Arc::new(session),
        _ => return Err(TelegramError::NotLoggedIn(session_file.to_path_buf())),
    };
    let owner = Owner {
        id: session.self_user_id().unwrap_or_default(),
        name: String::new(),
    };
    let pool = Pool::start(&session, api_id, &options);
    let shared = Arc::new(Shared {
        api_id,
        session,
        options,
        client: Mutex::new(pool.client.clone()),
        sender: Mutex::new(pool.handle.clone()),
        owner: Mutex::new(owner),
        stalled: AtomicBool::new(false),
        stall_notice: Notify::new(),
    });
    let link = pool.stream(&shared).await?;
    Ok((
        Telegram {
            shared: Arc::clone(&shared),
        },
        TelegramUpdates {
            shared,
            link: Some(link),
            ahead: None,
            backlog: VecDeque::new(),
            recover: true,
        },
    ))
}

/// Writes (or edits) the session at `session_file` so its home data center is `addr` with the
/// permanent key `auth_key`, and so it counts as logged in. The real client then talks
/// encrypted MTProto to `addr` at once; tests use this to aim it at a loopback endpoint.
#[doc(hidden)]
pub fn point_session_at(
    session_file: &Path,
    addr: SocketAddrV4,
    auth_key: [u8; 256],
) -> Result<(), TelegramError> {
    let session =
        FileSession::load(session_file)?.unwrap_or_else(|| FileSession::new(session_file));
    session.aim_at(addr, auth_key)?;
    Ok(())
}

/// State shared by the [`Telegram`] handles and the [`TelegramUpdates`] stream.
struct Shared {
    /// The application's api_id, for rebuilding the pool.
    api_id: i32,
    /// The saved login, shared with grammers.
    session: Arc<FileSession>,
    /// Deadlines.
    options: TelegramOptions,
    /// The client of the current pool; replaced when the pool is rebuilt.
    client: Mutex<Client>,
    /// The current pool's own handle, for closing one data center's connection.
    sender: Mutex<SenderPoolHandle>,
    /// The owner's id and name, for messages grammers attributes to "self".
    owner: Mutex<Owner>,
    /// Set when a request missed its deadline: the pool may be frozen and must be rebuilt.
    stalled: AtomicBool,
    /// Wakes [`TelegramUpdates::next`] when `stalled` is set.
    stall_notice: Notify,
}

impl Shared {
    fn client(&self) -> Client {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks the pool stalled: the update stream rebuilds it at its next look.
    fn mark_stalled(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        self.stall_notice.notify_one();
    }

    /// Closes the current pool's connection to data center `dc`; the next request to it
    /// opens a new one.
    fn disconnect_from_dc(&self, dc: i32) {
        self.sender
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .disconnect_from_dc(dc);
    }

    fn owner(&self) -> Owner {
        self.owner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs one request under the deadline, sorting its error; a missed deadline marks the
    /// pool stalled.
    ///
    /// USER_MIGRATE_X / NETWORK_MIGRATE_X (Telegram moved the account, or this network, to
    /// data center X) are followed at once ([`Shared::follow_migration`]) and reported as a
    /// network error; [`Shared::on_chat`] then sends the request again, now to X.
    async fn call<T>(
        &self,
        request: impl Future<Output = Result<T, InvocationError>>,
    ) -> Result<T, MessengerError> {
        match within(self.options.request_timeout, request).await {
            Ok(answer) => Ok(answer),
            Err(Deadline::Failed(InvocationError::Rpc(e))) if migration_target(&e).is_some() => {
                let dc = migration_target(&e).unwrap_or_default();
                self.follow_migration(dc).await?;
                Err(MessengerError::Network(format!(
                    "Telegram moved the account to data center {dc} ({}); asking there",
                    e.name
                )))
            }
            Err(e) => {
                if matches!(e, Deadline::Missed(_)) {
                    self.mark_stalled();
                }
                Err(e.into())
            }
        }
    }

    /// Moves the account's home to data center `dc`: the login is exported from the current
    /// home and imported there (as for media on other data centers), then `dc` is saved as
    /// the home, so every request after this one goes there. The update stream follows with a
    /// new pool, since updates come from the home data center's connection.
    async fn follow_migration(&self, dc: i32) -> Result<(), MessengerError> {
        let session_error = |e: SessionError| MessengerError::Network(format!("session: {e}"));
        let home = self.session.home_dc_id().map_err(session_error)?;
        if home == dc {
            return Ok(());
        }
        log::warn!("Telegram moved the account from data center {home} to {dc}; following it");
        let t = self.options.request_timeout;
        let client = self.client();
        let tl::enums::auth::ExportedAuthorization::Authorization(exported) = within(
            t,
            client.invoke(&tl::functions::auth::ExportAuthorization { dc_id: dc }),
        )
        .await?;
        within(
            t,
            client.invoke_in_dc(
                dc,
                &tl::functions::auth::ImportAuthorization {
                    id: exported.id,
                    bytes: exported.bytes,
                },
            ),
        )
        .await?;
        self.session
            .set_home_dc_id(dc)
            .await
            .map_err(session_error)?;
        self.mark_stalled();
        Ok(())
    }

    /// The chat as grammers wants it: with the access hash from the session's cache, or
    /// without one (enough for basic groups; Telegram answers PEER_ID_INVALID, i.e.
    /// [`MessengerError::UnknownChat`], otherwise, and [`Shared::on_chat`] looks it up).
    async fn peer(&self, chat: ChatId) -> Result<PeerRef, MessengerError> {
        let id = PeerId::from_bot_api_dialog_id(chat).ok_or(MessengerError::NotFound)?;
        let cached = self
            .session
            .peer_ref(id)
            .await
            .map_err(|e| MessengerError::Network(format!("session: {e}")))?;
        Ok(cached.unwrap_or_else(|| id.to_ambient_ref()))
    }

    /// One message by id, `None` when it is gone.
    async fn message(
        &self,
        chat: ChatId,
        id: MsgId,
    ) -> Result<Option<grammers_client::message::Message>, MessengerError> {
        let found = self
            .on_chat(chat, |peer| {
                let client = self.client();
                async move { self.call(client.get_messages_by_id(peer, &[id])).await }
            })
            .await?;
        Ok(found
            .into_iter()
            .next()
            .flatten()
            .filter(|m| !matches!(m.raw, tl::enums::Message::Empty(_))))
    }

    /// Runs `request` in `chat`. When Telegram does not recognise the chat as named
    /// ([`MessengerError::UnknownChat`]: a missing or stale access hash), looks the chat up
    /// again and runs the request once more with what it learned.
    async fn on_chat<T, F, Fut>(&self, chat: ChatId, request: F) -> Result<T, MessengerError>
    where
        F: Fn(PeerRef) -> Fut,
        Fut: Future<Output = Result<T, MessengerError>>,
    {
        let peer = self.peer(chat).await?;
        let home = self.session.home_dc_id().ok();
        match request(peer).await {
            Err(MessengerError::UnknownChat(why)) => {
                log::info!("chat {chat}: Telegram answered {why}; looking the chat up again");
                self.learn_from_dialogs().await?;
                request(self.peer(chat).await?).await
            }
            // The account moved to another data center meanwhile (see `call`).
            Err(MessengerError::Network(why)) if self.session.home_dc_id().ok() != home => {
                log::info!("chat {chat}: {why}");
                request(self.peer(chat).await?).await
            }
            other => other,
        }
    }

    /// True when the session can name `chat` to Telegram: a basic group by its id alone, a
    /// user or a channel only with its access hash.
    async fn knows(&self, chat: ChatId) -> bool {
        let Some(id) = PeerId::from_bot_api_dialog_id(chat) else {
            return false;
        };
        id.kind() == PeerKind::Chat || matches!(self.session.peer_ref(id).await, Ok(Some(_)))
    }

    /// Caches, through the session, the users and chats Telegram attached to an answer, those
    /// that carry an access hash (a "min" user or channel has none that this account may use).
    async fn learn(&self, users: &[tl::enums::User], chats: &[tl::enums::Chat]) {
        let peers: Vec<PeerInfo> = users
            .iter()
            .map(PeerInfo::from)
            .chain(chats.iter().map(PeerInfo::from))
            .filter(|p| match p {
                PeerInfo::User { auth, .. } | PeerInfo::Channel { auth, .. } => auth.is_some(),
                PeerInfo::Chat { .. } => true,
            })
            .collect();
        if let Err(e) = self.session.cache_peers(peers).await {
            log::warn!("caching users and chats in the session: {e}");
        }
    }

    /// Asks for the account's difference from just before `update`, for the users and chats
    /// Telegram attaches to it: what its docs advise when a short update names someone the
    /// client does not know. The message box is not touched (its own position stays).
    async fn learn_from_difference(
        &self,
        update: &tl::enums::Update,
    ) -> Result<(), MessengerError> {
        let tl::enums::Update::NewMessage(u) = update else {
            return Ok(());
        };
        if u.pts <= 0 {
            // From a difference already, which came with its users and chats.
            return Ok(());
        }
        let date = match &u.message {
            tl::enums::Message::Message(m) => m.date,
            tl::enums::Message::Service(m) => m.date,
            tl::enums::Message::Empty(_) => 0,
        };
        let qts = self
            .session
            .updates_state()
            .await
            .map(|s| s.qts)
            .unwrap_or(0);
        let request = tl::functions::updates::GetDifference {
            pts: (u.pts - u.pts_count.max(1)).max(1),
            pts_limit: None,
            pts_total_limit: None,
            date: (date - 1).max(1),
            qts,
            qts_limit: None,
        };
        let client = self.client();
        match self.call(client.invoke(&request)).await? {
            tl::enums::updates::Difference::Difference(d) => self.learn(&d.users, &d.chats).await,
            tl::enums::updates::Difference::Slice(d) => self.learn(&d.users, &d.chats).await,
            tl::enums::updates::Difference::Empty(_)
            | tl::enums::updates::Difference::TooLong(_) => {}
        }
        Ok(())
    }

    /// Looks chats up again in the first page of the dialog list (the chats with the most
    /// recent messages), caching the users and chats it names.
    async fn learn_from_dialogs(&self) -> Result<(), MessengerError> {
        let request = tl::functions::messages::GetDialogs {
            exclude_pinned: false,
            folder_id: None,
            offset_date: 0,
            offset_id: 0,
            offset_peer: tl::enums::InputPeer::Empty,
            limit: 100,
            hash: 0,
        };
        let client = self.client();
        match self.call(client.invoke(&request)).await? {
            tl::enums::messages::Dialogs::Dialogs(d) => self.learn(&d.users, &d.chats).await,
            tl::enums::messages::Dialogs::Slice(d) => self.learn(&d.users, &d.chats).await,
            tl::enums::messages::Dialogs::NotModified(_) => {}
        }
        Ok(())
    }

    /// Makes sure the session can name the chat of an incoming message before the message is
    /// handed on (a command is answered there, a job replies there): when the update came
    /// without the chat's access hash, from the difference just before it, else from the
    /// dialog list. Failing both, the message is handed on anyway; requests in that chat then
    /// look it up again.
    async fn learn_chat_of(&self, chat: ChatId, update: &tl::enums::Update) {
        if self.knows(chat).await {
            return;
        }
        if let Err(e) = self.learn_from_difference(update).await {
            log::warn!("chat {chat}: fetching the difference for its access hash: {e}");
        }
        if self.knows(chat).await {
            log::info!("chat {chat}: access hash learned from the difference");
            return;
        }
        if let Err(e) = self.learn_from_dialogs().await {
            log::warn!("chat {chat}: fetching the dialog list for its access hash: {e}");
        }
        if !self.knows(chat).await {
            log::warn!("chat {chat}: Telegram named no access hash for it");
        }
    }
}

/// The data center a USER_MIGRATE_X / NETWORK_MIGRATE_X error sends the account to.
/// (PHONE_MIGRATE only happens during the login, FILE_MIGRATE grammers follows for each file.)
fn migration_target(e: &grammers_mtsender::RpcError) -> Option<i32> {
    let moved = e.code == 303 && matches!(e.name.as_str(), "USER_MIGRATE" | "NETWORK_MIGRATE");
    moved
        .then_some(e.value?)
        .and_then(|dc| i32::try_from(dc).ok())
}

/// The most updates one `updates.getChannelDifference` of grammers asks for (user accounts).
const CHANNEL_DIFFERENCE_LIMIT: i32 = 100;

/// The most messages read back from one supergroup's history after a gap too long for its
/// difference.
const MAX_RECOVERED_PER_GROUP: usize = 1000;

impl Shared {
    /// Finds what grammers' catch-up would lose in supergroups that missed more than a
    /// difference holds, and reads it from their history instead.
    ///
    /// Past [`CHANNEL_DIFFERENCE_LIMIT`] updates Telegram answers
    /// `updates.channelDifferenceTooLong` (the group's dialog and newest messages), and
    /// grammers 0.11 keeps only its new position from it: the messages in between never
    /// reach the stream (its `adapt_channel_difference` empties `new_messages`). So after each
    /// pool start, every supergroup in the saved position is asked for its difference as
    /// grammers will ask for it; where the answer is "too long", the group's history
    /// (`messages.getHistory`) is read back to the saved position's date, at most
    /// [`MAX_RECOVERED_PER_GROUP`] messages, oldest handed out first. The stream's own
    /// difference for the group then brings nothing; messages seen twice (history and
    /// stream, or before a crash) are recognised by the spool's done log.
    ///
    /// The cost is one request per supergroup at each start, and a difference that fits is
    /// fetched twice. A gap that grows too long while a pool runs (a long outage without a
    /// rebuild) is not covered.
    async fn recover_long_gaps(&self) -> Result<Vec<Incoming>, MessengerError> {
        let state = self
            .session
            .updates_state()
            .await
            .map_err(|e| MessengerError::Network(format!("session: {e}")))?;
        let owner = self.owner();
        let mut found = Vec::new();
        for channel in &state.channels {
            let Some(peer) = PeerId::channel(channel.id) else {
                continue;
            };
            let Ok(Some(peer)) = self.session.peer_ref(peer).await else {
                continue;
            };
            let request = tl::functions::updates::GetChannelDifference {
                force: false,
                channel: tl::types::InputChannel {
                    channel_id: channel.id,
                    access_hash: peer.auth.hash(),
                }
                .into(),
                filter: tl::enums::ChannelMessagesFilter::Empty,
                pts: channel.pts,
                limit: CHANNEL_DIFFERENCE_LIMIT,
            };
            let client = self.client();
            match self.call(client.invoke(&request)).await {
                Ok(tl::enums::updates::ChannelDifference::TooLong(_)) => {}
                Ok(_) => continue,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    log::warn!("supergroup {}: asking for its difference: {e}", channel.id);
                    continue;
                }
            }
            log::warn!(
                "supergroup {}: more was missed than one difference holds; reading its history back to {}",
                channel.id,
                state.date
            );
            let mut history = client.iter_messages(peer).limit(MAX_RECOVERED_PER_GROUP);
            let mut batch = Vec::new();
            while let Some(message) = self.call(history.next()).await? {
                let date = match &message.raw {
                    tl::enums::Message::Message(m) => m.date,
                    tl::enums::Message::Service(m) => m.date,
                    tl::enums::Message::Empty(_) => continue,
                };
                if date < state.date {
                    break;
                }
                batch.extend(convert::incoming(&message, &owner));
            }
            log::info!(
                "supergroup {}: {} messages read back from its history",
                channel.id,
                batch.len()
            );
            found.extend(batch.into_iter().rev());
        }
        Ok(found)
    }
}

/// Outcome of a request run under a deadline.
enum Deadline {
    /// Telegram or the connection answered with an error.
    Failed(InvocationError),
    /// No answer in time.
    Missed(Duration),
}

impl From<Deadline> for MessengerError {
    fn from(d: Deadline) -> Self {
        match d {
            Deadline::Failed(e) => errors::classify(&e),
            Deadline::Missed(t) => {
                MessengerError::Network(format!("no answer from Telegram within {t:?}"))
            }
        }
    }
}

async fn within<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, InvocationError>>,
) -> Result<T, Deadline> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result.map_err(Deadline::Failed),
        Err(_) => Err(Deadline::Missed(limit)),
    }
}

/// A freshly started grammers pool: its client, its update channel and its runner task.
struct Pool {
    client: Client,
    handle: SenderPoolHandle,
    updates: mpsc::Receiver<UpdatesLike>,
    runner: JoinHandle<()>,
}

impl Pool {
    /// Starts the runner task. Makes no connection: grammers connects on the first request.
    fn start(session: &Arc<FileSession>, api_id: i32, options: &TelegramOptions) -> Pool {
        let params = ConnectionParams {
            device_model: "voice-transcriber".into(),
            app_version: env!("CARGO_PKG_VERSION").into(),
            retry_policy: Box::new(AutoSleep {
                tries: NonZeroU32::MIN,
                threshold: AUTO_SLEEP_THRESHOLD,
                io_errors_as_flood_of: Some(Duration::from_secs(1)),
            }),
            updates_channel_capacity: NonZeroUsize::new(options.updates_channel_capacity)
                .unwrap_or(NonZeroUsize::MIN),
            ..ConnectionParams::default()
        };
        let pool = SenderPool::with_configuration(Arc::clone(session), api_id, params);
        Pool {
            handle: pool.handle.thin.clone(),
            client: Client::new(pool.handle),
            updates: pool.updates,
            runner: tokio::spawn(pool.runner.run()),
        }
    }

    /// Installs this pool's client as the current one and opens its update stream, resuming
    /// from the update position saved in the session (catch-up).
    async fn stream(self, shared: &Shared) -> Result<Link, TelegramError> {
        *shared.client.lock().unwrap_or_else(|e| e.into_inner()) = self.client.clone();
        *shared.sender.lock().unwrap_or_else(|e| e.into_inner()) = self.handle.clone();
        match self
            .client
            .stream_updates(self.updates, UpdatesConfiguration { catch_up: true })
            .await
        {
            Ok(stream) => Ok(Link {
                stream,
                runner: self.runner,
            }),
            Err(e) => {
                self.runner.abort();
                Err(MessengerError::Network(format!("session: {e}")).into())
            }
        }
    }
}

/// One pool's update stream and runner task; dropping it stops the task and its connections.
struct Link {
    /// grammers' ordered, gap-free update stream.
    stream: UpdateStream,
    /// The task that owns the connections.
    runner: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.runner.abort();
    }
}

/// The actions the daemon takes in chats, over the current pool. Cheap to clone.
#[derive(Clone)]
pub struct Telegram {
    shared: Arc<Shared>,
}

impl Messenger for Telegram {
    async fn reply(&self, chat: ChatId, to: MsgId, text: &str) -> Result<MsgId, MessengerError> {
        let shared = &self.shared;
        let sent = shared
            .on_chat(chat, |peer| {
                let message = InputMessage::new()
                    .text(text)
                    .reply_to(Some(to))
                    .link_preview(false);
                let client = shared.client();
                async move { shared.call(client.send_message(peer, message)).await }
            })
            .await?;
        Ok(sent.id())
    }

    async fn reply_once(
        &self,
        chat: ChatId,
        to: MsgId,
        text: &str,
        random_id: i64,
    ) -> Result<Option<MsgId>, MessengerError> {
        let shared = &self.shared;
        let sent = shared
            .on_chat(chat, |peer| {
                let request = tl::functions::messages::SendMessage {
                    no_webpage: true,
                    silent: false,
                    background: false,
                    clear_draft: false,
                    noforwards: false,
                    update_stickersets_order: false,
                    invert_media: false,
                    allow_paid_floodskip: false,
                    peer: peer.into(),
                    reply_to: Some(
                        tl::types::InputReplyToMessage {
                            reply_to_msg_id: to,
                            top_msg_id: None,
                            reply_to_peer_id: None,
                            quote_text: None,
                            quote_entities: None,
                            quote_offset: None,
                            monoforum_peer_id: None,
                            todo_item_id: None,
                            poll_option: None,
                        }
                        .into(),
                    ),
                    message: text.to_string(),
                    random_id,
                    reply_markup: None,
                    entities: None,
                    schedule_date: None,
                    schedule_repeat_period: None,
                    send_as: None,
                    quick_reply_shortcut: None,
                    effect: None,
                    allow_paid_stars: None,
                    suggested_post: None,
                    rich_message: None,
                };
                let client = shared.client();
                async move { shared.call(client.invoke(&request)).await }
            })
            .await;
        match sent {
            Ok(updates) => Ok(sent_id(&updates, random_id)),
            // An earlier try with this random_id was posted; its answer never arrived.
            Err(MessengerError::Rejected(name)) if name == "RANDOM_ID_DUPLICATE" => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn edit(&self, chat: ChatId, id: MsgId, text: &str) -> Result<(), MessengerError> {
        let shared = &self.shared;
        let edited = shared
            .on_chat(chat, |peer| {
                let message = InputMessage::new().text(text).link_preview(false);
                let client = shared.client();
                async move { shared.call(client.edit_message(peer, id, message)).await }
            })
            .await;
        match edited {
            // The text is already what was asked for.
            Err(MessengerError::Rejected(name)) if name == "MESSAGE_NOT_MODIFIED" => Ok(()),
            other => other,
        }
    }

    async fn fetch(&self, chat: ChatId, id: MsgId) -> Result<Option<Incoming>, MessengerError> {
        let owner = self.shared.owner();
        Ok(self
            .shared
            .message(chat, id)
            .await?
            .and_then(|m| convert::incoming(&m, &owner)))
    }

    async fn download(
        &self,
        chat: ChatId,
        id: MsgId,
        into: &mut Download,
    ) -> Result<u64, MessengerError> {
        download::download(&self.shared, chat, id, into).await
    }

    async fn resolve_username(
        &self,
        username: &str,
    ) -> Result<Option<(UserId, String)>, MessengerError> {
        let username = username.trim_start_matches('@');
        let client = self.shared.client();
        match self.shared.call(client.resolve_username(username)).await {
            Ok(Some(Peer::User(user))) => Ok(user
                .id()
                .bot_api_dialog_id()
                .map(|id| (id, user.full_name()))),
            Ok(_) => Ok(None),
            Err(MessengerError::Rejected(name)) if name == "USERNAME_INVALID" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The id of the message `messages.sendMessage` posted, from what Telegram answered: the
/// short form names it, the long one maps the request's `random_id` to it.
fn sent_id(updates: &tl::enums::Updates, random_id: i64) -> Option<MsgId> {
    let list = match updates {
        tl::enums::Updates::UpdateShortSentMessage(u) => return Some(u.id),
        tl::enums::Updates::Updates(u) => &u.updates,
        tl::enums::Updates::Combined(u) => &u.updates,
        _ => return None,
    };
    let mapped = list.iter().find_map(|u| match u {
        tl::enums::Update::MessageId(m) if m.random_id == random_id => Some(m.id),
        _ => None,
    });
    mapped.or_else(|| {
        list.iter().find_map(|u| match u {
            tl::enums::Update::NewMessage(m) => Some(message_id(&m.message)),
            tl::enums::Update::NewChannelMessage(m) => Some(message_id(&m.message)),
            _ => None,
        })
    })
}

fn message_id(message: &tl::enums::Message) -> MsgId {
    match message {
        tl::enums::Message::Message(m) => m.id,
        tl::enums::Message::Service(m) => m.id,
        tl::enums::Message::Empty(m) => m.id,
    }
}

/// New messages from Telegram, in order, with catch-up after restarts and outages.
///
/// # When the update position is saved
/// grammers' position (the message box state) moves as soon as it *receives* updates: one
/// `updates.getDifference` of twenty messages moves it past all twenty while they still wait
/// in grammers' buffers, and every message of one difference carries that same final
/// position. Saved then, a crash loses the nineteen not yet handed out. So the position is
/// only written when grammers holds nothing more: [`TelegramUpdates::checkpoint`] first looks
/// whether the stream has an update ready without waiting (one poll), keeps it for the next
/// [`Connection::next`] if so, and saves only when it has none.
pub struct TelegramUpdates {
    shared: Arc<Shared>,
    /// The current pool; `None` only after a rebuild failed half-way.
    link: Option<Link>,
    /// An update taken from the stream by that look, not yet handed out.
    ahead: Option<Result<Update, InvocationError>>,
    /// Messages read back from supergroup histories, handed out before the stream's
    /// ([`Shared::recover_long_gaps`]).
    backlog: VecDeque<Incoming>,
    /// True from a pool's start until its first [`Connection::connect`] looked for gaps too
    /// long for grammers' catch-up.
    recover: bool,
}

impl TelegramUpdates {
    /// Saves the update position and the session, then shuts the connections down. Used at
    /// SIGTERM, so the next start resumes exactly after the last handled message.
    pub async fn close(mut self) -> Result<(), TelegramError> {
        let saved = self.save(true).await;
        self.shared.client().disconnect();
        // A stalled runner cannot hear the request to quit; dropping the link aborts it.
        if let Some(link) = self
            .link
            .as_mut()
            .filter(|_| !self.shared.stalled.load(Ordering::SeqCst))
        {
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut link.runner).await;
        }
        saved
    }

    /// Writes the stream's update position into the session — only once everything grammers
    /// received was handed out (see the type's docs); otherwise the position stays where it
    /// was, and a restart fetches the rest again — and the session to disk: at once when
    /// `now` (shutdown, reconnect), else only when [`session::SAVE_INTERVAL`] has passed
    /// since the last write.
    async fn save(&mut self, now: bool) -> Result<(), TelegramError> {
        if !self.drained() {
            log::debug!("updates still buffered; the update position is saved after them");
            return Ok(());
        }
        if let Some(stream) = self.link.as_ref().map(|l| &l.stream) {
            stream
                .sync_update_state()
                .await
                .map_err(|e| MessengerError::Rejected(format!("session: {e}")))?;
        }
        if now {
            self.shared.session.flush()?;
        } else {
            self.shared.session.flush_if_due()?;
        }
        Ok(())
    }

    /// True when grammers holds no update that was not handed out: nothing kept by an earlier
    /// look, and the stream has none ready now. A ready update is kept for [`Self::next`].
    ///
    /// The look polls the stream's `next` once and drops it if it is not ready, which
    /// grammers allows between polls: what it had buffered would have made it ready, and a
    /// difference request it started is simply sent again by the next `next`.
    fn drained(&mut self) -> bool {
        if self.recover || !self.backlog.is_empty() {
            return false;
        }
        match &self.ahead {
            Some(Ok(_)) => return false,
            // The stream only fails once its buffers are empty.
            Some(Err(_)) => return true,
            None => {}
        }
        let Some(link) = self.link.as_mut() else {
            return true;
        };
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let next = std::pin::pin!(link.stream.next());
        match next.poll(&mut context) {
            std::task::Poll::Pending => true,
            std::task::Poll::Ready(update) => {
                let failed = update.is_err();
                self.ahead = Some(update);
                failed
            }
        }
    }

    /// Replaces a stalled or dead pool by a new one that resumes from the saved position.
    async fn rebuild(&mut self) -> Result<(), MessengerError> {
        if let Err(e) = self.save(true).await {
            log::warn!("saving the Telegram session before reconnecting: {e}");
        }
        // Stop the old pool before the new one uses the same session. An update kept ahead
        // is dropped with it: the position was not saved past it, so the new pool's catch-up
        // brings it again.
        self.link = None;
        self.ahead = None;
        self.recover = true;
        self.shared.stalled.store(false, Ordering::SeqCst);
        let pool = Pool::start(
            &self.shared.session,
            self.shared.api_id,
            &self.shared.options,
        );
        let link = pool.stream(&self.shared).await.map_err(|e| match e {
            TelegramError::Telegram(e) => e,
            other => MessengerError::Network(other.to_string()),
        })?;
        self.link = Some(link);
        Ok(())
    }

    /// A new message as the daemon sees it, once the session can name its chat; `None` for
    /// one that is nothing to the daemon (deleted).
    async fn hand_out(&self, message: &grammers_client::update::Message) -> Option<Incoming> {
        if let Some(chat) = message.peer_id().bot_api_dialog_id() {
            self.shared.learn_chat_of(chat, &message.raw).await;
        }
        convert::incoming(message, &self.shared.owner())
    }

    fn needs_rebuild(&self) -> bool {
        match &self.link {
            None => true,
            Some(link) => self.shared.stalled.load(Ordering::SeqCst) || link.runner.is_finished(),
        }
    }
}

impl Connection for TelegramUpdates {
    /// Checks the connection with `users.getSelf` (which also refreshes the owner's name),
    /// rebuilding the pool first if it stalled.
    async fn connect(&mut self) -> Result<(), MessengerError> {
        if self.needs_rebuild() {
            self.rebuild().await?;
        }
        let client = self.shared.client();
        let me = self.shared.call(client.get_me()).await?;
        {
            let mut owner = self.shared.owner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = me.id().bot_api_dialog_id() {
                owner.id = id;
            }
            owner.name = me.full_name();
        }
        if self.recover {
            let found = self.shared.recover_long_gaps().await?;
            self.backlog.extend(found);
            self.recover = false;
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<Incoming, MessengerError> {
        let shared = Arc::clone(&self.shared);
        let stalled =
            || MessengerError::Network("the connection stopped answering; reconnecting".into());
        loop {
            if shared.stalled.load(Ordering::SeqCst) {
                return Err(stalled());
            }
            if let Some(incoming) = self.backlog.pop_front() {
                return Ok(incoming);
            }
            if let Some(update) = self.ahead.take() {
                match update {
                    Ok(Update::NewMessage(message)) => {
                        if let Some(incoming) = self.hand_out(&message).await {
                            return Ok(incoming);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(errors::classify(&e)),
                }
                continue;
            }
            let Some(stream) = self.link.as_mut().map(|l| &mut l.stream) else {
                return Err(MessengerError::Network("not connected".into()));
            };
            // grammers' `next` is safe to abandon between polls (at worst a difference request
            // is sent again), which the probe and the stall notice rely on.
            let update = {
                let next = stream.next();
                tokio::pin!(next);
                loop {
                    // The session holds only positions saved at drained points, so writing
                    // it while waiting is safe; it keeps a quiet daemon's file fresh.
                    let due = shared.session.due_at();
                    let write_due = async move {
                        match due {
                            Some(t) => tokio::time::sleep_until(t.into()).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        update = &mut next => break update,
                        _ = write_due => {
                            if let Err(e) = shared.session.flush_if_due() {
                                log::warn!("saving the Telegram session: {e}");
                                // Still due: do not spin on a failing disk.
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                        _ = shared.stall_notice.notified() => {
                            if shared.stalled.load(Ordering::SeqCst) {
                                return Err(stalled());
                            }
                        }
                        _ = tokio::time::sleep(shared.options.idle_probe) => {
                            let client = shared.client();
                            shared
                                .call(client.invoke(&tl::functions::updates::GetState {}))
                                .await?;
                        }
                    }
                }
            };
            match update {
                Ok(Update::NewMessage(message)) => {
                    if let Some(incoming) = self.hand_out(&message).await {
                        return Ok(incoming);
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(errors::classify(&e)),
            }
        }
    }

    async fn checkpoint(&mut self) -> Result<(), MessengerError> {
        self.save(false).await.map_err(|e| match e {
            TelegramError::Telegram(e) => e,
            other => MessengerError::Rejected(other.to_string()),
        })
    }
}
