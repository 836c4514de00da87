//! The daemon's configuration file.
//!
//! One TOML file (default `/etc/voice-transcriber/config.toml`) holds what the owner sets once:
//! Telegram API credentials, where state and models live, the default model and language, how
//! many cores inference may take, which media to transcribe and how replies look. Everything
//! the owner changes at runtime with commands (tracked people, current model, language) lives in
//! the state file instead ([`crate::daemon::state`]), so the config file can stay read-only.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), every bad value is
//! reported with its key, and the secrets can come from the environment (`TG_API_ID`,
//! `TG_API_HASH`) so the file itself may carry none.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the config is read from when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/voice-transcriber/config.toml";

/// Why the configuration is unusable. Every message names the key or the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Telegram API credentials (from <https://my.telegram.org>).
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Telegram {
    /// The application's api_id.
    pub api_id: Option<i32>,
    /// The application's api_hash (32 hex digits).
    pub api_hash: Option<String>,
}

impl fmt::Debug for Telegram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telegram")
            .field("api_id", &self.api_id)
            .field("api_hash", &self.api_hash.as_ref().map(|h| mask(h)))
            .finish()
    }
}

/// Which messages are transcribed automatically.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Transcribe {
    /// Voice messages.
    pub voice: bool,
    /// Round video messages.
    pub video_notes: bool,
    /// Audio files (music documents).
    pub audio_files: bool,
    /// The owner's own voice messages too.
    pub own_messages: bool,
    /// How many times a failing job is tried before it is answered with an error.
    pub max_attempts: u32,
    /// Seconds of padding the encoder sees after a short message's audio; unset: the full
    /// 30 s window (see `whisper::decode::EncoderWindow`).
    pub encoder_margin_s: Option<f32>,
}

impl Default for Transcribe {
    fn default() -> Self {
        Self {
            voice: true,
            video_notes: true,
            audio_files: true,
            own_messages: false,
            max_attempts: 3,
            encoder_margin_s: None,
        }
    }
}

/// How replies look.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Reply {
    /// Text put before every transcript (e.g. "🎙 ").
    pub prefix: String,
    /// For audio longer than this many seconds, reply at once with a placeholder and edit it
    /// as text arrives. 0 disables progress edits.
    pub progress_after_s: f64,
    /// Least time between two progress edits, in seconds (Telegram rate-limits edits).
    pub edit_interval_s: f64,
}

impl Default for Reply {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            progress_after_s: 30.0,
            edit_interval_s: 3.0,
        }
    }
}

/// The whole configuration, after defaults and environment overrides.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Telegram credentials.
    pub telegram: Telegram,
    /// State directory (session, state file, spool). Empty: the built-in default.
    pub state_dir: Option<PathBuf>,
    /// Models directory. Empty: `<state_dir>/models`.
    pub models_dir: Option<PathBuf>,
    /// Model used until `/model` picks another.
    pub model: String,
    /// Language code or `auto`, until `/lang` picks another.
    pub language: String,
    /// Inference threads. 0: all cores but one (at least one).
    pub threads: usize,
    /// Cores the inference threads are pinned to; empty for no pinning.
    pub cores: Vec<usize>,
    /// Niceness of inference threads (0–19), so networking stays responsive.
    pub nice: i32,
    /// Which messages are transcribed.
    pub transcribe: Transcribe,
    /// How replies look.
    pub reply: Reply,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            telegram: Telegram::default(),
            state_dir: None,
            models_dir: None,
            model: "tiny.en".into(),
            language: "auto".into(),
            threads: 0,
            cores: Vec::new(),
            nice: 10,
            transcribe: Transcribe::default(),
            reply: Reply::default(),
        }
    }
}

/// Environment variables that override the file's secrets.
pub const ENV_API_ID: &str = "TG_API_ID";
/// See [`ENV_API_ID`].
pub const ENV_API_HASH: &str = "TG_API_HASH";

impl Config {
    /// Reads `path`. A missing file is an error only when `required` (the user named it);
    /// otherwise the defaults apply. Environment overrides and validation follow.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Self::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment, no validation).
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    /// Applies `TG_API_ID` / `TG_API_HASH` when set.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(id) = var(ENV_API_ID).filter(|v| !v.is_empty()) {
            let id = id
                .trim()
                .parse()
                .map_err(|_| invalid("TG_API_ID", format!("{id:?} is not a number")))?;
            self.telegram.api_id = Some(id);
        }
        if let Some(hash) = var(ENV_API_HASH).filter(|v| !v.is_empty()) {
            self.telegram.api_hash = Some(hash.trim().to_string());
        }
        Ok(())
    }

    /// Checks every value; the first bad one is reported with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = self.telegram.api_id {
            if id <= 0 {
                return Err(invalid("telegram.api_id", "must be a positive number"));
            }
        }
        if let Some(hash) = &self.telegram.api_hash {
            if hash.len() != 32 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "telegram.api_hash",
                    "must be 32 hexadecimal digits",
                ));
            }
        }
        if self.model.trim().is_empty() {
            return Err(invalid("model", "must name a model"));
        }
        if !is_language_setting(&self.language) {
            return Err(invalid(
                "language",
                format!(
                    "{:?} is not a language code (e.g. en, ru) or auto",
                    self.language
                ),
            ));
        }
        let cores = available_cores();
        if self.threads > 256 {
            return Err(invalid("threads", "more than 256 threads"));
        }
        if let Some(&bad) = self.cores.iter().find(|&&c| c >= cores) {
            return Err(invalid(
                "cores",
                format!(
                    "core {bad} does not exist (this machine has cores 0–{})",
                    cores - 1
                ),
            ));
        }
        if !(0..=19).contains(&self.nice) {
            return Err(invalid("nice", "must be between 0 and 19"));
        }
        if let Some(m) = self.transcribe.encoder_margin_s {
            if !(0.0..=30.0).contains(&m) {
                return Err(invalid(
                    "transcribe.encoder_margin_s",
                    "must be between 0 and 30 seconds",
                ));
            }
        }
        if self.transcribe.max_attempts == 0 {
            return Err(invalid("transcribe.max_attempts", "must be at least 1"));
        }
        for (key, v) in [
            ("reply.progress_after_s", self.reply.progress_after_s),
            ("reply.edit_interval_s", self.reply.edit_interval_s),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(invalid(key, "must be a number of seconds ≥ 0"));
            }
        }
        Ok(())
    }

    /// The credentials `login` and `run` need, or an error naming what is missing.
    pub fn credentials(&self) -> Result<(i32, String), ConfigError> {
        let id = self.telegram.api_id.ok_or_else(|| {
            invalid(
                "telegram.api_id",
                "not set (config file or TG_API_ID; get one at https://my.telegram.org)",
            )
        })?;
        let hash = self.telegram.api_hash.clone().ok_or_else(|| {
            invalid(
                "telegram.api_hash",
                "not set (config file or TG_API_HASH; get one at https://my.telegram.org)",
            )
        })?;
        Ok((id, hash))
    }

    /// Inference threads to start: the configured count, or all cores but one.
    pub fn effective_threads(&self) -> usize {
        match self.threads {
            0 if !self.cores.is_empty() => self.cores.len(),
            0 => available_cores().saturating_sub(1).max(1),
            n => n,
        }
    }

    /// The effective configuration as TOML, with the api_hash masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        shown.telegram.api_hash = shown.telegram.api_hash.as_deref().map(mask);
        if shown.threads == 0 {
            shown.threads = self.effective_threads();
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `abcd…` for a secret: enough to recognise it, not enough to use it.
fn mask(secret: &str) -> String {
    let head: String = secret.chars().take(4).collect();
    format!("{head}…")
}

/// Number of cores the system has.
pub fn available_cores() -> usize {
    // SAFETY: sysconf only reads a system constant.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }).max(1) as usize
}

/// `auto`, or a two- or three-letter lower-case code.
pub fn is_language_setting(s: &str) -> bool {
    s == "auto" || ((2..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<Config, String> {
        let c = Config::parse(text)?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn full_example_parses() {
        let c = load_text(
            r#"
            model = "base"
            language = "ru"
            threads = 1
            cores = [0]
            nice = 5
            [telegram]
            api_id = 12345
            api_hash = "0123456789abcdef0123456789abcdef"
            [transcribe]
            audio_files = false
            own_messages = true
            [reply]
            prefix = "🎙 "
            progress_after_s = 10
            "#,
        )
        .unwrap();
        assert_eq!(c.model, "base");
        assert_eq!(c.cores, vec![0]);
        assert!(!c.transcribe.audio_files && c.transcribe.voice && c.transcribe.own_messages);
        assert_eq!(c.reply.progress_after_s, 10.0);
        assert_eq!(c.credentials().unwrap().0, 12345);
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let e = load_text("modle = \"base\"").unwrap_err();
        assert!(e.contains("modle"), "{e}");
        let e = load_text("[transcribe]\nvoices = true").unwrap_err();
        assert!(e.contains("voices"), "{e}");
        let e = load_text("threads = \"two\"").unwrap_err();
        assert!(e.contains("threads"), "{e}");
        let e = load_text("[telegram]\napi_hash = \"short\"").unwrap_err();
        assert!(e.starts_with("telegram.api_hash"), "{e}");
        let e = load_text("language = \"Russian\"").unwrap_err();
        assert!(e.starts_with("language"), "{e}");
        let e = load_text("cores = [4096]").unwrap_err();
        assert!(e.starts_with("cores"), "{e}");
        let e = load_text("nice = 40").unwrap_err();
        assert!(e.starts_with("nice"), "{e}");
        let e = load_text("[transcribe]\nencoder_margin_s = -1.0").unwrap_err();
        assert!(e.starts_with("transcribe.encoder_margin_s"), "{e}");
        let c = load_text("[transcribe]\nencoder_margin_s = 10.0").unwrap();
        assert_eq!(c.transcribe.encoder_margin_s, Some(10.0));
    }

    #[test]
    fn environment_overrides_secrets() {
        let mut c = Config::parse("[telegram]\napi_id = 1").unwrap();
        c.apply_env(|k| match k {
            ENV_API_ID => Some("777".into()),
            ENV_API_HASH => Some("ffffffffffffffffffffffffffffffff".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.credentials().unwrap(), (777, "f".repeat(32)));
        assert!(c.apply_env(|_| Some("x1".into())).is_err());
    }

    #[test]
    fn missing_credentials_say_where_to_get_them() {
        let e = Config::default().credentials().unwrap_err().to_string();
        assert!(e.contains("api_id") && e.contains("TG_API_ID"), "{e}");
    }

    #[test]
    fn masked_output_hides_the_hash_and_reparses() {
        let c =
            load_text("[telegram]\napi_id = 5\napi_hash = \"0123456789abcdef0123456789abcdef\"")
                .unwrap();
        let shown = c.to_masked_toml();
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        assert!(shown.contains("0123…"), "{shown}");
        assert!(format!("{c:?}").contains("0123…"));
        assert!(Config::parse(&shown).is_ok(), "{shown}");
    }

    #[test]
    fn missing_default_file_means_defaults_but_named_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.toml");
        assert_eq!(Config::load(&p, false).unwrap().model, "tiny.en");
        assert!(Config::load(&p, true)
            .unwrap_err()
            .to_string()
            .contains("none.toml"));
    }
}
