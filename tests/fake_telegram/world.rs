//! What the fake data center knows: the accounts, chats, messages and files of a scenario, the
//! update positions (`pts`) and the log of updates that `updates.getDifference` replays, and
//! the Telegram objects (TL) built from them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use grammers_tl_types as tl;

use super::scenario::{self, AudioKind, ChatKind, Scenario};

/// Seconds since the epoch, as Telegram dates are.
pub fn now() -> i32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i32)
        .unwrap_or(0)
}

/// Where a message is, seen from the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The private chat with this user (the owner's own id: Saved Messages).
    User(i64),
    /// A basic group.
    Chat(i64),
    /// A supergroup.
    Channel(i64),
}

impl Peer {
    pub fn tl(self) -> tl::enums::Peer {
        match self {
            Peer::User(user_id) => tl::types::PeerUser { user_id }.into(),
            Peer::Chat(chat_id) => tl::types::PeerChat { chat_id }.into(),
            Peer::Channel(channel_id) => tl::types::PeerChannel { channel_id }.into(),
        }
    }

    /// As the daemon names chats (Bot API dialog ids).
    pub fn dialog_id(self) -> i64 {
        match self {
            Peer::User(id) => id,
            Peer::Chat(id) => -id,
            Peer::Channel(id) => -1_000_000_000_000 - id,
        }
    }
}

/// An audio document and the bytes it is served from.
#[derive(Debug, Clone)]
pub struct Doc {
    pub id: i64,
    pub access_hash: i64,
    pub file_reference: Vec<u8>,
    /// Where the file is served.
    pub dc: i32,
    /// The `dc_id` the document names (another one makes the client meet FILE_MIGRATE).
    pub listed_dc: i32,
    pub mime_type: String,
    pub duration_s: f64,
    pub kind: AudioKind,
    pub bytes: Arc<Vec<u8>>,
}

/// A stored message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub id: i32,
    pub peer: Peer,
    /// The author's user id.
    pub from: i64,
    pub out: bool,
    pub text: String,
    pub reply_to: Option<i32>,
    pub date: i32,
    pub edit_date: Option<i32>,
    pub media: Option<Doc>,
    /// The forum topic (its first message's id) the message is posted in.
    pub topic: Option<i32>,
}

/// One supergroup's own message ids, `pts` and update log.
#[derive(Debug, Default)]
pub struct ChannelBox {
    pub pts: i32,
    pub next_id: i32,
    pub log: Vec<(i32, tl::enums::Update)>,
}

/// Everything the server knows.
pub struct World {
    pub scenario: Scenario,
    pub home_dc: i32,
    /// The account's update position (private chats and basic groups).
    pub pts: i32,
    pub qts: i32,
    /// Updates of the account's box, by the `pts` they end at, for `updates.getDifference`.
    pub log: Vec<(i32, tl::enums::Update)>,
    pub channels: HashMap<i64, ChannelBox>,
    pub messages: Vec<Msg>,
    /// Next message id in the account's box.
    pub next_id: i32,
    next_doc_id: i64,
    /// Calls so far, by method name (for faults).
    pub calls: HashMap<String, u32>,
    /// Data centers where the owner is logged in (the home one; others after
    /// `auth.importAuthorization`).
    pub authorized: Vec<i32>,
    /// Authorizations exported for other data centers: (data center, bytes).
    pub exported: Vec<(i32, Vec<u8>)>,
    /// `random_id`s of the messages the owner sent, with the message they made: Telegram
    /// refuses a second message with the same one (RANDOM_ID_DUPLICATE).
    pub random_ids: HashMap<i64, (Peer, i32)>,
    /// File references that expired (a FILE_REFERENCE_EXPIRED fault): `upload.getFile` with one
    /// of them answers FILE_REFERENCE_EXPIRED until the client fetches the message again.
    pub expired_references: Vec<Vec<u8>>,
    /// Where a login (`[login]` in the scenario) stands.
    pub sign_in: SignIn,
}

/// A login in progress.
#[derive(Debug, Default)]
pub struct SignIn {
    /// Codes sent so far.
    pub codes_sent: u32,
    /// The hash of the latest code sent, until it is used.
    pub code_hash: Option<String>,
    /// The latest code has expired.
    pub code_expired: bool,
    /// The data center whose key passed the code and waits for the cloud password.
    pub password_dc: Option<i32>,
    /// Every password challenge handed out.
    pub challenges: Vec<super::srp::Challenge>,
}

impl World {
    /// The world at the moment the session is written: offline messages already delivered.
    pub fn new(scenario: Scenario) -> Result<World, String> {
        let home_dc = scenario.server.home_dc;
        let pts = scenario.server.pts;
        let scenario_login = scenario.login.is_some();
        let mut channels = HashMap::new();
        for c in scenario
            .chats
            .iter()
            .filter(|c| c.kind == ChatKind::Supergroup)
        {
            channels.insert(
                c.id,
                ChannelBox {
                    pts: c.pts,
                    next_id: 1,
                    log: Vec::new(),
                },
            );
        }
        let mut world = World {
            scenario,
            home_dc,
            pts,
            qts: 0,
            log: Vec::new(),
            channels,
            messages: Vec::new(),
            next_id: 1,
            next_doc_id: 5_000_000_000_000_000_001,
            calls: HashMap::new(),
            // With a login still to make, the owner is logged in nowhere yet.
            authorized: if scenario_login {
                Vec::new()
            } else {
                vec![home_dc]
            },
            exported: Vec::new(),
            random_ids: HashMap::new(),
            expired_references: Vec::new(),
            sign_in: SignIn::default(),
        };
        let offline: Vec<scenario::Message> = world
            .scenario
            .messages
            .iter()
            .filter(|m| m.delivery == scenario::Delivery::Offline)
            .cloned()
            .collect();
        for m in &offline {
            world.deliver(m)?;
        }
        Ok(world)
    }

    /// The channel box of a supergroup, created on first use.
    fn channel(&mut self, id: i64) -> &mut ChannelBox {
        self.channels.entry(id).or_insert_with(|| ChannelBox {
            pts: 1,
            next_id: 1,
            log: Vec::new(),
        })
    }

    pub fn owner_id(&self) -> i64 {
        self.scenario.owner.id
    }

    /// The user with this scenario key ("owner" for the owner).
    pub fn user_id(&self, key: &str) -> Option<i64> {
        if key == "owner" {
            return Some(self.owner_id());
        }
        self.scenario
            .users
            .iter()
            .find(|u| u.key == key)
            .map(|u| u.id)
    }

    /// The chat a scenario key names.
    pub fn peer_of_key(&self, key: &str) -> Option<Peer> {
        if key == "self" {
            return Some(Peer::User(self.owner_id()));
        }
        if let Some(id) = self.user_id(key) {
            return Some(Peer::User(id));
        }
        self.scenario
            .chats
            .iter()
            .find(|c| c.key == key)
            .map(|c| match c.kind {
                ChatKind::Group => Peer::Chat(c.id),
                ChatKind::Supergroup => Peer::Channel(c.id),
            })
    }

    /// Resolves what the client named, checking access hashes where Telegram would.
    pub fn peer_of_input(&self, peer: &tl::enums::InputPeer) -> Result<Peer, &'static str> {
        match peer {
            tl::enums::InputPeer::PeerSelf => Ok(Peer::User(self.owner_id())),
            tl::enums::InputPeer::User(u) => {
                if u.user_id == self.owner_id() {
                    return Ok(Peer::User(u.user_id));
                }
                match self.scenario.users.iter().find(|x| x.id == u.user_id) {
                    Some(x) if x.access_hash == u.access_hash => Ok(Peer::User(x.id)),
                    _ => Err("PEER_ID_INVALID"),
                }
            }
            tl::enums::InputPeer::Chat(c) => self
                .scenario
                .chats
                .iter()
                .find(|x| x.kind == ChatKind::Group && x.id == c.chat_id)
                .map(|x| Peer::Chat(x.id))
                .ok_or("PEER_ID_INVALID"),
            tl::enums::InputPeer::Channel(c) => self
                .scenario
                .chats
                .iter()
                .find(|x| x.kind == ChatKind::Supergroup && x.id == c.channel_id)
                .filter(|x| x.access_hash == c.access_hash)
                .map(|x| Peer::Channel(x.id))
                .ok_or("CHANNEL_INVALID"),
            _ => Err("PEER_ID_INVALID"),
        }
    }

    /// The supergroup an `InputChannel` names.
    pub fn channel_of_input(&self, channel: &tl::enums::InputChannel) -> Result<i64, &'static str> {
        match channel {
            tl::enums::InputChannel::Channel(c) => self
                .scenario
                .chats
                .iter()
                .find(|x| x.kind == ChatKind::Supergroup && x.id == c.channel_id)
                .filter(|x| x.access_hash == c.access_hash)
                .map(|x| x.id)
                .ok_or("CHANNEL_INVALID"),
            _ => Err("CHANNEL_INVALID"),
        }
    }

    /// Adds a scenario message: gives it an id and a `pts`, logs its update, and returns the
    /// update to push.
    pub fn deliver(&mut self, m: &scenario::Message) -> Result<tl::enums::Update, String> {
        let peer = self
            .peer_of_key(&m.chat)
            .ok_or_else(|| format!("unknown chat {:?}", m.chat))?;
        let from = match (&m.from, peer) {
            (Some(key), _) => self
                .user_id(key)
                .ok_or_else(|| format!("unknown sender {key:?}"))?,
            (None, Peer::User(id)) => id,
            (None, _) => return Err(format!("a message in {:?} needs `from`", m.chat)),
        };
        let media = match &m.voice {
            Some(v) => Some(self.document(v)?),
            None => None,
        };
        let msg = Msg {
            id: m.id.unwrap_or(0),
            peer,
            from,
            out: from == self.owner_id(),
            text: m.text.clone(),
            reply_to: m.reply_to,
            date: now(),
            edit_date: None,
            media,
            topic: m.topic,
        };
        Ok(self.add_message(msg))
    }

    /// Stores a message (id 0: the next free one) and returns its `updateNew*Message`.
    pub fn add_message(&mut self, mut msg: Msg) -> tl::enums::Update {
        match msg.peer {
            Peer::Channel(id) => {
                let b = self.channel(id);
                if msg.id == 0 {
                    msg.id = b.next_id;
                }
                b.next_id = b.next_id.max(msg.id + 1);
                b.pts += 1;
                let pts = b.pts;
                let update: tl::enums::Update = tl::types::UpdateNewChannelMessage {
                    message: self.tl_message(&msg),
                    pts,
                    pts_count: 1,
                }
                .into();
                self.channel(id).log.push((pts, update.clone()));
                self.messages.push(msg);
                update
            }
            _ => {
                if msg.id == 0 {
                    msg.id = self.next_id;
                }
                self.next_id = self.next_id.max(msg.id + 1);
                self.pts += 1;
                let update: tl::enums::Update = tl::types::UpdateNewMessage {
                    message: self.tl_message(&msg),
                    pts: self.pts,
                    pts_count: 1,
                }
                .into();
                self.log.push((self.pts, update.clone()));
                self.messages.push(msg);
                update
            }
        }
    }

    /// Hands a stored message out once more under a new update position, as Telegram's
    /// catch-up can (a second update for the same message id); the message stays stored once.
    pub fn redeliver(&mut self, peer: Peer, id: i32) -> Result<tl::enums::Update, String> {
        let msg = self
            .messages
            .iter()
            .find(|m| m.peer == peer && m.id == id)
            .cloned()
            .ok_or_else(|| format!("no message {id} in {peer:?}"))?;
        let update = self.add_message(msg);
        self.messages.pop();
        Ok(update)
    }

    /// Deletes a stored message: `messages.getMessages` finds it no more.
    pub fn delete_message(&mut self, peer: Peer, id: i32) {
        self.messages.retain(|m| !(m.peer == peer && m.id == id));
    }

    /// Changes a message's text; returns its `updateEdit*Message`, or the RPC error.
    pub fn edit_message(
        &mut self,
        peer: Peer,
        id: i32,
        text: &str,
    ) -> Result<tl::enums::Update, &'static str> {
        let i = self
            .messages
            .iter()
            .position(|m| m.peer == peer && m.id == id)
            .ok_or("MESSAGE_ID_INVALID")?;
        if !self.messages[i].out {
            return Err("MESSAGE_AUTHOR_REQUIRED");
        }
        if self.messages[i].text == text {
            return Err("MESSAGE_NOT_MODIFIED");
        }
        self.messages[i].text = text.to_string();
        self.messages[i].edit_date = Some(now());
        let message = self.tl_message(&self.messages[i].clone());
        Ok(match peer {
            Peer::Channel(cid) => {
                let b = self.channel(cid);
                b.pts += 1;
                let pts = b.pts;
                let update: tl::enums::Update = tl::types::UpdateEditChannelMessage {
                    message,
                    pts,
                    pts_count: 1,
                }
                .into();
                self.channel(cid).log.push((pts, update.clone()));
                update
            }
            _ => {
                self.pts += 1;
                let update: tl::enums::Update = tl::types::UpdateEditMessage {
                    message,
                    pts: self.pts,
                    pts_count: 1,
                }
                .into();
                self.log.push((self.pts, update.clone()));
                update
            }
        })
    }

    fn document(&mut self, v: &scenario::Voice) -> Result<Doc, String> {
        let bytes = match v.size {
            Some(size) => scenario::generated_payload(size),
            None => std::fs::read(&v.file)
                .map_err(|e| format!("voice file {}: {e}", v.file.display()))?,
        };
        let id = self.next_doc_id;
        self.next_doc_id += 1;
        let mime_type = v.mime_type.clone().unwrap_or_else(|| {
            match v.kind {
                AudioKind::Voice => "audio/ogg",
                AudioKind::Audio => "audio/mpeg",
                AudioKind::VideoNote => "video/mp4",
            }
            .to_string()
        });
        Ok(Doc {
            id,
            access_hash: id ^ 0x5a5a_5a5a_5a5a,
            file_reference: id.to_le_bytes().to_vec(),
            dc: v.dc.unwrap_or(self.home_dc),
            listed_dc: v.listed_dc.or(v.dc).unwrap_or(self.home_dc),
            mime_type,
            duration_s: v.duration_s,
            kind: v.kind,
            bytes: Arc::new(bytes),
        })
    }

    /// Gives every document a new file reference and keeps the old ones as expired, as
    /// Telegram does after a while: only a message fetched again carries the new one.
    pub fn expire_file_references(&mut self) {
        for d in self.messages.iter_mut().filter_map(|m| m.media.as_mut()) {
            let old = std::mem::take(&mut d.file_reference);
            let mut new = old.clone();
            new.push(self.expired_references.len() as u8);
            d.file_reference = new;
            self.expired_references.push(old);
        }
    }

    /// A document by id, wherever it is attached.
    pub fn doc(&self, id: i64) -> Option<&Doc> {
        self.messages
            .iter()
            .filter_map(|m| m.media.as_ref())
            .find(|d| d.id == id)
    }

    pub fn message(&self, peer: Option<Peer>, id: i32) -> Option<&Msg> {
        self.messages.iter().find(|m| {
            m.id == id
                && match peer {
                    Some(p) => m.peer == p,
                    // The account's box: private chats and basic groups share ids.
                    None => !matches!(m.peer, Peer::Channel(_)),
                }
        })
    }

    // ---- TL objects -------------------------------------------------------------------------

    /// `updates.state` now.
    pub fn state(&self) -> tl::types::updates::State {
        tl::types::updates::State {
            pts: self.pts,
            qts: self.qts,
            date: now(),
            seq: 0,
            unread_count: 0,
        }
    }

    /// The `user` object for an id, as the owner sees it.
    pub fn tl_user(&self, id: i64) -> tl::enums::User {
        let o = &self.scenario.owner;
        let (is_self, contact, access_hash, first, last, username, phone) = if id == o.id {
            (
                true,
                false,
                o.access_hash,
                o.first_name.clone(),
                o.last_name.clone(),
                o.username.clone(),
                o.phone.clone(),
            )
        } else if let Some(u) = self.scenario.users.iter().find(|u| u.id == id) {
            (
                false,
                u.contact,
                u.access_hash,
                u.first_name.clone(),
                u.last_name.clone(),
                u.username.clone(),
                None,
            )
        } else {
            return tl::types::UserEmpty { id }.into();
        };
        tl::types::User {
            is_self,
            contact,
            mutual_contact: contact,
            deleted: false,
            bot: false,
            bot_chat_history: false,
            bot_nochats: false,
            verified: false,
            restricted: false,
            min: false,
            bot_inline_geo: false,
            support: false,
            scam: false,
            apply_min_photo: false,
            fake: false,
            bot_attach_menu: false,
            premium: false,
            attach_menu_enabled: false,
            bot_can_edit: false,
            close_friend: false,
            stories_hidden: false,
            stories_unavailable: false,
            contact_require_premium: false,
            bot_business: false,
            bot_has_main_app: false,
            bot_forum_view: false,
            bot_forum_can_manage_topics: false,
            bot_can_manage_bots: false,
            bot_guestchat: false,
            bot_guard: false,
            id,
            access_hash: Some(access_hash),
            first_name: Some(first),
            last_name: last,
            username,
            phone,
            photo: None,
            status: Some(tl::types::UserStatusRecently { by_me: false }.into()),
            bot_info_version: None,
            restriction_reason: None,
            bot_inline_placeholder: None,
            lang_code: None,
            emoji_status: None,
            usernames: None,
            stories_max_id: None,
            color: None,
            profile_color: None,
            bot_active_users: None,
            bot_verification_icon: None,
            send_paid_messages_stars: None,
            linked_community_id: None,
        }
        .into()
    }

    /// The `chat` or `channel` object of a group.
    pub fn tl_chat(&self, peer: Peer) -> Option<tl::enums::Chat> {
        let (id, kind) = match peer {
            Peer::User(_) => return None,
            Peer::Chat(id) => (id, ChatKind::Group),
            Peer::Channel(id) => (id, ChatKind::Supergroup),
        };
        let c = self
            .scenario
            .chats
            .iter()
            .find(|c| c.id == id && c.kind == kind)?;
        let photo: tl::enums::ChatPhoto = tl::enums::ChatPhoto::Empty;
        Some(match kind {
            ChatKind::Group => tl::types::Chat {
                creator: false,
                left: false,
                deactivated: false,
                call_active: false,
                call_not_empty: false,
                noforwards: false,
                id,
                title: c.title.clone(),
                photo,
                participants_count: c.members.len() as i32 + 1,
                date: now() - 86_400,
                version: 1,
                migrated_to: None,
                admin_rights: None,
                default_banned_rights: None,
            }
            .into(),
            ChatKind::Supergroup => tl::types::Channel {
                creator: false,
                left: false,
                broadcast: false,
                verified: false,
                megagroup: true,
                restricted: false,
                signatures: false,
                min: false,
                scam: false,
                has_link: false,
                has_geo: false,
                slowmode_enabled: false,
                call_active: false,
                call_not_empty: false,
                fake: false,
                gigagroup: false,
                noforwards: false,
                join_to_send: false,
                join_request: false,
                forum: c.forum,
                stories_hidden: false,
                stories_hidden_min: false,
                stories_unavailable: false,
                signature_profiles: false,
                autotranslation: false,
                broadcast_messages_allowed: false,
                monoforum: false,
                forum_tabs: false,
                id,
                access_hash: Some(c.access_hash),
                title: c.title.clone(),
                username: None,
                photo,
                date: now() - 86_400,
                restriction_reason: None,
                admin_rights: None,
                banned_rights: None,
                default_banned_rights: None,
                participants_count: Some(c.members.len() as i32 + 1),
                usernames: None,
                stories_max_id: None,
                color: None,
                profile_color: None,
                emoji_status: None,
                level: None,
                subscription_until_date: None,
                bot_verification_icon: None,
                send_paid_messages_stars: None,
                linked_monoforum_id: None,
                linked_community_id: None,
            }
            .into(),
        })
    }

    /// Users and chats a list of messages refers to (the owner always included).
    pub fn peers_of<'a>(
        &self,
        msgs: impl IntoIterator<Item = &'a Msg>,
    ) -> (Vec<tl::enums::User>, Vec<tl::enums::Chat>) {
        let mut users = vec![self.owner_id()];
        let mut chats = Vec::new();
        for m in msgs {
            if !users.contains(&m.from) {
                users.push(m.from);
            }
            match m.peer {
                Peer::User(id) if !users.contains(&id) => users.push(id),
                Peer::User(_) => {}
                p => {
                    if !chats.contains(&p) {
                        chats.push(p);
                    }
                }
            }
        }
        (
            users.into_iter().map(|id| self.tl_user(id)).collect(),
            chats.into_iter().filter_map(|p| self.tl_chat(p)).collect(),
        )
    }

    /// The stored message behind an update (for its peers).
    pub fn msg_of_update(&self, update: &tl::enums::Update) -> Option<&Msg> {
        let (message, channel) = match update {
            tl::enums::Update::NewMessage(u) => (&u.message, false),
            tl::enums::Update::EditMessage(u) => (&u.message, false),
            tl::enums::Update::NewChannelMessage(u) => (&u.message, true),
            tl::enums::Update::EditChannelMessage(u) => (&u.message, true),
            _ => return None,
        };
        let tl::enums::Message::Message(m) = message else {
            return None;
        };
        let peer = match (&m.peer_id, channel) {
            (tl::enums::Peer::Channel(c), true) => Some(Peer::Channel(c.channel_id)),
            _ => None,
        };
        self.message(peer, m.id)
    }

    /// The short form of a new text message's update (`updateShortMessage` /
    /// `updateShortChatMessage`); `None` where Telegram has no short form.
    pub fn short_updates(&self, update: &tl::enums::Update) -> Option<tl::enums::Updates> {
        let tl::enums::Update::NewMessage(u) = update else {
            return None;
        };
        let m = self.msg_of_update(update)?;
        if m.media.is_some() {
            return None;
        }
        let reply_to = match &u.message {
            tl::enums::Message::Message(raw) => raw.reply_to.clone(),
            _ => None,
        };
        Some(match m.peer {
            Peer::User(user_id) => tl::types::UpdateShortMessage {
                out: m.out,
                mentioned: false,
                media_unread: false,
                silent: false,
                id: m.id,
                user_id,
                message: m.text.clone(),
                pts: u.pts,
                pts_count: u.pts_count,
                date: m.date,
                fwd_from: None,
                via_bot_id: None,
                reply_to,
                entities: None,
                ttl_period: None,
            }
            .into(),
            Peer::Chat(chat_id) => tl::types::UpdateShortChatMessage {
                out: m.out,
                mentioned: false,
                media_unread: false,
                silent: false,
                id: m.id,
                from_id: m.from,
                chat_id,
                message: m.text.clone(),
                pts: u.pts,
                pts_count: u.pts_count,
                date: m.date,
                fwd_from: None,
                via_bot_id: None,
                reply_to,
                entities: None,
                ttl_period: None,
            }
            .into(),
            Peer::Channel(_) => return None,
        })
    }

    /// An `updates` object carrying these updates and their peers.
    pub fn updates(&self, updates: Vec<tl::enums::Update>) -> tl::enums::Updates {
        let msgs: Vec<&Msg> = updates
            .iter()
            .filter_map(|u| self.msg_of_update(u))
            .collect();
        let (users, chats) = self.peers_of(msgs);
        tl::types::Updates {
            updates,
            users,
            chats,
            date: now(),
            seq: 0,
        }
        .into()
    }

    /// The `message` object of a stored message.
    pub fn tl_message(&self, m: &Msg) -> tl::enums::Message {
        let from_id = match m.peer {
            Peer::User(_) => None,
            _ => Some(Peer::User(m.from).tl()),
        };
        let reply_to = m.reply_to.or(m.topic).map(|id| {
            tl::types::MessageReplyHeader {
                reply_to_scheduled: false,
                forum_topic: m.topic.is_some(),
                quote: false,
                reply_to_ephemeral: false,
                reply_to_msg_id: Some(id),
                reply_to_peer_id: None,
                reply_from: None,
                reply_media: None,
                // Only a real reply inside a topic names the topic separately.
                reply_to_top_id: m.topic.filter(|_| m.reply_to.is_some()),
                quote_text: None,
                quote_entities: None,
                quote_offset: None,
                todo_item_id: None,
                poll_option: None,
            }
            .into()
        });
        let media = m.media.as_ref().map(tl_media);
        tl::types::Message {
            out: m.out,
            mentioned: false,
            media_unread: m.media.is_some() && !m.out,
            silent: false,
            post: false,
            from_scheduled: false,
            legacy: false,
            edit_hide: false,
            pinned: false,
            noforwards: false,
            invert_media: false,
            offline: false,
            video_processing_pending: false,
            paid_suggested_post_stars: false,
            paid_suggested_post_ton: false,
            id: m.id,
            from_id,
            from_boosts_applied: None,
            from_rank: None,
            peer_id: m.peer.tl(),
            saved_peer_id: None,
            fwd_from: None,
            via_bot_id: None,
            via_business_bot_id: None,
            guestchat_via_from: None,
            reply_to,
            date: m.date,
            message: m.text.clone(),
            media,
            reply_markup: None,
            entities: None,
            views: None,
            forwards: None,
            replies: None,
            edit_date: m.edit_date,
            post_author: None,
            grouped_id: None,
            reactions: None,
            restriction_reason: None,
            ttl_period: None,
            quick_reply_shortcut_id: None,
            effect: None,
            factcheck: None,
            report_delivery_until_date: None,
            paid_message_stars: None,
            suggested_post: None,
            schedule_repeat_period: None,
            summary_from_language: None,
            rich_message: None,
        }
        .into()
    }
}

/// `messageMediaDocument` for an audio document.
fn tl_media(d: &Doc) -> tl::enums::MessageMedia {
    let attribute: tl::enums::DocumentAttribute = match d.kind {
        AudioKind::Voice | AudioKind::Audio => tl::types::DocumentAttributeAudio {
            voice: d.kind == AudioKind::Voice,
            duration: d.duration_s.round() as i32,
            title: None,
            performer: None,
            waveform: None,
        }
        .into(),
        AudioKind::VideoNote => tl::types::DocumentAttributeVideo {
            round_message: true,
            supports_streaming: false,
            nosound: false,
            duration: d.duration_s,
            w: 384,
            h: 384,
            preload_prefix_size: None,
            video_start_ts: None,
            video_codec: None,
        }
        .into(),
    };
    tl::types::MessageMediaDocument {
        nopremium: false,
        spoiler: false,
        video: d.kind == AudioKind::VideoNote,
        round: d.kind == AudioKind::VideoNote,
        voice: d.kind == AudioKind::Voice,
        document: Some(
            tl::types::Document {
                id: d.id,
                access_hash: d.access_hash,
                file_reference: d.file_reference.clone(),
                date: now(),
                mime_type: d.mime_type.clone(),
                size: d.bytes.len() as i64,
                thumbs: None,
                video_thumbs: None,
                dc_id: d.listed_dc,
                attributes: vec![attribute],
            }
            .into(),
        ),
        alt_documents: None,
        video_cover: None,
        video_timestamp: None,
        ttl_seconds: None,
    }
    .into()
}
