//! The Telegram API methods the fake data center answers, one function each, and the JSON line
//! logged for every call.
//!
//! A request arrives as TL bytes: the constructor id picks the method, and `grammers-tl-types`
//! (feature `deserializable-functions`) decodes its fields. The wrappers the client puts around
//! its first request (`invokeWithLayer`, `initConnection`, …) are peeled off first.

use grammers_tl_types::{self as tl, Cursor, Deserializable, Identifiable, Serializable};
use serde_json::{json, Value};

use super::world::{now, Peer, World};

/// What to send back for one call.
#[derive(Debug)]
pub enum Answer {
    /// `rpc_result` with this TL object.
    Ok(Vec<u8>),
    /// `rpc_result` with `rpc_error`.
    Error(i32, String),
    /// Close the connection without answering.
    Drop,
    /// Never answer.
    Stall,
    /// Never answer anything on this connection again.
    Freeze,
}

/// Who is calling.
pub struct Caller {
    /// The data center the connection reached.
    pub dc: i32,
    /// Every data center's port.
    pub ports: Vec<(i32, u16)>,
}

/// Methods a data center answers before the owner's authorization reached it.
const WITHOUT_AUTHORIZATION: &[&str] = &[
    "help.getConfig",
    "help.getNearestDc",
    "auth.importAuthorization",
    "auth.sendCode",
    "auth.signIn",
    "account.getPassword",
    "auth.checkPassword",
];

/// One decoded call: its method name, the wrapped query, and what the log says about it.
pub struct Call<'a> {
    pub method: &'static str,
    pub query: &'a [u8],
    pub log: serde_json::Map<String, Value>,
}

const INVOKE_WITH_LAYER: u32 = 0xda9b0d0d;
const INIT_CONNECTION: u32 = 0xc1cd5ea9;
const INVOKE_WITHOUT_UPDATES: u32 = 0xbf9459b7;
const INVOKE_AFTER_MSG: u32 = 0xcb9f372d;
const INVOKE_AFTER_MSGS: u32 = 0x3dc4b4f0;

fn id_of(body: &[u8]) -> u32 {
    body.get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// Peels the wrappers off a request, noting what they said.
pub fn unwrap(body: &[u8]) -> Result<Call<'_>, String> {
    let mut log = serde_json::Map::new();
    let mut rest = body;
    loop {
        let mut cur = Cursor::from_slice(rest);
        let bad = |e: tl::deserialize::Error| format!("malformed wrapper: {e}");
        match u32::deserialize(&mut cur).map_err(bad)? {
            INVOKE_WITH_LAYER => {
                log.insert(
                    "layer".into(),
                    json!(i32::deserialize(&mut cur).map_err(bad)?),
                );
            }
            INIT_CONNECTION => {
                let flags = u32::deserialize(&mut cur).map_err(bad)?;
                let api_id = i32::deserialize(&mut cur).map_err(bad)?;
                let mut strings = Vec::new();
                for _ in 0..6 {
                    strings.push(String::deserialize(&mut cur).map_err(bad)?);
                }
                if flags & 1 != 0 {
                    tl::enums::InputClientProxy::deserialize(&mut cur).map_err(bad)?;
                }
                if flags & 2 != 0 {
                    tl::enums::Jsonvalue::deserialize(&mut cur).map_err(bad)?;
                }
                log.insert(
                    "init".into(),
                    json!({
                        "api_id": api_id,
                        "device_model": strings[0],
                        "system_version": strings[1],
                        "app_version": strings[2],
                        "lang_code": strings[5],
                    }),
                );
            }
            INVOKE_WITHOUT_UPDATES => {
                log.insert("without_updates".into(), json!(true));
            }
            INVOKE_AFTER_MSG => {
                i64::deserialize(&mut cur).map_err(bad)?;
            }
            INVOKE_AFTER_MSGS => {
                Vec::<i64>::deserialize(&mut cur).map_err(bad)?;
            }
            id => {
                return Ok(Call {
                    method: tl::name_for_id(id),
                    query: rest,
                    log,
                })
            }
        }
        rest = &rest[cur.pos()..];
    }
}

/// Decodes a function of type `F` (the query starts with its constructor id).
fn decode<F: Identifiable + Deserializable>(query: &[u8]) -> Result<F, Answer> {
    let mut cur = Cursor::from_slice(query);
    match u32::deserialize(&mut cur) {
        Ok(id) if id == F::CONSTRUCTOR_ID => F::deserialize(&mut cur)
            .map_err(|e| Answer::Error(400, format!("INPUT_REQUEST_INVALID ({e})"))),
        _ => Err(Answer::Error(400, "INPUT_CONSTRUCTOR_INVALID".into())),
    }
}

fn err(name: &str) -> Answer {
    let code = if name.starts_with("FLOOD_WAIT_") {
        420
    } else {
        400
    };
    Answer::Error(code, name.to_string())
}

/// An input peer in the log.
pub fn peer_json(peer: &tl::enums::InputPeer) -> Value {
    match peer {
        tl::enums::InputPeer::Empty => json!("empty"),
        tl::enums::InputPeer::PeerSelf => json!("self"),
        tl::enums::InputPeer::User(u) => json!({"user": u.user_id, "access_hash": u.access_hash}),
        tl::enums::InputPeer::Chat(c) => json!({"chat": c.chat_id}),
        tl::enums::InputPeer::Channel(c) => {
            json!({"channel": c.channel_id, "access_hash": c.access_hash})
        }
        other => json!(format!("{other:?}")),
    }
}

fn channel_json(channel: &tl::enums::InputChannel) -> Value {
    match channel {
        tl::enums::InputChannel::Channel(c) => {
            json!({"channel": c.channel_id, "access_hash": c.access_hash})
        }
        other => json!(format!("{other:?}")),
    }
}

fn message_ids(ids: &[tl::enums::InputMessage]) -> Vec<Value> {
    ids.iter()
        .map(|m| match m {
            tl::enums::InputMessage::Id(i) => json!(i.id),
            other => json!(format!("{other:?}")),
        })
        .collect()
}

/// Answers one call, filling in the log's method fields. A `fault` (decided by the caller)
/// replaces the answer once the request is decoded, before it has any effect.
pub fn answer(
    world: &mut World,
    caller: &Caller,
    call: &mut Call<'_>,
    fault: Option<Answer>,
) -> Answer {
    let log = &mut call.log;
    let q = call.query;
    let method = call.method;
    let mut fault = fault;
    let unauthorized =
        !world.authorized.contains(&caller.dc) && !WITHOUT_AUTHORIZATION.contains(&method);
    // Past this point the request takes effect: the fault or a missing authorization first.
    macro_rules! gate {
        () => {
            if let Some(answer) = fault.take() {
                return Err(answer);
            }
            if unauthorized {
                return Err(Answer::Error(401, "AUTH_KEY_UNREGISTERED".into()));
            }
        };
    }
    let result = (|| -> Result<Vec<u8>, Answer> {
        use tl::functions as f;
        Ok(match id_of(q) {
            f::auth::ExportAuthorization::CONSTRUCTOR_ID => {
                let r: f::auth::ExportAuthorization = decode(q)?;
                log.insert("dc_id".into(), json!(r.dc_id));
                gate!();
                if !caller.ports.iter().any(|(dc, _)| *dc == r.dc_id) {
                    return Err(err("DC_ID_INVALID"));
                }
                let bytes: Vec<u8> = (0..32u8)
                    .map(|i| i.wrapping_mul(31) ^ (r.dc_id as u8) ^ (world.exported.len() as u8))
                    .collect();
                world.exported.push((r.dc_id, bytes.clone()));
                tl::enums::auth::ExportedAuthorization::from(
                    tl::types::auth::ExportedAuthorization {
                        id: world.owner_id(),
                        bytes,
                    },
                )
                .to_bytes()
            }
            f::auth::ImportAuthorization::CONSTRUCTOR_ID => {
                let r: f::auth::ImportAuthorization = decode(q)?;
                log.insert("id".into(), json!(r.id));
                gate!();
                let known = world
                    .exported
                    .iter()
                    .any(|(dc, bytes)| *dc == caller.dc && *bytes == r.bytes);
                if !known || r.id != world.owner_id() {
                    return Err(err("AUTH_BYTES_INVALID"));
                }
                if !world.authorized.contains(&caller.dc) {
                    world.authorized.push(caller.dc);
                }
                tl::enums::auth::Authorization::from(tl::types::auth::Authorization {
                    setup_password_required: false,
                    otherwise_relogin_days: None,
                    tmp_sessions: None,
                    future_auth_token: None,
                    user: world.tl_user(world.owner_id()),
                })
                .to_bytes()
            }
            f::help::GetConfig::CONSTRUCTOR_ID => {
                gate!();
                config(world, caller).to_bytes()
            }
            f::help::GetNearestDc::CONSTRUCTOR_ID => {
                gate!();
                tl::enums::NearestDc::from(tl::types::NearestDc {
                    country: "ZZ".into(),
                    this_dc: caller.dc,
                    nearest_dc: caller.dc,
                })
                .to_bytes()
            }
            f::users::GetUsers::CONSTRUCTOR_ID => {
                let r: f::users::GetUsers = decode(q)?;
                gate!();
                let mut ids = Vec::new();
                let users: Vec<tl::enums::User> =
                    r.id.iter()
                        .map(|u| match u {
                            tl::enums::InputUser::UserSelf => {
                                ids.push(json!("self"));
                                world.tl_user(world.owner_id())
                            }
                            tl::enums::InputUser::User(u) => {
                                ids.push(json!(u.user_id));
                                world.tl_user(u.user_id)
                            }
                            other => {
                                ids.push(json!(format!("{other:?}")));
                                tl::types::UserEmpty { id: 0 }.into()
                            }
                        })
                        .collect();
                log.insert("ids".into(), json!(ids));
                users.to_bytes()
            }
            f::updates::GetState::CONSTRUCTOR_ID => {
                gate!();
                tl::enums::updates::State::State(world.state()).to_bytes()
            }
            f::updates::GetDifference::CONSTRUCTOR_ID => {
                let r: f::updates::GetDifference = decode(q)?;
                log.insert("pts".into(), json!(r.pts));
                log.insert("date".into(), json!(r.date));
                log.insert("qts".into(), json!(r.qts));
                gate!();
                let d = difference(world, r.pts);
                match &d {
                    tl::enums::updates::Difference::Difference(d) => {
                        log.insert("new_messages".into(), json!(d.new_messages.len()));
                    }
                    tl::enums::updates::Difference::Slice(d) => {
                        log.insert("new_messages".into(), json!(d.new_messages.len()));
                        log.insert("slice".into(), json!(true));
                    }
                    _ => {}
                }
                d.to_bytes()
            }
            f::updates::GetChannelDifference::CONSTRUCTOR_ID => {
                let r: f::updates::GetChannelDifference = decode(q)?;
                log.insert("channel".into(), channel_json(&r.channel));
                log.insert("pts".into(), json!(r.pts));
                log.insert("limit".into(), json!(r.limit));
                gate!();
                let id = world.channel_of_input(&r.channel).map_err(err)?;
                channel_difference(world, id, r.pts).to_bytes()
            }
            f::messages::GetMessages::CONSTRUCTOR_ID => {
                let r: f::messages::GetMessages = decode(q)?;
                log.insert("ids".into(), json!(message_ids(&r.id)));
                gate!();
                get_messages(world, None, &r.id).to_bytes()
            }
            f::channels::GetMessages::CONSTRUCTOR_ID => {
                let r: f::channels::GetMessages = decode(q)?;
                log.insert("channel".into(), channel_json(&r.channel));
                log.insert("ids".into(), json!(message_ids(&r.id)));
                gate!();
                let id = world.channel_of_input(&r.channel).map_err(err)?;
                get_messages(world, Some(Peer::Channel(id)), &r.id).to_bytes()
            }
            f::messages::SendMessage::CONSTRUCTOR_ID => {
                let r: f::messages::SendMessage = decode(q)?;
                let reply_to = match &r.reply_to {
                    Some(tl::enums::InputReplyTo::Message(m)) => Some(m.reply_to_msg_id),
                    _ => None,
                };
                log.insert("peer".into(), peer_json(&r.peer));
                log.insert("reply_to".into(), json!(reply_to));
                log.insert("message".into(), json!(r.message));
                log.insert("random_id".into(), json!(r.random_id));
                log.insert("no_webpage".into(), json!(r.no_webpage));
                gate!();
                let peer = world.peer_of_input(&r.peer).map_err(err)?;
                send_message(world, peer, &r.message, reply_to, r.random_id, log)?
            }
            f::messages::EditMessage::CONSTRUCTOR_ID => {
                let r: f::messages::EditMessage = decode(q)?;
                log.insert("peer".into(), peer_json(&r.peer));
                log.insert("id".into(), json!(r.id));
                log.insert("message".into(), json!(r.message));
                gate!();
                let peer = world.peer_of_input(&r.peer).map_err(err)?;
                let text = r.message.clone().unwrap_or_default();
                let update = world.edit_message(peer, r.id, &text).map_err(err)?;
                world.updates(vec![update]).to_bytes()
            }
            f::upload::GetFile::CONSTRUCTOR_ID => {
                let r: f::upload::GetFile = decode(q)?;
                log.insert("offset".into(), json!(r.offset));
                log.insert("limit".into(), json!(r.limit));
                log.insert("precise".into(), json!(r.precise));
                let tl::enums::InputFileLocation::InputDocumentFileLocation(loc) = &r.location
                else {
                    log.insert("location".into(), json!(format!("{:?}", r.location)));
                    gate!();
                    return Err(err("LOCATION_INVALID"));
                };
                log.insert(
                    "location".into(),
                    json!({"document": loc.id, "access_hash": loc.access_hash}),
                );
                gate!();
                get_file(world, caller, loc, r.offset, r.limit, r.precise)?
            }
            f::messages::GetDialogs::CONSTRUCTOR_ID => {
                let r: f::messages::GetDialogs = decode(q)?;
                log.insert("limit".into(), json!(r.limit));
                gate!();
                dialogs(world, r.limit).to_bytes()
            }
            f::contacts::ResolveUsername::CONSTRUCTOR_ID => {
                let r: f::contacts::ResolveUsername = decode(q)?;
                log.insert("username".into(), json!(r.username));
                gate!();
                resolve_username(world, &r.username)?
            }
            f::auth::SendCode::CONSTRUCTOR_ID => {
                let r: f::auth::SendCode = decode(q)?;
                log.insert("phone".into(), json!(r.phone_number));
                gate!();
                send_code(world, caller, &r.phone_number, log)?
            }
            f::auth::SignIn::CONSTRUCTOR_ID => {
                let r: f::auth::SignIn = decode(q)?;
                log.insert("phone".into(), json!(r.phone_number));
                log.insert("phone_code_hash".into(), json!(r.phone_code_hash));
                log.insert("code".into(), json!(r.phone_code));
                gate!();
                sign_in(world, caller, &r)?
            }
            f::account::GetPassword::CONSTRUCTOR_ID => {
                gate!();
                get_password(world, log)?
            }
            f::auth::CheckPassword::CONSTRUCTOR_ID => {
                let r: f::auth::CheckPassword = decode(q)?;
                gate!();
                check_password(world, caller, &r.password, log)?
            }
            f::messages::GetHistory::CONSTRUCTOR_ID => {
                let r: f::messages::GetHistory = decode(q)?;
                log.insert("peer".into(), peer_json(&r.peer));
                log.insert("offset_id".into(), json!(r.offset_id));
                log.insert("limit".into(), json!(r.limit));
                log.insert("min_id".into(), json!(r.min_id));
                log.insert("max_id".into(), json!(r.max_id));
                gate!();
                let peer = world.peer_of_input(&r.peer).map_err(err)?;
                history(world, peer, &r).to_bytes()
            }
            _ => {
                gate!();
                return Err(Answer::Error(400, "INPUT_METHOD_INVALID".into()));
            }
        })
    })();
    match result {
        Ok(bytes) => Answer::Ok(bytes),
        Err(answer) => answer,
    }
}

/// `help.getConfig`: every data center at its loopback port, marked static so the client
/// stores the address (it ignores options without `static`).
fn config(world: &World, caller: &Caller) -> tl::enums::Config {
    let dc_options = caller
        .ports
        .iter()
        .map(|&(id, port)| {
            tl::types::DcOption {
                ipv6: false,
                media_only: false,
                tcpo_only: false,
                cdn: false,
                r#static: true,
                this_port_only: false,
                id,
                ip_address: "127.0.0.1".into(),
                port: i32::from(port),
                secret: None,
            }
            .into()
        })
        .collect();
    let date = now();
    tl::types::Config {
        default_p2p_contacts: false,
        preload_featured_stickers: false,
        revoke_pm_inbox: true,
        blocked_mode: false,
        force_try_ipv6: false,
        date,
        expires: date + 3600,
        test_mode: false,
        this_dc: caller.dc,
        dc_options,
        dc_txt_domain_name: "localhost".into(),
        chat_size_max: 200,
        megagroup_size_max: 200_000,
        forwarded_count_max: 100,
        online_update_period_ms: 210_000,
        offline_blur_timeout_ms: 5000,
        offline_idle_timeout_ms: 30_000,
        online_cloud_timeout_ms: 300_000,
        notify_cloud_delay_ms: 30_000,
        notify_default_delay_ms: 1500,
        push_chat_period_ms: 60_000,
        push_chat_limit: 2,
        edit_time_limit: 172_800,
        revoke_time_limit: i32::MAX,
        revoke_pm_time_limit: i32::MAX,
        rating_e_decay: 2_419_200,
        stickers_recent_limit: 200,
        channels_read_media_period: 604_800,
        tmp_sessions: None,
        call_receive_timeout_ms: 20_000,
        call_ring_timeout_ms: 90_000,
        call_connect_timeout_ms: 30_000,
        call_packet_timeout_ms: 10_000,
        me_url_prefix: "https://t.me/".into(),
        autoupdate_url_prefix: None,
        gif_search_username: None,
        venue_search_username: None,
        img_search_username: None,
        static_maps_provider: None,
        caption_length_max: 1024,
        message_length_max: 4096,
        webfile_dc_id: world.home_dc,
        suggested_lang_code: None,
        lang_pack_version: None,
        base_lang_pack_version: None,
        reactions_default: None,
        autologin_token: None,
    }
    .into()
}

/// `updates.getDifference` from `pts`: every logged update after it.
pub fn difference(world: &World, pts: i32) -> tl::enums::updates::Difference {
    if pts >= world.pts {
        return tl::types::updates::DifferenceEmpty {
            date: now(),
            seq: 0,
        }
        .into();
    }
    let mut new_messages = Vec::new();
    let mut other_updates = Vec::new();
    let mut msgs = Vec::new();
    let pending: Vec<&(i32, tl::enums::Update)> =
        world.log.iter().filter(|(p, _)| *p > pts).collect();
    let limit = world.scenario.server.difference_limit.max(1);
    let sliced = pending.len() > limit;
    let mut reached = pts;
    for (p, update) in pending.into_iter().take(limit) {
        reached = *p;
        if let Some(m) = world.msg_of_update(update) {
            msgs.push(m);
        }
        match update {
            tl::enums::Update::NewMessage(u) => new_messages.push(u.message.clone()),
            other => other_updates.push(other.clone()),
        }
    }
    let (users, chats) = world.peers_of(msgs);
    if sliced {
        let mut state = world.state();
        state.pts = reached;
        return tl::types::updates::DifferenceSlice {
            new_messages,
            new_encrypted_messages: Vec::new(),
            other_updates,
            chats,
            users,
            intermediate_state: state.into(),
        }
        .into();
    }
    tl::types::updates::Difference {
        new_messages,
        new_encrypted_messages: Vec::new(),
        other_updates,
        chats,
        users,
        state: world.state().into(),
    }
    .into()
}

/// `updates.getChannelDifference` from `pts` for one supergroup.
fn channel_difference(world: &World, id: i64, pts: i32) -> tl::enums::updates::ChannelDifference {
    let Some(b) = world.channels.get(&id) else {
        return tl::types::updates::ChannelDifferenceEmpty {
            r#final: true,
            pts,
            timeout: None,
        }
        .into();
    };
    if pts >= b.pts {
        return tl::types::updates::ChannelDifferenceEmpty {
            r#final: true,
            pts: b.pts,
            timeout: Some(30),
        }
        .into();
    }
    let pending = b.log.iter().filter(|(p, _)| *p > pts).count();
    let over = world.scenario.server.channel_too_long_over;
    if over > 0 && pending > over {
        return channel_difference_too_long(world, id);
    }
    let mut new_messages = Vec::new();
    let mut other_updates = Vec::new();
    let mut msgs = Vec::new();
    for (_, update) in b.log.iter().filter(|(p, _)| *p > pts) {
        if let Some(m) = world.msg_of_update(update) {
            msgs.push(m);
        }
        match update {
            tl::enums::Update::NewChannelMessage(u) => new_messages.push(u.message.clone()),
            other => other_updates.push(other.clone()),
        }
    }
    let (users, chats) = world.peers_of(msgs);
    tl::types::updates::ChannelDifference {
        r#final: true,
        pts: b.pts,
        timeout: Some(30),
        new_messages,
        other_updates,
        chats,
        users,
    }
    .into()
}

/// `updates.channelDifferenceTooLong`: the supergroup's dialog (with its current pts) and its
/// newest message, nothing of what came in between — the client is to fetch the history.
fn channel_difference_too_long(world: &World, id: i64) -> tl::enums::updates::ChannelDifference {
    let peer = Peer::Channel(id);
    let newest = world
        .messages
        .iter()
        .filter(|m| m.peer == peer)
        .max_by_key(|m| m.id);
    let top = newest.map_or(0, |m| m.id);
    let pts = world.channels.get(&id).map_or(1, |b| b.pts);
    let (users, chats) = world.peers_of(newest);
    tl::types::updates::ChannelDifferenceTooLong {
        r#final: true,
        timeout: Some(30),
        dialog: tl::types::Dialog {
            pinned: false,
            unread_mark: false,
            view_forum_as_messages: false,
            peer: peer.tl(),
            top_message: top,
            read_inbox_max_id: 0,
            read_outbox_max_id: top,
            unread_count: 0,
            unread_mentions_count: 0,
            unread_reactions_count: 0,
            unread_poll_votes_count: 0,
            notify_settings: tl::types::PeerNotifySettings {
                show_previews: None,
                silent: None,
                mute_until: None,
                ios_sound: None,
                android_sound: None,
                other_sound: None,
                stories_muted: None,
                stories_hide_sender: None,
                stories_ios_sound: None,
                stories_android_sound: None,
                stories_other_sound: None,
            }
            .into(),
            pts: Some(pts),
            draft: None,
            folder_id: None,
            ttl_period: None,
        }
        .into(),
        messages: newest.map(|m| world.tl_message(m)).into_iter().collect(),
        chats,
        users,
    }
    .into()
}

/// `messages.getMessages` / `channels.getMessages`: missing ids come back as `messageEmpty`.
fn get_messages(
    world: &World,
    channel: Option<Peer>,
    ids: &[tl::enums::InputMessage],
) -> tl::enums::messages::Messages {
    let mut found = Vec::new();
    let mut messages = Vec::new();
    for m in ids {
        let tl::enums::InputMessage::Id(i) = m else {
            continue;
        };
        match world.message(channel, i.id) {
            Some(msg) => {
                messages.push(world.tl_message(msg));
                found.push(msg);
            }
            None => messages.push(
                tl::types::MessageEmpty {
                    id: i.id,
                    peer_id: None,
                }
                .into(),
            ),
        }
    }
    let (users, chats) = world.peers_of(found);
    match channel {
        Some(Peer::Channel(id)) => tl::types::messages::ChannelMessages {
            inexact: false,
            pts: world.channels.get(&id).map(|b| b.pts).unwrap_or(1),
            count: messages.len() as i32,
            offset_id_offset: None,
            messages,
            topics: Vec::new(),
            chats,
            users,
        }
        .into(),
        _ => tl::types::messages::Messages {
            messages,
            topics: Vec::new(),
            chats,
            users,
        }
        .into(),
    }
}

/// `messages.getDialogs` (first page only): every chat with a message, newest first, with its
/// users and chats (access hashes included).
fn dialogs(world: &World, limit: i32) -> tl::enums::messages::Dialogs {
    let mut tops: Vec<&super::world::Msg> = Vec::new();
    for m in world.messages.iter().rev() {
        if !tops.iter().any(|t| t.peer == m.peer) {
            tops.push(m);
        }
    }
    tops.truncate(limit.clamp(1, 100) as usize);
    let dialogs = tops
        .iter()
        .map(|m| {
            tl::types::Dialog {
                pinned: false,
                unread_mark: false,
                view_forum_as_messages: false,
                peer: m.peer.tl(),
                top_message: m.id,
                read_inbox_max_id: m.id,
                read_outbox_max_id: m.id,
                unread_count: 0,
                unread_mentions_count: 0,
                unread_reactions_count: 0,
                unread_poll_votes_count: 0,
                notify_settings: tl::types::PeerNotifySettings {
                    show_previews: None,
                    silent: None,
                    mute_until: None,
                    ios_sound: None,
                    android_sound: None,
                    other_sound: None,
                    stories_muted: None,
                    stories_hide_sender: None,
                    stories_ios_sound: None,
                    stories_android_sound: None,
                    stories_other_sound: None,
                }
                .into(),
                pts: match m.peer {
                    Peer::Channel(id) => world.channels.get(&id).map(|b| b.pts),
                    _ => None,
                },
                draft: None,
                folder_id: None,
                ttl_period: None,
            }
            .into()
        })
        .collect();
    let messages = tops.iter().map(|m| world.tl_message(m)).collect();
    let (users, chats) = world.peers_of(tops.iter().copied());
    tl::types::messages::Dialogs {
        dialogs,
        messages,
        chats,
        users,
    }
    .into()
}

/// `messages.sendMessage`: stores the owner's message. Private chats and basic groups are
/// answered with `updateShortSentMessage`, supergroups with `updates` carrying
/// `updateMessageID` and `updateNewChannelMessage` (as Telegram does).
fn send_message(
    world: &mut World,
    peer: Peer,
    text: &str,
    reply_to: Option<i32>,
    random_id: i64,
    log: &mut serde_json::Map<String, Value>,
) -> Result<Vec<u8>, Answer> {
    if text.is_empty() {
        return Err(err("MESSAGE_EMPTY"));
    }
    if text.chars().count() > 4096 {
        return Err(err("MESSAGE_TOO_LONG"));
    }
    if world.random_ids.contains_key(&random_id) {
        return Err(err("RANDOM_ID_DUPLICATE"));
    }
    let msg = super::world::Msg {
        id: 0,
        peer,
        from: world.owner_id(),
        out: true,
        text: text.to_string(),
        reply_to,
        date: now(),
        edit_date: None,
        media: None,
        topic: None,
    };
    let update = world.add_message(msg);
    let (id, pts, date) = match &update {
        tl::enums::Update::NewMessage(u) => (message_id(&u.message), u.pts, now()),
        tl::enums::Update::NewChannelMessage(u) => (message_id(&u.message), u.pts, now()),
        _ => unreachable!("add_message returns a new-message update"),
    };
    log.insert("sent_id".into(), json!(id));
    world.random_ids.insert(random_id, (peer, id));
    Ok(match peer {
        Peer::Channel(_) => world
            .updates(vec![
                tl::types::UpdateMessageId { id, random_id }.into(),
                update,
            ])
            .to_bytes(),
        _ => tl::enums::Updates::from(tl::types::UpdateShortSentMessage {
            out: true,
            id,
            pts,
            pts_count: 1,
            date,
            media: None,
            entities: None,
            ttl_period: None,
        })
        .to_bytes(),
    })
}

fn message_id(m: &tl::enums::Message) -> i32 {
    match m {
        tl::enums::Message::Message(m) => m.id,
        tl::enums::Message::Service(m) => m.id,
        tl::enums::Message::Empty(m) => m.id,
    }
}

/// Telegram's rules for a file part: offset and limit multiples of 4 KiB (1 KiB when
/// `precise`), limit at most 512 KiB... and the part may not cross a 1 MiB boundary.
fn get_file(
    world: &World,
    caller: &Caller,
    loc: &tl::types::InputDocumentFileLocation,
    offset: i64,
    limit: i32,
    precise: bool,
) -> Result<Vec<u8>, Answer> {
    let doc = world
        .doc(loc.id)
        .filter(|d| d.access_hash == loc.access_hash)
        .ok_or_else(|| err("LOCATION_INVALID"))?;
    if world.expired_references.contains(&loc.file_reference) {
        return Err(err("FILE_REFERENCE_EXPIRED"));
    }
    if loc.file_reference != doc.file_reference {
        return Err(err("FILE_REFERENCE_INVALID"));
    }
    if doc.dc != caller.dc {
        return Err(Answer::Error(303, format!("FILE_MIGRATE_{}", doc.dc)));
    }
    const MIB: i64 = 1 << 20;
    let unit = if precise { 1024 } else { 4096 };
    if limit <= 0
        || limit > 512 * 1024
        || limit % unit != 0
        || (!precise && MIB % limit as i64 != 0)
    {
        return Err(err("LIMIT_INVALID"));
    }
    if offset < 0 || offset % unit as i64 != 0 || offset / MIB != (offset + limit as i64 - 1) / MIB
    {
        return Err(err("OFFSET_INVALID"));
    }
    let len = doc.bytes.len() as i64;
    let start = offset.min(len) as usize;
    let end = (offset + limit as i64).min(len) as usize;
    Ok(tl::enums::upload::File::from(tl::types::upload::File {
        r#type: tl::enums::storage::FileType::FilePartial,
        mtime: now(),
        bytes: doc.bytes[start..end].to_vec(),
    })
    .to_bytes())
}

fn resolve_username(world: &World, username: &str) -> Result<Vec<u8>, Answer> {
    let name = username.trim_start_matches('@').to_lowercase();
    let user = world
        .scenario
        .users
        .iter()
        .find(|u| u.username.as_deref().map(str::to_lowercase).as_deref() == Some(&name))
        .ok_or_else(|| err("USERNAME_NOT_OCCUPIED"))?;
    Ok(
        tl::enums::contacts::ResolvedPeer::from(tl::types::contacts::ResolvedPeer {
            peer: Peer::User(user.id).tl(),
            chats: Vec::new(),
            users: vec![world.tl_user(user.id)],
        })
        .to_bytes(),
    )
}

// ---- logging in -----------------------------------------------------------------------------

fn digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// `auth.sendCode`: a new code (and hash) for the scenario's phone, on the data center the
/// account lives in; elsewhere 303 PHONE_MIGRATE_<dc>, as Telegram answers.
fn send_code(
    world: &mut World,
    caller: &Caller,
    phone: &str,
    log: &mut serde_json::Map<String, Value>,
) -> Result<Vec<u8>, Answer> {
    let login = world
        .scenario
        .login
        .clone()
        .ok_or_else(|| err("PHONE_NUMBER_INVALID"))?;
    if digits(phone).is_empty() || digits(phone) != digits(&login.phone) {
        return Err(err("PHONE_NUMBER_INVALID"));
    }
    let dc = login.phone_dc.unwrap_or(world.home_dc);
    if caller.dc != dc {
        return Err(Answer::Error(303, format!("PHONE_MIGRATE_{dc}")));
    }
    let sign_in = &mut world.sign_in;
    sign_in.codes_sent += 1;
    let hash = format!("code-hash-{}", sign_in.codes_sent);
    sign_in.code_hash = Some(hash.clone());
    sign_in.code_expired = sign_in.codes_sent <= login.expired_codes;
    log.insert("phone_code_hash".into(), json!(hash));
    Ok(tl::enums::auth::SentCode::from(tl::types::auth::SentCode {
        r#type: tl::types::auth::SentCodeTypeApp {
            length: login.code.len() as i32,
        }
        .into(),
        phone_code_hash: hash,
        next_type: None,
        timeout: None,
    })
    .to_bytes())
}

/// The owner is logged in on `dc` from now on (the account's home).
fn authorize(world: &mut World, dc: i32) -> Vec<u8> {
    if !world.authorized.contains(&dc) {
        world.authorized.push(dc);
    }
    world.home_dc = dc;
    world.sign_in.code_hash = None;
    world.sign_in.password_dc = None;
    tl::enums::auth::Authorization::from(tl::types::auth::Authorization {
        setup_password_required: false,
        otherwise_relogin_days: None,
        tmp_sessions: None,
        future_auth_token: None,
        user: world.tl_user(world.owner_id()),
    })
    .to_bytes()
}

/// `auth.signIn`: the latest code's hash and the right code log in — unless the code has
/// expired (PHONE_CODE_EXPIRED) or the account has a cloud password (401
/// SESSION_PASSWORD_NEEDED, then `auth.checkPassword` on this connection's data center).
fn sign_in(
    world: &mut World,
    caller: &Caller,
    r: &tl::functions::auth::SignIn,
) -> Result<Vec<u8>, Answer> {
    let login = world
        .scenario
        .login
        .clone()
        .ok_or_else(|| err("PHONE_NUMBER_INVALID"))?;
    if digits(&r.phone_number) != digits(&login.phone) {
        return Err(err("PHONE_NUMBER_INVALID"));
    }
    if world.sign_in.code_hash.as_deref() != Some(r.phone_code_hash.as_str()) {
        return Err(err("PHONE_CODE_EXPIRED"));
    }
    let code = r.phone_code.clone().unwrap_or_default();
    if code.trim().is_empty() {
        return Err(err("PHONE_CODE_EMPTY"));
    }
    if world.sign_in.code_expired {
        return Err(err("PHONE_CODE_EXPIRED"));
    }
    if code != login.code {
        return Err(err("PHONE_CODE_INVALID"));
    }
    if login.password.is_some() {
        world.sign_in.code_hash = None;
        world.sign_in.password_dc = Some(caller.dc);
        return Err(Answer::Error(401, "SESSION_PASSWORD_NEEDED".into()));
    }
    Ok(authorize(world, caller.dc))
}

/// `account.getPassword`: a fresh SRP challenge for the scenario's password.
fn get_password(
    world: &mut World,
    log: &mut serde_json::Map<String, Value>,
) -> Result<Vec<u8>, Answer> {
    let login = world
        .scenario
        .login
        .clone()
        .ok_or_else(|| err("PASSWORD_EMPTY"))?;
    let Some(password) = &login.password else {
        return Err(err("PASSWORD_EMPTY"));
    };
    let srp_id = 9000 + world.sign_in.challenges.len() as i64;
    let c = super::srp::Challenge::new(password, srp_id, srp_id as u64 ^ 0x5eed);
    log.insert("srp_id".into(), json!(srp_id));
    let answer = tl::types::account::Password {
        has_recovery: false,
        has_secure_values: false,
        has_password: true,
        current_algo: Some(
            tl::types::PasswordKdfAlgoSha256Sha256Pbkdf2Hmacsha512iter100000Sha256ModPow {
                salt1: c.salt1.clone(),
                salt2: c.salt2.clone(),
                g: super::srp::G,
                p: super::srp::p_bytes(),
            }
            .into(),
        ),
        srp_b: Some(c.srp_b.clone()),
        srp_id: Some(srp_id),
        hint: login.hint.clone(),
        email_unconfirmed_pattern: None,
        new_algo: tl::enums::PasswordKdfAlgo::Unknown,
        new_secure_algo: tl::enums::SecurePasswordKdfAlgo::Unknown,
        secure_random: c.secure_random.clone(),
        pending_reset_date: None,
        login_email_pattern: None,
    };
    world.sign_in.challenges.push(c);
    Ok(tl::enums::account::Password::from(answer).to_bytes())
}

/// `auth.checkPassword`: the SRP proof checked against the password the server knows.
fn check_password(
    world: &mut World,
    caller: &Caller,
    input: &tl::enums::InputCheckPasswordSrp,
    log: &mut serde_json::Map<String, Value>,
) -> Result<Vec<u8>, Answer> {
    let tl::enums::InputCheckPasswordSrp::Srp(srp) = input else {
        return Err(err("PASSWORD_HASH_INVALID"));
    };
    log.insert("srp_id".into(), json!(srp.srp_id));
    if world.sign_in.password_dc != Some(caller.dc) {
        return Err(Answer::Error(401, "AUTH_KEY_UNREGISTERED".into()));
    }
    let Some(c) = world
        .sign_in
        .challenges
        .iter()
        .find(|c| c.srp_id == srp.srp_id)
    else {
        return Err(err("SRP_ID_INVALID"));
    };
    if !c.check(&srp.a, &srp.m1) {
        log.insert("proof".into(), json!("wrong"));
        return Err(err("PASSWORD_HASH_INVALID"));
    }
    log.insert("proof".into(), json!("right"));
    Ok(authorize(world, caller.dc))
}

/// `messages.getHistory`: a chat's messages, newest first, below `offset_id` (0: from the
/// newest), above `min_id`, at most `limit`.
fn history(
    world: &World,
    peer: Peer,
    r: &tl::functions::messages::GetHistory,
) -> tl::enums::messages::Messages {
    let mut found: Vec<&super::world::Msg> = world
        .messages
        .iter()
        .filter(|m| m.peer == peer)
        .filter(|m| r.offset_id == 0 || m.id < r.offset_id)
        .filter(|m| r.max_id == 0 || m.id < r.max_id)
        .filter(|m| m.id > r.min_id)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.id));
    found.truncate(r.limit.clamp(1, 100) as usize);
    let messages = found.iter().map(|m| world.tl_message(m)).collect();
    let (users, chats) = world.peers_of(found.iter().copied());
    match peer {
        Peer::Channel(id) => tl::types::messages::ChannelMessages {
            inexact: false,
            pts: world.channels.get(&id).map(|b| b.pts).unwrap_or(1),
            count: world.messages.iter().filter(|m| m.peer == peer).count() as i32,
            offset_id_offset: None,
            messages,
            topics: Vec::new(),
            chats,
            users,
        }
        .into(),
        _ => tl::types::messages::Messages {
            messages,
            topics: Vec::new(),
            chats,
            users,
        }
        .into(),
    }
}
