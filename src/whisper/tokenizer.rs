//! Whisper's vocabulary: text ↔ token ids, and the special tokens the decoder is steered with.
//!
//! The BPE itself comes from the model's `tokenizer.json` via the `tokenizers` crate. Special
//! tokens are looked up by name, never hard-coded, because English-only and multilingual models
//! number them differently (`<|endoftext|>` is 50256 in tiny.en, 50257 in base). faster-whisper's
//! `tokenizer.json` stops at `<|notimestamps|>`: the 1501 timestamp tokens `<|0.00|>` …
//! `<|30.00|>` follow it in id order (its `vocabulary.txt` lists them), so
//! `timestamp_begin = notimestamps + 1`.

use std::path::Path;

use tokenizers::Tokenizer;

/// Why a tokenizer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot read tokenizer: {reason}")]
    Load { path: String, reason: String },
    #[error("{path}: tokenizer has no {token} token")]
    MissingToken { path: String, token: &'static str },
    #[error("cannot decode tokens: {0}")]
    Decode(String),
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
    inner: Tokenizer,
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
        Ok(Self {
            inner,
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

    /// Text of the ordinary (non-special, non-timestamp) tokens in `tokens`.
    pub fn decode(&self, tokens: &[u32]) -> Result<String, TokenizerError> {
        let text: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|&t| t < self.specials.eot)
            .collect();
        self.inner
            .decode(&text, false)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Token ids of `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| TokenizerError::Decode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }
}
