//! Whisper's vocabulary: text ↔ token ids, and the special tokens the decoder is steered with.
//!
//! The BPE itself comes from the model's `tokenizer.json` via the `tokenizers` crate. Special
//! tokens are looked up by name, never hard-coded, because English-only and multilingual models
//! number them differently (`<|endoftext|>` is 50256 in tiny.en, 50257 in base). faster-whisper's
//! `tokenizer.json` stops at `<|notimestamps|>`: the 1501 timestamp tokens `<|0.00|>` …
//! `<|30.00|>` follow it in id order (its `vocabulary.txt` lists them), so
//! `timestamp_begin = notimestamps + 1`.
//!
//! Decoding is all a transcription needs once the model is loaded, and for that the crate's
//! tokenizer is heavy: its vocabulary in both directions and the merge table are hash maps of
//! small strings, about 8 MB for Whisper's 51 864 tokens, held for as long as the model is —
//! more than half of what an idle daemon holds beyond its weights. So [`WhisperTokenizer::load`]
//! reads what it needs from the crate's tokenizer (special tokens, languages, the id of `" "`)
//! and keeps only each ordinary token's bytes, packed into one buffer (≈ 0.5 MB). GPT-2's
//! byte-level BPE writes every byte as one printable character ([`byte_of`]); the text of a token
//! sequence is the concatenation of its tokens' bytes, read as UTF-8 — what the crate's
//! `ByteLevel` decoder does, and what the tests check against it.

use std::path::Path;

use tokenizers::Tokenizer;

/// Why a tokenizer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot read tokenizer: {reason}")]
    Load { path: String, reason: String },
    #[error("{path}: tokenizer has no {token} token")]
    MissingToken { path: String, token: &'static str },
}

/// Special token ids of one model.
#[derive(Debug, Clone)]
pub struct Specials {
    /// `<|endoftext|>`: end of a window's text.
    pub eot: u32,
    /// `<|startoftranscript|>`.
    pub sot: u32,
    /// `<|translate|>`.
    pub translate: u32,
    /// `<|transcribe|>`.
    pub transcribe: u32,
    /// `<|startoflm|>`.
    pub sot_lm: u32,
    /// `<|startofprev|>`: introduces the previous window's text as a prompt.
    pub sot_prev: u32,
    /// `<|nospeech|>` (`<|nocaptions|>` in older vocabularies): its probability at the
    /// start-of-transcript position says whether a window holds speech at all.
    pub no_speech: u32,
    /// `<|notimestamps|>`.
    pub no_timestamps: u32,
    /// First timestamp token, `<|0.00|>`; token `t` is `(t - timestamp_begin) × 0.02` s.
    pub timestamp_begin: u32,
}

/// A model's tokenizer plus its special tokens and language list.
pub struct WhisperTokenizer {
    /// The bytes of every ordinary token (ids below `<|endoftext|>`), back to back.
    bytes: Vec<u8>,
    /// Where each token's bytes stop in `bytes`: token `t`'s are `ends[t - 1]..ends[t]`
    /// (from 0 for token 0).
    ends: Vec<u32>,
    /// The id of the token for `" "` (Whisper suppresses it at a window's start).
    pub space: Option<u32>,
    /// Special token ids.
    pub specials: Specials,
    /// `(code, token id)` of each language token, in vocabulary order.
    pub languages: Vec<(String, u32)>,
}

impl WhisperTokenizer {
    /// Loads `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self, TokenizerError> {
        let shown = path.display().to_string();
        let inner = Tokenizer::from_file(path).map_err(|e| TokenizerError::Load {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let id = |name: &'static str| {
            inner.token_to_id(name).ok_or(TokenizerError::MissingToken {
                path: shown.clone(),
                token: name,
            })
        };
        let no_speech = id("<|nospeech|>").or_else(|_| id("<|nocaptions|>"))?;
        let no_timestamps = id("<|notimestamps|>")?;
        let specials = Specials {
            eot: id("<|endoftext|>")?,
            sot: id("<|startoftranscript|>")?,
            translate: id("<|translate|>")?,
            transcribe: id("<|transcribe|>")?,
            sot_lm: id("<|startoflm|>")?,
            sot_prev: id("<|startofprev|>")?,
            no_speech,
            no_timestamps,
            timestamp_begin: no_timestamps + 1,
        };
        let languages = (specials.sot + 1..specials.translate)
            .filter_map(|i| {
                let tok = inner.id_to_token(i)?;
                let code = tok.strip_prefix("<|")?.strip_suffix("|>")?.to_string();
                Some((code, i))
            })
            .collect();
        let space = inner
            .encode(" ", false)
            .ok()
            .and_then(|e| e.get_ids().first().copied());
        let mut bytes = Vec::with_capacity(specials.eot as usize * 8);
        let mut ends = Vec::with_capacity(specials.eot as usize);
        for id in 0..specials.eot {
            let token = inner.id_to_token(id).unwrap_or_default();
            // As the crate's ByteLevel decoder: a token with a character outside the byte
            // alphabet stands for its own UTF-8 text.
            match token.chars().map(byte_of).collect::<Option<Vec<u8>>>() {
                Some(b) => bytes.extend_from_slice(&b),
                None => bytes.extend_from_slice(token.as_bytes()),
            }
            ends.push(bytes.len() as u32);
        }
        bytes.shrink_to_fit();
        Ok(Self {
            bytes,
            ends,
            space,
            specials,
            languages,
        })
    }

    /// Token id of language `code` (`"en"`, `"ru"`, …).
    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.languages
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, id)| *id)
    }

    /// Language code of token `id`.
    pub fn language_code(&self, id: u32) -> Option<&str> {
        self.languages
            .iter()
            .find(|(_, i)| *i == id)
            .map(|(c, _)| c.as_str())
    }

    /// Text of the ordinary (non-special, non-timestamp) tokens in `tokens`; a multi-byte
    /// character cut between tokens that never completes becomes U+FFFD.
    pub fn decode(&self, tokens: &[u32]) -> String {
        let mut out = Vec::new();
        for &t in tokens.iter().filter(|&&t| t < self.specials.eot) {
            let t = t as usize;
            let start = if t == 0 { 0 } else { self.ends[t - 1] as usize };
            out.extend_from_slice(&self.bytes[start..self.ends[t] as usize]);
        }
        match String::from_utf8(out) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Heap bytes held by the decoding table.
    pub fn bytes_held(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * 4
    }
}

/// The byte GPT-2's byte-level BPE writes as `c`: printable Latin-1 bytes (`!`…`~`, `¡`…`¬`,
/// `®`…`ÿ`) stand for themselves, and the other 68 bytes, in order, for U+0100 onwards.
fn byte_of(c: char) -> Option<u8> {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let c = c as u32;
    if c < 0x100 {
        return printable(c).then_some(c as u8);
    }
    (0u32..=0xff)
        .filter(|&b| !printable(b))
        .nth((c - 0x100) as usize)
        .map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every model directory under models/cache/ with a tokenizer (none: nothing to check).
    fn cached_tokenizers() -> Vec<std::path::PathBuf> {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cache");
        let mut found: Vec<_> = std::fs::read_dir(cache)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("tokenizer.json"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found
    }

    #[test]
    fn byte_alphabet_is_a_bijection() {
        let mut seen = [false; 256];
        for c in (0x21u32..0x100)
            .chain(0x100..0x144)
            .filter_map(char::from_u32)
        {
            if let Some(b) = byte_of(c) {
                assert!(!seen[b as usize], "byte {b} twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s), "some byte has no character");
        assert_eq!(byte_of('A'), Some(b'A'));
        assert_eq!(byte_of('Ġ'), Some(b' '), "GPT-2 writes a space as U+0120");
        assert_eq!(byte_of('Ċ'), Some(b'\n'));
        assert_eq!(byte_of('\u{144}'), None);
    }

    /// The packed table decodes exactly as the `tokenizers` crate's own decoder: every single
    /// token whose bytes are whole UTF-8, and long runs of consecutive ids (which cut multi-byte
    /// characters between tokens, as Cyrillic text is).
    #[test]
    fn decodes_as_the_tokenizers_crate() {
        let paths = cached_tokenizers();
        if paths.is_empty() {
            eprintln!("no models/cache/*/tokenizer.json: models/fetch-offline.sh fetches them");
        }
        for path in paths {
            let ours = WhisperTokenizer::load(&path).unwrap();
            let theirs = Tokenizer::from_file(&path).unwrap();
            let eot = ours.specials.eot;
            let mut compared = 0;
            for id in 0..eot {
                let want = theirs.decode(&[id], false).unwrap();
                if !want.contains('\u{fffd}') {
                    assert_eq!(ours.decode(&[id]), want, "{}: token {id}", path.display());
                    compared += 1;
                }
            }
            assert!(compared > 45_000, "{compared} tokens compared");
            let mut seed = 7u64;
            for len in [1usize, 2, 3, 5, 17, 64, 200] {
                let ids: Vec<u32> = (0..len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (seed >> 33) as u32 % eot
                    })
                    .collect();
                assert_eq!(
                    ours.decode(&ids),
                    theirs.decode(&ids, false).unwrap(),
                    "{ids:?}"
                );
            }
            // Specials and timestamps are left out, as before.
            let mut with_specials = vec![ours.specials.sot, ours.specials.timestamp_begin];
            with_specials.extend(theirs.encode(" Привет, мир", false).unwrap().get_ids());
            with_specials.push(eot);
            assert_eq!(ours.decode(&with_specials), " Привет, мир");
            assert_eq!(
                ours.space,
                theirs
                    .encode(" ", false)
                    .unwrap()
                    .get_ids()
                    .first()
                    .copied()
            );
            assert!(ours.bytes_held() < 1_000_000, "{} bytes", ours.bytes_held());
        }
    }
}
