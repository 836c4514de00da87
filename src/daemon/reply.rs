//! Turning transcripts into Telegram messages.
//!
//! Telegram caps a message at 4096 characters; an hour of speech is ~50 000. Long text is cut
//! into parts at word boundaries (a word longer than a part is cut hard), each part a reply of
//! its own. While long audio is still being transcribed, a placeholder shows the text so far,
//! trimmed to what fits.

use crate::daemon::messenger::MAX_MESSAGE_CHARS;

/// Characters kept free in each part for a "(2/3)" marker.
const MARKER_ROOM: usize = 16;

/// Splits `text` into parts of at most `limit` characters, breaking between words.
pub fn split(text: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(1);
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut current_len = 0usize;
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        // A word that can never fit is cut into limit-sized pieces.
        while word.len() > limit {
            if current_len > 0 {
                parts.push(std::mem::take(&mut current));
                current_len = 0;
            }
            parts.push(word[..limit].iter().collect());
            word.drain(..limit);
        }
        if word.is_empty() {
            continue;
        }
        let needed = word.len() + usize::from(current_len > 0);
        if current_len + needed > limit {
            parts.push(std::mem::take(&mut current));
            current_len = 0;
        }
        if current_len > 0 {
            current.push(' ');
            current_len += 1;
        }
        current.extend(word.iter());
        current_len += word.len();
    }
    if current_len > 0 {
        parts.push(current);
    }
    parts
}

/// The messages that carry a final transcript: `prefix` before the text, split to fit,
/// numbered "(i/n)" when there is more than one.
pub fn messages(prefix: &str, text: &str) -> Vec<String> {
    let body = if text.trim().is_empty() {
        "(no speech)".to_string()
    } else {
        text.trim().to_string()
    };
    let room = MAX_MESSAGE_CHARS - MARKER_ROOM - prefix.chars().count();
    let parts = split(&body, room);
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            if n == 1 {
                format!("{prefix}{p}")
            } else {
                format!("{prefix}({}/{n}) {p}", i + 1)
            }
        })
        .collect()
}

/// The placeholder's text while transcription runs: a header and the end of the text so far.
pub fn progress(prefix: &str, header: &str, text_so_far: &str) -> String {
    let room = MAX_MESSAGE_CHARS - MARKER_ROOM - prefix.chars().count() - header.chars().count();
    let chars: Vec<char> = text_so_far.trim().chars().collect();
    let shown: String = if chars.len() > room {
        let tail: String = chars[chars.len() - room + 1..].iter().collect();
        format!("…{tail}")
    } else {
        chars.into_iter().collect()
    };
    if shown.is_empty() {
        format!("{prefix}{header}")
    } else {
        format!("{prefix}{header}\n{shown}")
    }
}

/// `m:ss` or `h:mm:ss`.
pub fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_respects_limit_and_words() {
        let text = "alpha beta gamma delta epsilon";
        let parts = split(text, 11);
        assert_eq!(parts, vec!["alpha beta", "gamma delta", "epsilon"]);
        assert_eq!(parts.join(" "), text);
        assert_eq!(split("", 10), Vec::<String>::new());
        assert_eq!(
            split("abcdefghij klm", 4),
            vec!["abcd", "efgh", "ij", "klm"]
        );
    }

    #[test]
    fn long_transcript_becomes_numbered_parts_under_the_cap() {
        let word = "слово"; // multi-byte: limits count characters, not bytes
        let text = vec![word; 3000].join(" ");
        let msgs = messages("🎙 ", &text);
        assert_eq!(msgs.len(), 5);
        for (i, m) in msgs.iter().enumerate() {
            assert!(m.chars().count() <= MAX_MESSAGE_CHARS, "part {i} too long");
            assert!(
                m.starts_with(&format!("🎙 ({}/5) слово", i + 1)),
                "{}",
                &m[..40]
            );
        }
        let words: usize = msgs.iter().map(|m| m.split_whitespace().count() - 2).sum();
        assert_eq!(words, 3000, "no word lost or duplicated");
    }

    #[test]
    fn short_and_empty_transcripts() {
        assert_eq!(messages("", " Hello there. "), vec!["Hello there."]);
        assert_eq!(messages("> ", ""), vec!["> (no speech)"]);
    }

    #[test]
    fn progress_shows_the_latest_text_within_the_cap() {
        let long = "x ".repeat(5000);
        let p = progress("", "⏳ 1:02 of 9:59", &long);
        assert!(p.chars().count() <= MAX_MESSAGE_CHARS);
        assert!(p.starts_with("⏳ 1:02 of 9:59\n…"));
        assert_eq!(progress("", "⏳ 0:00 of 1:00", ""), "⏳ 0:00 of 1:00");
        assert_eq!(clock(61.4), "1:01");
        assert_eq!(clock(3725.0), "1:02:05");
    }
}
