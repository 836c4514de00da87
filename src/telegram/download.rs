//! Downloading a message's media with `upload.getFile`, part by part, so that a slow link, a
//! lost answer, a dropped connection, another data center and an expired file reference each
//! cost a retry of one part, never the download.
//!
//! grammers' own `iter_download` asks for fixed 512 KiB parts and, inside one call, connects
//! to another data center, hands the authorization over and follows FILE_MIGRATE; it cannot
//! start at an offset that is not a multiple of its part size nor take a new file reference.
//! Run under one request deadline, that made a link slower than ~140 kbit/s unable to finish
//! any part, made the first part of media on another data center carry a connection and two
//! authorization requests, and sent every failure back to byte 0. So the requests are made
//! here, each with a deadline of its own:
//!
//! - **Part sizes follow the link** ([`PartSize`]): the first part is 128 KiB, and each next
//!   one is sized from the speed measured so far so that it takes about a quarter of the
//!   request deadline (4 KiB to 512 KiB, the powers of two Telegram accepts). A link too slow
//!   for 512 KiB parts still finishes in smaller ones; the deadline keeps its meaning "no
//!   progress for this long", which a fixed part size would turn into "slower than X".
//! - **A missed deadline costs one part, not the pool.** The part is asked for again, a quarter
//!   the size, on the same connection: a lost or stalled answer does not mean a dead
//!   connection, and rebuilding the pool would also restart the update stream. Only
//!   after [`MISSES_BEFORE_RECONNECT`] misses in a row is the connection taken for dead: one to
//!   another data center is closed (the next part opens a new one); the home one marks the
//!   pool stalled, which the update stream answers by rebuilding it and catching up, and the
//!   download goes on with the new pool.
//! - **Another data center gets its own steps** ([`open_dc`], [`authorize`]): first a
//!   connection (a `help.getNearestDc` round trip under [`connect_deadline`], which on
//!   Telegram includes a key exchange), then, if the data center answers
//!   AUTH_KEY_UNREGISTERED, `auth.exportAuthorization` at home and `auth.importAuthorization`
//!   there, each under the request deadline; only then the part.
//! - **FILE_REFERENCE_EXPIRED** (file references expire after a while, e.g. for a job waiting
//!   in the spool) is answered by fetching the message again for a fresh reference and going
//!   on at the same offset.
//! - **Everything received is kept** in the caller's [`Download`]: a dropped connection is
//!   tried again here a few times, and when the call gives up, the next call (the worker's
//!   retry) starts at [`Download::len`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use grammers_client::media::{Downloadable, Media};
use grammers_mtsender::InvocationError;
use grammers_session::Session;
use grammers_tl_types as tl;

use super::{errors, Shared};
use crate::daemon::download::Download;
use crate::daemon::messenger::{ChatId, MessengerError, MsgId};

/// Smallest part, and the unit offsets are kept aligned to (Telegram's rule for
/// `upload.getFile` without `precise`).
pub const MIN_PART: i32 = 4 * 1024;
/// Largest part Telegram serves.
pub const MAX_PART: i32 = 512 * 1024;
/// The first part's size, before anything is known of the link: one part for most voice
/// messages, and 35 kbit/s enough for it to arrive within a 30 s deadline.
pub const FIRST_PART: i32 = 128 * 1024;
/// Missed deadlines in a row after which the connection is taken for dead.
pub const MISSES_BEFORE_RECONNECT: u32 = 2;
/// Missed deadlines in a row after which this call gives up (the caller retries later, from
/// the bytes received).
const MISSES_BEFORE_GIVING_UP: u32 = 4;
/// Network errors (a dropped connection) tried again here before giving up.
const NETWORK_RETRIES: u32 = 3;
/// Pause before such a retry: grammers notices the dead connection meanwhile.
const NETWORK_PAUSE: Duration = Duration::from_millis(500);
/// FILE_REFERENCE_* refusals in a row (each after fetching the message again) before giving
/// up.
const REFERENCE_RENEWALS: u32 = 2;
/// FILE_MIGRATE redirections in one call before giving up.
const MIGRATIONS: u32 = 3;

/// How long a new connection to another data center may take: twice the request deadline,
/// since on Telegram it includes the key exchange (several round trips and the client's
/// factorisation, seconds on a small board) and `initConnection`.
pub fn connect_deadline(request: Duration) -> Duration {
    request * 2
}

/// The size of the next part, from how fast the link has been.
#[derive(Debug, Clone)]
pub struct PartSize {
    /// The size wanted for the next part (before alignment).
    size: i32,
    /// The request deadline the parts are sized for.
    deadline: Duration,
}

impl PartSize {
    pub fn new(deadline: Duration) -> Self {
        PartSize {
            size: FIRST_PART,
            deadline,
        }
    }

    /// The part to ask for at `offset`: the wanted size, halved until `offset` is a multiple
    /// of it, which keeps every part inside one 1 MiB block as Telegram requires.
    pub fn at(&self, offset: i64) -> i32 {
        let mut size = self.size;
        while size > MIN_PART && offset % i64::from(size) != 0 {
            size /= 2;
        }
        size
    }

    /// A part of `bytes` bytes took `took`: the next one is sized to take about a quarter of
    /// the deadline at that speed, growing at most twofold per part.
    pub fn took(&mut self, took: Duration, bytes: usize) {
        let target = self.deadline.as_secs_f64() / 4.0;
        let speed = bytes as f64 / took.as_secs_f64().max(1e-3);
        let fits = (speed * target).min(f64::from(MAX_PART)) as i32;
        let mut size = MIN_PART;
        while size * 2 <= fits && size * 2 <= self.size * 2 && size < MAX_PART {
            size *= 2;
        }
        self.size = size.clamp(MIN_PART, MAX_PART);
    }

    /// A part missed its deadline: the next try asks for a quarter as much.
    pub fn missed(&mut self) {
        self.size = (self.size / 4).max(MIN_PART);
    }
}

/// The message's media, fetched (again) from Telegram.
async fn media_of(shared: &Shared, chat: ChatId, id: MsgId) -> Result<Media, MessengerError> {
    let message = shared
        .message(chat, id)
        .await?
        .ok_or(MessengerError::NotFound)?;
    message.media().ok_or_else(|| {
        MessengerError::Rejected(format!("message {id} in chat {chat} has no media"))
    })
}

/// Downloads the media of message `id` in `chat` into `into`, from `into.len()` on (see the
/// module docs); returns the file's size.
pub(super) async fn download(
    shared: &Shared,
    chat: ChatId,
    id: MsgId,
    into: &mut Download,
) -> Result<u64, MessengerError> {
    let write = |e: std::io::Error| MessengerError::Rejected(format!("keeping the download: {e}"));
    let media = media_of(shared, chat, id).await?;
    if let Some(data) = media.to_data() {
        into.truncate(0).map_err(write)?;
        into.append(&data).map_err(write)?;
        return Ok(into.len());
    }
    let mut location = media
        .to_raw_input_location()
        .ok_or_else(|| MessengerError::Rejected("the media cannot be downloaded".into()))?;
    let size = media.size().map(|s| s as i64);
    let home = shared
        .session
        .home_dc_id()
        .map_err(|e| MessengerError::Network(format!("session: {e}")))?;
    let mut dc = media.dc_id().unwrap_or(home);
    let deadline = shared.options.request_timeout;

    // Go on from what an earlier try received, at an offset Telegram accepts.
    let mut offset = into.len() as i64 / i64::from(MIN_PART) * i64::from(MIN_PART);
    into.truncate(offset as u64).map_err(write)?;
    if offset > 0 {
        log::info!("chat {chat} message {id}: download goes on at byte {offset}");
    }
    if size.is_some_and(|s| s > 0 && offset >= s) {
        return Ok(into.len());
    }

    let mut part = PartSize::new(deadline);
    let mut opened: Option<i32> = None;
    let mut authorized: Vec<i32> = Vec::new();
    let (mut misses, mut failures, mut renewals, mut migrations) = (0u32, 0u32, 0u32, 0u32);
    loop {
        if dc != home && opened != Some(dc) {
            open_dc(shared, dc).await?;
            opened = Some(dc);
        }
        let limit = part.at(offset);
        let request = tl::functions::upload::GetFile {
            precise: false,
            cdn_supported: false,
            location: location.clone(),
            offset,
            limit,
        };
        let client = shared.client();
        let started = Instant::now();
        let answer = tokio::time::timeout(deadline, client.invoke_in_dc(dc, &request)).await;
        match answer {
            Err(_) => {
                misses += 1;
                part.missed();
                log::warn!(
                    "chat {chat} message {id}: no part at byte {offset} within {deadline:?} \
                     ({misses} in a row); asking again for {} KiB",
                    part.at(offset) / 1024
                );
                if misses >= MISSES_BEFORE_GIVING_UP {
                    return Err(MessengerError::Network(format!(
                        "no part of the file within {deadline:?}, {misses} times in a row"
                    )));
                }
                if misses % MISSES_BEFORE_RECONNECT == 0 {
                    reconnect(shared, dc, home).await;
                    opened = None;
                }
            }
            Ok(Ok(tl::enums::upload::File::File(f))) => {
                (misses, failures, renewals) = (0, 0, 0);
                part.took(started.elapsed(), f.bytes.len());
                into.append(&f.bytes).map_err(write)?;
                offset += f.bytes.len() as i64;
                let end = size.is_some_and(|s| offset >= s);
                if end || f.bytes.len() < limit as usize {
                    return Ok(into.len());
                }
            }
            Ok(Ok(tl::enums::upload::File::CdnRedirect(_))) => {
                return Err(MessengerError::Rejected(
                    "Telegram redirected the download to a CDN it was told is unsupported".into(),
                ));
            }
            Ok(Err(InvocationError::Rpc(e))) if e.name == "AUTH_KEY_UNREGISTERED" && dc != home => {
                if authorized.contains(&dc) {
                    return Err(MessengerError::Rejected(format!(
                        "data center {dc} refused the authorization handed over to it"
                    )));
                }
                authorize(shared, home, dc).await?;
                authorized.push(dc);
            }
            Ok(Err(InvocationError::Rpc(e))) if e.code == 303 && e.value.is_some() => {
                migrations += 1;
                if migrations > MIGRATIONS {
                    return Err(MessengerError::Rejected(format!("download: {}", e.name)));
                }
                dc = e.value.map(|v| v as i32).unwrap_or(home);
                log::info!("chat {chat} message {id}: the file is on data center {dc}");
            }
            Ok(Err(InvocationError::Rpc(e))) if e.name.starts_with("FILE_REFERENCE_") => {
                renewals += 1;
                if renewals > REFERENCE_RENEWALS {
                    return Err(MessengerError::Rejected(e.name.clone()));
                }
                log::info!(
                    "chat {chat} message {id}: {} at byte {offset}; fetching the message again",
                    e.name
                );
                location = media_of(shared, chat, id)
                    .await?
                    .to_raw_input_location()
                    .ok_or_else(|| {
                        MessengerError::Rejected("the media cannot be downloaded".into())
                    })?;
            }
            Ok(Err(e)) => {
                let e = errors::classify(&e);
                if !matches!(e, MessengerError::Network(_)) || failures >= NETWORK_RETRIES {
                    return Err(e);
                }
                failures += 1;
                log::warn!("chat {chat} message {id}: {e} at byte {offset}; trying again");
                tokio::time::sleep(NETWORK_PAUSE).await;
            }
        }
    }
}

/// Opens the connection to data center `dc` with a request of its own (`help.getNearestDc`,
/// answered with or without authorization) under [`connect_deadline`], so that the next
/// part's deadline covers the part alone.
///
/// grammers opens a connection inside its pool task and serves no other request until the
/// new connection answered; a data center that never answers freezes the whole pool. A missed
/// deadline here therefore marks the pool stalled (it is rebuilt), as for any frozen request.
async fn open_dc(shared: &Shared, dc: i32) -> Result<(), MessengerError> {
    let limit = connect_deadline(shared.options.request_timeout);
    let client = shared.client();
    let request = tl::functions::help::GetNearestDc {};
    match tokio::time::timeout(limit, client.invoke_in_dc(dc, &request)).await {
        Err(_) => {
            shared.mark_stalled();
            Err(MessengerError::Network(format!(
                "no connection to data center {dc} within {limit:?}"
            )))
        }
        // Any answer means the connection is up.
        Ok(Ok(_)) | Ok(Err(InvocationError::Rpc(_))) => Ok(()),
        Ok(Err(e)) => Err(errors::classify(&e)),
    }
}

/// Hands the owner's authorization from the home data center to `dc`, each request under
/// the request deadline of its own.
async fn authorize(shared: &Shared, home: i32, dc: i32) -> Result<(), MessengerError> {
    let deadline = shared.options.request_timeout;
    let missed =
        |what: &str| MessengerError::Network(format!("no answer to {what} within {deadline:?}"));
    let client = shared.client();
    let export = tl::functions::auth::ExportAuthorization { dc_id: dc };
    let tl::enums::auth::ExportedAuthorization::Authorization(exported) =
        tokio::time::timeout(deadline, client.invoke_in_dc(home, &export))
            .await
            .map_err(|_| missed("auth.exportAuthorization"))?
            .map_err(|e| errors::classify(&e))?;
    let import = tl::functions::auth::ImportAuthorization {
        id: exported.id,
        bytes: exported.bytes,
    };
    tokio::time::timeout(deadline, client.invoke_in_dc(dc, &import))
        .await
        .map_err(|_| missed("auth.importAuthorization"))?
        .map_err(|e| match errors::classify(&e) {
            // Refused by the media data center: not a sign that the login itself is gone.
            MessengerError::Unauthorized(why) => {
                MessengerError::Rejected(format!("data center {dc}: {why}"))
            }
            other => other,
        })?;
    log::info!("authorization handed over to data center {dc}");
    Ok(())
}

/// The connection to `dc` stopped answering: close it if it is not the home one (the next
/// request opens a new one), else mark the pool stalled, so the update stream rebuilds it and
/// catches up on what the dead connection would have brought, and wait (at most the connect
/// deadline) for the new pool, which the next part then uses.
async fn reconnect(shared: &Shared, dc: i32, home: i32) {
    if dc == home {
        log::warn!("the home connection stopped answering; reconnecting");
        shared.mark_stalled();
        let until = Instant::now() + connect_deadline(shared.options.request_timeout);
        while shared.stalled.load(Ordering::SeqCst) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        log::warn!("the connection to data center {dc} stopped answering; closing it");
        shared.disconnect_from_dc(dc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(30);

    #[test]
    fn parts_stay_aligned_to_their_size() {
        let mut p = PartSize::new(D);
        p.size = MAX_PART;
        assert_eq!(p.at(0), MAX_PART);
        assert_eq!(p.at(128 * 1024), 128 * 1024);
        assert_eq!(p.at(4096), MIN_PART);
        assert_eq!(p.at(3 * 512 * 1024), MAX_PART);
        for offset in (0..64).map(|i| i * 12 * 1024) {
            let size = i64::from(p.at(offset));
            assert_eq!(offset % size, 0);
            assert_eq!(offset / (1 << 20), (offset + size - 1) / (1 << 20));
        }
    }

    #[test]
    fn parts_grow_on_a_fast_link_and_shrink_on_a_slow_one() {
        let mut p = PartSize::new(D);
        assert_eq!(p.at(0), FIRST_PART);
        p.took(Duration::from_millis(50), FIRST_PART as usize);
        assert_eq!(p.size, 2 * FIRST_PART, "grows at most twofold");
        p.took(Duration::from_millis(50), 2 * FIRST_PART as usize);
        assert_eq!(p.size, MAX_PART);
        p.took(Duration::from_millis(50), MAX_PART as usize);
        assert_eq!(p.size, MAX_PART, "never past the largest part");
        // 2 KB/s: a quarter of 30 s holds 15 KB, so 8 KiB parts.
        p.took(Duration::from_secs(256), MAX_PART as usize);
        assert_eq!(p.size, 8 * 1024);
        p.missed();
        assert_eq!(p.size, MIN_PART);
        p.missed();
        assert_eq!(p.size, MIN_PART);
    }
}
