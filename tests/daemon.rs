//! The daemon's promises end to end: the real `voice-transcriber` binary, with the real
//! grammers client inside, against the fake Telegram data center (`tests/fake_telegram/`),
//! with the real tiny.en model and real speech. These tests send voice messages and commands
//! as Telegram would, stop and kill the process, take the data center away, and check in the
//! fake's request log (and in the chats it keeps) what was answered, and how often.
//!
//! The protocol-level cases (catch-up, flood waits, dropped connections, other data centers,
//! supergroups, the short SIGKILL chaos) are in `tests/telegram_fake_dc.rs`; the harness both
//! use is `tests/harness/`.

mod common;
mod fake_telegram;
mod harness;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_telegram::FakeDc;
use harness::{
    jfk, jfk_ok, jfk_wav, last_edit, live_voice, offline_voice, reply_to, scenario, text, voice,
    words, Daemon, ANN,
};
use nix::sys::signal::Signal;
use serde_json::Value;

fn long_clip() -> (PathBuf, f64) {
    (
        common::eval_dir().join("opus/en_ljspeech_001_011.ogg"),
        75.2,
    )
}

/// The `messages.sendMessage` requests answering `to` that Telegram accepted.
fn replies(log: &[Value], to: i64) -> Vec<Value> {
    log.iter()
        .filter(|e| e["method"] == "messages.sendMessage" && e["reply_to"] == to)
        .filter(|e| e["answer"] == "ok")
        .cloned()
        .collect()
}

/// Texts of the accepted edits of message `id`, in order.
fn edits(log: &[Value], id: i64) -> Vec<String> {
    log.iter()
        .filter(|e| e["method"] == "messages.editMessage" && e["id"] == id && e["answer"] == "ok")
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

/// The latest edit of command message `id`, once it holds `want`.
fn answered(log: &[Value], id: i64, want: &str) -> Option<String> {
    last_edit(log, id).filter(|t| t.contains(want))
}

#[test]
fn tracking_and_the_owners_commands_and_nobody_elses() {
    let mut s = scenario("");
    s.users[0].tracked = false;
    let dc = FakeDc::start(s, None).unwrap();
    let mut d = Daemon::start(&dc);
    d.wait_synced(&dc);
    let send = |m| dc.deliver(&m).unwrap() as i64;

    // The owner replies /track to Ann's message: from then on her voices are answered.
    let hi = send(text("ann", "ann", "hi, it's Ann", None));
    let track = send(text("ann", "owner", "/track", Some(hi as i32)));
    d.wait(&dc, 60, "the /track answer", |log| {
        answered(log, track, "tracking Ann (111) ✓")
    });
    let ann_voice = send(voice("ann", "ann", &jfk(), 11.0));
    let bob_voice = send(voice("bob", "bob", &jfk(), 11.0));
    let bob_status = send(text("bob", "bob", "/status", None));
    let (t, sent) = d.wait(&dc, 180, "Ann's transcript", |log| reply_to(log, ann_voice));
    assert!(jfk_ok(&t), "{t}");
    assert_eq!(sent["peer"]["user"], ANN);
    d.wait_done(&dc, 30, ANN, ann_voice);

    let status = send(text("self", "owner", "/status", None));
    let unknown = send(text("self", "owner", "/frobnicate", None));
    let tracked = send(text("self", "owner", "/tracked", None));
    let help = send(text("self", "owner", "/help", None));
    let lang = send(text("self", "owner", "/lang ru", None));
    let transcribe = send(text("bob", "owner", "/transcribe", Some(bob_voice as i32)));
    let untrack = send(text("self", "owner", "/untrack @ann", None));
    let nobody = send(text("self", "owner", "/tracked", None));
    let by_name = send(text("self", "owner", "/track @ann", None));
    let log = d.wait(&dc, 180, "the command answers", |log| {
        (last_edit(log, transcribe).is_some_and(|t| !t.starts_with('⏳'))
            && last_edit(log, by_name).is_some())
        .then(|| log.to_vec())
    });
    let status = last_edit(&log, status).unwrap();
    assert!(status.contains("model tiny.en"), "{status}");
    assert!(status.contains("done 1"), "{status}");
    assert!(status.contains("2 threads"), "{status}");
    let unknown = last_edit(&log, unknown).unwrap();
    assert!(
        unknown.contains("unknown command /frobnicate") && unknown.contains("/help"),
        "{unknown}"
    );
    assert!(last_edit(&log, tracked).unwrap().contains("Ann (111)"));
    let help = last_edit(&log, help).unwrap();
    for cmd in [
        "/status",
        "/model",
        "/track",
        "/untrack",
        "/lang",
        "/transcribe",
    ] {
        assert!(help.contains(cmd), "{cmd} in {help}");
    }
    assert!(
        last_edit(&log, lang).unwrap().contains("English-only"),
        "an English-only model refuses /lang ru"
    );
    assert!(
        jfk_ok(&last_edit(&log, transcribe).unwrap()),
        "an on-demand transcript in the command's place"
    );
    assert!(last_edit(&log, untrack)
        .unwrap()
        .contains("no longer tracking Ann (111) ✓"));
    assert!(last_edit(&log, nobody)
        .unwrap()
        .contains("nobody is tracked"));
    assert!(last_edit(&log, by_name)
        .unwrap()
        .contains("tracking Ann (111) ✓"));
    assert!(
        dc.calls("contacts.resolveUsername")
            .iter()
            .any(|e| e["username"] == "ann"),
        "@ann was looked up"
    );
    // Bob is neither tracked nor the owner: no automatic reply, his /status is ignored.
    assert!(replies(&log, bob_voice).is_empty(), "Bob's voice answered");
    assert!(edits(&log, bob_status).is_empty() && replies(&log, bob_status).is_empty());
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());

    // Tracking survives a restart.
    d.restart();
    let after = send(text("self", "owner", "/tracked", None));
    let shown = d.wait(&dc, 120, "/tracked after the restart", |log| {
        last_edit(log, after)
    });
    assert!(shown.contains("Ann (111)"), "{shown}");
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}

#[test]
fn long_audio_shows_progress_edits_then_the_whole_text() {
    let (clip, secs) = long_clip();
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut d = Daemon::start_with(&dc, "[reply]\nedit_interval_s = 0\nprefix = \"🎙 \"\n", &[]);
    d.wait_synced(&dc);
    let v = dc.deliver(&voice("ann", "ann", &clip, secs)).unwrap() as i64;
    let (ph, log) = d.wait(&dc, 300, "the final transcript", |log| {
        let r = replies(log, v);
        let ph = r.first()?["sent_id"].as_i64()?;
        last_edit(log, ph)
            .filter(|t| !t.contains('⏳'))
            .map(|_| (ph, log.to_vec()))
    });
    let sent = replies(&log, v);
    assert_eq!(sent.len(), 1, "one message, edited: {sent:?}");
    let first = sent[0]["message"].as_str().unwrap();
    assert!(first.starts_with("🎙 ⏳"), "a placeholder first: {first}");
    let edits = edits(&log, ph);
    assert!(
        edits.len() >= 2,
        "progress edits before the final text: {edits:#?}"
    );
    assert!(edits[0].contains('⏳'), "shown while running: {}", edits[0]);
    let last = edits.last().unwrap();
    assert!(last.starts_with("🎙 "), "{last}");
    // First and last sentences of the recording are both in the final text.
    let last = words(last);
    assert!(last.contains("printing"), "{last}");
    assert!(last.contains("letters"), "{last}");
    assert_eq!(
        dc.message_text("ann", ph as i32).as_deref(),
        Some(edits.last().unwrap().as_str())
    );
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}

#[test]
fn a_transcript_longer_than_one_message_is_split_into_numbered_replies() {
    // A prefix of nearly a whole message leaves room for a few words per message, so the
    // JFK sentence takes several; Telegram (and the fake) refuse more than 4096 characters.
    let prefix = format!("{} ", "-".repeat(3990));
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut d = Daemon::start_with(&dc, &format!("[reply]\nprefix = {prefix:?}\n"), &[]);
    d.wait_synced(&dc);
    let v = dc.deliver(&voice("ann", "ann", &jfk(), 11.0)).unwrap() as i64;
    d.wait_done(&dc, 180, ANN, v);
    let log = dc.log();
    let sent: Vec<Value> = log
        .iter()
        .filter(|e| e["method"] == "messages.sendMessage" && e["reply_to"] == v)
        .cloned()
        .collect();
    assert!(sent.len() >= 2, "{sent:?}");
    let n = sent.len();
    let mut whole = String::new();
    for (i, s) in sent.iter().enumerate() {
        assert_eq!(s["answer"], "ok", "{s}");
        let t = s["message"].as_str().unwrap();
        assert!(t.chars().count() <= 4096);
        let rest = t
            .strip_prefix(prefix.as_str())
            .expect("the prefix on every part");
        let rest = rest
            .strip_prefix(&format!("({}/{n}) ", i + 1))
            .unwrap_or_else(|| panic!("part {} of {n} numbered: {rest}", i + 1));
        whole.push_str(rest);
        whole.push(' ');
    }
    assert!(jfk_ok(&whole), "{whole}");
    assert_eq!(dc.replies_in("ann", v as i32).len(), n, "each part once");
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}

#[test]
fn bad_audio_gets_an_error_reply_without_blocking_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.ogg");
    std::fs::write(&junk, b"OggS this is not really an ogg stream at all").unwrap();
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut d = Daemon::start_with(&dc, "[transcribe]\nmax_attempts = 2\n", &[]);
    d.wait_synced(&dc);
    let bad = dc.deliver(&voice("ann", "ann", &junk, 3.0)).unwrap() as i64;
    let good = dc.deliver(&voice("ann", "ann", &jfk(), 11.0)).unwrap() as i64;
    // Deleted before the daemon got to it: dropped, no reply.
    let mut gone = voice("ann", "ann", &jfk(), 11.0);
    gone.deleted = true;
    let gone = dc.deliver(&gone).unwrap() as i64;
    let last = dc.deliver(&voice("ann", "ann", &jfk(), 11.0)).unwrap() as i64;
    let log = d.wait(&dc, 240, "the answers", |log| {
        (reply_to(log, bad).is_some() && reply_to(log, last).is_some()).then(|| log.to_vec())
    });
    let err = replies(&log, bad);
    assert_eq!(err.len(), 1, "one error reply after the attempts ran out");
    let err = err[0]["message"].as_str().unwrap();
    assert!(err.starts_with("⚠️ could not transcribe"), "{err}");
    assert!(jfk_ok(&reply_to(&log, good).unwrap().0));
    assert!(jfk_ok(&reply_to(&log, last).unwrap().0));
    assert!(reply_to(&log, gone).is_none());
    assert!(
        dc.calls("messages.getMessages")
            .iter()
            .any(|e| e["ids"] == serde_json::json!([gone])),
        "the deleted one was looked for"
    );
    assert!(d.log().contains("was deleted; job dropped"), "{}", d.log());
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
    // Nothing left in the spool.
    let left = common::spool_on_disk(d.dir.path()).pending;
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sigterm_mid_job_exits_cleanly_and_the_job_finishes_after_restart() {
    let clip = common::eval_dir().join("opus/en_ljspeech_023_032.ogg");
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut d = Daemon::start_with(&dc, "[reply]\nedit_interval_s = 0\n", &[]);
    d.wait_synced(&dc);
    let v = dc.deliver(&voice("ann", "ann", &clip, 77.6)).unwrap() as i64;
    let ph = d.wait(&dc, 120, "the placeholder", |log| {
        replies(log, v).first()?["sent_id"].as_i64()
    });
    let stopped = Instant::now();
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "stopped within the grace period"
    );
    assert!(d.log().contains("stays in the spool"), "{}", d.log());
    assert!(
        last_edit(&dc.log(), ph).is_none_or(|t| t.contains('⏳')),
        "not finished before the stop"
    );

    d.restart();
    let text = d.wait(&dc, 300, "the final text after the restart", |log| {
        last_edit(log, ph).filter(|t| !t.contains('⏳'))
    });
    assert!(words(&text).split(' ').count() > 50, "{text}");
    assert_eq!(
        dc.calls("messages.sendMessage")
            .iter()
            .filter(|e| e["reply_to"] == v)
            .count(),
        1,
        "the placeholder is reused, not sent again"
    );
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}

#[test]
fn a_voice_sent_during_an_outage_is_answered_after_reconnecting() {
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut d = Daemon::start(&dc);
    d.wait_synced(&dc);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains("connected to Telegram") {
        assert!(Instant::now() < deadline, "not connected: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let outage = Duration::from_secs(15);
    dc.outage(outage);
    let down = Instant::now();
    let v = dc.deliver(&voice("ann", "ann", &jfk(), 11.0)).unwrap() as i64;
    let pushed = dc
        .log()
        .into_iter()
        .find(|e| e["event"] == "push" && e["id"] == v)
        .unwrap();
    assert_eq!(pushed["connections"], 0, "nobody to push to: {pushed}");
    let (t, _) = d.wait(&dc, 240, "the answer after the outage", |log| {
        reply_to(log, v)
    });
    assert!(jfk_ok(&t), "{t}");
    assert!(down.elapsed() >= outage, "answered only after the outage");
    let log = dc.log();
    assert!(
        log.iter().any(|e| e["event"] == "refused"),
        "the daemon tried during the outage"
    );
    let daemon_log = d.log();
    assert!(daemon_log.contains("reconnecting in"), "{daemon_log}");
    assert!(
        daemon_log.matches("connected to Telegram").count() >= 2,
        "{daemon_log}"
    );
    // Caught up by updates.getDifference once back.
    let started = log
        .iter()
        .find(|e| e["event"] == "outage")
        .and_then(|e| e["t"].as_f64())
        .unwrap();
    assert!(
        log.iter().any(|e| e["method"] == "updates.getDifference"
            && e["t"].as_f64().unwrap() > started + outage.as_secs_f64()
            && e["new_messages"].as_i64() >= Some(1)),
        "{}",
        dc.log_text()
    );
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}

#[test]
fn a_revoked_login_stops_with_its_own_exit_code() {
    // At connect: the key is no longer known (logged out everywhere, or the account gone).
    let dc = FakeDc::start(
        scenario(
            "[[faults]]\nmethod = \"users.getUsers\"\ntimes = 1000\nerror = \"AUTH_KEY_UNREGISTERED\"\n",
        ),
        None,
    )
    .unwrap();
    let mut d = Daemon::start(&dc);
    let status = d.wait_exit(&dc, 120);
    assert_eq!(status.code(), Some(77), "{}", d.log());
    assert!(d.log().contains("voice-transcriber login"), "{}", d.log());
    assert_eq!(
        dc.calls("users.getUsers")[0]["answer"],
        "401 AUTH_KEY_UNREGISTERED"
    );

    // While running: the session is terminated from another device; the reply is refused.
    let dc = FakeDc::start(
        live_voice(
            "[[faults]]\nmethod = \"messages.sendMessage\"\ntimes = 1000\nerror = \"SESSION_REVOKED\"\n",
        ),
        None,
    )
    .unwrap();
    let mut d = Daemon::start(&dc);
    let status = d.wait_exit(&dc, 180);
    assert_eq!(status.code(), Some(77), "{}", d.log());
    assert!(d.log().contains("SESSION_REVOKED"), "{}", d.log());
    assert_eq!(
        dc.calls("messages.sendMessage")[0]["answer"],
        "401 SESSION_REVOKED"
    );
}

/// Reads notify datagrams until `until` returns true or time runs out.
fn collect(sock: &UnixDatagram, secs: f64, until: impl Fn(&[String]) -> bool) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn count(msgs: &[String], what: &str) -> usize {
    msgs.iter().filter(|m| m.contains(what)).count()
}

#[test]
fn speaks_the_systemd_notify_protocol() {
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut d = Daemon::start_with(
        &dc,
        "",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let got = collect(&sock, 60.0, |g| count(g, "READY=1") > 0);
    assert_eq!(count(&got, "READY=1"), 1, "{got:?}");
    let got = collect(&sock, 3.0, |_| false);
    let pings = count(&got, "WATCHDOG=1");
    assert!((4..=8).contains(&pings), "WATCHDOG=1 every 0.5 s: {got:?}");
    assert!(
        got.iter().any(|m| m.contains("STATUS=connected")),
        "{got:?}"
    );
    // A long transcription runs on its own threads: the runtime keeps pinging meanwhile.
    let (clip, secs) = long_clip();
    let v = dc.deliver(&voice("ann", "ann", &clip, secs)).unwrap() as i64;
    let ph = d.wait(&dc, 60, "the placeholder", |log| {
        replies(log, v).first()?["sent_id"].as_i64()
    });
    let during = collect(&sock, 3.0, |_| false);
    assert!(
        last_edit(&dc.log(), ph).is_none_or(|t| t.contains('⏳')),
        "still transcribing while the pings were counted"
    );
    let pings = count(&during, "WATCHDOG=1");
    assert!(
        (4..=8).contains(&pings),
        "pings during a transcription: {during:?}"
    );
    d.signal(Signal::SIGTERM);
    let got = collect(&sock, 20.0, |g| count(g, "STOPPING=1") > 0);
    assert_eq!(count(&got, "STOPPING=1"), 1, "{got:?}");
    assert_eq!(d.wait_exit(&dc, 20).code(), Some(0), "{}", d.log());
}

#[test]
fn a_wedged_runtime_stops_the_watchdog_pings() {
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let _d = Daemon::start_with(
        &dc,
        "",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
            ("VOICE_TRANSCRIBER_DEBUG_WEDGE_AFTER_S", "2"),
        ],
    );
    collect(&sock, 60.0, |g| count(g, "READY=1") > 0);
    // Pings flow, then the runtime blocks and they stop.
    let before = collect(&sock, 1.5, |_| false);
    assert!(count(&before, "WATCHDOG=1") >= 2, "{before:?}");
    std::thread::sleep(Duration::from_secs(2));
    let _drain = collect(&sock, 0.3, |_| false);
    let after = collect(&sock, 3.0, |_| false);
    assert_eq!(
        count(&after, "WATCHDOG=1"),
        0,
        "pings after the wedge: {after:?}"
    );
}

#[test]
fn configuration_problems_are_reported_with_their_key_and_exit_code() {
    let dc = FakeDc::start(scenario(""), None).unwrap();
    // A misspelt key.
    let mut d = Daemon::prepare(&dc, "modle = \"base\"\n", &[]);
    d.restart();
    assert_eq!(d.wait_exit(&dc, 60).code(), Some(78), "{}", d.log());
    let err = d.log();
    assert!(
        err.contains("modle") && err.contains("config.toml"),
        "{err}"
    );

    // No session yet: `run` says to log in, at once, without waiting for input.
    let mut d = Daemon::prepare(&dc, "", &[]);
    std::fs::remove_file(voice_transcriber::telegram::session_path(d.dir.path())).unwrap();
    let start = Instant::now();
    d.restart();
    assert_eq!(d.wait_exit(&dc, 60).code(), Some(77), "{}", d.log());
    assert!(d.log().contains("voice-transcriber login"), "{}", d.log());
    assert!(start.elapsed() < Duration::from_secs(20));

    // `config check` on a working setup: secrets masked, the model found.
    let d = Daemon::prepare(&dc, "", &[]);
    let out = Command::new(common::bin())
        .arg("--state-dir")
        .arg(d.dir.path())
        .arg("--config")
        .arg(d.config())
        .args(["config", "check"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("api_id = 12345") && shown.contains("0123…"),
        "{shown}"
    );
    assert!(
        !shown.contains("0123456789abcdef0123"),
        "secret printed: {shown}"
    );
    assert!(shown.contains("model tiny.en: installed"), "{shown}");
    assert!(shown.contains("telegram session: "), "{shown}");
    assert!(
        !dc.log().iter().any(|e| e["event"] == "connect"),
        "none of these reached Telegram: {}",
        dc.log_text()
    );
}

/// The real Telegram client inside the real daemon, aimed at loopback endpoints that refuse
/// connections or accept and hang up: it keeps trying on the backoff schedule, never dies,
/// and still stops cleanly.
#[test]
fn the_daemon_rides_out_endpoints_that_refuse_or_hang_up() {
    use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let hangup = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    let hangup_addr = hangup.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in hangup.incoming() {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    // A port that was just free: nothing listens, connections are refused.
    let refused_addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();

    // The state directories are written by a fake data center, then aimed elsewhere.
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut daemons = Vec::new();
    for addr in [hangup_addr, refused_addr] {
        let mut d = Daemon::prepare(&dc, "", &[]);
        let std::net::SocketAddr::V4(v4) = addr else {
            unreachable!()
        };
        let session = voice_transcriber::telegram::session_path(d.dir.path());
        std::fs::remove_file(&session).unwrap();
        voice_transcriber::telegram::point_session_at(
            &session,
            SocketAddrV4::new(*v4.ip(), v4.port()),
            [7u8; 256],
        )
        .unwrap();
        d.restart();
        daemons.push(d);
    }
    // Attempts start at 0, 5 and 15 s (±10 %) after the model has loaded, each taking about a
    // second (grammers retries an I/O error once after 1 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    while daemons
        .iter()
        .any(|d| d.log().matches("connection attempt failed").count() < 3)
    {
        assert!(
            Instant::now() < deadline,
            "fewer than three attempts in 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for mut d in daemons {
        let log = d.log();
        assert!(
            log.contains("reconnecting in 5.") || log.contains("reconnecting in 4."),
            "{log}"
        );
        assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 3,
        "real TCP connections were made"
    );
    assert!(!dc.log().iter().any(|e| e["event"] == "connect"));
}

#[test]
fn a_message_delivered_twice_is_answered_once() {
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut d = Daemon::start(&dc);
    d.wait_synced(&dc);
    let first = dc.deliver(&voice("ann", "ann", &jfk(), 11.0)).unwrap();
    d.wait_done(&dc, 180, ANN, first as i64);
    // Telegram's catch-up can hand the same message over again: here after its job finished…
    assert!(dc.redeliver("ann", first).unwrap() >= 1);
    // …and here while the spool still holds it.
    let second = dc.deliver(&voice("ann", "ann", &jfk(), 11.0)).unwrap();
    assert!(dc.redeliver("ann", second).unwrap() >= 1);
    let status = dc.deliver(&text("self", "owner", "/status", None)).unwrap() as i64;
    d.wait(&dc, 180, "the second answer and /status", |log| {
        (reply_to(log, second as i64).is_some() && last_edit(log, status).is_some()).then_some(())
    });
    d.wait_done(&dc, 30, ANN, second as i64);
    std::thread::sleep(Duration::from_secs(3));
    for id in [first, second] {
        let r = dc.replies_in("ann", id);
        assert_eq!(r.len(), 1, "{id} answered once: {r:?}");
        assert_eq!(replies(&dc.log(), id as i64).len(), 1, "one reply sent");
    }
    let again = dc
        .log()
        .iter()
        .filter(|e| e["event"] == "push" && e["again"] == true)
        .count();
    assert_eq!(again, 2);
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}

#[test]
fn the_model_switches_at_runtime_and_the_choice_survives_a_restart() {
    common::model_dir("base");
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut d = Daemon::start(&dc);
    d.wait_synced(&dc);
    let send = |m| dc.deliver(&m).unwrap() as i64;
    let nosuch = send(text("self", "owner", "/model nosuch", None));
    let base = send(text("self", "owner", "/model base", None));
    d.wait(&dc, 120, "the model switch", |log| {
        answered(log, base, "model: base ✓")
    });
    assert!(
        last_edit(&dc.log(), nosuch)
            .unwrap()
            .contains("unknown model"),
        "{}",
        dc.log_text()
    );
    let lang = send(text("self", "owner", "/lang ru", None));
    d.wait(&dc, 60, "/lang", |log| {
        answered(log, lang, "language: ru ✓")
    });
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());

    d.restart();
    let status = send(text("self", "owner", "/status", None));
    let status = d.wait(&dc, 120, "/status after the restart", |log| {
        last_edit(log, status)
    });
    assert!(
        status.contains("model base") && status.contains("language ru"),
        "{status}"
    );
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}

/// The long SIGKILL soak: `SOAK_VOICES` voices (default 30; a third caught up at the first
/// start in difference slices of three, the rest sent live at random moments, some as WAV
/// files of two download parts), `SOAK_KILLS` SIGKILLs (default 15) at random moments, every
/// third one right after a catch-up request and every third right after a download request.
/// Prints the voices lost and answered twice. Run it with
/// `cargo test --release --test daemon -- --ignored --nocapture sigkill_soak`.
#[test]
#[ignore = "a soak of several minutes; prints its figures"]
fn sigkill_soak_loses_and_duplicates_nothing() {
    use rand::{Rng, SeedableRng};
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n_voices = env("SOAK_VOICES", 30) as i32;
    let n_kills = env("SOAK_KILLS", 15) as usize;
    let seed = env("SOAK_SEED", 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let clips = tempfile::tempdir().unwrap();
    let wav = jfk_wav(clips.path());
    let offline = n_voices / 3;
    let dc = FakeDc::start(
        scenario(&format!(
            "[server]\ndifference_limit = 3\n{}",
            (1..=offline).map(offline_voice).collect::<String>()
        )),
        None,
    )
    .unwrap();
    let mut ids: Vec<i32> = (1..=offline).collect();
    let mut d = Daemon::start(&dc);
    let started = Instant::now();
    let mut modes = Vec::new();
    for k in 0..n_kills {
        // Send some of the live voices meanwhile.
        let due = offline + ((n_voices - offline) as usize * (k + 1) / (n_kills + 1)) as i32;
        while (ids.len() as i32) < due {
            let clip = if rng.random_bool(0.3) {
                wav.clone()
            } else {
                jfk()
            };
            ids.push(dc.deliver(&voice("ann", "ann", &clip, 11.0)).unwrap());
        }
        let (method, mode) = match k % 3 {
            0 => (Some("updates.getDifference"), "after a catch-up request"),
            1 => (Some("upload.getFile"), "after a download request"),
            _ => (None, "at a random moment"),
        };
        let seen = method.map(|m| dc.calls(m).len());
        let wait_until = Instant::now() + Duration::from_millis(rng.random_range(500..8000));
        let mut how = "at a random moment";
        loop {
            if let (Some(m), Some(n)) = (method, seen) {
                if dc.calls(m).len() > n {
                    how = mode;
                    break;
                }
            }
            if Instant::now() > wait_until && method.is_none() {
                break;
            }
            if Instant::now() > wait_until + Duration::from_secs(20) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        d.kill();
        modes.push(how);
        d.restart();
    }
    while (ids.len() as i32) < n_voices {
        ids.push(dc.deliver(&voice("ann", "ann", &jfk(), 11.0)).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(1200);
    while !ids.iter().all(|id| !dc.replies_in("ann", *id).is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(5));
    let lost: Vec<i32> = ids
        .iter()
        .copied()
        .filter(|id| dc.replies_in("ann", *id).is_empty())
        .collect();
    let twice: Vec<i32> = ids
        .iter()
        .copied()
        .filter(|id| dc.replies_in("ann", *id).len() > 1)
        .collect();
    let wrong = ids
        .iter()
        .filter(|id| dc.replies_in("ann", **id).iter().any(|t| !jfk_ok(t)))
        .count();
    let count_mode = |m: &str| modes.iter().filter(|x| **x == m).count();
    eprintln!(
        "SIGKILL soak (seed {seed}): {} voices ({offline} caught up at start), {} kills \
         ({} after a catch-up request, {} after a download request, {} at random moments) \
         in {:.0} s → lost {} {lost:?}, answered twice {} {twice:?}, wrong text {wrong}",
        ids.len(),
        modes.len(),
        count_mode("after a catch-up request"),
        count_mode("after a download request"),
        count_mode("at a random moment"),
        started.elapsed().as_secs_f64(),
        lost.len(),
        twice.len(),
    );
    assert!(lost.is_empty() && twice.is_empty(), "{}", d.log());
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}

/// A whole-number setting of a soak from the environment.
fn soak_setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The outage soak: the fake data center refuses every connection for `OUTAGE_S` seconds
/// (default 600) while Ann sends `OUTAGE_VOICES` voices (default 20), spread over the outage.
/// Prints when the daemon tried to connect (seconds into the outage: its backoff), how many
/// voices were lost or answered twice, and how long after the outage the last answer came. Run
/// it with `cargo test --release --test daemon -- --ignored --nocapture outage_soak`.
#[test]
#[ignore = "a soak of over ten minutes; prints its figures"]
fn outage_soak_answers_every_voice_sent_meanwhile() {
    let outage = Duration::from_secs(soak_setting("OUTAGE_S", 600));
    let n = soak_setting("OUTAGE_VOICES", 20) as u32;
    let dc = FakeDc::start(scenario(""), None).unwrap();
    let mut d = Daemon::start(&dc);
    d.wait_synced(&dc);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.log().contains("connected to Telegram") {
        assert!(Instant::now() < deadline, "not connected: {}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    dc.outage(outage);
    let down = Instant::now();
    let mut ids = Vec::new();
    for i in 0..n {
        // Evenly spread, all within the outage.
        let at = outage.mul_f64(f64::from(i) / f64::from(n));
        std::thread::sleep(at.saturating_sub(down.elapsed()));
        ids.push(dc.deliver(&voice("ann", "ann", &jfk(), 11.0)).unwrap());
    }
    let wait_until = down + outage + Duration::from_secs(900);
    while !ids.iter().all(|id| !dc.replies_in("ann", *id).is_empty()) {
        if Instant::now() > wait_until {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let last_answer = down.elapsed().saturating_sub(outage);
    std::thread::sleep(Duration::from_secs(5));
    let log = dc.log();
    let t = |e: &Value| e["t"].as_f64().unwrap_or_default();
    let began = log
        .iter()
        .find(|e| e["event"] == "outage")
        .map(t)
        .expect("the outage is logged");
    // Connection attempts: refused connections, those less than a second apart counted as
    // one attempt (a pool may open more than one).
    let mut attempts: Vec<f64> = Vec::new();
    for e in log.iter().filter(|e| e["event"] == "refused") {
        let at = t(e) - began;
        if attempts.last().is_none_or(|last| at - last > 1.0) {
            attempts.push(at);
        }
    }
    let lost = ids
        .iter()
        .filter(|id| dc.replies_in("ann", **id).is_empty())
        .count();
    let twice = ids
        .iter()
        .filter(|id| dc.replies_in("ann", **id).len() > 1)
        .count();
    let gaps: Vec<String> = std::iter::once(0.0)
        .chain(attempts.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| format!("{:.0}", w[1] - w[0]))
        .collect();
    eprintln!(
        "outage soak: {} s refused, {n} voices sent meanwhile → lost {lost}, answered twice \
         {twice}; the last answer {:.0} s after the outage; {} connection attempts during it, \
         at {:?} s, {} s apart",
        outage.as_secs(),
        last_answer.as_secs_f64(),
        attempts.len(),
        attempts
            .iter()
            .map(|a| a.round() as i64)
            .collect::<Vec<_>>(),
        gaps.join(", "),
    );
    assert_eq!((lost, twice), (0, 0));
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}

/// The flaky-link soak: for `FLAKY_S` seconds (default 600) Ann sends `FLAKY_VOICES` voices
/// (default 50) while the fake data center drops the connection instead of answering, or
/// never answers, a random `FLAKY_PERCENT` % (default 10) of the calls of every method the
/// daemon uses. Prints voices lost and answered twice and the longest time from a voice to its
/// answer. Run it with `cargo test --release --test daemon -- --ignored --nocapture
/// flaky_link_soak`.
#[test]
#[ignore = "a soak of over ten minutes; prints its figures"]
fn flaky_link_soak_loses_and_duplicates_nothing() {
    use rand::{Rng, SeedableRng};
    let span = Duration::from_secs(soak_setting("FLAKY_S", 600));
    let n = soak_setting("FLAKY_VOICES", 50) as u32;
    let percent = soak_setting("FLAKY_PERCENT", 10) as f64;
    let seed = soak_setting("SOAK_SEED", 7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let methods = [
        "updates.getState",
        "updates.getDifference",
        "messages.getMessages",
        "upload.getFile",
        "messages.sendMessage",
        "messages.editMessage",
        "users.getUsers",
    ];
    let mut faults = String::new();
    let mut planned = 0;
    for method in methods {
        // More calls than the soak makes, so the rate holds to the end.
        for call in 2..=(n as u64 * 8) {
            if rng.random_bool(percent / 100.0) {
                let action = if rng.random_bool(0.5) {
                    "drop"
                } else {
                    "stall"
                };
                faults += &format!(
                    "[[faults]]\nmethod = {method:?}\ncall = {call}\naction = {action:?}\n"
                );
                planned += 1;
            }
        }
    }
    let dc = FakeDc::start(scenario(&faults), None).unwrap();
    let mut d = Daemon::start(&dc);
    d.wait_synced(&dc);
    let began = Instant::now();
    let mut sent: Vec<(i32, Instant)> = Vec::new();
    let mut answered: HashMap<i32, Instant> = HashMap::new();
    let note_answers = |sent: &[(i32, Instant)], answered: &mut HashMap<i32, Instant>| {
        for (id, _) in sent {
            if !answered.contains_key(id) && !dc.replies_in("ann", *id).is_empty() {
                answered.insert(*id, Instant::now());
            }
        }
    };
    for i in 0..n {
        let at = span.mul_f64(f64::from(i) / f64::from(n));
        while began.elapsed() < at {
            note_answers(&sent, &mut answered);
            std::thread::sleep(Duration::from_millis(200));
        }
        let id = dc.deliver(&voice("ann", "ann", &jfk(), 11.0)).unwrap();
        sent.push((id, Instant::now()));
    }
    let wait_until = Instant::now() + Duration::from_secs(900);
    while answered.len() < sent.len() && Instant::now() < wait_until {
        note_answers(&sent, &mut answered);
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let lost = sent
        .iter()
        .filter(|(id, _)| !answered.contains_key(id))
        .count();
    let twice = sent
        .iter()
        .filter(|(id, _)| dc.replies_in("ann", *id).len() > 1)
        .count();
    let longest = sent
        .iter()
        .filter_map(|(id, at)| Some(answered.get(id)?.duration_since(*at)))
        .max()
        .unwrap_or_default();
    let log = dc.log();
    let hit = log.iter().filter(|e| e["fault"].is_string()).count();
    eprintln!(
        "flaky-link soak (seed {seed}): {n} voices over {} s, {percent} % of calls dropped or \
         stalled ({planned} planned, {hit} hit) → lost {lost}, answered twice {twice}, longest \
         wait for an answer {:.1} s",
        span.as_secs(),
        longest.as_secs_f64(),
    );
    assert_eq!((lost, twice), (0, 0));
    assert_eq!(d.stop(&dc).code(), Some(0), "{}", d.log());
}
