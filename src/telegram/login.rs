//! Logging the owner's account in, once, on a terminal.
//!
//! The daemon runs unattended, so the login happens beforehand with `voice-transcriber login`:
//! phone number, the code Telegram sends to the owner's other devices, and the cloud password
//! when the account has one (read without echo). Two things are done after the login so the
//! daemon starts right:
//! - every dialog is listed once, which caches each chat's access hash in the session; grammers
//!   can only recover missed updates (gaps) for chats it has cached;
//! - the saved update position is set to "now", so the first `run` transcribes what arrives
//!   from then on, not the account's history; each supergroup's position is the one its
//!   dialog named. Run again on a working install, `login` keeps the positions it finds.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use grammers_client::client::PasswordToken;
use grammers_client::{Client, SignInError};
use grammers_mtsender::InvocationError;
use grammers_session::types::{PeerAuth, PeerInfo, UpdateState, UpdatesState};
use grammers_session::Session;
use grammers_tl_types as tl;

use super::{within, Deadline, FileSession, Pool, TelegramError, TelegramOptions, CLOSE_GRACE};
use crate::daemon::messenger::MessengerError;

/// Wrong codes or passwords accepted before giving up.
const ATTEMPTS: usize = 3;

/// Longest flood wait the dialog listing sleeps through; a longer one ends the login with an
/// error (the login itself is saved by then; running `login` again later finishes the cache).
const MAX_DIALOG_FLOOD_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Logs in interactively and saves the session at `session_file` (mode 0600).
///
/// Already logged in: nothing is asked, the chat cache is refreshed, and the saved update
/// position is kept (so messages that arrived meanwhile are still transcribed). Returns a
/// summary such as "logged in as Ada Lovelace (@ada, id 123); 57 chats cached".
pub async fn login(
    api_id: i32,
    api_hash: &str,
    session_file: &Path,
) -> Result<String, TelegramError> {
    if let Some(dir) = session_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| super::SessionError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let session = Arc::new(
        FileSession::load(session_file)?.unwrap_or_else(|| FileSession::new(session_file)),
    );
    let options = TelegramOptions::default();
    let mut pool = Pool::start(&session, api_id, &options);
    // Updates are not needed during the login; closing the channel tells grammers so.
    pool.updates.close();

    let outcome = run(&pool.client, &session, api_id, api_hash, &options).await;
    let saved = session.flush();
    pool.client.disconnect();
    let _ = tokio::time::timeout(CLOSE_GRACE, &mut pool.runner).await;
    pool.runner.abort();
    let summary = outcome?;
    saved?;
    Ok(summary)
}

async fn run(
    client: &Client,
    session: &FileSession,
    api_id: i32,
    api_hash: &str,
    options: &TelegramOptions,
) -> Result<String, TelegramError> {
    let t = options.request_timeout;
    let already = within(t, client.is_authorized())
        .await
        .map_err(MessengerError::from)?;
    if !already {
        sign_in(client, session, api_id, api_hash, t).await?;
        // Saved before anything else can fail: a completed login that is not written down
        // is lost, and logins are rate-limited.
        session.flush()?;
    }
    // Listing the dialogs moves every supergroup's saved position to "now" (grammers sets
    // each channel's pts from its dialog). On a working install that would skip whatever
    // arrived in those groups since the daemon last ran, so the positions it had are put
    // back; groups new to the session keep the dialog's.
    let before = session.updates_state().await?.channels;
    let chats = cache_dialogs(client, t).await?;
    if already {
        for channel in before {
            session
                .set_update_state(UpdateState::Channel {
                    id: channel.id,
                    pts: channel.pts,
                })
                .await?;
        }
    } else {
        start_updates_from_now(client, session, t).await?;
    }
    session.flush()?;

    let me = within(t, client.get_me())
        .await
        .map_err(MessengerError::from)?;
    let id = me.id().bot_api_dialog_id().unwrap_or_default();
    let handle = me.username().map(|u| format!("@{u}, ")).unwrap_or_default();
    let verb = if already {
        "already logged in"
    } else {
        "logged in"
    };
    Ok(format!(
        "{verb} as {} ({handle}id {id}); {chats} chats cached",
        me.full_name()
    ))
}

/// The RPC error a request under a deadline failed with, if that is what happened.
fn rpc_error(failure: &Deadline) -> Option<&grammers_mtsender::RpcError> {
    match failure {
        Deadline::Failed(InvocationError::Rpc(e)) => Some(e),
        _ => None,
    }
}

/// Phone, code, and password when the account has one.
///
/// The code is checked with `auth.signIn` directly rather than through grammers'
/// `Client::sign_in`, which reports every `PHONE_CODE_*` error as "invalid code": an expired
/// code (`PHONE_CODE_EXPIRED`) cannot be fixed by typing it again, so a new one is sent.
async fn sign_in(
    client: &Client,
    session: &FileSession,
    api_id: i32,
    api_hash: &str,
    t: std::time::Duration,
) -> Result<(), TelegramError> {
    let phone = ask("Phone number (international format, e.g. +44 7700 900123): ").await?;
    let phone = phone.trim().to_string();
    let mut hash = send_code(client, session, api_id, api_hash, &phone, t).await?;
    let (mut wrong, mut expired) = (0, 0);
    loop {
        let code = ask("Login code (sent to your Telegram apps): ").await?;
        let request = tl::functions::auth::SignIn {
            phone_number: phone.clone(),
            phone_code_hash: hash.clone(),
            phone_code: Some(code.trim().to_string()),
            email_verification: None,
        };
        let failure = match within(t, client.invoke(&request)).await {
            Ok(tl::enums::auth::Authorization::Authorization(auth)) => {
                return save_owner(session, auth.user).await;
            }
            Ok(tl::enums::auth::Authorization::SignUpRequired(_)) => {
                return Err(TelegramError::SignUpRequired)
            }
            Err(failure) => failure,
        };
        match rpc_error(&failure).map(|e| e.name.as_str()) {
            Some("SESSION_PASSWORD_NEEDED") => return check_password(client, t).await,
            Some("PHONE_CODE_EXPIRED") => {
                expired += 1;
                if expired == ATTEMPTS {
                    return Err(TelegramError::LoginFailed(format!(
                        "{ATTEMPTS} login codes expired before they were entered"
                    )));
                }
                eprintln!("that code has expired; Telegram is sending a new one");
                hash = send_code(client, session, api_id, api_hash, &phone, t).await?;
            }
            Some("PHONE_CODE_INVALID" | "PHONE_CODE_EMPTY") => {
                wrong += 1;
                eprintln!("that code is not valid ({wrong}/{ATTEMPTS})");
                if wrong == ATTEMPTS {
                    return Err(TelegramError::LoginFailed(format!(
                        "{ATTEMPTS} wrong login codes"
                    )));
                }
            }
            _ => return Err(MessengerError::from(failure).into()),
        }
    }
}

/// Asks Telegram to send a login code to `phone`; returns the code's hash. An account that
/// lives in another data center is answered with PHONE_MIGRATE_<dc>: that becomes the home
/// data center (saved at once) and the request is made there.
async fn send_code(
    client: &Client,
    session: &FileSession,
    api_id: i32,
    api_hash: &str,
    phone: &str,
    t: std::time::Duration,
) -> Result<String, TelegramError> {
    let request = tl::functions::auth::SendCode {
        phone_number: phone.to_string(),
        api_id,
        api_hash: api_hash.to_string(),
        settings: tl::types::CodeSettings {
            allow_flashcall: false,
            current_number: false,
            allow_app_hash: false,
            allow_missed_call: false,
            allow_firebase: false,
            unknown_number: false,
            logout_tokens: None,
            token: None,
            app_sandbox: None,
        }
        .into(),
    };
    let sent = match within(t, client.invoke(&request)).await {
        Err(failure) => match rpc_error(&failure) {
            Some(e) if e.code == 303 && e.value.is_some() => {
                let dc = e.value.unwrap_or_default() as i32;
                eprintln!("this account lives in Telegram's data center {dc}; continuing there");
                session.set_home_dc_id(dc).await?;
                within(t, client.invoke(&request)).await
            }
            _ => Err(failure),
        },
        sent => sent,
    }
    .map_err(MessengerError::from)?;
    match sent {
        tl::enums::auth::SentCode::Code(code) => Ok(code.phone_code_hash),
        tl::enums::auth::SentCode::Success(_) => Err(TelegramError::LoginFailed(
            "Telegram answered the code request with a finished login, which this program does not handle; try again".into(),
        )),
        tl::enums::auth::SentCode::PaymentRequired(_) => Err(TelegramError::LoginFailed(
            "Telegram wants a payment before it sends a login code to this number; log in once with an official app first".into(),
        )),
    }
}

/// Records the account a code login signed in as, as grammers does after its own sign-in.
async fn save_owner(session: &FileSession, user: tl::enums::User) -> Result<(), TelegramError> {
    let tl::enums::User::User(user) = user else {
        return Err(TelegramError::LoginFailed(
            "Telegram named no account for the login".into(),
        ));
    };
    session
        .cache_peer(PeerInfo::User {
            id: user.id,
            auth: user.access_hash.map(PeerAuth::from_hash),
            bot: Some(user.bot),
            is_self: Some(true),
        })
        .await?;
    Ok(())
}

/// Asks for the cloud password until it is right (or [`ATTEMPTS`] wrong ones). Each attempt
/// proves the password against a fresh challenge from `account.getPassword`.
async fn check_password(client: &Client, t: std::time::Duration) -> Result<(), TelegramError> {
    for attempt in 1..=ATTEMPTS {
        let info: tl::types::account::Password =
            within(t, client.invoke(&tl::functions::account::GetPassword {}))
                .await
                .map_err(MessengerError::from)?
                .into();
        let token = PasswordToken::new(info);
        let prompt = match token.hint() {
            Some(hint) if !hint.is_empty() => format!("Cloud password (hint: {hint}): "),
            _ => "Cloud password: ".to_string(),
        };
        let password = tokio::task::spawn_blocking(move || rpassword::prompt_password(prompt))
            .await
            .map_err(|e| TelegramError::Input(io::Error::other(e)))?
            .map_err(TelegramError::Input)?;
        let answer = tokio::time::timeout(
            t,
            client.check_password(token, password.trim_end_matches(['\r', '\n'])),
        )
        .await
        .map_err(|_| MessengerError::Network(format!("no answer from Telegram within {t:?}")))?;
        match answer {
            Ok(_) => return Ok(()),
            Err(SignInError::InvalidPassword(_)) => {
                eprintln!("wrong password ({attempt}/{ATTEMPTS})");
            }
            Err(SignInError::Other(e)) => return Err(super::errors::classify(&e).into()),
            Err(other) => return Err(TelegramError::LoginFailed(other.to_string())),
        }
    }
    Err(TelegramError::LoginFailed(format!(
        "{ATTEMPTS} wrong passwords"
    )))
}

/// Lists every dialog once so the session caches their access hashes; returns how many.
async fn cache_dialogs(client: &Client, t: std::time::Duration) -> Result<usize, TelegramError> {
    let mut dialogs = client.iter_dialogs();
    let mut count = 0;
    loop {
        match within(t, dialogs.next())
            .await
            .map_err(MessengerError::from)
        {
            Ok(Some(_)) => count += 1,
            Ok(None) => return Ok(count),
            Err(MessengerError::FloodWait(wait)) if wait <= MAX_DIALOG_FLOOD_WAIT => {
                eprintln!("Telegram asks to wait {wait:?} while listing chats…");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Saves the account's current update position, so catch-up starts now.
async fn start_updates_from_now(
    client: &Client,
    session: &FileSession,
    t: std::time::Duration,
) -> Result<(), TelegramError> {
    let tl::enums::updates::State::State(state) =
        within(t, client.invoke(&tl::functions::updates::GetState {}))
            .await
            .map_err(MessengerError::from)?;
    // The supergroups keep the positions the dialog list just gave them: without one,
    // grammers cannot catch a group up after a restart, and what was said there while the
    // daemon was down would be missed.
    let channels = session.updates_state().await?.channels;
    session
        .set_update_state(UpdateState::All(UpdatesState {
            pts: state.pts,
            qts: state.qts,
            date: state.date,
            seq: state.seq,
            channels,
        }))
        .await?;
    Ok(())
}

/// Prints `prompt` on stderr and reads one line from stdin (off the async thread).
async fn ask(prompt: &str) -> Result<String, TelegramError> {
    let prompt = prompt.to_string();
    tokio::task::spawn_blocking(move || {
        let mut err = io::stderr();
        write!(err, "{prompt}")?;
        err.flush()?;
        let mut line = String::new();
        if io::stdin().lock().read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "stdin closed before an answer was given",
            ));
        }
        Ok(line)
    })
    .await
    .map_err(|e| TelegramError::Input(io::Error::other(e)))?
    .map_err(TelegramError::Input)
}
