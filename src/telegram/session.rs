//! The Telegram login, kept in one small file.
//!
//! grammers asks its caller for a [`Session`]: where each data center is, the permanent
//! authorization key shared with it, which user that key is logged in as, the access hashes of
//! the chats seen so far, and the position in the update stream. Losing any of it is costly:
//! without the key the owner must log in again (and Telegram rate-limits logins), without the
//! update position a restart either misses voice messages or transcribes old ones again.
//!
//! grammers' own persistent store pulls in libsql; this one keeps everything in memory and
//! writes it as one JSON file, replaced atomically (temporary sibling, fsync, rename, fsync of
//! the directory; [`crate::daemon::fsutil`]) with mode 0600, because the file is as good as the
//! account's password.
//!
//! Writes are sorted by what a crash would cost. Keys, data centers, the home data center and
//! the owner's identity are written at once. Peers and the update position change with almost
//! every update, so those only mark the file dirty and are written at most every
//! [`SAVE_INTERVAL`] ([`FileSession::flush_if_due`], at checkpoints and on a timer while
//! waiting for updates); [`FileSession::flush`] (at shutdown and right before a reconnect)
//! writes whatever is pending. A crash loses at most that interval of update position: the
//! restart's catch-up then brings some messages again, and the spool's done log recognises
//! them. Peers learned ride along with the next write of either kind. The [`Session`] methods never fail on a disk error: grammers would turn
//! it into a failed request, which cannot help. They log it, keep the data dirty, and the next
//! flush reports it.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use grammers_session::types::{
    ChannelState, DcOption, PeerId, PeerInfo, UpdateState, UpdatesState,
};
use grammers_session::{BoxFuture, Session, SessionData};
use serde::{Deserialize, Serialize};

/// File name of the session inside the state directory.
pub const SESSION_FILE_NAME: &str = "telegram.session";

/// Permission bits of the session file: owner read/write only.
pub const SESSION_FILE_MODE: u32 = 0o600;

/// Longest time a change to peers or the update position waits in memory before it is written.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// Version of the file layout, so a future layout can be told apart instead of misread.
const FORMAT_VERSION: u32 = 1;

/// Where the session lives inside the state directory.
pub fn session_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SESSION_FILE_NAME)
}

/// Why the session file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading, writing or renaming the file failed.
    #[error("session file {path}: {source}")]
    Io {
        /// The file (or its temporary sibling) involved.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The file exists but is not a session this program wrote.
    #[error("session file {path} is damaged or from another program: {reason}")]
    Format {
        /// The file that was read.
        path: PathBuf,
        /// What did not parse.
        reason: String,
    },
    /// A thread panicked while holding the session; its contents can no longer be trusted.
    #[error("session lock is poisoned")]
    Poisoned,
}

/// The file's contents, as written.
#[derive(Serialize, Deserialize)]
struct Stored {
    /// Layout version ([`FORMAT_VERSION`]).
    format: u32,
    /// The data center the account lives in.
    home_dc: i32,
    /// Every known data center with its address and, once connected, its permanent key.
    dc_options: Vec<DcOption>,
    /// Cached peers (users, groups, channels) with their access hashes.
    peers: Vec<PeerInfo>,
    /// Position in the update stream.
    updates_state: UpdatesState,
    /// The logged-in account's user id. Several peers may say "self" (an account logged in
    /// before this one), so the owner is named here rather than found among them.
    #[serde(default)]
    owner: Option<i64>,
}

/// The live session data and its bookkeeping.
struct Data {
    /// Everything grammers stores; same shape as its in-memory storage.
    session: SessionData,
    /// The owner's peer id, once logged in; answers `PeerId::self_user()` lookups.
    self_id: Option<PeerId>,
    /// True when memory holds changes the file does not.
    dirty: bool,
    /// When the file was last written by this process.
    last_save: Option<Instant>,
}

/// A [`Session`] kept in memory and persisted to one file.
pub struct FileSession {
    /// The session file.
    path: PathBuf,
    /// The data, behind a lock because grammers calls in from its connection tasks.
    data: Mutex<Data>,
}

impl FileSession {
    /// A fresh, never-logged-in session that will be written to `path` (nothing is written yet).
    pub fn new(path: &Path) -> Self {
        FileSession {
            path: path.to_path_buf(),
            data: Mutex::new(Data {
                session: SessionData::default(),
                self_id: None,
                dirty: true,
                last_save: None,
            }),
        }
    }

    /// Reads the session at `path`; `Ok(None)` when there is no such file.
    pub fn load(path: &Path) -> Result<Option<Self>, SessionError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SessionError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let format_error = |reason: String| SessionError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let stored: Stored =
            serde_json::from_str(&text).map_err(|e| format_error(e.to_string()))?;
        if stored.format != FORMAT_VERSION {
            return Err(format_error(format!(
                "format {} (this program reads format {FORMAT_VERSION})",
                stored.format
            )));
        }
        // Files written before `owner` existed: the one peer that says "self"; with several,
        // the highest id (any choice is corrected at the first connection, whose
        // `users.getUsers(self)` names the account).
        let self_id = stored.owner.and_then(PeerId::user).or_else(|| {
            stored
                .peers
                .iter()
                .filter(|p| {
                    matches!(
                        p,
                        PeerInfo::User {
                            is_self: Some(true),
                            ..
                        }
                    )
                })
                .map(PeerInfo::id)
                .max_by_key(|id| id.bot_api_dialog_id())
        });
        let session = SessionData {
            home_dc: stored.home_dc,
            // Start from the built-in list so a file that lacks a data center still finds it.
            dc_options: SessionData::default()
                .dc_options
                .into_iter()
                .chain(stored.dc_options.into_iter().map(|dc| (dc.id, dc)))
                .collect(),
            peer_infos: stored.peers.into_iter().map(|p| (p.id(), p)).collect(),
            updates_state: stored.updates_state,
        };
        Ok(Some(FileSession {
            path: path.to_path_buf(),
            data: Mutex::new(Data {
                session,
                self_id,
                dirty: false,
                last_save: Some(Instant::now()),
            }),
        }))
    }

    /// The file this session is written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when a login completed on this session: the owner is known and the home data
    /// center has a permanent key. Says nothing about whether Telegram still honours it.
    pub fn is_logged_in(&self) -> bool {
        self.lock().is_ok_and(|d| {
            d.self_id.is_some()
                && d.session
                    .dc_options
                    .get(&d.session.home_dc)
                    .is_some_and(|dc| dc.auth_key.is_some())
        })
    }

    /// The owner's user id, once logged in.
    pub fn self_user_id(&self) -> Option<i64> {
        self.lock()
            .ok()?
            .self_id
            .and_then(PeerId::bot_api_dialog_id)
    }

    /// Writes pending changes, if any. Called at checkpoints and at shutdown.
    pub fn flush(&self) -> Result<(), SessionError> {
        let mut data = self.lock()?;
        if data.dirty {
            self.write(&mut data)?;
        }
        Ok(())
    }

    /// Writes pending changes if the last write is at least [`SAVE_INTERVAL`] old; true when
    /// it wrote. Called at every checkpoint, so a busy stream of messages costs one write per
    /// interval rather than one per message.
    pub fn flush_if_due(&self) -> Result<bool, SessionError> {
        let mut data = self.lock()?;
        let due = data.last_save.is_none_or(|t| t.elapsed() >= SAVE_INTERVAL);
        if data.dirty && due {
            self.write(&mut data)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// When pending changes become due for [`Self::flush_if_due`]; `None` when nothing is
    /// pending.
    pub fn due_at(&self) -> Option<Instant> {
        let data = self.lock().ok()?;
        if !data.dirty {
            return None;
        }
        Some(
            data.last_save
                .map_or_else(Instant::now, |t| t + SAVE_INTERVAL),
        )
    }

    /// Aims the session at one data center address with a known key, as the home data center,
    /// and records a stand-in owner if none is known, so the client skips key exchange and
    /// login and talks encrypted MTProto to `addr` straight away. Tests use it to point the
    /// real client at a loopback endpoint.
    #[doc(hidden)]
    pub fn aim_at(&self, addr: SocketAddrV4, auth_key: [u8; 256]) -> Result<(), SessionError> {
        let mut data = self.lock()?;
        let home = data.session.home_dc;
        let ipv6 = SocketAddrV6::new(addr.ip().to_ipv6_mapped(), addr.port(), 0, 0);
        for dc in data.session.dc_options.values_mut() {
            dc.ipv4 = addr;
            dc.ipv6 = ipv6;
            dc.auth_key = (dc.id == home).then_some(auth_key);
        }
        if data.self_id.is_none() {
            let me = PeerInfo::User {
                id: STAND_IN_SELF_ID,
                auth: Some(grammers_session::types::PeerAuth::from_hash(1)),
                bot: Some(false),
                is_self: Some(true),
            };
            data.self_id = Some(me.id());
            data.session.peer_infos.insert(me.id(), me);
        }
        self.write(&mut data)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Data>, SessionError> {
        self.data.lock().map_err(|_| SessionError::Poisoned)
    }

    /// Writes the whole session now.
    fn write(&self, data: &mut Data) -> Result<(), SessionError> {
        let stored = Stored {
            format: FORMAT_VERSION,
            home_dc: data.session.home_dc,
            dc_options: {
                let mut dcs: Vec<_> = data.session.dc_options.values().cloned().collect();
                dcs.sort_by_key(|dc| dc.id);
                dcs
            },
            peers: {
                let mut peers: Vec<_> = data.session.peer_infos.values().cloned().collect();
                peers.sort_by_key(|p| p.id().bot_api_dialog_id());
                peers
            },
            updates_state: data.session.updates_state.clone(),
            owner: data.self_id.and_then(PeerId::bot_api_dialog_id),
        };
        let text = serde_json::to_vec(&stored).map_err(|e| SessionError::Format {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.path, &text)?;
        data.dirty = false;
        data.last_save = Some(Instant::now());
        Ok(())
    }

    /// Records that something changed: writes now when `urgent` or when the last write is
    /// older than [`SAVE_INTERVAL`], otherwise leaves it for the next flush.
    fn changed(&self, data: &mut Data, urgent: bool) {
        data.dirty = true;
        let due = data.last_save.is_none_or(|t| t.elapsed() >= SAVE_INTERVAL);
        if urgent || due {
            if let Err(e) = self.write(data) {
                log::warn!("could not save the Telegram session (will retry): {e}");
            }
        }
    }
}

/// User id recorded as the owner by [`FileSession::aim_at`] when the session has none.
pub const STAND_IN_SELF_ID: i64 = 777_000_001;

/// Replaces the file atomically with mode 0600 (see [`crate::daemon::fsutil::write_atomic`]).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SessionError> {
    // A temporary file left by a crash keeps its permission bits when reopened; remove it so
    // the new one is created 0600 and the key is never readable by others, even briefly.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let _ = fs::remove_file(path.with_file_name(format!(".{name}.tmp")));
    crate::daemon::fsutil::write_atomic(path, bytes, SESSION_FILE_MODE).map_err(|source| {
        SessionError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// grammers' storage contract. Lookups are served from memory; changes go through
/// [`FileSession::changed`].
impl Session for FileSession {
    type Error = SessionError;

    fn home_dc_id(&self) -> Result<i32, SessionError> {
        Ok(self.lock()?.session.home_dc)
    }

    fn set_home_dc_id(&self, dc_id: i32) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let mut data = self.lock()?;
            if data.session.home_dc != dc_id {
                data.session.home_dc = dc_id;
                self.changed(&mut data, true);
            }
            Ok(())
        })
    }

    fn dc_option(&self, dc_id: i32) -> Result<Option<DcOption>, SessionError> {
        Ok(self.lock()?.session.dc_options.get(&dc_id).cloned())
    }

    fn set_dc_option(&self, dc_option: &DcOption) -> BoxFuture<'_, Result<(), SessionError>> {
        let dc_option = dc_option.clone();
        Box::pin(async move {
            let mut data = self.lock()?;
            // Called on every new connection with what is usually already known.
            if data.session.dc_options.get(&dc_option.id) != Some(&dc_option) {
                data.session.dc_options.insert(dc_option.id, dc_option);
                self.changed(&mut data, true);
            }
            Ok(())
        })
    }

    fn peer(&self, peer: PeerId) -> BoxFuture<'_, Result<Option<PeerInfo>, SessionError>> {
        Box::pin(async move {
            let data = self.lock()?;
            // grammers asks for `self_user()` (a sentinel id) to learn whether it is logged in
            // and as whom; answer with the owner's real entry.
            let peer = if peer == PeerId::self_user() {
                match data.self_id {
                    Some(id) => id,
                    None => return Ok(None),
                }
            } else {
                peer
            };
            Ok(data.session.peer_infos.get(&peer).cloned())
        })
    }

    fn cache_peer(&self, peer: PeerInfo) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let mut data = self.lock()?;
            let is_self = matches!(
                peer,
                PeerInfo::User {
                    is_self: Some(true),
                    ..
                }
            );
            let id = peer.id();
            let changed = merge_peer(&mut data.session.peer_infos, peer);
            let new_owner = is_self && data.self_id != Some(id);
            if new_owner {
                // The account logged in before is "self" no more.
                if let Some(old) = data.self_id {
                    if let Some(PeerInfo::User { is_self, .. }) =
                        data.session.peer_infos.get_mut(&old)
                    {
                        *is_self = Some(false);
                    }
                }
                data.self_id = Some(id);
            }
            if changed || new_owner {
                self.changed(&mut data, new_owner);
            }
            Ok(())
        })
    }

    fn cache_peers(&self, peers: Vec<PeerInfo>) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            for peer in peers {
                self.cache_peer(peer).await?;
            }
            Ok(())
        })
    }

    fn updates_state(&self) -> BoxFuture<'_, Result<UpdatesState, SessionError>> {
        Box::pin(async move { Ok(self.lock()?.session.updates_state.clone()) })
    }

    fn set_update_state(&self, update: UpdateState) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let mut data = self.lock()?;
            let before = data.session.updates_state.clone();
            apply_update_state(&mut data.session.updates_state, update);
            if data.session.updates_state != before {
                self.changed(&mut data, false);
            }
            Ok(())
        })
    }
}

/// Adds or extends a cached peer; true when anything changed.
fn merge_peer(peers: &mut HashMap<PeerId, PeerInfo>, peer: PeerInfo) -> bool {
    match peers.get_mut(&peer.id()) {
        Some(known) => {
            let before = known.clone();
            known.extend_info(&peer);
            *known != before
        }
        None => {
            peers.insert(peer.id(), peer);
            true
        }
    }
}

/// Applies one partial or full change of the update position.
fn apply_update_state(state: &mut UpdatesState, update: UpdateState) {
    match update {
        UpdateState::All(all) => *state = all,
        UpdateState::Primary { pts, date, seq } => {
            state.pts = pts;
            state.date = date;
            state.seq = seq;
        }
        UpdateState::Secondary { qts } => state.qts = qts,
        UpdateState::Channel { id, pts } => match state.channels.iter_mut().find(|c| c.id == id) {
            Some(channel) => channel.pts = pts,
            None => state.channels.push(ChannelState { id, pts }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::os::unix::fs::PermissionsExt;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn session_round_trips_through_the_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = session_path(dir.path());
        let session = FileSession::new(&path);
        let key = [7u8; 256];
        block_on(async {
            session.set_home_dc_id(4).await.unwrap();
            let mut dc = session.dc_option(4).unwrap().unwrap();
            dc.auth_key = Some(key);
            session.set_dc_option(&dc).await.unwrap();
            session
                .cache_peer(PeerInfo::User {
                    id: 42,
                    auth: Some(grammers_session::types::PeerAuth::from_hash(99)),
                    bot: Some(false),
                    is_self: Some(true),
                })
                .await
                .unwrap();
            session
                .cache_peer(PeerInfo::Channel {
                    id: 1234,
                    auth: Some(grammers_session::types::PeerAuth::from_hash(-5)),
                    kind: None,
                })
                .await
                .unwrap();
            session
                .set_update_state(UpdateState::All(UpdatesState {
                    pts: 10,
                    qts: 2,
                    date: 1_700_000_000,
                    seq: 3,
                    channels: vec![],
                }))
                .await
                .unwrap();
            session
                .set_update_state(UpdateState::Channel { id: 1234, pts: 77 })
                .await
                .unwrap();
        });
        session.flush().unwrap();

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join(".telegram.session.tmp").exists());

        let loaded = FileSession::load(&path).unwrap().unwrap();
        assert!(loaded.is_logged_in());
        assert_eq!(loaded.self_user_id(), Some(42));
        assert_eq!(loaded.home_dc_id().unwrap(), 4);
        assert_eq!(loaded.dc_option(4).unwrap().unwrap().auth_key, Some(key));
        block_on(async {
            let me = loaded.peer(PeerId::self_user()).await.unwrap().unwrap();
            assert_eq!(me.id(), PeerId::user(42).unwrap());
            let channel = PeerId::channel(1234).unwrap();
            let r = loaded.peer_ref(channel).await.unwrap().unwrap();
            assert_eq!(r.auth.hash(), -5);
            let state = loaded.updates_state().await.unwrap();
            assert_eq!((state.pts, state.qts, state.seq), (10, 2, 3));
            assert_eq!(state.channels, vec![ChannelState { id: 1234, pts: 77 }]);
        });
    }

    #[test]
    fn missing_file_loads_as_none_and_fresh_session_is_not_logged_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = session_path(dir.path());
        assert!(FileSession::load(&path).unwrap().is_none());
        assert!(!FileSession::new(&path).is_logged_in());
    }

    #[test]
    fn garbage_file_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = session_path(dir.path());
        fs::write(&path, "SQLite format 3\0").unwrap();
        assert!(matches!(
            FileSession::load(&path),
            Err(SessionError::Format { .. })
        ));
    }

    #[test]
    fn update_position_waits_for_flush_but_keys_are_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = session_path(dir.path());
        let session = FileSession::new(&path);
        session.flush().unwrap();
        block_on(async {
            session
                .set_update_state(UpdateState::Primary {
                    pts: 5,
                    date: 6,
                    seq: 7,
                })
                .await
                .unwrap();
        });
        let on_disk = FileSession::load(&path).unwrap().unwrap();
        assert_eq!(block_on(on_disk.updates_state()).unwrap().pts, 0);

        block_on(async {
            let mut dc = session.dc_option(2).unwrap().unwrap();
            dc.auth_key = Some([1; 256]);
            session.set_dc_option(&dc).await.unwrap();
        });
        let on_disk = FileSession::load(&path).unwrap().unwrap();
        assert_eq!(
            on_disk.dc_option(2).unwrap().unwrap().auth_key,
            Some([1; 256])
        );
        // The urgent write carried the pending position along.
        assert_eq!(block_on(on_disk.updates_state()).unwrap().pts, 5);
    }

    #[test]
    fn update_position_is_written_once_per_interval_not_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = session_path(dir.path());
        let session = FileSession::new(&path);
        session.flush().unwrap();
        for pts in 1..=5 {
            block_on(session.set_update_state(UpdateState::Primary {
                pts,
                date: 6,
                seq: 7,
            }))
            .unwrap();
            assert!(!session.flush_if_due().unwrap(), "not due yet");
        }
        let due = session.due_at().expect("changes pending");
        assert!(due > Instant::now());
        let on_disk = FileSession::load(&path).unwrap().unwrap();
        assert_eq!(block_on(on_disk.updates_state()).unwrap().pts, 0);
        session.flush().unwrap();
        assert!(session.due_at().is_none());
        let on_disk = FileSession::load(&path).unwrap().unwrap();
        assert_eq!(block_on(on_disk.updates_state()).unwrap().pts, 5);
    }

    #[test]
    fn aim_at_points_every_data_center_at_the_address_and_looks_logged_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = session_path(dir.path());
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4444);
        FileSession::new(&path).aim_at(addr, [3; 256]).unwrap();
        let loaded = FileSession::load(&path).unwrap().unwrap();
        assert!(loaded.is_logged_in());
        for id in 1..=5 {
            assert_eq!(loaded.dc_option(id).unwrap().unwrap().ipv4, addr);
        }
        let home = loaded.home_dc_id().unwrap();
        assert_eq!(
            loaded.dc_option(home).unwrap().unwrap().auth_key,
            Some([3; 256])
        );
    }
}
