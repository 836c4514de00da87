//! The owner's commands, parsed.
//!
//! The owner types commands in any chat from any of their devices; the daemon sees them as
//! outgoing messages and answers by editing the command message. Only a message whose first
//! word is a `/word` counts (`/etc/hosts` in the middle of a sentence does not), and a bot-style
//! `@suffix` is ignored. Messages from anyone else never reach this parser.

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/help`
    Help,
    /// `/status`
    Status,
    /// `/model [name]`
    Model(Option<String>),
    /// `/track [id|@username]` (or as a reply)
    Track(Option<String>),
    /// `/untrack [id|@username]` (or as a reply)
    Untrack(Option<String>),
    /// `/tracked`
    Tracked,
    /// `/lang [code|auto]`
    Lang(Option<String>),
    /// `/transcribe` as a reply to a voice message
    Transcribe,
    /// A `/word` that is none of the above.
    Unknown(String),
}

/// The help text.
pub const HELP: &str = "\
voice-transcriber commands (yours only, in any chat):
/status — connection, model, queue, counters
/model [name] — show or switch the Whisper model
/track [id|@username] — transcribe this person's voice messages (or reply to their message)
/untrack [id|@username] — stop (or reply to their message)
/tracked — who is tracked
/lang [code|auto] — force a language (en, ru, …) or detect it
/transcribe — reply to any voice, video or audio message to transcribe it
/help — this text";

/// Parses a message text; `None` when it is not a command.
pub fn parse(text: &str) -> Option<Command> {
    let mut words = text.split_whitespace();
    let first = words.next()?;
    let name = first.strip_prefix('/')?;
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return None;
    }
    let arg = words.next().map(str::to_string);
    Some(match name.to_ascii_lowercase().as_str() {
        "help" | "start" => Command::Help,
        "status" => Command::Status,
        "model" => Command::Model(arg),
        "track" => Command::Track(arg),
        "untrack" => Command::Untrack(arg),
        "tracked" => Command::Tracked,
        "lang" | "language" => Command::Lang(arg),
        "transcribe" => Command::Transcribe,
        _ => Command::Unknown(name.to_string()),
    })
}

/// Who a `/track` or `/untrack` argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A numeric user id.
    Id(i64),
    /// A public username, without `@`.
    Username(String),
}

/// Reads a `/track` argument: digits are an id, anything else a username.
pub fn parse_who(arg: &str) -> Option<Who> {
    if let Ok(id) = arg.parse::<i64>() {
        return (id > 0).then_some(Who::Id(id));
    }
    let name = arg.strip_prefix('@').unwrap_or(arg);
    let ok = (3..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ok.then(|| Who::Username(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse("/help"), Some(Command::Help));
        assert_eq!(parse("  /STATUS "), Some(Command::Status));
        assert_eq!(parse("/model"), Some(Command::Model(None)));
        assert_eq!(
            parse("/model base"),
            Some(Command::Model(Some("base".into())))
        );
        assert_eq!(
            parse("/track@somebot @ann"),
            Some(Command::Track(Some("@ann".into())))
        );
        assert_eq!(parse("/lang ru"), Some(Command::Lang(Some("ru".into()))));
        assert_eq!(
            parse("/frobnicate now"),
            Some(Command::Unknown("frobnicate".into()))
        );
    }

    #[test]
    fn ordinary_text_is_not_a_command() {
        assert_eq!(parse("see /etc/hosts"), None);
        assert_eq!(parse("/etc/hosts is a file"), None);
        assert_eq!(parse("/"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("hello"), None);
    }

    #[test]
    fn who_parses_ids_and_usernames() {
        assert_eq!(parse_who("12345"), Some(Who::Id(12345)));
        assert_eq!(parse_who("@ann_b"), Some(Who::Username("ann_b".into())));
        assert_eq!(parse_who("ann_b"), Some(Who::Username("ann_b".into())));
        assert_eq!(parse_who("-5"), None);
        assert_eq!(parse_who("@a"), None);
        assert_eq!(parse_who("bad name!"), None);
    }
}
