//! The real grammers client against the fake Telegram data center (`tests/fake_telegram/`):
//! first the daemon's Telegram link in-process (connect, updates, reply, edit, fetch,
//! download), then the real `voice-transcriber` binary end to end with the real tiny.en model
//! and a real voice clip. Only loopback is used; every wait has a deadline.

mod common;
mod fake_telegram;
mod harness;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fake_telegram::{FakeDc, Scenario};
use harness::{
    jfk, jfk_ok, jfk_wav, live_voice, pushed_id, reply_to, scenario, user_of, Daemon, ANN, BOB,
    FAMILY, OWNER,
};
use serde_json::Value;
use voice_transcriber::daemon::messenger::{Connection, MediaKind, Messenger};
use voice_transcriber::telegram::{self, TelegramOptions};

// ---- the protocol itself --------------------------------------------------------------------

#[test]
fn server_crypto_is_the_mirror_of_the_clients() {
    use grammers_crypto::{decrypt_data_v2, encrypt_data_v2, AuthKey, DequeBuffer};
    let mut data = [0u8; 256];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let ours = fake_telegram::crypto::AuthKey::new(data);
    let theirs = AuthKey::from_bytes(data);
    let text: Vec<u8> = (0..100u8).collect();

    // Client → server.
    let mut buffer = DequeBuffer::with_capacity(text.len(), 32);
    buffer.extend(text.iter().copied());
    encrypt_data_v2(&mut buffer, &theirs);
    let plain = fake_telegram::crypto::decrypt_from_client(&ours, &buffer[..]).unwrap();
    assert_eq!(&plain[..text.len()], &text[..]);

    // Server → client.
    let mut n = 0u8;
    let mut packet = fake_telegram::crypto::encrypt_for_client(&ours, &text, &mut || {
        n = n.wrapping_add(1);
        n
    });
    let plain = decrypt_data_v2(&mut packet, &theirs).unwrap();
    assert_eq!(&plain[..text.len()], &text[..]);
}

/// Opens the daemon's Telegram link on `dir` inside a current-thread runtime with a LocalSet
/// (as the daemon runs it) and hands it to `body`.
fn with_link<T>(
    dir: &Path,
    body: impl AsyncFnOnce(telegram::Telegram, telegram::TelegramUpdates) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let options = TelegramOptions {
            request_timeout: Duration::from_secs(10),
            ..TelegramOptions::default()
        };
        let (tg, updates) =
            telegram::open_with(fake_telegram::API_ID, &telegram::session_path(dir), options)
                .await
                .expect("the session written by the fake opens");
        body(tg, updates).await
    })
}

const BOUND: Duration = Duration::from_secs(30);

#[test]
fn link_bootstraps_receives_replies_edits_fetches_and_downloads() {
    let dc = FakeDc::start(
        scenario(&format!(
            r#"
[[messages]]
chat = "ann"
text = "hello from Ann"
delivery = "offline"

[[messages]]
chat = "ann"
text = "a voice"
after_s = 0.5
[messages.voice]
file = {:?}
duration_s = 11
"#,
            jfk()
        )),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    dc.write_state_dir(dir.path(), "").unwrap();
    let download = dir.path().join("voice.ogg");
    with_link(dir.path(), async |tg, mut updates| {
        tokio::time::timeout(BOUND, updates.connect())
            .await
            .expect("connect returns")
            .expect("connect succeeds");

        // The offline message comes through getDifference, the voice as a pushed update.
        let first = tokio::time::timeout(BOUND, updates.next())
            .await
            .expect("next returns")
            .expect("a message");
        assert_eq!(
            (
                first.chat,
                first.sender,
                first.text.as_str(),
                first.outgoing
            ),
            (ANN, Some(ANN), "hello from Ann", false)
        );
        assert_eq!(first.sender_name, "Ann");
        let voice = tokio::time::timeout(BOUND, updates.next())
            .await
            .expect("next returns")
            .expect("a message");
        let media = voice.media.clone().expect("the voice carries audio");
        assert_eq!(media.kind, MediaKind::Voice);
        assert_eq!(media.duration_s, 11.0);
        assert_eq!(media.size, std::fs::metadata(jfk()).unwrap().len());

        let sent = tg.reply(ANN, voice.id, "got it").await.expect("reply");
        tg.edit(ANN, sent, "got it, edited").await.expect("edit");
        // Same text again: Telegram's MESSAGE_NOT_MODIFIED counts as done.
        tg.edit(ANN, sent, "got it, edited")
            .await
            .expect("edit again");
        let fetched = tg
            .fetch(ANN, voice.id)
            .await
            .expect("fetch")
            .expect("exists");
        assert_eq!(fetched.id, voice.id);
        assert!(tg.fetch(ANN, 9999).await.expect("fetch").is_none());
        let mut into = voice_transcriber::daemon::download::Download::in_file(&download).unwrap();
        let n = tg
            .download(ANN, voice.id, &mut into)
            .await
            .expect("download");
        assert_eq!(n, std::fs::metadata(jfk()).unwrap().len());
        let resolved = tg.resolve_username("@ann").await.expect("resolve");
        assert_eq!(resolved, Some((ANN, "Ann".to_string())));
        assert_eq!(tg.resolve_username("nobody").await.expect("resolve"), None);

        tokio::time::timeout(BOUND, updates.close())
            .await
            .expect("close returns")
            .expect("close saves");
    });
    assert_eq!(
        std::fs::read(&download).unwrap(),
        std::fs::read(jfk()).unwrap()
    );
    assert_eq!(dc.message_text("ann", 3).as_deref(), Some("got it, edited"));

    let log = dc.log();
    let first = log.iter().find(|e| e["method"].is_string()).unwrap();
    assert_eq!(first["method"], "help.getConfig", "{first}");
    assert_eq!(first["layer"], grammers_tl_types::LAYER);
    assert_eq!(first["init"]["api_id"], fake_telegram::API_ID);
    assert_eq!(first["init"]["device_model"], "voice-transcriber");
    let me = &dc.calls("users.getUsers")[0];
    assert_eq!(me["ids"], serde_json::json!(["self"]));
    let diff = &dc.calls("updates.getDifference")[0];
    assert_eq!(diff["pts"], 100);
    assert_eq!(diff["new_messages"], 1);
    let sent = &dc.calls("messages.sendMessage")[0];
    assert_eq!(user_of(sent), Some(ANN));
    assert_eq!(sent["peer"]["access_hash"], 5555);
    assert_eq!(sent["reply_to"], 2);
    assert_eq!(sent["message"], "got it");
    let edits = dc.calls("messages.editMessage");
    assert_eq!(edits.len(), 2);
    assert_eq!(edits[1]["answer"], "400 MESSAGE_NOT_MODIFIED");
    let file = &dc.calls("upload.getFile")[0];
    assert_eq!(file["offset"], 0);
    assert_eq!(
        file["limit"],
        128 * 1024,
        "the first part, before the link is known"
    );
    assert!(log.iter().any(|e| e["event"] == "new_session"));
    // A client with a saved key starts with salt 0: told the right one, it sent again.
    let salt = log
        .iter()
        .position(|e| e["event"] == "bad_server_salt")
        .expect("the first message carried the wrong salt");
    let config = log
        .iter()
        .position(|e| e["method"] == "help.getConfig")
        .unwrap();
    assert!(salt < config);
}

// ---- the daemon end to end ------------------------------------------------------------------

#[test]
fn daemon_answers_the_owners_status_command_by_editing_it() {
    let dc = FakeDc::start(
        scenario(
            r#"
[[messages]]
chat = "ann"
from = "owner"
text = "/status"
after_s = 0.5
"#,
        ),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let edit = daemon.wait(&dc, 120, "the /status answer", |log| {
        log.iter()
            .find(|e| e["method"] == "messages.editMessage")
            .cloned()
    });
    let id = pushed_id(&dc.log(), "/status").unwrap();
    assert_eq!(edit["id"], id, "{edit}");
    assert_eq!(user_of(&edit), Some(ANN), "{edit}");
    let text = edit["message"].as_str().unwrap();
    assert!(text.starts_with("voice-transcriber"), "{text}");
    assert!(text.contains("Telegram: connected"), "{text}");
    assert_eq!(edit["answer"], "ok");
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn daemon_transcribes_a_tracked_users_live_voice_message() {
    let dc = FakeDc::start(
        scenario(&format!(
            r#"
[[messages]]
chat = "ann"
text = ""
after_s = 0.5
[messages.voice]
file = {jfk:?}
duration_s = 11

[[messages]]
chat = "family"
from = "ann"
text = "in the group"
after_s = 1.0
[messages.voice]
file = {jfk:?}
duration_s = 11

[[messages]]
chat = "family"
from = "bob"
text = "Bob is not tracked"
after_s = 1.0
[messages.voice]
file = {jfk:?}
duration_s = 11
"#,
            jfk = jfk()
        )),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let (text, sent) = daemon.wait(&dc, 180, "the transcript reply", |log| {
        let id = log
            .iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())?;
        reply_to(log, id)
    });
    assert!(jfk_ok(&text), "transcript: {text}");
    assert_eq!(user_of(&sent), Some(ANN));
    assert_eq!(sent["peer"]["access_hash"], 5555);
    let log = dc.log();
    let id = log
        .iter()
        .find(|e| e["event"] == "push")
        .and_then(|e| e["id"].as_i64())
        .unwrap();
    assert!(
        dc.calls("messages.getMessages")
            .iter()
            .any(|e| e["ids"] == serde_json::json!([id])),
        "the daemon fetched the message before downloading"
    );
    let chunks = dc.calls("upload.getFile");
    assert!(!chunks.is_empty());
    let size = std::fs::metadata(jfk()).unwrap().len() as i64;
    let first_doc = &chunks[0]["location"]["document"];
    let mut offset = 0;
    for c in chunks
        .iter()
        .filter(|c| &c["location"]["document"] == first_doc)
    {
        assert_eq!(c["offset"], offset, "chunks in order: {c}");
        assert_eq!(c["answer"], "ok");
        offset += c["limit"].as_i64().unwrap();
    }
    assert!(offset >= size, "the whole file was fetched");

    // In the basic group too, answered in the group; Bob's voice is left alone.
    let in_group = pushed_id(&log, "in the group").unwrap();
    let (text, sent) = daemon.wait(&dc, 180, "the group reply", |log| reply_to(log, in_group));
    assert!(jfk_ok(&text), "transcript: {text}");
    assert_eq!(sent["peer"], serde_json::json!({"chat": FAMILY}));
    std::thread::sleep(Duration::from_secs(3));
    let bobs = pushed_id(&dc.log(), "Bob is not tracked").unwrap();
    assert!(reply_to(&dc.log(), bobs).is_none(), "Bob is not tracked");
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn daemon_transcribes_a_voice_sent_while_it_was_offline() {
    let dc = FakeDc::start(
        scenario(&format!(
            r#"
[[messages]]
chat = "ann"
id = 41
text = ""
delivery = "offline"
[messages.voice]
file = {:?}
duration_s = 11
"#,
            jfk()
        )),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let (text, _) = daemon.wait(&dc, 180, "the transcript reply", |log| reply_to(log, 41));
    assert!(jfk_ok(&text), "transcript: {text}");
    let diff = &dc.calls("updates.getDifference")[0];
    assert_eq!(diff["pts"], 100, "{diff}");
    assert_eq!(diff["new_messages"], 1, "{diff}");
    assert!(!dc.log().iter().any(|e| e["event"] == "push"));
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn sigterm_stops_the_connected_daemon_cleanly() {
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut daemon = Daemon::start(&dc);
    daemon.wait(&dc, 120, "the daemon's update sync", |log| {
        log.iter()
            .find(|e| e["method"] == "updates.getDifference")
            .cloned()
    });
    let started = Instant::now();
    let status = daemon.stop(&dc);
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(daemon.log().contains("stopped"), "{}", daemon.log());
    // The session survives with the owner and the key.
    let session = telegram::FileSession::load(&telegram::session_path(daemon.dir.path()))
        .unwrap()
        .unwrap();
    assert!(session.is_logged_in());
    assert_eq!(session.self_user_id(), Some(OWNER));
}

#[test]
fn a_flood_wait_on_the_reply_is_slept_through_and_the_same_message_sent_again() {
    let dc = FakeDc::start(
        live_voice(
            r#"
[[faults]]
method = "messages.sendMessage"
call = 1
error = "FLOOD_WAIT_5"
"#,
        ),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let sent = daemon.wait(&dc, 180, "the reply after the flood wait", |log| {
        let sent: Vec<Value> = log
            .iter()
            .filter(|e| e["method"] == "messages.sendMessage")
            .cloned()
            .collect();
        (sent.len() >= 2).then_some(sent)
    });
    assert_eq!(sent[0]["answer"], "420 FLOOD_WAIT_5");
    assert_eq!(sent[0]["fault"], "Error");
    assert_eq!(sent[1]["answer"], "ok");
    assert!(jfk_ok(sent[1]["message"].as_str().unwrap()), "{}", sent[1]);
    let waited = sent[1]["t"].as_f64().unwrap() - sent[0]["t"].as_f64().unwrap();
    assert!(
        waited >= 5.0,
        "the 5 s wait was honoured (waited {waited:.2} s)"
    );
    // grammers re-sends the request as it was: one random_id, so Telegram could deduplicate.
    assert_eq!(sent[0]["random_id"], sent[1]["random_id"]);
    assert_eq!(sent.len(), 2, "one reply only: {sent:?}");
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_tracked_strangers_voice_is_answered_with_the_access_hash_its_update_brought() {
    // Ann is tracked but neither in the owner's contacts nor in the session: her access hash
    // exists only in the users list of the update that brings her voice.
    let mut s = live_voice("");
    let ann = s.users.iter_mut().find(|u| u.key == "ann").unwrap();
    ann.contact = false;
    ann.known = false;
    let dc = FakeDc::start(s, None).unwrap();
    let mut daemon = Daemon::start(&dc);
    let id = daemon.wait(&dc, 60, "the voice push", |log| {
        log.iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())
    });
    let (text, sent) = daemon.wait(&dc, 180, "the transcript reply", |log| reply_to(log, id));
    assert!(jfk_ok(&text), "transcript: {text}");
    assert_eq!(sent["peer"]["user"], ANN, "{sent}");
    assert_eq!(sent["peer"]["access_hash"], 5555, "{sent}");
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_connection_dropped_mid_download_is_reopened_and_the_voice_still_answered() {
    let dc = FakeDc::start(
        live_voice(
            r#"
[[faults]]
method = "upload.getFile"
call = 1
action = "drop"
"#,
        ),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let id = daemon.wait(&dc, 60, "the voice push", |log| {
        log.iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())
    });
    let (text, _) = daemon.wait(&dc, 180, "the transcript reply", |log| reply_to(log, id));
    assert!(jfk_ok(&text), "transcript: {text}");
    let chunks = dc.calls("upload.getFile");
    assert_eq!(chunks[0]["answer"], "drop");
    let last = chunks.last().unwrap();
    assert_eq!(last["answer"], "ok");
    assert_ne!(
        chunks[0]["conn"], last["conn"],
        "a new connection served the retry"
    );
    let log = dc.log();
    assert!(log
        .iter()
        .any(|e| e["event"] == "disconnect" && e["why"] == "closed by the server"));
    // The new connection starts over with initConnection, and the update stream catches up.
    let reopened: Vec<&Value> = log
        .iter()
        .filter(|e| e["conn"] == last["conn"] && e["method"].is_string())
        .collect();
    assert_eq!(reopened[0]["method"], "help.getConfig", "{reopened:?}");
    assert!(
        dc.calls("updates.getDifference").len() >= 2,
        "the drop made the update stream fetch the difference again"
    );
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_voice_stored_on_other_data_centers_is_fetched_there_with_the_exported_authorization() {
    // The document says data center 1; the file is on 4. Neither knows the owner at first.
    let dc = FakeDc::start(
        scenario(&format!(
            r#"
[[messages]]
chat = "ann"
after_s = 0.5
[messages.voice]
file = {:?}
duration_s = 11
dc = 4
listed_dc = 1
"#,
            jfk()
        )),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let id = daemon.wait(&dc, 60, "the voice push", |log| {
        log.iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())
    });
    let (text, _) = daemon.wait(&dc, 180, "the transcript reply", |log| reply_to(log, id));
    assert!(jfk_ok(&text), "transcript: {text}");
    let chunks: Vec<(i64, String)> = dc
        .calls("upload.getFile")
        .iter()
        .map(|c| {
            (
                c["dc"].as_i64().unwrap(),
                c["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        chunks,
        [
            (1, "401 AUTH_KEY_UNREGISTERED".to_string()),
            (1, "303 FILE_MIGRATE_4".to_string()),
            (4, "401 AUTH_KEY_UNREGISTERED".to_string()),
            (4, "ok".to_string()),
        ]
    );
    let exports: Vec<(i64, i64)> = dc
        .calls("auth.exportAuthorization")
        .iter()
        .map(|c| (c["dc"].as_i64().unwrap(), c["dc_id"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        exports,
        [(2, 1), (2, 4)],
        "exported from home to 1, then to 4"
    );
    let imports: Vec<(i64, String)> = dc
        .calls("auth.importAuthorization")
        .iter()
        .map(|c| {
            (
                c["dc"].as_i64().unwrap(),
                c["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(imports, [(1, "ok".to_string()), (4, "ok".to_string())]);
    // Each data center was reached on its own port, with its own key.
    let connected: Vec<i64> = dc
        .log()
        .iter()
        .filter(|e| e["event"] == "connect")
        .filter_map(|e| e["dc"].as_i64())
        .collect();
    for want in [2, 1, 4] {
        assert!(connected.contains(&want), "{connected:?}");
    }
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_supergroup_is_caught_up_by_channel_difference_and_answered_in_the_group() {
    let dc = FakeDc::start(
        scenario(&format!(
            r#"
[[chats]]
key = "team"
kind = "supergroup"
id = 700
access_hash = 777
title = "Team"
members = ["ann", "bob"]
pts = 10

[[messages]]
chat = "team"
from = "ann"
id = 5
delivery = "offline"
[messages.voice]
file = {:?}
duration_s = 11

[[messages]]
chat = "team"
from = "owner"
text = "/status"
after_s = 1.0
"#,
            jfk()
        )),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let (text, sent) = daemon.wait(&dc, 180, "the transcript reply", |log| reply_to(log, 5));
    assert!(jfk_ok(&text), "transcript: {text}");
    assert_eq!(
        sent["peer"],
        serde_json::json!({"channel": 700, "access_hash": 777})
    );
    let diff = &dc.calls("updates.getChannelDifference")[0];
    assert_eq!(
        diff["channel"],
        serde_json::json!({"channel": 700, "access_hash": 777})
    );
    assert_eq!(diff["pts"], 10, "{diff}");
    let fetched = dc.calls("channels.getMessages");
    assert!(fetched.iter().any(|e| e["ids"] == serde_json::json!([5])));
    // The live command in the group is pushed as updateNewChannelMessage and edited there.
    let edit = daemon.wait(&dc, 60, "the /status answer", |log| {
        log.iter()
            .find(|e| e["method"] == "messages.editMessage")
            .cloned()
    });
    assert_eq!(edit["peer"]["channel"], 700, "{edit}");
    assert!(edit["message"]
        .as_str()
        .unwrap()
        .starts_with("voice-transcriber"));
    assert_eq!(edit["answer"], "ok");
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_voice_bigger_than_one_part_is_downloaded_in_parts_that_grow_on_a_fast_link() {
    let clips = tempfile::tempdir().unwrap();
    let wav = jfk_wav(clips.path());
    let size = std::fs::metadata(&wav).unwrap().len() as i64;
    assert!(size > 512 * 1024, "{size}");
    let dc = FakeDc::start(
        scenario(&format!(
            r#"
[[messages]]
chat = "ann"
after_s = 0.5
[messages.voice]
file = {wav:?}
duration_s = 11
mime_type = "audio/wav"
"#
        )),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let id = daemon.wait(&dc, 60, "the voice push", |log| {
        log.iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())
    });
    let (text, _) = daemon.wait(&dc, 180, "the transcript reply", |log| reply_to(log, id));
    assert!(jfk_ok(&text), "transcript: {text}");
    let parts: Vec<(i64, i64)> = dc
        .calls("upload.getFile")
        .iter()
        .map(|c| (c["offset"].as_i64().unwrap(), c["limit"].as_i64().unwrap()))
        .collect();
    // 128 KiB first; loopback is fast, so each next part doubles, kept aligned to its size.
    assert_eq!(
        parts,
        [
            (0, 131_072),
            (131_072, 131_072),
            (262_144, 262_144),
            (524_288, 524_288)
        ]
    );
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn voices_caught_up_in_one_batch_survive_a_sigkill_and_are_each_answered_once() {
    // Three voices arrive in one updates.getDifference; the daemon is killed right after its
    // first reply, then started again on the same state directory.
    let voice = |id: i32| {
        format!(
            "[[messages]]\nchat = \"ann\"\nid = {id}\ndelivery = \"offline\"\n\
             [messages.voice]\nfile = {:?}\nduration_s = 11\n",
            jfk()
        )
    };
    let dc = FakeDc::start(scenario(&(41..=43).map(voice).collect::<String>()), None).unwrap();
    let mut daemon = Daemon::start(&dc);
    daemon.wait(&dc, 180, "the first reply", |log| reply_to(log, 41));
    // Kill once the first job is recorded as done. (Killed between the reply and that record,
    // the daemon answers 41 a second time after the restart: delivery is at least once.)
    daemon.wait_done(&dc, 30, ANN, 41);
    daemon.kill();
    daemon.restart();
    daemon.wait(&dc, 240, "replies to all three", |log| {
        (41..=43)
            .all(|id| reply_to(log, id).is_some())
            .then_some(())
    });
    // Let a duplicate, if any, arrive before counting.
    std::thread::sleep(Duration::from_secs(3));
    let log = dc.log();
    for id in 41..=43 {
        let replies: Vec<&Value> = log
            .iter()
            .filter(|e| e["method"] == "messages.sendMessage" && e["reply_to"] == id)
            .collect();
        assert_eq!(replies.len(), 1, "message {id} answered once: {replies:?}");
        assert!(jfk_ok(replies[0]["message"].as_str().unwrap()));
    }
    let diffs = dc.calls("updates.getDifference");
    assert!(diffs.len() >= 2, "the restart caught up again: {diffs:?}");
    // The update position on disk at the kill is at most SAVE_INTERVAL old: the restart's
    // difference may bring 41..=43 again (the spool's done records absorb them) or start
    // past them (then the spool, written when they were queued, kept 42 and 43).
    assert!(diffs[1]["pts"].as_i64().unwrap() >= 100, "{diffs:?}");
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_download_part_that_never_answers_is_asked_again_after_the_deadline_on_the_same_connection() {
    // The first chunk request is never answered, but the connection answers the others.
    let dc = FakeDc::start(
        live_voice(
            r#"
[[faults]]
method = "upload.getFile"
call = 1
action = "stall"
"#,
        ),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let id = daemon.wait(&dc, 60, "the voice push", |log| {
        log.iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())
    });
    let (text, _) = daemon.wait(&dc, 150, "the transcript reply", |log| reply_to(log, id));
    assert!(jfk_ok(&text), "transcript: {text}");
    let chunks = dc.calls("upload.getFile");
    assert_eq!(chunks[0]["answer"], "stall");
    let last = chunks.last().unwrap();
    assert_eq!(last["answer"], "ok");
    let waited = last["t"].as_f64().unwrap() - chunks[0]["t"].as_f64().unwrap();
    assert!(
        waited >= 30.0,
        "the 30 s request deadline ran out first ({waited:.1} s)"
    );
    assert!(
        daemon.log().contains("no part at byte 0 within 30s"),
        "{}",
        daemon.log()
    );
    // A missed part is not a dead pool: asked again on the same connection, no new one.
    assert_eq!(last["conn"], chunks[0]["conn"], "{}", dc.log_text());
    let connects = dc.log().iter().filter(|e| e["event"] == "connect").count();
    assert_eq!(connects, 1, "{}", dc.log_text());
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_connection_that_goes_silent_is_replaced_and_the_voice_still_answered() {
    // From the first chunk request on, the connection answers nothing but stays open.
    let dc = FakeDc::start(
        live_voice(
            r#"
[[faults]]
method = "upload.getFile"
call = 1
action = "freeze"
"#,
        ),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let id = daemon.wait(&dc, 60, "the voice push", |log| {
        log.iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())
    });
    let (text, _) = daemon.wait(&dc, 200, "the transcript reply", |log| reply_to(log, id));
    assert!(jfk_ok(&text), "transcript: {text}");
    let chunks = dc.calls("upload.getFile");
    assert_eq!(chunks[0]["answer"], "freeze");
    let last = chunks.last().unwrap();
    assert_eq!(last["answer"], "ok");
    assert_ne!(chunks[0]["conn"], last["conn"], "{}", dc.log_text());
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_long_catch_up_comes_in_difference_slices_and_every_command_is_answered_once() {
    // Five commands the owner typed in Saved Messages while the daemon was down, and a
    // server that hands out at most two updates per updates.getDifference.
    let commands: String = (1..=5)
        .map(|_| "[[messages]]\nchat = \"self\"\nfrom = \"owner\"\ntext = \"/status\"\ndelivery = \"offline\"\n".to_string())
        .collect();
    let dc = FakeDc::start(
        scenario(&format!("[server]\ndifference_limit = 2\n{commands}")),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let edits = daemon.wait(&dc, 120, "five edits", |log| {
        let edits: Vec<Value> = log
            .iter()
            .filter(|e| e["method"] == "messages.editMessage")
            .cloned()
            .collect();
        (edits.len() >= 5).then_some(edits)
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut ids: Vec<i64> = dc
        .calls("messages.editMessage")
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4, 5], "each command answered once");
    for e in &edits {
        assert!(e["message"]
            .as_str()
            .unwrap()
            .starts_with("voice-transcriber"));
        assert_eq!(e["answer"], "ok", "{e}");
    }
    let diffs = dc.calls("updates.getDifference");
    assert_eq!(diffs[0]["pts"], 100);
    assert_eq!(diffs[0]["slice"], true, "{diffs:?}");
    assert_eq!(
        diffs[1]["pts"], 102,
        "the next call starts where the slice ended"
    );
    assert!(diffs.len() >= 3, "{diffs:?}");
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

/// The owner's /status from another device, pushed as `updateShortMessage` (no users
/// attached) in the chat with Ann; `ann_known`: the session has Ann's access hash.
fn short_status(ann_known: bool) -> (FakeDc, Daemon) {
    let mut s = scenario(
        r#"
[[messages]]
chat = "ann"
from = "owner"
text = "/status"
after_s = 0.5
form = "short"
"#,
    );
    s.users[0].known = ann_known;
    let dc = FakeDc::start(s, None).unwrap();
    let daemon = Daemon::start(&dc);
    (dc, daemon)
}

#[test]
fn a_command_pushed_as_a_short_update_is_answered_with_the_cached_access_hash() {
    let (dc, mut daemon) = short_status(true);
    let edit = daemon.wait(&dc, 120, "the /status answer", |log| {
        log.iter()
            .find(|e| e["method"] == "messages.editMessage")
            .cloned()
    });
    assert_eq!(
        edit["peer"],
        serde_json::json!({"user": ANN, "access_hash": 5555})
    );
    assert_eq!(edit["answer"], "ok");
    assert!(edit["message"]
        .as_str()
        .unwrap()
        .starts_with("voice-transcriber"));
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_command_pushed_as_a_short_update_from_an_uncached_chat_is_still_answered() {
    // updateShortMessage carries no users: the daemon must learn Ann's access hash (from the
    // difference just before that update) before it can answer in her chat.
    let (dc, mut daemon) = short_status(false);
    let edit = daemon.wait(&dc, 60, "an answer to /status", |log| {
        log.iter()
            .find(|e| {
                (e["method"] == "messages.editMessage" || e["method"] == "messages.sendMessage")
                    && e["answer"] == "ok"
            })
            .cloned()
    });
    assert_eq!(user_of(&edit), Some(ANN));
    assert_eq!(edit["peer"]["access_hash"], 5555, "{edit}");
    let id = pushed_id(&dc.log(), "/status").unwrap();
    assert_eq!(edit["id"], id, "the command itself was edited: {edit}");
    let refused: Vec<Value> = dc
        .log()
        .into_iter()
        .filter(|e| e["answer"] == "400 PEER_ID_INVALID")
        .collect();
    assert!(
        refused.is_empty(),
        "never sent with a hash it lacked: {refused:?}"
    );
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_peer_id_invalid_on_the_reply_makes_the_chat_looked_up_again_not_the_job_dropped() {
    // Telegram refuses the first reply as if the chat were unknown: the message is not gone,
    // so the daemon looks the chat up again and still delivers the transcript.
    let dc = FakeDc::start(
        live_voice(
            r#"
[[faults]]
method = "messages.sendMessage"
call = 1
error = "PEER_ID_INVALID"
"#,
        ),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let id = daemon.wait(&dc, 60, "the voice push", |log| {
        log.iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())
    });
    let sent = daemon.wait(&dc, 180, "a delivered reply", |log| {
        log.iter()
            .find(|e| {
                e["method"] == "messages.sendMessage" && e["reply_to"] == id && e["answer"] == "ok"
            })
            .cloned()
    });
    assert!(jfk_ok(sent["message"].as_str().unwrap()), "{sent}");
    let sends = dc.calls("messages.sendMessage");
    assert_eq!(sends[0]["answer"], "400 PEER_ID_INVALID");
    assert!(
        !dc.calls("messages.getDialogs").is_empty(),
        "the chat was looked up again"
    );
    assert!(!daemon.log().contains("job dropped"), "{}", daemon.log());
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_catch_up_batch_cut_short_by_a_sigkill_is_fetched_again_and_every_voice_answered_once() {
    // Twenty voices and one /status come in one updates.getDifference: voice 41, the
    // command, voices 42..=60. The command's edit is never answered, so the receiver is
    // stuck on it while voice 41 is transcribed and answered; at that moment 42..=60 were
    // handed to nobody and spooled nowhere. Killed then, the daemon must not have saved an
    // update position past them.
    let voice = |id: i32| {
        format!(
            "[[messages]]\nchat = \"ann\"\nid = {id}\ndelivery = \"offline\"\n\
             [messages.voice]\nfile = {:?}\nduration_s = 11\n",
            jfk()
        )
    };
    // Its own id: private chats share one box of ids.
    let command = "[[messages]]\nchat = \"self\"\nfrom = \"owner\"\nid = 61\n\
                   text = \"/status\"\ndelivery = \"offline\"\n";
    let stall = "[[faults]]\nmethod = \"messages.editMessage\"\ncall = 1\naction = \"stall\"\n";
    let messages = format!(
        "{}{command}{}{stall}",
        voice(41),
        (42..=60).map(voice).collect::<String>()
    );
    let dc = FakeDc::start(scenario(&messages), None).unwrap();
    let mut daemon = Daemon::start(&dc);
    daemon.wait(&dc, 120, "the stalled /status edit", |log| {
        log.iter()
            .find(|e| e["method"] == "messages.editMessage")
            .cloned()
    });
    daemon.wait(&dc, 180, "the first reply", |log| reply_to(log, 41));
    daemon.wait_done(&dc, 30, ANN, 41);
    // The receiver is still stuck on the command: nothing after it was spooled.
    let jobs = common::spool_on_disk(daemon.dir.path()).pending;
    assert!(
        jobs.is_empty(),
        "42..=60 must not be spooled before the kill: {jobs:?}"
    );
    assert_eq!(
        dc.calls("messages.editMessage").len(),
        1,
        "the edit is still unanswered"
    );
    let before = dc.calls("updates.getDifference").len();
    daemon.kill();
    daemon.restart();
    let diff = daemon.wait(&dc, 120, "the catch-up after the restart", |log| {
        log.iter()
            .filter(|e| e["method"] == "updates.getDifference")
            .nth(before)
            .cloned()
    });
    // 41 is pts 101, the command 102, voice 42 pts 103.
    assert!(
        diff["pts"].as_i64().unwrap() < 103,
        "the saved position must not cover the voices never handed out: {diff}"
    );
    daemon.wait(&dc, 600, "replies to all twenty", |log| {
        (41..=60)
            .all(|id| reply_to(log, id).is_some())
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    for id in 41..=60 {
        let replies = dc.replies_in("ann", id);
        assert_eq!(replies.len(), 1, "message {id} answered once: {replies:?}");
        assert!(jfk_ok(&replies[0]), "{replies:?}");
    }
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_reply_whose_answer_was_lost_is_not_posted_twice() {
    // Telegram posts the transcript, then the connection drops before the answer arrives.
    // Sending again must reuse the random_id (Telegram then says RANDOM_ID_DUPLICATE), and
    // that counts as delivered.
    let dc = FakeDc::start(
        live_voice(
            r#"
[[faults]]
method = "messages.sendMessage"
call = 1
action = "process_then_drop"
"#,
        ),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let id = daemon.wait(&dc, 60, "the voice push", |log| {
        log.iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())
    });
    let first = daemon.wait(&dc, 180, "the reply", |log| reply_to(log, id));
    assert_eq!(first.1["fault"], "ProcessThenDrop", "{}", first.1);
    assert_eq!(first.1["processed"], true, "{}", first.1);
    // Give a resend, or a second attempt at the whole job, time to happen.
    daemon.wait_done(&dc, 60, ANN, id);
    std::thread::sleep(Duration::from_secs(5));
    let replies = dc.replies_in("ann", id as i32);
    assert_eq!(
        replies.len(),
        1,
        "one transcript in the chat: {replies:?}\n{}",
        dc.log_text()
    );
    assert!(jfk_ok(&replies[0]));
    let sends = dc.calls("messages.sendMessage");
    for s in &sends[1..] {
        assert_eq!(s["random_id"], sends[0]["random_id"], "{sends:?}");
    }
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

/// (rchar, wchar, syscw, write_bytes) of a process, from `/proc/<pid>/io`.
fn proc_io(pid: u32) -> (u64, u64, u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(": ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    (
        field("rchar"),
        field("wchar"),
        field("syscw"),
        field("write_bytes"),
        field("cancelled_write_bytes"),
    )
}

/// How much the daemon writes per voice message: twenty live voices from a tracked user, the
/// daemon's `/proc/<pid>/io` before the first and after the last reply. With
/// FAKE_DC_STRACE=1 the daemon runs under `strace -f -c -e trace=fsync,fdatasync` and the
/// summary is printed too. Run with `-- --ignored --nocapture measure_`.
#[test]
#[ignore = "a measurement, not a check: prints bytes written and fsync calls per voice"]
fn measure_disk_writes_per_voice_message() {
    const N: i64 = 20;
    let voices: String = (0..N)
        .map(|i| {
            format!(
                "[[messages]]\nchat = \"ann\"\nafter_s = {}\n[messages.voice]\nfile = {:?}\nduration_s = 11\n",
                4.0 + i as f64 * 0.5,
                jfk()
            )
        })
        .collect();
    let dc = FakeDc::start(scenario(&voices), None).unwrap();
    let dir = tempfile::tempdir_in(common::root().join("target")).unwrap();
    common::model_dir("tiny.en");
    let config = dc
        .write_state_dir(
            dir.path(),
            &format!(
                "model = \"tiny.en\"\nthreads = 2\nnice = 0\nmodels_dir = {:?}",
                common::root().join("models/cache")
            ),
        )
        .unwrap();
    let strace = std::env::var_os("FAKE_DC_STRACE").is_some();
    let summary = dir.path().join("strace.txt");
    let mut command = if strace {
        let mut c = Command::new("strace");
        c.arg("-f")
            .arg("-c")
            .arg("-o")
            .arg(&summary)
            .arg("-e")
            .arg("trace=fsync,fdatasync")
            .arg(common::bin());
        c
    } else {
        Command::new(common::bin())
    };
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut child = command
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    let wait = |what: &str, found: &dyn Fn(&[Value]) -> bool| loop {
        if found(&dc.log()) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    };
    wait("the first update sync", &|log| {
        log.iter().any(|e| e["method"] == "updates.getDifference")
    });
    // Under strace the daemon is strace's child.
    let daemon = if strace {
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
            .unwrap()
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the daemon under strace")
    } else {
        child.id()
    };
    let before = proc_io(daemon);
    wait("twenty replies", &|log| {
        log.iter()
            .filter(|e| e["method"] == "messages.sendMessage" && e["answer"] == "ok")
            .count()
            >= N as usize
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = proc_io(daemon);
    let pid = nix::unistd::Pid::from_raw(daemon as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap();
    if strace {
        // `strace -c`: a row per syscall, its call count in the fourth column. The counts
        // cover the whole run, start and shutdown included: an upper bound per message.
        let text = std::fs::read_to_string(&summary).unwrap_or_default();
        eprintln!("{text}");
        let calls: u64 = text
            .lines()
            .filter(|l| l.ends_with(" fsync") || l.ends_with(" fdatasync"))
            .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
            .sum();
        eprintln!(
            "fsync + fdatasync: {calls} in the whole run, {:.2} per voice message",
            calls as f64 / N as f64
        );
    } else {
        let per = |a: u64, b: u64| (b - a) as f64 / N as f64;
        eprintln!(
            "per voice message: wchar {:.0} B, write syscalls {:.1}, write_bytes {:.0} B, \
             cancelled_write_bytes {:.0} B",
            per(before.1, after.1),
            per(before.2, after.2),
            per(before.3, after.3),
            per(before.4, after.4)
        );
    }
}

#[test]
fn voices_survive_sigkills_at_random_moments_and_are_each_answered_once() {
    // Five voices caught up at start; the daemon is killed three times at random moments
    // (while catching up, downloading, transcribing or replying) and started again. The
    // update position on disk may be older than what was handled; the spool, its done records and
    // the replies' random_ids make every voice answered exactly once all the same.
    let voice = |id: i32| {
        format!(
            "[[messages]]\nchat = \"ann\"\nid = {id}\ndelivery = \"offline\"\n\
             [messages.voice]\nfile = {:?}\nduration_s = 11\n",
            jfk()
        )
    };
    let dc = FakeDc::start(scenario(&(41..=45).map(voice).collect::<String>()), None).unwrap();
    let mut daemon = Daemon::start(&dc);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut kills = Vec::new();
    for _ in 0..3 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let after = Duration::from_millis(2_000 + (seed >> 33) % 10_000);
        std::thread::sleep(after);
        kills.push(after);
        daemon.kill();
        daemon.restart();
    }
    daemon.wait(&dc, 400, "replies to all five", |log| {
        (41..=45)
            .all(|id| reply_to(log, id).is_some())
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    for id in 41..=45 {
        let replies = dc.replies_in("ann", id);
        assert_eq!(
            replies.len(),
            1,
            "message {id} answered once (killed after {kills:?}): {replies:?}"
        );
        assert!(jfk_ok(&replies[0]), "{replies:?}");
    }
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_150_mb_audio_file_survives_a_dropped_connection_and_a_sigkill_without_starting_over() {
    // 300 parts of 512 KiB, generated (not audio: the job ends in an error reply, which the
    // test checks too). The connection drops at the 100th part request; the daemon is killed
    // once 200 have been asked for and started again on the same state directory.
    const SIZE: i64 = 300 * 512 * 1024;
    let dc = FakeDc::start(
        scenario(&format!(
            r#"
[[messages]]
chat = "ann"
after_s = 0.5
[messages.voice]
size = {SIZE}
duration_s = 9000
kind = "audio"

[[faults]]
method = "upload.getFile"
call = 100
action = "drop"

[[faults]]
method = "upload.getFile"
call = 50
times = 5
action = "slow"
delay_s = 0.4
"#
        )),
        None,
    )
    .unwrap();
    // Two attempts: the one the kill cuts short, and the one that meets the non-audio.
    let mut daemon = Daemon::start_with(&dc, "[transcribe]\nmax_attempts = 2", &[]);
    let started = Instant::now();
    let id = daemon.wait(&dc, 60, "the voice push", |log| {
        log.iter()
            .find(|e| e["event"] == "push")
            .and_then(|e| e["id"].as_i64())
    });
    daemon.wait(&dc, 120, "200 part requests", |log| {
        (log.iter()
            .filter(|e| e["method"] == "upload.getFile")
            .count()
            >= 200)
            .then_some(())
    });
    daemon.kill();
    let before = dc.calls("upload.getFile").len();
    daemon.restart();
    // 2.5 hours of audio: a placeholder reply first, edited into the error once the
    // downloaded bytes turn out not to be audio.
    let (_, placeholder) = daemon.wait(&dc, 240, "the placeholder", |log| reply_to(log, id));
    let placeholder = placeholder["sent_id"].as_i64().unwrap() as i32;
    let text = daemon.wait(&dc, 240, "the error in the placeholder", |_| {
        dc.message_text("ann", placeholder)
            .filter(|t| t.starts_with("⚠️ could not transcribe"))
    });
    assert!(text.contains("audio"), "{text}");
    eprintln!(
        "150 MB with a drop and a SIGKILL: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let parts: Vec<(i64, i64, String)> = dc
        .calls("upload.getFile")
        .iter()
        .map(|c| {
            (
                c["offset"].as_i64().unwrap(),
                c["limit"].as_i64().unwrap(),
                c["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let dropped = parts.iter().position(|p| p.2 == "drop").unwrap();
    assert_eq!(parts[dropped + 1].0, parts[dropped].0, "{parts:?}");
    // After the restart: on from the partial file, never from 0.
    let resumed = parts[before].0;
    let reached = parts[..before]
        .iter()
        .filter(|p| p.2 == "ok")
        .map(|p| p.0 + p.1)
        .max()
        .unwrap();
    assert!(
        resumed > 0 && resumed + 512 * 1024 >= reached,
        "resumed at {resumed}, had reached {reached}"
    );
    // Every byte was asked for; no offset twice but the one in flight at the drop and those
    // of the part cut short by the kill.
    let mut at = 0;
    for (i, p) in parts.iter().enumerate().filter(|(_, p)| p.2 == "ok") {
        if i == before {
            at = p.0;
        }
        assert_eq!(p.0, at, "part {i}: {parts:?}");
        at = (p.0 + p.1).min(SIZE);
    }
    assert_eq!(at, SIZE);
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

// ---- logging in -----------------------------------------------------------------------------

/// The config the daemon runs with in these tests.
fn daemon_config() -> String {
    common::model_dir("tiny.en");
    format!(
        "model = \"tiny.en\"\nthreads = 2\nnice = 0\nmodels_dir = {:?}",
        common::root().join("models/cache")
    )
}

/// `voice-transcriber login` on a pseudo-terminal of its own (its controlling terminal, so the
/// cloud password is read from /dev/tty as on a real one): what it prints is collected, and
/// answers are typed once their prompt has appeared.
struct LoginRun {
    child: Child,
    master: std::fs::File,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    /// How much of the output earlier prompts consumed.
    seen: usize,
}

impl LoginRun {
    fn start(dir: &Path) -> LoginRun {
        use std::os::unix::process::CommandExt;
        let pty = nix::pty::openpty(None, None).unwrap();
        let mut command = Command::new(common::bin());
        command
            .arg("--state-dir")
            .arg(dir)
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("login")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
            .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
            .stderr(Stdio::from(pty.slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        // The parent's copies of the terminal's far end go, so reads end when the child does.
        drop(command);
        let master = std::fs::File::from(pty.master);
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let collected = std::sync::Arc::clone(&output);
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        LoginRun {
            child,
            master,
            output,
            seen: 0,
        }
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until `text` appears after what earlier waits consumed.
    fn expect(&mut self, dc: &FakeDc, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.output();
            if let Some(at) = out[self.seen.min(out.len())..].find(text) {
                self.seen += at + text.len();
                return;
            }
            if Instant::now() > deadline || self.child.try_wait().unwrap().is_some() {
                panic!(
                    "login never printed {text:?}; it printed:\n{out}\n--- fake data center log:\n{}",
                    dc.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types one line.
    fn answer(&mut self, line: &str) {
        use std::io::Write;
        self.master
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// Waits for the exit; returns the status and everything printed.
    fn finish(mut self, dc: &FakeDc) -> (ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                return (status, self.output());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "login did not finish; it printed:\n{}\n--- fake data center log:\n{}",
                    self.output(),
                    dc.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

const PHONE: &str = "+1 555 000 1000";

/// The people of [`scenario`], not logged in yet: `login` (more `[login]` keys) and `rest`
/// (chats, messages) are added.
fn not_logged_in(login: &str, rest: &str) -> Scenario {
    scenario(&format!(
        "[login]\nphone = \"15550001000\"\ncode = \"12345\"\n{login}\n{rest}"
    ))
}

/// A fake data center for `s` and a state directory for it, as before `login`.
fn login_setup(s: Scenario) -> (FakeDc, tempfile::TempDir) {
    let dc = FakeDc::start(s, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    dc.write_state_dir(dir.path(), &daemon_config()).unwrap();
    (dc, dir)
}

/// The session `login` left behind, checked to be logged in as the owner with mode 0600.
fn logged_in_session(dir: &Path) -> telegram::FileSession {
    use std::os::unix::fs::PermissionsExt;
    let path = telegram::session_path(dir);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the session file is readable by its owner only"
    );
    let session = telegram::FileSession::load(&path).unwrap().unwrap();
    assert!(session.is_logged_in());
    assert_eq!(session.self_user_id(), Some(OWNER));
    session
}

fn answers(dc: &FakeDc, method: &str) -> Vec<(i64, String)> {
    dc.calls(method)
        .iter()
        .map(|c| {
            (
                c["dc"].as_i64().unwrap(),
                c["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn login_with_a_phone_code_saves_a_session_only_its_owner_can_read() {
    let (dc, dir) = login_setup(not_logged_in("", ""));
    let mut login = LoginRun::start(dir.path());
    login.expect(&dc, "Phone number");
    login.answer(PHONE);
    login.expect(&dc, "Login code");
    login.answer("12345");
    let (status, out) = login.finish(&dc);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("logged in as Olga (@olga, id 1000)"), "{out}");
    logged_in_session(dir.path());
    assert_eq!(answers(&dc, "auth.sendCode"), [(2, "ok".to_string())]);
    assert_eq!(answers(&dc, "auth.signIn"), [(2, "ok".to_string())]);
    assert_eq!(dc.calls("auth.signIn")[0]["code"], "12345");
}

#[test]
fn login_after_a_wrong_code_takes_the_right_one() {
    let (dc, dir) = login_setup(not_logged_in("", ""));
    let mut login = LoginRun::start(dir.path());
    login.expect(&dc, "Phone number");
    login.answer(PHONE);
    login.expect(&dc, "Login code");
    login.answer("54321");
    login.expect(&dc, "not valid");
    login.expect(&dc, "Login code");
    login.answer("12345");
    let (status, out) = login.finish(&dc);
    assert_eq!(status.code(), Some(0), "{out}");
    logged_in_session(dir.path());
    assert_eq!(
        answers(&dc, "auth.signIn"),
        [
            (2, "400 PHONE_CODE_INVALID".to_string()),
            (2, "ok".to_string())
        ]
    );
}

#[test]
fn login_with_an_expired_code_says_so_and_sends_a_new_one() {
    let (dc, dir) = login_setup(not_logged_in("expired_codes = 1", ""));
    let mut login = LoginRun::start(dir.path());
    login.expect(&dc, "Phone number");
    login.answer(PHONE);
    login.expect(&dc, "Login code");
    login.answer("12345");
    login.expect(&dc, "expired");
    login.expect(&dc, "Login code");
    login.answer("12345");
    let (status, out) = login.finish(&dc);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        !out.contains("not valid"),
        "an expired code is not a wrong one: {out}"
    );
    logged_in_session(dir.path());
    let sent = dc.calls("auth.sendCode");
    assert_eq!(sent.len(), 2, "a new code was asked for: {sent:?}");
    let signed: Vec<(String, String)> = dc
        .calls("auth.signIn")
        .iter()
        .map(|c| {
            (
                c["phone_code_hash"].as_str().unwrap().to_string(),
                c["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        signed,
        [
            (
                "code-hash-1".to_string(),
                "400 PHONE_CODE_EXPIRED".to_string()
            ),
            ("code-hash-2".to_string(), "ok".to_string())
        ]
    );
}

#[test]
fn login_with_a_cloud_password_takes_the_right_one_after_a_wrong_one() {
    let (dc, dir) = login_setup(not_logged_in(
        "password = \"correct horse\"\nhint = \"the usual\"",
        "",
    ));
    let mut login = LoginRun::start(dir.path());
    login.expect(&dc, "Phone number");
    login.answer(PHONE);
    login.expect(&dc, "Login code");
    login.answer("12345");
    login.expect(&dc, "Cloud password (hint: the usual)");
    login.answer("battery staple");
    login.expect(&dc, "wrong password");
    login.expect(&dc, "Cloud password");
    login.answer("correct horse");
    let (status, out) = login.finish(&dc);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(
        !out.contains("correct horse"),
        "the password is not echoed: {out}"
    );
    logged_in_session(dir.path());
    assert_eq!(
        answers(&dc, "auth.signIn"),
        [(2, "401 SESSION_PASSWORD_NEEDED".to_string())]
    );
    let proofs: Vec<(String, String)> = dc
        .calls("auth.checkPassword")
        .iter()
        .map(|c| {
            (
                c["proof"].as_str().unwrap_or_default().to_string(),
                c["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        proofs,
        [
            ("wrong".to_string(), "400 PASSWORD_HASH_INVALID".to_string()),
            ("right".to_string(), "ok".to_string())
        ]
    );
}

#[test]
fn login_follows_phone_migrate_to_the_accounts_data_center_and_run_stays_there() {
    let (dc, dir) = login_setup(not_logged_in("phone_dc = 4", ""));
    let mut login = LoginRun::start(dir.path());
    login.expect(&dc, "Phone number");
    login.answer(PHONE);
    login.expect(&dc, "Login code");
    login.answer("12345");
    let (status, out) = login.finish(&dc);
    assert_eq!(status.code(), Some(0), "{out}");
    {
        use grammers_session::Session as _;
        let session = logged_in_session(dir.path());
        assert_eq!(session.home_dc_id().unwrap(), 4);
    }
    assert_eq!(
        answers(&dc, "auth.sendCode"),
        [
            (2, "303 PHONE_MIGRATE_4".to_string()),
            (4, "ok".to_string())
        ]
    );
    assert_eq!(answers(&dc, "auth.signIn"), [(4, "ok".to_string())]);
    // The daemon then works on data center 4.
    let mut daemon = Daemon::start_in(dir);
    daemon.wait(&dc, 120, "the daemon's catch-up on data center 4", |log| {
        log.iter()
            .find(|e| e["method"] == "updates.getDifference" && e["dc"] == 4 && e["answer"] == "ok")
            .cloned()
    });
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

/// A supergroup the session does not know yet, with one message in it from before.
const TEAM_UNKNOWN: &str = r#"
[[chats]]
key = "team"
kind = "supergroup"
id = 700
access_hash = 777
title = "Team"
members = ["ann", "bob"]
pts = 10
known = false

[[messages]]
chat = "team"
from = "bob"
text = "welcome"
delivery = "offline"
"#;

/// A voice from Ann in the supergroup, for [`FakeDc::deliver`].
fn voice_in_team() -> fake_telegram::scenario::Message {
    fake_telegram::scenario::Message {
        chat: "team".into(),
        from: Some("ann".into()),
        voice: Some(fake_telegram::scenario::Voice {
            file: jfk(),
            duration_s: 11.0,
            kind: Default::default(),
            mime_type: None,
            dc: None,
            listed_dc: None,
            size: None,
        }),
        ..Default::default()
    }
}

#[test]
fn a_supergroup_voice_sent_between_a_fresh_login_and_the_first_run_is_answered() {
    let (dc, dir) = login_setup(not_logged_in("", TEAM_UNKNOWN));
    let mut login = LoginRun::start(dir.path());
    login.expect(&dc, "Phone number");
    login.answer(PHONE);
    login.expect(&dc, "Login code");
    login.answer("12345");
    let (status, out) = login.finish(&dc);
    assert_eq!(status.code(), Some(0), "{out}");
    let session = logged_in_session(dir.path());
    let channels = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            use grammers_session::Session as _;
            session.updates_state().await.unwrap().channels
        });
    assert!(
        channels.iter().any(|c| c.id == 700 && c.pts == 11),
        "the dialog list's position of the supergroup is kept: {channels:?}"
    );
    // While nothing runs, Ann sends a voice to the group.
    let id = dc.deliver(&voice_in_team()).unwrap();
    let mut daemon = Daemon::start_in(dir);
    let (text, sent) = daemon.wait(&dc, 180, "the reply in the supergroup", |log| {
        reply_to(log, i64::from(id))
    });
    assert!(jfk_ok(&text), "transcript: {text}");
    assert_eq!(sent["peer"]["channel"], 700, "{sent}");
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn running_login_again_on_a_working_install_keeps_the_supergroup_positions() {
    // The daemon last saw the group at pts 10; a voice came since (pts 11).
    let dc = FakeDc::start(
        scenario(&format!(
            r#"
[[chats]]
key = "team"
kind = "supergroup"
id = 700
access_hash = 777
title = "Team"
members = ["ann", "bob"]
pts = 10

[[messages]]
chat = "team"
from = "ann"
id = 5
delivery = "offline"
[messages.voice]
file = {:?}
duration_s = 11
"#,
            jfk()
        )),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    dc.write_state_dir(dir.path(), &daemon_config()).unwrap();
    let login = LoginRun::start(dir.path());
    let (status, out) = login.finish(&dc);
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("already logged in"), "{out}");
    let mut daemon = Daemon::start_in(dir);
    let (text, _) = daemon.wait(&dc, 180, "the reply to the voice", |log| reply_to(log, 5));
    assert!(jfk_ok(&text), "transcript: {text}");
    let diff = &dc.calls("updates.getChannelDifference")[0];
    assert_eq!(diff["pts"], 10, "{diff}");
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn voices_behind_a_channel_difference_too_long_are_fetched_from_the_history_and_answered() {
    // Three voices in the supergroup while the daemon was down; Telegram has more pending than
    // it hands out and answers updates.channelDifferenceTooLong.
    let voice = |id: i32| {
        format!(
            "[[messages]]\nchat = \"team\"\nfrom = \"ann\"\nid = {id}\ndelivery = \"offline\"\n\
             [messages.voice]\nfile = {:?}\nduration_s = 11\n",
            jfk()
        )
    };
    let dc = FakeDc::start(
        scenario(&format!(
            r#"
[server]
channel_too_long_over = 2

[[chats]]
key = "team"
kind = "supergroup"
id = 700
access_hash = 777
title = "Team"
members = ["ann", "bob"]
pts = 10

{}"#,
            (5..=7).map(voice).collect::<String>()
        )),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    daemon.wait(&dc, 240, "replies to all three voices", |log| {
        (5..=7).all(|id| reply_to(log, id).is_some()).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let log = dc.log();
    for id in 5..=7 {
        let replies: Vec<&Value> = log
            .iter()
            .filter(|e| e["method"] == "messages.sendMessage" && e["reply_to"] == id)
            .collect();
        assert_eq!(replies.len(), 1, "voice {id} answered once: {replies:?}");
        assert!(jfk_ok(replies[0]["message"].as_str().unwrap()));
        assert_eq!(replies[0]["peer"]["channel"], 700);
    }
    assert!(
        dc.calls("updates.getChannelDifference")
            .iter()
            .any(|c| c["pts"] == 10),
        "{}",
        dc.log_text()
    );
    assert!(!dc.calls("messages.getHistory").is_empty());
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn track_in_a_forum_topic_without_a_reply_does_not_pick_the_topics_first_author() {
    // Ann opened the topic (message 1), Bob wrote in it (2). The owner sends /track in the
    // topic without replying (Telegram still marks it as a reply to 1, with forum_topic),
    // then /track as a real reply to Bob's message.
    let dc = FakeDc::start(
        scenario(
            r#"
[[chats]]
key = "forum"
kind = "supergroup"
id = 800
access_hash = 888
title = "Forum"
members = ["ann", "bob"]
forum = true

[[messages]]
chat = "forum"
from = "ann"
id = 1
text = "Plans"
delivery = "offline"

[[messages]]
chat = "forum"
from = "bob"
id = 2
text = "my plan"
topic = 1
delivery = "offline"

[[messages]]
chat = "forum"
from = "owner"
id = 3
text = "/track"
topic = 1
after_s = 0.5

[[messages]]
chat = "forum"
from = "owner"
id = 4
text = "/track"
topic = 1
reply_to = 2
after_s = 1.5
"#,
        ),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let edit_of = |log: &[Value], id: i64| {
        log.iter()
            .find(|e| e["method"] == "messages.editMessage" && e["id"] == id)
            .and_then(|e| e["message"].as_str().map(String::from))
    };
    let first = daemon.wait(&dc, 120, "the answer to the plain /track", |log| {
        edit_of(log, 3)
    });
    assert!(
        first.starts_with("/track: give a user id or @username"),
        "a /track that replies to nothing tracks nobody: {first}"
    );
    let second = daemon.wait(&dc, 60, "the answer to the /track reply", |log| {
        edit_of(log, 4)
    });
    assert_eq!(second, format!("tracking Bob ({BOB}) ✓"));
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
}

#[test]
fn a_user_migrate_on_the_reply_moves_the_account_to_that_data_center_and_the_reply_is_sent_there() {
    let dc = FakeDc::start(
        live_voice(
            r#"
[[faults]]
method = "messages.sendMessage"
call = 1
error = "USER_MIGRATE_4"
"#,
        ),
        None,
    )
    .unwrap();
    let mut daemon = Daemon::start(&dc);
    let sent = daemon.wait(&dc, 180, "the reply sent on data center 4", |log| {
        log.iter()
            .find(|e| e["method"] == "messages.sendMessage" && e["dc"] == 4 && e["answer"] == "ok")
            .cloned()
    });
    assert!(jfk_ok(sent["message"].as_str().unwrap()), "{sent}");
    assert_eq!(
        answers(&dc, "messages.sendMessage"),
        [(2, "303 USER_MIGRATE_4".to_string()), (4, "ok".to_string())],
        "one failed try, then the reply on the new data center"
    );
    let exports: Vec<i64> = dc
        .calls("auth.exportAuthorization")
        .iter()
        .filter(|c| c["dc"] == 2)
        .map(|c| c["dc_id"].as_i64().unwrap())
        .collect();
    assert!(exports.contains(&4), "{exports:?}");
    assert!(answers(&dc, "auth.importAuthorization").contains(&(4, "ok".to_string())));
    assert_eq!(daemon.stop(&dc).code(), Some(0), "{}", daemon.log());
    use grammers_session::Session as _;
    let session = telegram::FileSession::load(&telegram::session_path(daemon.dir.path()))
        .unwrap()
        .unwrap();
    assert_eq!(session.home_dc_id().unwrap(), 4, "the move is remembered");
}

#[test]
fn the_owner_after_a_reload_is_the_account_logged_in_last_whatever_the_file_order() {
    // A session that was logged in as 42, then (after that login was revoked) as 43: both
    // entries say "self". The file is written and read twenty times, each with its own
    // hash-map order.
    use grammers_session::types::{PeerAuth, PeerInfo};
    use grammers_session::Session as _;
    let dir = tempfile::tempdir().unwrap();
    let path = telegram::session_path(dir.path());
    let me = |id: i64| PeerInfo::User {
        id,
        auth: Some(PeerAuth::from_hash(id * 10)),
        bot: Some(false),
        is_self: Some(true),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut owners = Vec::new();
    for _ in 0..20 {
        let _ = std::fs::remove_file(&path);
        let session = telegram::FileSession::new(&path);
        runtime.block_on(async {
            let mut dc = session.dc_option(2).unwrap().unwrap();
            dc.auth_key = Some([5; 256]);
            session.set_dc_option(&dc).await.unwrap();
            session.cache_peer(me(42)).await.unwrap();
            for other in 1..=30 {
                session
                    .cache_peer(PeerInfo::User {
                        id: 100 + other,
                        auth: Some(PeerAuth::from_hash(other)),
                        bot: Some(false),
                        is_self: Some(false),
                    })
                    .await
                    .unwrap();
            }
            session.cache_peer(me(43)).await.unwrap();
        });
        assert_eq!(session.self_user_id(), Some(43));
        session.flush().unwrap();
        let loaded = telegram::FileSession::load(&path).unwrap().unwrap();
        owners.push(loaded.self_user_id());
        let answered = runtime
            .block_on(loaded.peer(grammers_session::types::PeerId::self_user()))
            .unwrap()
            .map(|p| p.id());
        assert_eq!(answered, grammers_session::types::PeerId::user(43));
    }
    assert!(owners.iter().all(|o| *o == Some(43)), "{owners:?}");
}
