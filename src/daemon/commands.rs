//! The owner's commands: parsed here, and carried out by `Daemon::run_command`.
//!
//! The owner types commands in any chat from any of their devices; the daemon sees them as
//! outgoing messages and answers by editing the command message. Only a message whose first
//! word is a `/word` counts (`/etc/hosts` in the middle of a sentence does not), and a bot-style
//! `@suffix` is ignored. Messages from anyone else never reach this parser.

use std::rc::Rc;

use super::config;
use super::messenger::{Incoming, Messenger};
use super::spool::{Added, Key, Origin};
use super::Daemon;
use crate::whisper::catalog;

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

impl Daemon {
    /// Answers a command by editing the command message (falling back to a reply).
    async fn answer<M: Messenger>(&self, tg: &M, m: &Incoming, text: &str) {
        if let Err(e) = tg.edit(m.chat, m.id, text).await {
            log::warn!("cannot edit command message: {e}; replying instead");
            match tg.reply(m.chat, m.id, text).await {
                Ok(id) => self.remember_sent(m.chat, id),
                Err(e) => log::warn!("cannot answer command: {e}"),
            }
        }
    }

    pub(super) async fn run_command<M: Messenger + Clone + 'static>(
        self: &Rc<Self>,
        tg: &M,
        m: &Incoming,
        cmd: Command,
    ) {
        log::info!("command {cmd:?} in chat {}", m.chat);
        let text = match cmd {
            Command::Help => HELP.to_string(),
            Command::Status => self.status_text(),
            Command::Tracked => self.tracked_text(),
            Command::Model(None) => {
                let installed = self.catalog.installed();
                format!(
                    "model: {}\ninstalled: {}\nswitch with /model NAME",
                    self.model_name(),
                    installed.join(", ")
                )
            }
            Command::Model(Some(name)) => {
                let installed = self.catalog.resolve(&name).is_ok();
                if let (false, Err(e)) = (installed, catalog::lookup(&name)) {
                    format!("/model {name}: {e}")
                } else {
                    let doing = if installed { "loading" } else { "downloading" };
                    self.answer(tg, m, &format!("/model {name}: {doing}…"))
                        .await;
                    // Loading takes seconds; the receiver goes on meanwhile.
                    let (this, tg, m) = (Rc::clone(self), tg.clone(), m.clone());
                    tokio::task::spawn_local(async move {
                        let text = this.switch_model(&name).await;
                        this.answer(&tg, &m, &text).await;
                    });
                    return;
                }
            }
            Command::Lang(None) => format!("language: {}", self.language()),
            Command::Lang(Some(code)) => self.set_language(&code),
            Command::Track(arg) => self.track(tg, m, arg.as_deref(), true).await,
            Command::Untrack(arg) => self.track(tg, m, arg.as_deref(), false).await,
            Command::Transcribe => match m.reply_to {
                None => "/transcribe: send it as a reply to a voice, video or audio message".into(),
                Some(target) => {
                    let key = Key {
                        chat: m.chat,
                        msg: target,
                    };
                    match self.enqueue(key, Origin::Command, Some(m.id)) {
                        Ok(Added::New) => {
                            format!("⏳ queued ({} waiting)", self.queue_depth())
                        }
                        Ok(Added::Pending) => "⏳ already queued".into(),
                        Ok(Added::Done) => "already transcribed (see the reply to it)".into(),
                        Err(e) => format!("/transcribe: {e}"),
                    }
                }
            },
            Command::Unknown(name) => format!("unknown command /{name} — /help lists the commands"),
        };
        self.answer(tg, m, &text).await;
    }

    async fn switch_model(&self, name: &str) -> String {
        match self.inference.load(name).await {
            Ok(info) => {
                log::info!("model switched to {}", info.name);
                let text = format!("model: {} ✓", info.name);
                *self.model.borrow_mut() = info;
                self.state.borrow_mut().model = Some(name.to_string());
                match self.save_state() {
                    Ok(()) => text,
                    Err(e) => format!("{text} (not saved: {e})"),
                }
            }
            Err(e) => {
                log::error!("cannot load model {name}: {e}");
                format!("/model {name}: {e}\nstill using {}", self.model_name())
            }
        }
    }

    fn set_language(&self, code: &str) -> String {
        let code = code.to_ascii_lowercase();
        if !config::is_language_setting(&code) {
            return format!("/lang: {code:?} is not a language code (en, ru, de, …) or auto");
        }
        if code != "auto" && code != "en" && !self.model.borrow().multilingual {
            return format!(
                "/lang: {} is English-only; switch to a multilingual model (e.g. /model base) first",
                self.model_name()
            );
        }
        self.state.borrow_mut().language = Some(code.clone());
        match self.save_state() {
            Ok(()) => format!("language: {code} ✓"),
            Err(e) => format!("language: {code} (not saved: {e})"),
        }
    }

    fn tracked_text(&self) -> String {
        let state = self.state.borrow();
        if state.tracked.is_empty() {
            return "nobody is tracked; /track @username, or reply /track to their message".into();
        }
        let lines: Vec<String> = state
            .tracked
            .iter()
            .map(|t| format!("• {} ({})", t.name, t.id))
            .collect();
        format!("tracked:\n{}", lines.join("\n"))
    }

    async fn track<M: Messenger>(
        &self,
        tg: &M,
        m: &Incoming,
        arg: Option<&str>,
        add: bool,
    ) -> String {
        let verb = if add { "/track" } else { "/untrack" };
        let who = match (arg, m.reply_to) {
            (Some(a), _) => match parse_who(a) {
                Some(Who::Id(id)) => {
                    let name = self
                        .state
                        .borrow()
                        .tracked
                        .iter()
                        .find(|t| t.id == id)
                        .map_or_else(|| id.to_string(), |t| t.name.clone());
                    Ok((id, name))
                }
                Some(Who::Username(u)) => match tg.resolve_username(&u).await {
                    Ok(Some(found)) => Ok(found),
                    Ok(None) => Err(format!("{verb}: no user @{u}")),
                    Err(e) => Err(format!("{verb}: cannot look up @{u}: {e}")),
                },
                None => Err(format!(
                    "{verb}: {a:?} is neither a user id nor a @username"
                )),
            },
            (None, Some(target)) => match tg.fetch(m.chat, target).await {
                Ok(Some(t)) => match t.sender {
                    Some(id) if !t.outgoing => Ok((id, t.sender_name)),
                    _ => Err(format!(
                        "{verb}: that message has no other person as its author"
                    )),
                },
                Ok(None) => Err(format!("{verb}: that message no longer exists")),
                Err(e) => Err(format!("{verb}: {e}")),
            },
            (None, None) => Err(format!(
                "{verb}: give a user id or @username, or send it as a reply to their message"
            )),
        };
        let (id, name) = match who {
            Ok(w) => w,
            Err(e) => return e,
        };
        let changed = if add {
            self.state.borrow_mut().track(id, &name)
        } else {
            self.state.borrow_mut().untrack(id)
        };
        let saved = if changed { self.save_state() } else { Ok(()) };
        let text = match (add, changed) {
            (true, true) => format!("tracking {name} ({id}) ✓"),
            (true, false) => format!("{name} ({id}) is already tracked"),
            (false, true) => format!("no longer tracking {name} ({id}) ✓"),
            (false, false) => format!("{name} ({id}) was not tracked"),
        };
        match saved {
            Ok(()) => text,
            Err(e) => format!("{text} (not saved: {e})"),
        }
    }
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
