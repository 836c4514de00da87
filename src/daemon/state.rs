//! What the owner changed at runtime: tracked people, the current model, the language.
//!
//! One small JSON file in the state directory, rewritten atomically on every change
//! ([`crate::daemon::fsutil::write_atomic`]), so a `/track` or `/model` survives restarts and power
//! loss. The config file supplies the starting values; once the owner has picked a model or
//! language by command, the state file's choice wins.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::daemon::fsutil::write_atomic;
use crate::daemon::messenger::UserId;

/// A person whose voice messages are transcribed automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    /// Telegram user id.
    pub id: UserId,
    /// Name when they were added (for `/tracked`; ids are what count).
    pub name: String,
}

/// The runtime state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Tracked people, in the order they were added.
    pub tracked: Vec<Tracked>,
    /// Model picked with `/model`, overriding the config's.
    pub model: Option<String>,
    /// Language picked with `/lang`, overriding the config's.
    pub language: Option<String>,
}

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl State {
    /// Path of the state file inside the state directory.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("state.json")
    }

    /// Reads the state file. A missing file is an empty state. A corrupt one is moved aside
    /// (kept for the owner to inspect) and an empty state is returned with a logged error:
    /// the daemon keeps running rather than refusing to start.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io(e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(state) => Ok(state),
            Err(e) => {
                let aside = path.with_extension("json.corrupt");
                log::error!(
                    "{}: unreadable ({e}); moved to {} and starting with an empty state",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside).map_err(io)?;
                Ok(Self::default())
            }
        }
    }

    /// Writes the state atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(self).expect("state serializes");
        write_atomic(path, &bytes, 0o600).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// True when `id` is tracked.
    pub fn is_tracked(&self, id: UserId) -> bool {
        self.tracked.iter().any(|t| t.id == id)
    }

    /// Adds a person; false when already tracked.
    pub fn track(&mut self, id: UserId, name: &str) -> bool {
        if self.is_tracked(id) {
            return false;
        }
        self.tracked.push(Tracked {
            id,
            name: name.to_string(),
        });
        true
    }

    /// Removes a person; false when they were not tracked.
    pub fn untrack(&mut self, id: UserId) -> bool {
        let before = self.tracked.len();
        self.tracked.retain(|t| t.id != id);
        self.tracked.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_track_untrack() {
        let dir = tempfile::tempdir().unwrap();
        let p = State::path(dir.path());
        assert_eq!(State::load(&p).unwrap(), State::default());
        let mut s = State::default();
        assert!(s.track(7, "Ann"));
        assert!(!s.track(7, "Ann again"));
        assert!(s.track(9, "Bob"));
        s.model = Some("base".into());
        s.save(&p).unwrap();
        let mut back = State::load(&p).unwrap();
        assert_eq!(back, s);
        assert!(back.untrack(7) && !back.untrack(7));
        assert!(!back.is_tracked(7) && back.is_tracked(9));
    }

    #[test]
    fn corrupt_file_is_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = State::path(dir.path());
        std::fs::write(&p, b"{not json").unwrap();
        assert_eq!(State::load(&p).unwrap(), State::default());
        assert_eq!(
            std::fs::read(dir.path().join("state.json.corrupt")).unwrap(),
            b"{not json"
        );
    }
}
