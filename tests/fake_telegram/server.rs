//! The server core: TCP connections, MTProto 2.0 messages (salt, session, msg_id and seqno
//! rules, containers, gzip, acks, pings, salts, `new_session_created`), `rpc_result` /
//! `rpc_error` answers and pushed `updates`.
//!
//! Each connection has a reader (this task) and a writer task; everything sent goes through the
//! writer's channel, so answers and pushed updates never interleave mid-packet.

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use grammers_tl_types::{self as tl, Cursor, Deserializable, Identifiable, Serializable};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::api::{self, Answer, Caller};
use super::crypto::{self, AuthKey};
use super::scenario::{self, FaultAction};
use super::transport::{FrameReader, FrameWriter};
use super::world::World;

const MSG_CONTAINER: u32 = 0x73f1f8dc;
const GZIP_PACKED: u32 = 0x3072cfa1;
const RPC_RESULT: u32 = 0xf35c6d01;

/// The salt announced in `new_session_created` and `future_salts`.
pub const SERVER_SALT: i64 = 0x1122_3344_5566_7788;

/// State shared by all connections and the handle the tests hold.
pub struct Shared {
    pub world: Mutex<World>,
    /// The permanent key of each data center.
    pub keys: Vec<(i32, AuthKey)>,
    /// Each data center's port.
    pub ports: Vec<(i32, u16)>,
    pub log: Mutex<RequestLog>,
    conns: Mutex<Vec<Conn>>,
    next_conn: AtomicU64,
    /// Set at the client's first `updates.getState` / `updates.getDifference`.
    synced: Mutex<Option<Instant>>,
    /// Sessions seen, for `new_session_created`.
    sessions: Mutex<HashSet<i64>>,
    /// While set and in the future, new connections are closed at once.
    down_until: Mutex<Option<Instant>>,
}

/// A live connection that can be pushed to.
struct Conn {
    id: u64,
    dc: i32,
    /// Set once the client made an API call on it (Telegram pushes updates only then).
    active: bool,
    tx: mpsc::UnboundedSender<Out>,
}

/// The JSON Lines request log: kept in memory for the tests and appended to a file.
pub struct RequestLog {
    pub entries: Vec<Value>,
    file: Option<std::fs::File>,
    start: Instant,
}

impl RequestLog {
    pub fn new(file: Option<std::fs::File>) -> Self {
        RequestLog {
            entries: Vec::new(),
            file,
            start: Instant::now(),
        }
    }

    pub fn push(&mut self, mut entry: serde_json::Map<String, Value>) {
        entry.insert(
            "t".into(),
            json!((self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0),
        );
        let value = Value::Object(entry);
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{value}");
            let _ = f.flush();
        }
        self.entries.push(value);
    }
}

/// What the writer task sends.
enum Out {
    /// Use this key and session from now on.
    Session { key: Box<AuthKey>, session_id: i64 },
    /// One MTProto message: body, content-related (odd seqno)?, answer to a client message?
    Msg {
        body: Vec<u8>,
        content_related: bool,
        response: bool,
    },
    /// A transport error code (e.g. 404), then close.
    TransportError(i32),
    /// Close the connection.
    Close,
}

impl Shared {
    pub fn new(
        world: World,
        keys: Vec<(i32, AuthKey)>,
        ports: Vec<(i32, u16)>,
        log: RequestLog,
    ) -> Self {
        Shared {
            world: Mutex::new(world),
            keys,
            ports,
            log: Mutex::new(log),
            conns: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            synced: Mutex::new(None),
            sessions: Mutex::new(HashSet::new()),
            down_until: Mutex::new(None),
        }
    }

    pub fn log_event(&self, event: &str, fields: Value) {
        let mut entry = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        entry.insert("event".into(), json!(event));
        self.log.lock().unwrap().push(entry);
    }

    /// Pushes updates to every active connection of the home data center; returns how many
    /// connections got them.
    pub fn push(&self, updates: &tl::enums::Updates) -> usize {
        let home = self.world.lock().unwrap().home_dc;
        let body = updates.to_bytes();
        let conns = self.conns.lock().unwrap();
        let mut n = 0;
        for c in conns.iter().filter(|c| c.dc == home && c.active) {
            if c.tx
                .send(Out::Msg {
                    body: body.clone(),
                    content_related: true,
                    response: false,
                })
                .is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Closes every connection (the client sees them drop).
    pub fn drop_connections(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.tx.send(Out::Close);
        }
    }

    /// When the client first asked for its update state.
    pub fn synced_at(&self) -> Option<Instant> {
        *self.synced.lock().unwrap()
    }

    /// Delivers a message now: stores it and pushes its update.
    pub fn deliver(&self, m: &scenario::Message) -> Result<i32, String> {
        let (updates, id) = {
            let mut world = self.world.lock().unwrap();
            let update = world.deliver(m)?;
            let id = world.msg_of_update(&update).map(|m| m.id).unwrap_or(0);
            let short = match m.form {
                scenario::Form::Short => world.short_updates(&update),
                scenario::Form::Full => None,
            };
            let updates = short.unwrap_or_else(|| world.updates(vec![update]));
            if m.deleted {
                if let Some(peer) = world.peer_of_key(&m.chat) {
                    world.delete_message(peer, id);
                }
            }
            (updates, id)
        };
        let reached = self.push(&updates);
        self.log_event(
            "push",
            json!({"chat": m.chat, "id": id, "text": m.text, "voice": m.voice.is_some(), "connections": reached}),
        );
        Ok(id)
    }
}

/// The outage, the redelivery and the deletion a test can cause at any moment.
impl Shared {
    /// Pushes a stored message again under a new update position (see
    /// [`World::redeliver`]); returns how many connections got it.
    pub fn redeliver(&self, chat_key: &str, id: i32) -> Result<usize, String> {
        let updates = {
            let mut world = self.world.lock().unwrap();
            let peer = world
                .peer_of_key(chat_key)
                .ok_or_else(|| format!("unknown chat {chat_key:?}"))?;
            let update = world.redeliver(peer, id)?;
            world.updates(vec![update])
        };
        let reached = self.push(&updates);
        self.log_event(
            "push",
            json!({"chat": chat_key, "id": id, "again": true, "connections": reached}),
        );
        Ok(reached)
    }

    /// Drops every connection and hangs up on new ones until `until`.
    pub fn outage(&self, until: Instant) {
        *self.down_until.lock().unwrap() = Some(until);
        self.log_event(
            "outage",
            json!({"for_s": (until - Instant::now()).as_secs_f64()}),
        );
        self.drop_connections();
    }

    /// True while an outage lasts.
    fn is_down(&self) -> bool {
        self.down_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until)
    }
}

/// Accepts connections to data center `dc` until the task is dropped.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, dc: i32) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.is_down() {
            // An outage: the connection is closed before a byte is read.
            shared.log_event("refused", json!({"dc": dc}));
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
            shared.log_event("connect", json!({"conn": id, "dc": dc}));
            let why = connection(&shared, stream, id, dc).await;
            shared.conns.lock().unwrap().retain(|c| c.id != id);
            shared.log_event("disconnect", json!({"conn": id, "why": why}));
        });
    }
}

/// Server-side message numbering of one session.
struct Numbering {
    session_id: i64,
    last_msg_id: i64,
    content_sent: i32,
}

impl Numbering {
    /// Server msg_ids grow with time; ≡ 1 (mod 4) for answers, ≡ 3 otherwise.
    fn msg_id(&mut self, response: bool) -> i64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut id = ((now.as_secs() as i64) << 32) | i64::from(now.subsec_nanos() & !3);
        id = id.max(self.last_msg_id + 1);
        let want = if response { 1 } else { 3 };
        while id.rem_euclid(4) != want {
            id += 1;
        }
        self.last_msg_id = id;
        id
    }

    fn seq_no(&mut self, content_related: bool) -> i32 {
        if content_related {
            self.content_sent += 1;
            self.content_sent * 2 - 1
        } else {
            self.content_sent * 2
        }
    }
}

/// The writer task of one connection.
async fn writer(
    mut w: FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    let mut state: Option<(AuthKey, Numbering)> = None;
    let mut noise_state: u32 = 0x9e37_79b9;
    let mut noise = move || {
        noise_state ^= noise_state << 13;
        noise_state ^= noise_state >> 17;
        noise_state ^= noise_state << 5;
        noise_state as u8
    };
    while let Some(out) = rx.recv().await {
        match out {
            Out::Session { key, session_id } => {
                state = Some((
                    *key,
                    Numbering {
                        session_id,
                        last_msg_id: 0,
                        content_sent: 0,
                    },
                ));
            }
            Out::Msg {
                body,
                content_related,
                response,
            } => {
                let Some((key, n)) = &mut state else { continue };
                let mut plain = Vec::with_capacity(32 + body.len());
                SERVER_SALT.serialize(&mut plain);
                n.session_id.serialize(&mut plain);
                n.msg_id(response).serialize(&mut plain);
                n.seq_no(content_related).serialize(&mut plain);
                (body.len() as i32).serialize(&mut plain);
                plain.extend_from_slice(&body);
                let packet = crypto::encrypt_for_client(key, &plain, &mut noise);
                if w.write(&packet).await.is_err() {
                    return;
                }
            }
            Out::TransportError(code) => {
                let _ = w.write_error(code).await;
                return;
            }
            Out::Close => return,
        }
    }
}

/// Per-connection reader state.
struct Reader {
    id: u64,
    /// The data center this connection reached.
    dc: i32,
    key: Option<(i32, AuthKey)>,
    session_id: Option<i64>,
    tx: mpsc::UnboundedSender<Out>,
    /// Set when the connection must close after this packet.
    closing: bool,
    /// Set when the connection must ignore everything from now on.
    frozen: bool,
}

/// Serves one connection; returns why it ended.
async fn connection(shared: &Arc<Shared>, stream: TcpStream, id: u64, dc: i32) -> String {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer(FrameWriter::new(w), rx));
    let mut conn = Reader {
        id,
        dc,
        key: None,
        session_id: None,
        tx,
        closing: false,
        frozen: false,
    };
    let why = loop {
        let packet = match reader.read().await {
            Ok(p) => p,
            Err(e) => break format!("read: {e}"),
        };
        if let Err(e) = conn.packet(shared, &packet) {
            break e;
        }
        if conn.closing {
            break "closed by the server".into();
        }
    };
    let _ = conn.tx.send(Out::Close);
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    why
}

impl Reader {
    fn send(&self, body: Vec<u8>, content_related: bool, response: bool) {
        let _ = self.tx.send(Out::Msg {
            body,
            content_related,
            response,
        });
    }

    /// One transport packet from the client.
    fn packet(&mut self, shared: &Arc<Shared>, packet: &[u8]) -> Result<(), String> {
        if self.frozen {
            return Ok(());
        }
        let Some(key_id) = crypto::packet_key_id(packet) else {
            shared.log_event(
                "key_exchange_refused",
                json!({"conn": self.id, "note": "the client has no key for this data center; the fake cannot do the DH exchange"}),
            );
            let _ = self.tx.send(Out::TransportError(404));
            return Err("plain (unencrypted) message: key exchange not supported".into());
        };
        let dc = self.dc;
        let Some((_, key)) = shared
            .keys
            .iter()
            .find(|(d, k)| *d == dc && k.id() == key_id)
            .cloned()
        else {
            // Telegram's answer to a key it does not know: the transport error 404.
            let _ = self.tx.send(Out::TransportError(404));
            return Err(format!(
                "auth key {key_id:02x?} is unknown to data center {dc}"
            ));
        };
        let plain =
            crypto::decrypt_from_client(&key, packet).map_err(|e| format!("decrypt: {e:?}"))?;
        let mut cur = Cursor::from_slice(&plain);
        let bad = |e: tl::deserialize::Error| format!("malformed message: {e}");
        let salt = i64::deserialize(&mut cur).map_err(bad)?;
        let session_id = i64::deserialize(&mut cur).map_err(bad)?;
        let msg_id = i64::deserialize(&mut cur).map_err(bad)?;
        let seq_no = i32::deserialize(&mut cur).map_err(bad)?;
        let len = i32::deserialize(&mut cur).map_err(bad)? as usize;
        let start = cur.pos();
        let body = plain
            .get(start..start + len)
            .ok_or("message length past the packet")?
            .to_vec();

        if self.key.is_none() {
            self.key = Some((dc, key.clone()));
            shared.conns.lock().unwrap().push(Conn {
                id: self.id,
                dc,
                active: false,
                tx: self.tx.clone(),
            });
        }
        if self.session_id != Some(session_id) {
            self.session_id = Some(session_id);
            let _ = self.tx.send(Out::Session {
                key: Box::new(key.clone()),
                session_id,
            });
        }
        let check_salt = shared.world.lock().unwrap().scenario.server.check_salt;
        if check_salt && salt != SERVER_SALT {
            // As Telegram: the message is ignored, the client learns the salt and sends it again.
            shared.log_event(
                "bad_server_salt",
                json!({"conn": self.id, "salt": salt, "msg_id": msg_id}),
            );
            let notice = tl::enums::BadMsgNotification::from(tl::types::BadServerSalt {
                bad_msg_id: msg_id,
                bad_msg_seqno: seq_no,
                error_code: 48,
                new_server_salt: SERVER_SALT,
            });
            self.send(notice.to_bytes(), false, true);
            return Ok(());
        }
        {
            if shared.sessions.lock().unwrap().insert(session_id) {
                shared.log_event(
                    "new_session",
                    json!({"conn": self.id, "dc": dc, "session_id": session_id}),
                );
                let created = tl::enums::NewSession::from(tl::types::NewSessionCreated {
                    first_msg_id: msg_id,
                    unique_id: session_id ^ 0x0f0f_0f0f,
                    server_salt: SERVER_SALT,
                });
                self.send(created.to_bytes(), true, false);
            }
        }
        self.message(shared, dc, msg_id, seq_no, &body)
    }

    /// One MTProto message (possibly a container or packed).
    fn message(
        &mut self,
        shared: &Arc<Shared>,
        dc: i32,
        msg_id: i64,
        seq_no: i32,
        body: &[u8],
    ) -> Result<(), String> {
        if msg_id.rem_euclid(4) != 0 {
            // Client msg_ids must be divisible by 4 (error 18).
            let bad = tl::enums::BadMsgNotification::from(tl::types::BadMsgNotification {
                bad_msg_id: msg_id,
                bad_msg_seqno: seq_no,
                error_code: 18,
            });
            self.send(bad.to_bytes(), false, true);
            return Ok(());
        }
        let bad = |e: tl::deserialize::Error| format!("malformed message: {e}");
        let mut cur = Cursor::from_slice(body);
        let id = u32::deserialize(&mut cur).map_err(bad)?;
        match id {
            MSG_CONTAINER => {
                let n = i32::deserialize(&mut cur).map_err(bad)?;
                for _ in 0..n {
                    let inner_id = i64::deserialize(&mut cur).map_err(bad)?;
                    let inner_seq = i32::deserialize(&mut cur).map_err(bad)?;
                    let len = i32::deserialize(&mut cur).map_err(bad)? as usize;
                    let mut inner = vec![0; len];
                    cur.read_exact(&mut inner).map_err(bad)?;
                    self.message(shared, dc, inner_id, inner_seq, &inner)?;
                    if self.closing || self.frozen {
                        break;
                    }
                }
                Ok(())
            }
            GZIP_PACKED => {
                let packed = Vec::<u8>::deserialize(&mut cur).map_err(bad)?;
                let mut unpacked = Vec::new();
                let mut d = flate2::write::GzDecoder::new(&mut unpacked);
                d.write_all(&packed)
                    .and_then(|_| d.finish().map(|_| ()))
                    .map_err(|e| format!("gzip: {e}"))?;
                shared.log_event(
                    "gzip_packed",
                    json!({"conn": self.id, "bytes": unpacked.len()}),
                );
                self.message(shared, dc, msg_id, seq_no, &unpacked)
            }
            tl::types::MsgsAck::CONSTRUCTOR_ID => Ok(()),
            tl::functions::Ping::CONSTRUCTOR_ID => {
                let ping_id = i64::deserialize(&mut cur).map_err(bad)?;
                self.pong(msg_id, ping_id);
                Ok(())
            }
            tl::functions::PingDelayDisconnect::CONSTRUCTOR_ID => {
                let ping_id = i64::deserialize(&mut cur).map_err(bad)?;
                self.pong(msg_id, ping_id);
                shared.log_event("ping", json!({"conn": self.id}));
                Ok(())
            }
            tl::functions::GetFutureSalts::CONSTRUCTOR_ID => {
                let num = i32::deserialize(&mut cur).map_err(bad)?.clamp(1, 64);
                let now = super::world::now();
                let salts = (0..num)
                    .map(|i| tl::types::FutureSalt {
                        valid_since: now - 60 + i * 3600,
                        valid_until: now + (i + 1) * 3600,
                        salt: SERVER_SALT,
                    })
                    .collect();
                let answer = tl::enums::FutureSalts::from(tl::types::FutureSalts {
                    req_msg_id: msg_id,
                    now,
                    salts: tl::RawVec(salts),
                });
                self.send(answer.to_bytes(), true, true);
                Ok(())
            }
            tl::functions::DestroySession::CONSTRUCTOR_ID => {
                let session_id = i64::deserialize(&mut cur).map_err(bad)?;
                let res = tl::enums::DestroySessionRes::from(tl::types::DestroySessionNone {
                    session_id,
                });
                self.rpc_result(msg_id, &res.to_bytes(), 0);
                Ok(())
            }
            _ => {
                self.rpc(shared, dc, msg_id, body);
                Ok(())
            }
        }
    }

    fn pong(&self, msg_id: i64, ping_id: i64) {
        let pong = tl::enums::Pong::from(tl::types::Pong { msg_id, ping_id });
        self.send(pong.to_bytes(), true, true);
    }

    /// `rpc_result`, gzip-packed when bigger than `gzip_over` (0: never).
    fn rpc_result(&self, req_msg_id: i64, result: &[u8], gzip_over: usize) {
        self.send(rpc_result_body(req_msg_id, result, gzip_over), true, true);
    }

    /// An API call: faults first, then the method.
    fn rpc(&mut self, shared: &Arc<Shared>, dc: i32, msg_id: i64, body: &[u8]) {
        let mut call = match api::unwrap(body) {
            Ok(c) => c,
            Err(e) => {
                let error = tl::enums::RpcError::from(tl::types::RpcError {
                    error_code: 400,
                    error_message: "INPUT_REQUEST_INVALID".into(),
                });
                self.rpc_result(msg_id, &error.to_bytes(), 0);
                shared.log_event("malformed", json!({"conn": self.id, "error": e}));
                return;
            }
        };
        if let Some(c) = shared
            .conns
            .lock()
            .unwrap()
            .iter_mut()
            .find(|c| c.id == self.id)
        {
            c.active = true;
        }
        let method = call.method;
        let caller = Caller {
            dc,
            ports: shared.ports.clone(),
        };
        let mut slow: Option<scenario::Fault> = None;
        let (answer, gzip_over, n) = {
            let mut world = shared.world.lock().unwrap();
            let n = {
                let count = world.calls.entry(method.to_string()).or_insert(0);
                *count += 1;
                *count
            };
            let fault = world
                .scenario
                .faults
                .iter()
                .find(|f| f.method == method && n >= f.call && n < f.call + f.times)
                .cloned();
            let mut drop_after = false;
            let fault = fault.and_then(|f| {
                call.log
                    .insert("fault".into(), json!(format!("{:?}", f.action)));
                if f.error.as_deref() == Some("FILE_REFERENCE_EXPIRED") {
                    // The reference the client holds stays expired after this call too.
                    world.expire_file_references();
                }
                Some(match f.action {
                    FaultAction::ProcessThenDrop => {
                        drop_after = true;
                        return None;
                    }
                    FaultAction::Slow => {
                        slow = Some(f.clone());
                        return None;
                    }
                    FaultAction::Error => Answer::Error(
                        f.error_code(),
                        f.error.clone().unwrap_or_else(|| "INTERNAL".into()),
                    ),
                    FaultAction::Drop => Answer::Drop,
                    FaultAction::Stall => Answer::Stall,
                    FaultAction::Freeze => Answer::Freeze,
                })
            });
            let mut answer = api::answer(&mut world, &caller, &mut call, fault);
            if drop_after {
                // Done, but the answer never leaves.
                call.log
                    .insert("processed".into(), json!(matches!(answer, Answer::Ok(_))));
                answer = Answer::Drop;
            }
            let gzip_over = if method == "upload.getFile" {
                0
            } else {
                world.scenario.server.gzip_over
            };
            (answer, gzip_over, n)
        };

        let mut entry = std::mem::take(&mut call.log);
        entry.insert("method".into(), json!(method));
        entry.insert("call".into(), json!(n));
        entry.insert("dc".into(), json!(dc));
        entry.insert("conn".into(), json!(self.id));
        entry.insert("msg_id".into(), json!(msg_id));
        entry.insert(
            "answer".into(),
            match &answer {
                Answer::Ok(_) => json!("ok"),
                Answer::Error(code, name) => json!(format!("{code} {name}")),
                Answer::Drop => json!("drop"),
                Answer::Stall => json!("stall"),
                Answer::Freeze => json!("freeze"),
            },
        );
        if let (Some(f), Answer::Ok(bytes)) = (&slow, &answer) {
            entry.insert(
                "delay_s".into(),
                json!(f.slow_delay(bytes.len()).as_secs_f64()),
            );
        }
        shared.log.lock().unwrap().push(entry);

        if let (Some(f), Answer::Ok(bytes)) = (&slow, &answer) {
            // Sent later from a task of its own; the connection goes on reading meanwhile.
            let body = rpc_result_body(msg_id, bytes, gzip_over);
            let delay = f.slow_delay(bytes.len());
            let tx = self.tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(Out::Msg {
                    body,
                    content_related: true,
                    response: true,
                });
            });
            return;
        }

        match answer {
            Answer::Ok(bytes) => self.rpc_result(msg_id, &bytes, gzip_over),
            Answer::Error(code, name) => {
                let error = tl::enums::RpcError::from(tl::types::RpcError {
                    error_code: code,
                    error_message: name,
                });
                self.rpc_result(msg_id, &error.to_bytes(), 0);
            }
            Answer::Drop => self.closing = true,
            Answer::Stall => {}
            Answer::Freeze => {
                self.frozen = true;
                shared.log_event("frozen", json!({"conn": self.id}));
            }
        }

        if matches!(method, "updates.getState" | "updates.getDifference") {
            let mut synced = shared.synced.lock().unwrap();
            if synced.is_none() {
                *synced = Some(Instant::now());
                drop(synced);
                schedule_live(shared);
            }
        }
    }
}

/// The body of an `rpc_result`, gzip-packed when bigger than `gzip_over` (0: never).
fn rpc_result_body(req_msg_id: i64, result: &[u8], gzip_over: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + result.len());
    RPC_RESULT.serialize(&mut body);
    req_msg_id.serialize(&mut body);
    if gzip_over > 0 && result.len() > gzip_over {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(result).unwrap();
        let packed = e.finish().unwrap();
        GZIP_PACKED.serialize(&mut body);
        packed.serialize(&mut body);
    } else {
        body.extend_from_slice(result);
    }
    body
}

/// Starts the timers of the scenario's live messages (from the first state request on).
fn schedule_live(shared: &Arc<Shared>) {
    let live: Vec<scenario::Message> = shared
        .world
        .lock()
        .unwrap()
        .scenario
        .messages
        .iter()
        .filter(|m| m.delivery == scenario::Delivery::Live)
        .cloned()
        .collect();
    shared.log_event("synced", json!({"live_messages": live.len()}));
    for m in live {
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(m.after_s.max(0.0))).await;
            if let Err(e) = shared.deliver(&m) {
                shared.log_event("error", json!({"deliver": e}));
            }
        });
    }
}
