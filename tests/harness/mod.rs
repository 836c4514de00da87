//! The real `voice-transcriber` binary run against the fake Telegram data center
//! (`tests/fake_telegram/`): the people of the test scenarios, the daemon process (start,
//! restart, signals, exit), waits on the fake's request log with deadlines, and readers for
//! what the daemon sent (replies, edits). Shared by `tests/daemon.rs` and
//! `tests/telegram_fake_dc.rs`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common;
use crate::fake_telegram::scenario::Message;
use crate::fake_telegram::{FakeDc, Scenario};

pub const OWNER: i64 = 1000;
pub const ANN: i64 = 111;
pub const BOB: i64 = 222;
/// A basic group with Ann and Bob.
pub const FAMILY: i64 = 500;

pub fn jfk() -> PathBuf {
    common::root().join("tests/data/audio_jfk_ask_not.ogg")
}

/// The people of every scenario: the owner Olga, Ann (a tracked contact), Bob (a stranger)
/// and the basic group "family" with both; `messages` (TOML) is appended.
pub fn scenario(messages: &str) -> Scenario {
    let text = format!(
        r#"
[owner]
id = {OWNER}
first_name = "Olga"
username = "olga"

[[users]]
key = "ann"
id = {ANN}
access_hash = 5555
first_name = "Ann"
username = "ann"
contact = true
tracked = true

[[users]]
key = "bob"
id = {BOB}
access_hash = 6666
first_name = "Bob"

[[chats]]
key = "family"
kind = "group"
id = {FAMILY}
title = "Family"
members = ["ann", "bob"]

{messages}
"#
    );
    Scenario::from_toml(&text, &common::root()).unwrap_or_else(|e| panic!("scenario: {e}"))
}

/// A live voice message from Ann, plus `extra` (faults).
pub fn live_voice(extra: &str) -> Scenario {
    scenario(&format!(
        r#"
[[messages]]
chat = "ann"
after_s = 0.5
[messages.voice]
file = {:?}
duration_s = 11

{extra}
"#,
        jfk()
    ))
}

/// A voice message `id` from Ann that arrived while the daemon was down (TOML).
pub fn offline_voice(id: i32) -> String {
    format!(
        "[[messages]]\nchat = \"ann\"\nid = {id}\ndelivery = \"offline\"\n\
         [messages.voice]\nfile = {:?}\nduration_s = 11\n",
        jfk()
    )
}

/// A text message for [`FakeDc::deliver`]: `from` is a user key or "owner".
pub fn text(chat: &str, from: &str, text: &str, reply_to: Option<i32>) -> Message {
    Message {
        chat: chat.into(),
        from: Some(from.into()),
        text: text.into(),
        reply_to,
        ..Message::default()
    }
}

/// A voice message for [`FakeDc::deliver`] (read as a scenario's `[[messages]]` entry, so
/// every other field keeps its default).
pub fn voice(chat: &str, from: &str, file: &Path, duration_s: f64) -> Message {
    toml::from_str(&format!(
        "chat = {chat:?}\nfrom = {from:?}\n[voice]\nfile = {file:?}\nduration_s = {duration_s:?}\n"
    ))
    .unwrap()
}

/// The JFK clip as a 16 kHz mono 32-bit float WAV: about 700 KB, more than one 512 KiB part.
pub fn jfk_wav(dir: &Path) -> PathBuf {
    let samples = voice_transcriber::whisper::audio::decode_file(&jfk()).unwrap();
    let data_len = (samples.len() * 4) as u32;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&3u16.to_le_bytes()); // IEEE float
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&(16_000u32 * 4).to_le_bytes());
    wav.extend_from_slice(&4u16.to_le_bytes());
    wav.extend_from_slice(&32u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    let path = dir.join("jfk.wav");
    std::fs::write(&path, wav).unwrap();
    path
}

/// Lower case, letters and digits only, single spaces: for comparing transcripts.
pub fn words(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn jfk_ok(text: &str) -> bool {
    words(text).contains("ask not what your country can do for you")
}

pub fn user_of(entry: &Value) -> Option<i64> {
    entry["peer"]["user"].as_i64()
}

/// The first `messages.sendMessage` answering `to`, as (text, whole entry).
pub fn reply_to(log: &[Value], to: i64) -> Option<(String, Value)> {
    log.iter()
        .find(|e| e["method"] == "messages.sendMessage" && e["reply_to"] == to)
        .map(|e| {
            (
                e["message"].as_str().unwrap_or_default().to_string(),
                e.clone(),
            )
        })
}

/// The latest text message `id` was successfully edited to.
pub fn last_edit(log: &[Value], id: i64) -> Option<String> {
    log.iter()
        .rev()
        .find(|e| e["method"] == "messages.editMessage" && e["id"] == id && e["answer"] == "ok")
        .and_then(|e| e["message"].as_str().map(str::to_string))
}

/// The id a pushed or offline message got, by its text.
pub fn pushed_id(log: &[Value], text: &str) -> Option<i64> {
    log.iter()
        .find(|e| e["event"] == "push" && e["text"] == text)
        .and_then(|e| e["id"].as_i64())
}

/// The config lines every daemon here starts with: tiny.en on two threads.
pub fn base_config() -> String {
    common::model_dir("tiny.en");
    format!(
        "model = \"tiny.en\"\nthreads = 2\nnice = 0\nmodels_dir = {:?}\n",
        common::root().join("models/cache")
    )
}

/// The real binary, run against a fake data center.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes the state directory for `dc` and starts `voice-transcriber --state-dir DIR run`.
    pub fn start(dc: &FakeDc) -> Daemon {
        Self::start_with(dc, "", &[])
    }

    /// As [`Daemon::start`], with `extra_config` (TOML: keys, then tables such as `[reply]`)
    /// after the base config and `env` set on this and every later start.
    pub fn start_with(dc: &FakeDc, extra_config: &str, env: &[(&str, &str)]) -> Daemon {
        let mut daemon = Self::prepare(dc, extra_config, env);
        daemon.restart();
        daemon
    }

    /// The state directory for `dc` (session, state, config), without starting anything.
    pub fn prepare(dc: &FakeDc, extra_config: &str, env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        dc.write_state_dir(dir.path(), &format!("{}{extra_config}", base_config()))
            .unwrap();
        Daemon {
            dir,
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Starts the binary (again) on the state directory (session, spool, state as the last
    /// run left them); the log goes on in the same file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the daemon first");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = Command::new(common::bin())
            .arg("--state-dir")
            .arg(self.dir.path())
            .arg("--config")
            .arg(self.config())
            .arg("run")
            .envs(self.env.iter().cloned())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, sig).unwrap();
    }

    /// SIGKILL: no chance to save anything.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Panics with both logs.
    pub fn fail(&self, dc: &FakeDc, why: &str) -> ! {
        panic!(
            "{why}\n--- daemon log:\n{}\n--- fake data center log:\n{}",
            self.log(),
            dc.log_text()
        );
    }

    /// Waits for `found` in the fake's log; panics with both logs after `secs` or when the
    /// daemon exits.
    pub fn wait<T>(
        &mut self,
        dc: &FakeDc,
        secs: u64,
        what: &str,
        found: impl Fn(&[Value]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(t) = found(&dc.log()) {
                return t;
            }
            if Instant::now() > deadline {
                self.fail(dc, &format!("timed out after {secs} s waiting for {what}"));
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.fail(dc, &format!("daemon exited: {status}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the daemon first asked for the update state (it is connected).
    pub fn wait_synced(&mut self, dc: &FakeDc) {
        self.wait(dc, 120, "the daemon's update sync", |log| {
            log.iter().any(|e| e["event"] == "synced").then_some(())
        });
    }

    /// Waits until the spool records message `id` of `chat` as done.
    pub fn wait_done(&mut self, dc: &FakeDc, secs: u64, chat: i64, id: i64) {
        let state = self.dir.path().to_path_buf();
        self.wait(
            dc,
            secs,
            &format!("job {chat} {id} recorded as done"),
            |_| {
                common::spool_on_disk(&state)
                    .done
                    .contains(&(chat, id))
                    .then_some(())
            },
        );
    }

    /// Starts `voice-transcriber run` on a state directory prepared elsewhere (by `login`).
    pub fn start_in(dir: tempfile::TempDir) -> Daemon {
        std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let mut daemon = Daemon {
            dir,
            child: None,
            env: Vec::new(),
        };
        daemon.restart();
        daemon
    }

    /// The exit status once the daemon exits by itself; killed and failed after `secs`.
    pub fn wait_exit(&mut self, dc: &FakeDc, secs: u64) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(dc, &format!("the daemon did not exit within {secs} s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status (killed and failed after 30 s). With FAKE_DC_DUMP set,
    /// both logs are printed first (see them with `-- --nocapture`).
    pub fn stop(&mut self, dc: &FakeDc) -> ExitStatus {
        if std::env::var_os("FAKE_DC_DUMP").is_some() {
            eprintln!(
                "--- fake data center log:\n{}\n--- daemon log:\n{}",
                dc.log_text(),
                self.log()
            );
        }
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit(dc, 30)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
