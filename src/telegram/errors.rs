//! grammers errors, sorted by what the daemon should do about them.
//!
//! grammers reports every failure as one `InvocationError`; the daemon only needs to know
//! whether to wait a given time (flood wait), stop for good (the login is gone), drop the job
//! (message or chat not found), retry later (network) or give up on this one request
//! (rejected). This module is that sorting, and nothing else.

use std::time::Duration;

use grammers_mtsender::{InvocationError, RpcError};

use crate::daemon::messenger::MessengerError;

/// RPC error names that mean the authorization behind the session is gone for good.
const UNAUTHORIZED: &[&str] = &[
    "AUTH_KEY_UNREGISTERED",
    "AUTH_KEY_INVALID",
    "AUTH_KEY_PERM_EMPTY",
    "AUTH_KEY_DUPLICATED",
    "SESSION_REVOKED",
    "SESSION_EXPIRED",
    "USER_DEACTIVATED",
    "USER_DEACTIVATED_BAN",
];

/// RPC error names that mean the message or chat does not exist for this account.
const NOT_FOUND: &[&str] = &[
    "MESSAGE_ID_INVALID",
    "MSG_ID_INVALID",
    "CHANNEL_PRIVATE",
    "CHAT_ID_INVALID",
];

/// RPC error names that mean Telegram did not recognise the chat as it was named — most
/// often an access hash the session lacks or holds stale. The chat is looked up again; the
/// message is not taken for deleted.
const UNKNOWN_CHAT: &[&str] = &["PEER_ID_INVALID", "CHANNEL_INVALID"];

/// Flood wait assumed when Telegram says 420 without naming the seconds.
const UNSPECIFIED_FLOOD_WAIT: Duration = Duration::from_secs(60);

/// Sorts one grammers error into the daemon's categories.
pub fn classify(error: &InvocationError) -> MessengerError {
    match error {
        InvocationError::Rpc(rpc) => classify_rpc(rpc),
        InvocationError::Io(e) => MessengerError::Network(e.to_string()),
        InvocationError::Transport(e) => MessengerError::Network(format!("transport: {e}")),
        InvocationError::Dropped(why) => MessengerError::Network(format!("request dropped: {why}")),
        // Key exchange with a data center failed part-way: a network-level handshake, so
        // another attempt over a new connection may succeed.
        InvocationError::Authentication(e) => MessengerError::Network(format!("key exchange: {e}")),
        // A response that does not parse: grammers documents this as what a garbled or
        // confused connection produces, so it is retried like one.
        InvocationError::Deserialize(e) => MessengerError::Network(format!("bad response: {e}")),
        // The session could not be read: local trouble the next attempt may not have.
        InvocationError::Session(e) => MessengerError::Network(format!("session: {e}")),
        InvocationError::InvalidDc => {
            MessengerError::Rejected("request aimed at an unknown data center".into())
        }
    }
}

fn classify_rpc(rpc: &RpcError) -> MessengerError {
    let name = rpc.name.as_str();
    if rpc.code == 420 || name == "FLOOD_WAIT" {
        let wait = rpc
            .value
            .map(|s| Duration::from_secs(s.into()))
            .unwrap_or(UNSPECIFIED_FLOOD_WAIT);
        return MessengerError::FloodWait(wait);
    }
    if rpc.code == 401 || UNAUTHORIZED.contains(&name) {
        return MessengerError::Unauthorized(name.to_string());
    }
    if NOT_FOUND.contains(&name) {
        return MessengerError::NotFound;
    }
    if UNKNOWN_CHAT.contains(&name) {
        return MessengerError::UnknownChat(name.to_string());
    }
    // 500 and Telegram's negative codes (-503 "Timeout") are its own trouble; the same
    // request may well succeed later.
    if rpc.code >= 500 || rpc.code < 0 {
        return MessengerError::Network(format!("Telegram internal error {}: {name}", rpc.code));
    }
    MessengerError::Rejected(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn rpc(code: i32, message: &str) -> InvocationError {
        InvocationError::Rpc(RpcError::from(grammers_tl_types::types::RpcError {
            error_code: code,
            error_message: message.into(),
        }))
    }

    #[test]
    fn flood_wait_carries_its_seconds() {
        assert_eq!(
            classify(&rpc(420, "FLOOD_WAIT_31")),
            MessengerError::FloodWait(Duration::from_secs(31))
        );
        assert_eq!(
            classify(&rpc(420, "FLOOD_PREMIUM_WAIT_5")),
            MessengerError::FloodWait(Duration::from_secs(5))
        );
        assert_eq!(
            classify(&rpc(420, "SLOWMODE_WAIT_10")),
            MessengerError::FloodWait(Duration::from_secs(10))
        );
        assert_eq!(
            classify(&rpc(420, "FLOOD")),
            MessengerError::FloodWait(UNSPECIFIED_FLOOD_WAIT)
        );
    }

    #[test]
    fn lost_logins_are_unauthorized() {
        for (code, name) in [
            (401, "AUTH_KEY_UNREGISTERED"),
            (401, "SESSION_REVOKED"),
            (401, "SESSION_EXPIRED"),
            (401, "USER_DEACTIVATED"),
            (401, "USER_DEACTIVATED_BAN"),
            (406, "AUTH_KEY_DUPLICATED"),
            (401, "SOMETHING_NEW_401"),
        ] {
            assert!(
                matches!(classify(&rpc(code, name)), MessengerError::Unauthorized(_)),
                "{name}"
            );
        }
        assert_eq!(
            classify(&rpc(401, "SESSION_REVOKED")),
            MessengerError::Unauthorized("SESSION_REVOKED".into())
        );
    }

    #[test]
    fn missing_messages_and_chats_are_not_found() {
        for name in [
            "MESSAGE_ID_INVALID",
            "MSG_ID_INVALID",
            "CHANNEL_PRIVATE",
            "CHAT_ID_INVALID",
        ] {
            assert_eq!(
                classify(&rpc(400, name)),
                MessengerError::NotFound,
                "{name}"
            );
        }
    }

    #[test]
    fn an_unrecognised_chat_is_not_a_deleted_message() {
        for name in ["PEER_ID_INVALID", "CHANNEL_INVALID"] {
            assert_eq!(
                classify(&rpc(400, name)),
                MessengerError::UnknownChat(name.into()),
                "{name}"
            );
        }
        assert!(!classify(&rpc(400, "PEER_ID_INVALID")).is_transient());
    }

    #[test]
    fn connection_trouble_is_network() {
        let refused = InvocationError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(matches!(classify(&refused), MessengerError::Network(_)));
        let dropped = InvocationError::Dropped("runner gone");
        assert!(matches!(classify(&dropped), MessengerError::Network(_)));
        assert!(matches!(
            classify(&rpc(500, "RPC_CALL_FAIL")),
            MessengerError::Network(_)
        ));
        assert!(matches!(
            classify(&rpc(-503, "Timeout")),
            MessengerError::Network(_)
        ));
        assert!(classify(&refused).is_transient());
    }

    #[test]
    fn other_refusals_are_rejected_by_name() {
        assert_eq!(
            classify(&rpc(403, "CHAT_WRITE_FORBIDDEN")),
            MessengerError::Rejected("CHAT_WRITE_FORBIDDEN".into())
        );
        assert_eq!(
            classify(&rpc(400, "MESSAGE_TOO_LONG")),
            MessengerError::Rejected("MESSAGE_TOO_LONG".into())
        );
    }
}
