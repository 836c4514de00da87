//! Where a message's audio is kept while it downloads and until it is transcribed.
//!
//! # Memory first, then the runtime's temporary directory, never the state directory
//! The state directory is on the SD card of a Raspberry Pi, and SD cards wear out with writes.
//! An ordinary voice message is small — Opus at 16–32 kbit/s, so a minute is 120–240 KB — so a
//! [`Download`] whose size is known to be at most [`IN_MEMORY_LIMIT`] stays in memory and is
//! decoded from there: it never touches a disk. Bigger files (long audio files, round videos)
//! and files of unknown size go to a file in the runtime's temporary directory
//! ([`temp_dir`]: `$TMPDIR`, else `/tmp`). Under the systemd unit that is the service's
//! private `/tmp` (`PrivateTmp=yes`), which lives on the host's `/tmp`: a tmpfs on systems
//! that mount one there (Debian 13, Raspberry Pi OS based on it), the root file system
//! otherwise — README, "On a Raspberry Pi", says how to make it a tmpfs.
//! The file is a cache, not a record: it is never fsynced.
//!
//! # Resuming
//! A download keeps what it has: a dropped connection or a failed attempt leaves the bytes in
//! place, and the next try asks Telegram only for the rest ([`Download::len`] is where it goes
//! on). The worker keeps the download of the job in hand across attempts; a file in the temp
//! directory also survives a restart of the daemon (not a reboot, and not a restart of the
//! systemd service, whose private `/tmp` is emptied when it stops: starting again from byte 0
//! then is the price of keeping it off the card).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Largest download kept in memory, in bytes: 4 MiB holds a voice message of 17 minutes at
/// 32 kbit/s (35 at 16 kbit/s), far beyond the usual, and is small next to the decoded
/// samples (64 KB per second of audio) and the model that a transcription holds anyway.
pub const IN_MEMORY_LIMIT: u64 = 4 * 1024 * 1024;

/// The audio of one message, whole, ready for the decoder.
#[derive(Debug)]
pub enum Audio {
    /// Kept in memory.
    Bytes(Vec<u8>),
    /// In a file (removed by the worker once transcribed).
    File(PathBuf),
}

/// The bytes of one message's media, as far as they have arrived.
#[derive(Debug)]
pub struct Download {
    store: Store,
}

#[derive(Debug)]
enum Store {
    Memory(Vec<u8>),
    File { path: PathBuf, file: File, len: u64 },
}

impl Download {
    /// A download of a file of `size` bytes (0 when unknown): in memory when it is known to fit
    /// [`IN_MEMORY_LIMIT`], else in the file `path`, going on from what the file already holds.
    pub fn new(size: u64, path: &Path) -> io::Result<Download> {
        if size > 0 && size <= IN_MEMORY_LIMIT {
            return Ok(Download::in_memory());
        }
        Download::in_file(path)
    }

    /// An empty download in memory.
    pub fn in_memory() -> Download {
        Download {
            store: Store::Memory(Vec::new()),
        }
    }

    /// A download into the file `path`, which is created or, when it exists, continued.
    pub fn in_file(path: &Path) -> io::Result<Download> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        Ok(Download {
            store: Store::File {
                path: path.to_path_buf(),
                file,
                len,
            },
        })
    }

    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        match &self.store {
            Store::Memory(bytes) => bytes.len() as u64,
            Store::File { len, .. } => *len,
        }
    }

    /// True before the first byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when kept in memory.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.store, Store::Memory(_))
    }

    /// Drops everything past `len` (a download goes on from an aligned offset).
    pub fn truncate(&mut self, len: u64) -> io::Result<()> {
        match &mut self.store {
            Store::Memory(bytes) => bytes.truncate(len as usize),
            Store::File {
                file, len: have, ..
            } => {
                if len < *have {
                    file.set_len(len)?;
                    file.seek(SeekFrom::Start(len))?;
                    *have = len;
                }
            }
        }
        Ok(())
    }

    /// Adds the next bytes.
    pub fn append(&mut self, chunk: &[u8]) -> io::Result<()> {
        match &mut self.store {
            Store::Memory(bytes) => bytes.extend_from_slice(chunk),
            Store::File { file, len, .. } => {
                file.write_all(chunk)?;
                *len += chunk.len() as u64;
            }
        }
        Ok(())
    }

    /// The whole audio, for the decoder.
    pub fn into_audio(self) -> Audio {
        match self.store {
            Store::Memory(bytes) => Audio::Bytes(bytes),
            Store::File { path, .. } => Audio::File(path),
        }
    }

    /// Throws the download away (its file too).
    pub fn discard(self) {
        if let Store::File { path, .. } = self.store {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The directory for this daemon's downloads: a folder of the runtime's temporary directory
/// named after the state directory, so two daemons on one machine never share files and a
/// restarted daemon finds its own partial downloads.
pub fn temp_dir(state_dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::canonicalize(state_dir)
        .unwrap_or_else(|_| state_dir.to_path_buf())
        .hash(&mut h);
    std::env::temp_dir().join(format!("voice-transcriber-{:016x}", h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_known_sizes_stay_in_memory_and_others_go_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.media");
        assert!(Download::new(300_000, &path).unwrap().is_in_memory());
        assert!(!path.exists(), "nothing written for a small download");
        assert!(!Download::new(IN_MEMORY_LIMIT + 1, &path)
            .unwrap()
            .is_in_memory());
        assert!(!Download::new(0, &path).unwrap().is_in_memory());
    }

    #[test]
    fn a_file_download_goes_on_from_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.media");
        let mut d = Download::in_file(&path).unwrap();
        d.append(b"hello ").unwrap();
        drop(d);
        let mut d = Download::in_file(&path).unwrap();
        assert_eq!(d.len(), 6);
        d.truncate(5).unwrap();
        d.append(b", world").unwrap();
        match d.into_audio() {
            Audio::File(p) => assert_eq!(std::fs::read(p).unwrap(), b"hello, world"),
            Audio::Bytes(_) => panic!("in a file"),
        }
    }

    #[test]
    fn memory_downloads_truncate_and_append() {
        let mut d = Download::in_memory();
        d.append(b"abcdef").unwrap();
        d.truncate(3).unwrap();
        d.append(b"xyz").unwrap();
        assert_eq!(d.len(), 6);
        match d.into_audio() {
            Audio::Bytes(b) => assert_eq!(b, b"abcxyz"),
            Audio::File(_) => panic!("in memory"),
        }
    }

    #[test]
    fn each_state_dir_has_its_own_temp_dir() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_ne!(temp_dir(a.path()), temp_dir(b.path()));
        assert_eq!(temp_dir(a.path()), temp_dir(a.path()));
        assert!(temp_dir(a.path()).starts_with(std::env::temp_dir()));
    }
}
