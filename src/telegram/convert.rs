//! grammers messages → the daemon's [`Incoming`].
//!
//! The daemon sees a message as plain data: chat and message ids, who wrote it, its text, and
//! whether it carries audio worth transcribing. This module reads those out of grammers'
//! message type, including the one non-obvious part: telling a voice message, a round video
//! and an audio file apart by the attributes of the attached document.

use grammers_client::media::Media as TgMedia;
use grammers_client::message::Message;
use grammers_client::peer::Peer;
use grammers_session::types::{PeerId, PeerKind};
use grammers_tl_types as tl;

use crate::daemon::messenger::{Incoming, Media, MediaKind, UserId};

/// Who the owner is, for messages grammers attributes to the "self" placeholder.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    /// The owner's user id (0 until known).
    pub id: UserId,
    /// The owner's display name.
    pub name: String,
}

/// Converts one message. `None` for an empty (deleted) message.
pub fn incoming(message: &Message, owner: &Owner) -> Option<Incoming> {
    let raw = match &message.raw {
        tl::enums::Message::Empty(_) => return None,
        tl::enums::Message::Message(m) => Some(m),
        tl::enums::Message::Service(_) => None,
    };
    let chat = message.peer_id().bot_api_dialog_id().unwrap_or(owner.id);
    let sender = sender_id(message.sender_id(), owner);
    let sender_name = match (message.sender(), sender) {
        (_, Some(id)) if id == owner.id => owner.name.clone(),
        (Some(Peer::User(user)), _) => user.full_name(),
        (Some(peer), _) => peer.name().unwrap_or_default().to_string(),
        (None, Some(id)) => format!("user {id}"),
        (None, None) => String::new(),
    };
    Some(Incoming {
        chat,
        id: message.id(),
        sender,
        sender_name,
        outgoing: message.outgoing(),
        text: message.text().to_string(),
        media: message.media().as_ref().and_then(audio_of),
        reply_to: raw.and_then(same_chat_reply),
    })
}

/// The author as a user id; `None` for channel posts and anonymous admins (who write as the
/// channel or group itself).
fn sender_id(sender: Option<PeerId>, owner: &Owner) -> Option<UserId> {
    let sender = sender?;
    if sender == PeerId::self_user() {
        return Some(owner.id);
    }
    match sender.kind() {
        PeerKind::User => sender.bot_api_dialog_id(),
        PeerKind::Chat | PeerKind::Channel => None,
    }
}

/// The replied-to message id, when it is in the same chat (replies can quote other chats).
///
/// In a forum topic every message carries a reply header with `forum_topic` set: one that is
/// merely posted in the topic names the topic's first message as `reply_to_msg_id` and
/// nothing else, a real reply names the message it answers there and the topic in
/// `reply_to_top_id`. Only the latter is a reply. (A reply to the topic's first message
/// itself looks like the former and is taken as no reply.)
fn same_chat_reply(message: &tl::types::Message) -> Option<i32> {
    match &message.reply_to {
        Some(tl::enums::MessageReplyHeader::Header(h)) if h.reply_to_peer_id.is_none() => {
            if h.forum_topic && h.reply_to_top_id.is_none() {
                return None;
            }
            h.reply_to_msg_id
        }
        _ => None,
    }
}

/// The audio a message carries, if any.
pub fn audio_of(media: &TgMedia) -> Option<Media> {
    let TgMedia::Document(document) = media else {
        return None;
    };
    let Some(tl::enums::Document::Document(doc)) = &document.raw.document else {
        return None;
    };
    classify_document(doc)
}

/// Voice message, round video or audio file, from the document's attributes. A plain file
/// whose MIME type is audio (sent "as file") counts as an audio file of unknown duration.
fn classify_document(doc: &tl::types::Document) -> Option<Media> {
    let size = u64::try_from(doc.size).unwrap_or(0);
    let mut found = None;
    for attribute in &doc.attributes {
        match attribute {
            tl::enums::DocumentAttribute::Audio(a) => {
                let kind = if a.voice {
                    MediaKind::Voice
                } else {
                    MediaKind::Audio
                };
                found = Some((kind, f64::from(a.duration)));
            }
            tl::enums::DocumentAttribute::Video(v) if v.round_message => {
                found = Some((MediaKind::VideoNote, v.duration));
            }
            _ => {}
        }
        if matches!(found, Some((MediaKind::Voice | MediaKind::VideoNote, _))) {
            break;
        }
    }
    let (kind, duration_s) = match found {
        Some(found) => found,
        None if doc.mime_type.starts_with("audio/") => (MediaKind::Audio, 0.0),
        None => return None,
    };
    Some(Media {
        kind,
        duration_s,
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(mime: &str, attributes: Vec<tl::enums::DocumentAttribute>) -> tl::types::Document {
        tl::types::Document {
            id: 1,
            access_hash: 2,
            file_reference: vec![],
            date: 0,
            mime_type: mime.into(),
            size: 12_345,
            thumbs: None,
            video_thumbs: None,
            dc_id: 2,
            attributes,
        }
    }

    fn audio(voice: bool, duration: i32) -> tl::enums::DocumentAttribute {
        tl::types::DocumentAttributeAudio {
            voice,
            duration,
            title: None,
            performer: None,
            waveform: None,
        }
        .into()
    }

    fn video(round: bool, duration: f64) -> tl::enums::DocumentAttribute {
        tl::types::DocumentAttributeVideo {
            round_message: round,
            supports_streaming: false,
            nosound: false,
            duration,
            w: 384,
            h: 384,
            preload_prefix_size: None,
            video_start_ts: None,
            video_codec: None,
        }
        .into()
    }

    #[test]
    fn voice_round_video_and_audio_file_are_told_apart() {
        let voice = classify_document(&document("audio/ogg", vec![audio(true, 7)])).unwrap();
        assert_eq!(
            voice,
            Media {
                kind: MediaKind::Voice,
                duration_s: 7.0,
                size: 12_345
            }
        );
        let round = classify_document(&document("video/mp4", vec![video(true, 3.5)])).unwrap();
        assert_eq!((round.kind, round.duration_s), (MediaKind::VideoNote, 3.5));
        let song = classify_document(&document("audio/mpeg", vec![audio(false, 200)])).unwrap();
        assert_eq!((song.kind, song.duration_s), (MediaKind::Audio, 200.0));
        let as_file = classify_document(&document("audio/flac", vec![])).unwrap();
        assert_eq!((as_file.kind, as_file.duration_s), (MediaKind::Audio, 0.0));
    }

    #[test]
    fn ordinary_videos_and_files_carry_no_audio_job() {
        assert_eq!(
            classify_document(&document("video/mp4", vec![video(false, 10.0)])),
            None
        );
        assert_eq!(
            classify_document(&document("application/pdf", vec![])),
            None
        );
    }

    #[test]
    fn self_placeholder_becomes_the_owner() {
        let owner = Owner {
            id: 42,
            name: "Me".into(),
        };
        assert_eq!(sender_id(Some(PeerId::self_user()), &owner), Some(42));
        assert_eq!(sender_id(PeerId::user(7), &owner), Some(7));
        assert_eq!(sender_id(PeerId::channel(7), &owner), None);
        assert_eq!(sender_id(None, &owner), None);
    }
}
