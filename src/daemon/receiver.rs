//! The receiver: what happens to each message the moment it arrives.
//!
//! [`supervisor::supervise`](super::supervisor::supervise) hands every incoming message to
//! [`Daemon::on_message`]. The owner's own messages may be commands (answered through
//! [`commands`]); a tracked person's voice message, video message or audio
//! file becomes a job in the [`spool`](super::spool) and wakes the worker. Nothing slow happens
//! here — no download, no inference — so the update stream is drained as fast as Telegram
//! fills it, and a crash after this point loses nothing: the job is on disk.

use std::rc::Rc;

use super::commands;
use super::messenger::{Incoming, MediaKind, Messenger, MsgId};
use super::spool::{Added, Key, Origin, SpoolError};
use super::Daemon;

impl Daemon {
    fn media_enabled(&self, kind: MediaKind) -> bool {
        let t = &self.config.transcribe;
        match kind {
            MediaKind::Voice => t.voice,
            MediaKind::VideoNote => t.video_notes,
            MediaKind::Audio => t.audio_files,
        }
    }

    pub(super) fn enqueue(
        &self,
        key: Key,
        origin: Origin,
        placeholder: Option<MsgId>,
    ) -> Result<Added, SpoolError> {
        let added = self.spool.borrow_mut().add(key, origin, placeholder)?;
        if added == Added::New {
            self.wake.notify_one();
        }
        Ok(added)
    }

    /// The receiver's work for one incoming message.
    pub async fn on_message<M: Messenger + Clone + 'static>(self: &Rc<Self>, tg: &M, m: Incoming) {
        if m.outgoing && self.sent.borrow().contains(&(m.chat, m.id)) {
            return;
        }
        if m.outgoing {
            if let Some(cmd) = commands::parse(&m.text) {
                self.run_command(tg, &m, cmd).await;
                return;
            }
        }
        let Some(media) = &m.media else { return };
        if !self.media_enabled(media.kind) {
            return;
        }
        let wanted = if m.outgoing {
            self.config.transcribe.own_messages
        } else {
            m.sender.is_some_and(|s| self.state.borrow().is_tracked(s))
        };
        if !wanted {
            return;
        }
        let key = Key {
            chat: m.chat,
            msg: m.id,
        };
        match self.enqueue(key, Origin::Auto, None) {
            Ok(Added::New) => log::info!(
                "queued {} {key} from {} ({:.0} s)",
                media.kind.label(),
                m.sender_name,
                media.duration_s
            ),
            Ok(other) => log::debug!("{key} already {other:?}"),
            Err(e) => {
                log::error!("cannot queue {key}: {e}");
                self.stats.borrow_mut().last_error = Some(e.to_string());
            }
        }
    }
}
