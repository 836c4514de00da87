//! The daemon end to end: the real binary (`run --local-chat`), the real tiny.en model and
//! real speech, with a directory standing in for Telegram (see `src/daemon/localchat.rs`). These
//! tests send voice messages and commands, stop and kill the process, take the "network"
//! away, and check what was answered, and how often.

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use voice_transcriber::daemon::localchat::{self, Sent};
use voice_transcriber::daemon::messenger::{Incoming, Media, MediaKind};

const OWNER: i64 = 1;
const ANN: i64 = 111;
const BOB: i64 = 222;
const CHAT: i64 = 500;

fn jfk() -> PathBuf {
    common::root().join("tests/data/audio_jfk_ask_not.ogg")
}

/// A daemon under test: its state dir, config and local chat directory.
struct Bot {
    _root: tempfile::TempDir,
    chat: PathBuf,
    state: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    seq: u64,
}

impl Bot {
    fn new(extra_config: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let chat = root.path().join("chat");
        let state = root.path().join("state");
        let config = root.path().join("config.toml");
        common::model_dir("tiny.en");
        std::fs::write(
            &config,
            format!(
                "model = \"tiny.en\"\nthreads = 2\nnice = 0\nmodels_dir = {:?}\nstate_dir = {:?}\n{extra_config}",
                common::root().join("models/cache"),
                state
            ),
        )
        .unwrap();
        localchat::open(&chat).unwrap();
        Bot {
            _root: root,
            chat,
            state,
            config,
            child: None,
            env: Vec::new(),
            seq: 0,
        }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.chat.join("daemon.log"))
            .unwrap();
        let child = Command::new(common::bin())
            .args(["run", "--local-chat"])
            .arg(&self.chat)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.chat.join("daemon.log")).unwrap_or_default()
    }

    fn post(&mut self, m: Incoming) {
        self.seq += 1;
        localchat::post(&self.chat, self.seq, &m).unwrap();
    }

    fn text(&mut self, id: i32, from: i64, text: &str, reply_to: Option<i32>) {
        self.post(Incoming {
            chat: CHAT,
            id,
            sender: Some(from),
            sender_name: name(from).into(),
            outgoing: from == OWNER,
            text: text.into(),
            media: None,
            reply_to,
        });
    }

    fn voice(&mut self, id: i32, from: i64, clip: &Path, duration_s: f64) {
        std::fs::copy(clip, self.chat.join(format!("media/{CHAT}_{id}"))).unwrap();
        self.post(Incoming {
            chat: CHAT,
            id,
            sender: Some(from),
            sender_name: name(from).into(),
            outgoing: from == OWNER,
            text: String::new(),
            media: Some(Media {
                kind: MediaKind::Voice,
                duration_s,
                size: 0,
            }),
            reply_to: None,
        });
    }

    fn outbox(&self) -> Vec<Sent> {
        localchat::read_outbox(&self.chat).unwrap()
    }

    /// Waits until `done` holds for the outbox; panics with the log after `secs`.
    fn wait_for(&self, secs: u64, what: &str, done: impl Fn(&[Sent]) -> bool) -> Vec<Sent> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let out = self.outbox();
            if done(&out) {
                return out;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\noutbox: {out:#?}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    fn wait_exit(&mut self, secs: u64) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon did not exit within {secs} s\nlog:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(30)
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn name(id: i64) -> &'static str {
    match id {
        OWNER => "Owner",
        ANN => "Ann",
        BOB => "Bob",
        _ => "Someone",
    }
}

/// Replies to message `to`.
fn replies_to(out: &[Sent], to: i32) -> Vec<(i32, String)> {
    out.iter()
        .filter_map(|s| match s {
            Sent::Reply {
                to: t, id, text, ..
            } if *t == to => Some((*id, text.clone())),
            _ => None,
        })
        .collect()
}

/// The latest text of message `id` (its edits).
fn last_edit(out: &[Sent], id: i32) -> Option<String> {
    out.iter().rev().find_map(|s| match s {
        Sent::Edit { id: i, text, .. } if *i == id => Some(text.clone()),
        _ => None,
    })
}

fn jfk_text_ok(t: &str) -> bool {
    let t = t.to_lowercase();
    t.contains("ask not what your country can do for you")
}

#[test]
fn tracked_voices_are_answered_and_only_the_owner_commands() {
    let mut bot = Bot::new("");
    bot.start();
    bot.text(1, ANN, "hi, it's Ann", None);
    bot.text(2, OWNER, "/track", Some(1));
    bot.wait_for(60, "/track answer", |o| {
        last_edit(o, 2).is_some_and(|t| t.contains("tracking Ann (111)"))
    });
    bot.voice(3, ANN, &jfk(), 11.0);
    bot.voice(4, BOB, &jfk(), 11.0);
    bot.text(5, BOB, "/status", None);
    let out = bot.wait_for(120, "transcript for Ann", |o| !replies_to(o, 3).is_empty());
    let r = replies_to(&out, 3);
    assert_eq!(r.len(), 1);
    assert!(jfk_text_ok(&r[0].1), "{}", r[0].1);

    bot.text(6, OWNER, "/status", None);
    bot.text(7, OWNER, "/frobnicate", None);
    bot.text(8, OWNER, "/tracked", None);
    bot.text(9, OWNER, "/transcribe", Some(4));
    bot.text(10, OWNER, "/lang ru", None);
    let out = bot.wait_for(120, "command answers", |o| {
        last_edit(o, 9).is_some_and(|t| !t.starts_with('⏳')) && last_edit(o, 10).is_some()
    });
    let status = last_edit(&out, 6).unwrap();
    assert!(
        status.contains("model tiny.en") && status.contains("done 1"),
        "{status}"
    );
    assert!(status.contains("2 threads"), "{status}");
    assert!(last_edit(&out, 7)
        .unwrap()
        .contains("unknown command /frobnicate"));
    assert!(last_edit(&out, 8).unwrap().contains("Ann (111)"));
    assert!(
        jfk_text_ok(&last_edit(&out, 9).unwrap()),
        "on-demand transcript"
    );
    assert!(
        last_edit(&out, 10).unwrap().contains("English-only"),
        "an English-only model refuses /lang ru"
    );
    // Bob is not tracked and not the owner: no automatic reply, his /status is ignored.
    assert!(replies_to(&out, 4).is_empty());
    assert!(last_edit(&out, 5).is_none() && replies_to(&out, 5).is_empty());

    assert_eq!(bot.stop().code(), Some(0));
    let state = std::fs::read_to_string(bot.state.join("state.json")).unwrap();
    assert!(state.contains("111"), "tracking survives restarts: {state}");
}

#[test]
fn long_audio_shows_progress_then_the_whole_text() {
    let clip = common::eval_dir().join("opus/en_ljspeech_001_011.ogg");
    let mut bot = Bot::new("[reply]\nedit_interval_s = 0\nprefix = \"🎙 \"\n");
    bot.start();
    bot.text(1, OWNER, "/track 111", None);
    bot.voice(2, ANN, &clip, 75.2);
    let out = bot.wait_for(300, "final transcript", |o| {
        let r = replies_to(o, 2);
        r.len() == 1 && last_edit(o, r[0].0).is_some_and(|t| !t.contains('⏳'))
    });
    let (ph, first) = replies_to(&out, 2).remove(0);
    assert!(first.starts_with("🎙 ⏳"), "placeholder first: {first}");
    let edits: Vec<String> = out
        .iter()
        .filter_map(|s| match s {
            Sent::Edit { id, text, .. } if *id == ph => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert!(
        edits.len() >= 2,
        "progress edits before the final text: {edits:#?}"
    );
    assert!(
        edits[0].contains('⏳'),
        "text shown while running: {}",
        edits[0]
    );
    let last = edits.last().unwrap().to_lowercase();
    assert!(last.starts_with("🎙 "));
    // First and last sentences of the recording are both in the final text.
    assert!(last.contains("printing"), "{last}");
    assert!(last.contains("letters"), "{last}");
    assert_eq!(bot.stop().code(), Some(0));
}

#[test]
fn bad_audio_gets_an_error_reply_without_blocking_the_queue() {
    let mut bot = Bot::new("[transcribe]\nmax_attempts = 2\n");
    let junk = bot.chat.join("junk.ogg");
    std::fs::write(&junk, b"OggS this is not really an ogg stream at all").unwrap();
    bot.start();
    bot.text(1, OWNER, "/track 111", None);
    bot.voice(2, ANN, &junk, 3.0);
    bot.voice(3, ANN, &jfk(), 11.0);
    // A voice whose media is gone (deleted before download): dropped, no reply.
    bot.voice(4, ANN, &jfk(), 11.0);
    std::fs::remove_file(bot.chat.join(format!("media/{CHAT}_4"))).unwrap();
    bot.voice(5, ANN, &jfk(), 11.0);
    let out = bot.wait_for(180, "answers", |o| {
        !replies_to(o, 2).is_empty() && !replies_to(o, 5).is_empty()
    });
    let err = replies_to(&out, 2);
    assert_eq!(err.len(), 1, "one error reply after the attempts ran out");
    assert!(
        err[0].1.starts_with("⚠️ could not transcribe"),
        "{}",
        err[0].1
    );
    assert!(jfk_text_ok(&replies_to(&out, 3)[0].1));
    assert!(replies_to(&out, 4).is_empty());
    assert!(bot.log().contains("deleted"), "{}", bot.log());
    assert_eq!(bot.stop().code(), Some(0));
    // Nothing left in the spool.
    let left = common::spool_on_disk(&bot.state).pending;
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn voices_sent_while_offline_are_answered_after_reconnect_and_flood_waits_are_honoured() {
    let mut bot = Bot::new("");
    std::fs::write(bot.chat.join("offline"), b"").unwrap();
    bot.start();
    bot.text(1, OWNER, "/track 111", None);
    bot.voice(2, ANN, &jfk(), 11.0);
    std::thread::sleep(Duration::from_secs(3));
    assert!(bot.outbox().is_empty(), "nothing can be sent while offline");
    std::fs::write(bot.chat.join("flood"), b"3").unwrap();
    std::fs::remove_file(bot.chat.join("offline")).unwrap();
    let back = Instant::now();
    let out = bot.wait_for(120, "answer after reconnect", |o| {
        !replies_to(o, 2).is_empty()
    });
    assert!(jfk_text_ok(&replies_to(&out, 2)[0].1));
    assert!(
        back.elapsed() >= Duration::from_secs(3),
        "the 3 s flood wait was honoured"
    );
    let log = bot.log();
    assert!(log.contains("reconnecting in"), "{log}");
    assert!(log.contains("connected to Telegram"), "{log}");
    assert!(log.contains("flood wait"), "{log}");
    assert_eq!(bot.stop().code(), Some(0));
}

#[test]
fn a_revoked_login_stops_with_its_own_exit_code() {
    let mut bot = Bot::new("");
    std::fs::write(bot.chat.join("revoked"), b"").unwrap();
    bot.start();
    let status = bot.wait_exit(60);
    assert_eq!(status.code(), Some(77), "{}", bot.log());
    assert!(bot.log().contains("login"), "{}", bot.log());
}

#[test]
fn sigterm_mid_job_exits_cleanly_and_the_job_finishes_after_restart() {
    let clip = common::eval_dir().join("opus/en_ljspeech_023_032.ogg");
    let mut bot = Bot::new("[reply]\nedit_interval_s = 0\n");
    bot.start();
    bot.text(1, OWNER, "/track 111", None);
    bot.voice(2, ANN, &clip, 77.6);
    bot.wait_for(120, "placeholder", |o| !replies_to(o, 2).is_empty());
    let stopped = Instant::now();
    assert_eq!(bot.stop().code(), Some(0));
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "stop within the grace period"
    );
    assert!(bot.log().contains("stays in the spool"), "{}", bot.log());

    bot.start();
    let out = bot.wait_for(300, "final text after restart", |o| {
        let r = replies_to(o, 2);
        !r.is_empty() && last_edit(o, r[0].0).is_some_and(|t| !t.contains('⏳'))
    });
    assert_eq!(
        replies_to(&out, 2).len(),
        1,
        "the placeholder is reused, not sent again"
    );
    assert_eq!(bot.stop().code(), Some(0));
}

#[test]
fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let eval = common::eval_dir();
    let clips: Vec<(PathBuf, f64)> = common::read_tsv(&eval.join("manifest.tsv"))
        .into_iter()
        .filter(|r| r["lang"] == "en")
        .map(|r| {
            (
                eval.join(format!("opus/{}.ogg", r["id"])),
                r["duration_s"].parse().unwrap(),
            )
        })
        .filter(|(_, d)| *d < 12.0)
        .collect();
    assert!(clips.len() >= 5);
    let mut bot = Bot::new("");
    let jobs: Vec<i32> = (10..34).collect();
    bot.text(1, OWNER, "/track 111", None);
    for (i, id) in jobs.iter().enumerate() {
        let (clip, d) = &clips[i % clips.len()];
        bot.voice(*id, ANN, clip, *d);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kills = 0;
    for _ in 0..12 {
        bot.start();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..4000)));
        bot.signal(nix::sys::signal::Signal::SIGKILL);
        bot.wait_exit(10);
        kills += 1;
    }
    bot.start();
    let out = bot.wait_for(600, "every job answered", |o| {
        jobs.iter().all(|id| !replies_to(o, *id).is_empty())
    });
    assert_eq!(bot.stop().code(), Some(0));
    let mut per_job: HashMap<i32, usize> = HashMap::new();
    for s in &out {
        if let Sent::Reply { to, .. } = s {
            *per_job.entry(*to).or_default() += 1;
        }
    }
    let dup: Vec<_> = per_job.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dup.is_empty(),
        "answered more than once after {kills} kills: {dup:?}"
    );
    assert_eq!(
        jobs.iter().filter(|id| per_job.contains_key(id)).count(),
        jobs.len()
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
    let mut bot = Bot::new("");
    let path = bot.chat.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    bot.env = vec![
        ("NOTIFY_SOCKET".into(), path.to_string_lossy().into_owned()),
        ("WATCHDOG_USEC".into(), "1000000".into()),
    ];
    bot.start();
    let got = collect(&sock, 60.0, |g| count(g, "READY=1") > 0);
    assert!(count(&got, "READY=1") == 1, "{got:?}");
    let got = collect(&sock, 3.0, |_| false);
    let pings = count(&got, "WATCHDOG=1");
    assert!((4..=8).contains(&pings), "WATCHDOG=1 every 0.5 s: {got:?}");
    assert!(
        got.iter().any(|m| m.contains("STATUS=connected")),
        "{got:?}"
    );
    // A long transcription runs on its own threads: the runtime keeps pinging meanwhile.
    bot.text(1, OWNER, "/track 111", None);
    let clip = common::eval_dir().join("opus/en_ljspeech_001_011.ogg");
    bot.voice(2, ANN, &clip, 75.2);
    bot.wait_for(60, "placeholder", |o| !replies_to(o, 2).is_empty());
    let during = collect(&sock, 3.0, |_| false);
    let finished = |o: &[Sent]| {
        replies_to(o, 2)
            .first()
            .and_then(|(id, _)| last_edit(o, *id))
            .is_some_and(|t| !t.contains('⏳'))
    };
    assert!(
        !finished(&bot.outbox()),
        "still transcribing while pings were counted"
    );
    let pings = count(&during, "WATCHDOG=1");
    assert!(
        (4..=8).contains(&pings),
        "pings during a transcription: {during:?}"
    );
    bot.signal(nix::sys::signal::Signal::SIGTERM);
    let got = collect(&sock, 20.0, |g| count(g, "STOPPING=1") > 0);
    assert!(count(&got, "STOPPING=1") == 1, "{got:?}");
    assert_eq!(bot.wait_exit(20).code(), Some(0));
}

#[test]
fn a_wedged_runtime_stops_the_watchdog_pings() {
    let mut bot = Bot::new("");
    let path = bot.chat.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    bot.env = vec![
        ("NOTIFY_SOCKET".into(), path.to_string_lossy().into_owned()),
        ("WATCHDOG_USEC".into(), "1000000".into()),
        ("VOICE_TRANSCRIBER_DEBUG_WEDGE_AFTER_S".into(), "2".into()),
    ];
    bot.start();
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
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "modle = \"base\"\n").unwrap();
    let out = Command::new(common::bin())
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("modle") && err.contains("bad.toml"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "state_dir = {:?}\nmodels_dir = {:?}\n[telegram]\napi_id = 123\napi_hash = \"0123456789abcdef0123456789abcdef\"\n",
            dir.path().join("state"),
            common::root().join("models/cache")
        ),
    )
    .unwrap();
    // No session yet: `run` says to log in, at once, without waiting for input.
    let start = Instant::now();
    let out = Command::new(common::bin())
        .args(["run", "--config"])
        .arg(&good)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77));
    assert!(String::from_utf8_lossy(&out.stderr).contains("voice-transcriber login"));
    assert!(start.elapsed() < Duration::from_secs(20));

    let out = Command::new(common::bin())
        .args(["config", "check", "--config"])
        .arg(&good)
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
        shown.contains("api_id = 123") && shown.contains("0123…"),
        "{shown}"
    );
    assert!(
        !shown.contains("0123456789abcdef0123"),
        "secret printed: {shown}"
    );
    assert!(shown.contains("model tiny.en: installed"), "{shown}");
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
    let count = Arc::clone(&accepted);
    let hangup_addr = hangup.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in hangup.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    // A port that was just free: nothing listens, connections are refused.
    let refused_addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();

    let mut bots = Vec::new();
    for addr in [hangup_addr, refused_addr] {
        let bot = Bot::new(
            "[telegram]\napi_id = 12345\napi_hash = \"0123456789abcdef0123456789abcdef\"\n",
        );
        let std::net::SocketAddr::V4(v4) = addr else {
            unreachable!()
        };
        std::fs::create_dir_all(&bot.state).unwrap();
        voice_transcriber::telegram::point_session_at(
            &voice_transcriber::telegram::session_path(&bot.state),
            SocketAddrV4::new(*v4.ip(), v4.port()),
            [7u8; 256],
        )
        .unwrap();
        let log = std::fs::File::create(bot.chat.join("daemon.log")).unwrap();
        let child = Command::new(common::bin())
            .arg("run")
            .arg("--config")
            .arg(&bot.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        bots.push((bot, child));
    }
    // Attempts start at 0, 5 and 15 s (±10 %) after the model has loaded, each taking about a
    // second (grammers retries an I/O error once after 1 s).
    let deadline = Instant::now() + Duration::from_secs(120);
    while bots
        .iter()
        .any(|(bot, _)| bot.log().matches("connection attempt failed").count() < 3)
    {
        assert!(
            Instant::now() < deadline,
            "fewer than three attempts in 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (mut bot, mut child) in bots {
        assert!(
            child.try_wait().unwrap().is_none(),
            "daemon died:\n{}",
            bot.log()
        );
        let log = bot.log();
        let failures = log.matches("connection attempt failed").count();
        assert!(failures >= 3, "three or more attempts:\n{log}");
        assert!(
            log.contains("reconnecting in 5.") || log.contains("reconnecting in 4."),
            "{log}"
        );
        bot.child = Some(child);
        assert_eq!(bot.stop().code(), Some(0), "{}", bot.log());
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 3,
        "real TCP connections were made"
    );
}

#[test]
fn the_model_switches_at_runtime_and_the_choice_survives_a_restart() {
    common::model_dir("base");
    let mut bot = Bot::new("");
    bot.start();
    bot.text(1, OWNER, "/model nosuch", None);
    bot.text(2, OWNER, "/model base", None);
    bot.text(3, OWNER, "/lang ru", None);
    let out = bot.wait_for(120, "model switch", |o| {
        last_edit(o, 2).is_some_and(|t| t.contains('✓')) && last_edit(o, 3).is_some()
    });
    assert!(
        last_edit(&out, 1).unwrap().contains("unknown model"),
        "{out:?}"
    );
    assert!(last_edit(&out, 2).unwrap().contains("model: base ✓"));
    // /lang ru may have been handled before or after the switch finished; set it again.
    bot.text(4, OWNER, "/lang ru", None);
    bot.wait_for(60, "/lang", |o| {
        last_edit(o, 4).is_some_and(|t| t.contains("ru ✓"))
    });
    assert_eq!(bot.stop().code(), Some(0));

    bot.start();
    bot.text(5, OWNER, "/status", None);
    let out = bot.wait_for(120, "status after restart", |o| last_edit(o, 5).is_some());
    let status = last_edit(&out, 5).unwrap();
    assert!(
        status.contains("model base") && status.contains("language ru"),
        "{status}"
    );
    assert_eq!(bot.stop().code(), Some(0));
}

#[test]
fn a_message_delivered_twice_is_answered_once() {
    let mut bot = Bot::new("");
    bot.start();
    bot.text(1, OWNER, "/track 111", None);
    bot.voice(2, ANN, &jfk(), 11.0);
    bot.wait_for(120, "first answer", |o| !replies_to(o, 2).is_empty());
    // Telegram's catch-up can hand the same update over again, here after the job finished…
    bot.voice(2, ANN, &jfk(), 11.0);
    // …and while the spool still holds it.
    bot.voice(3, ANN, &jfk(), 11.0);
    bot.voice(3, ANN, &jfk(), 11.0);
    bot.text(4, OWNER, "/status", None);
    let out = bot.wait_for(120, "second voice", |o| {
        !replies_to(o, 3).is_empty() && last_edit(o, 4).is_some()
    });
    std::thread::sleep(Duration::from_secs(3));
    let out = if bot.outbox().len() > out.len() {
        bot.outbox()
    } else {
        out
    };
    assert_eq!(replies_to(&out, 2).len(), 1, "{out:#?}");
    assert_eq!(replies_to(&out, 3).len(), 1, "{out:#?}");
    assert_eq!(bot.stop().code(), Some(0));
}
