//! The real grammers client against loopback endpoints that misbehave.
//!
//! A session is aimed at 127.0.0.1 with a made-up key (so the client skips key exchange and
//! speaks encrypted MTProto at once), then `connect()` is called against an endpoint that
//! refuses, one that accepts and hangs up, and one that accepts and never answers. Each must
//! come back as `MessengerError::Network` within a bounded time, without panicking, after real
//! connection attempts. No internet is used.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use voice_transcriber::daemon::messenger::{Connection, MessengerError};
use voice_transcriber::telegram::{self, TelegramError, TelegramOptions};

const API_ID: i32 = 12345;

/// Deadline given to the adapter in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Upper bound on how long any one `connect()` may take here (the adapter's deadline plus
/// grammers' one retry after an I/O error, with room for a loaded machine).
const BOUND: Duration = Duration::from_secs(20);

/// What the fake endpoint does with each accepted connection.
#[derive(Clone, Copy)]
enum Behaviour {
    HangUp,
    Stall,
}

/// A loopback listener that counts accepted connections and treats them per `Behaviour`.
struct Endpoint {
    addr: SocketAddrV4,
    accepted: Arc<AtomicUsize>,
    /// Stalled connections are kept open here until the test ends.
    _held: Arc<Mutex<Vec<TcpStream>>>,
}

fn endpoint(behaviour: Behaviour) -> Endpoint {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    let accepted = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(Mutex::new(Vec::new()));
    let (count, keep) = (Arc::clone(&accepted), Arc::clone(&held));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            match behaviour {
                Behaviour::HangUp => drop(stream),
                Behaviour::Stall => keep.lock().unwrap().push(stream),
            }
        }
    });
    Endpoint {
        addr,
        accepted,
        _held: held,
    }
}

/// A port on which nothing listens: bound, then released.
fn refusing_addr() -> SocketAddrV4 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    drop(listener);
    addr
}

/// Aims the session at `addr`, opens the link with this test's deadlines inside a
/// current-thread runtime with a LocalSet (as the daemon runs), and hands the update stream to
/// `body`.
fn with_updates<T>(
    session_file: &Path,
    addr: SocketAddrV4,
    body: impl AsyncFnOnce(telegram::TelegramUpdates) -> T,
) -> T {
    telegram::point_session_at(session_file, addr, [0x5a; 256]).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let options = TelegramOptions {
            request_timeout: REQUEST_TIMEOUT,
            ..TelegramOptions::default()
        };
        let (_telegram, updates) = telegram::open_with(API_ID, session_file, options)
            .await
            .expect("a session aimed at loopback opens without network");
        body(updates).await
    })
}

/// Calls `connect()` once on a link aimed at `addr`. Returns the result and how long it took.
fn connect_once(session_file: &Path, addr: SocketAddrV4) -> (Result<(), MessengerError>, Duration) {
    with_updates(session_file, addr, async |mut updates| {
        let started = Instant::now();
        let result = tokio::time::timeout(BOUND, updates.connect())
            .await
            .expect("connect() must return on its own, not hang");
        let took = started.elapsed();
        // Shutting down must not hang or panic either, whatever state the pool is in.
        tokio::time::timeout(BOUND, updates.close())
            .await
            .expect("close() must return")
            .expect("close() saves the session");
        (result, took)
    })
}

fn assert_network(result: &Result<(), MessengerError>, case: &str) {
    match result {
        Err(MessengerError::Network(_)) => {}
        other => panic!("{case}: expected a network error, got {other:?}"),
    }
}

#[test]
fn refused_connection_is_a_network_error() {
    let dir = tempfile::tempdir().unwrap();
    let session = telegram::session_path(dir.path());
    let (result, took) = connect_once(&session, refusing_addr());
    assert_network(&result, "refused");
    assert!(took < BOUND, "took {took:?}");
    let Err(MessengerError::Network(why)) = result else {
        unreachable!()
    };
    assert!(why.to_lowercase().contains("refused"), "{why}");
}

#[test]
fn connection_dropped_on_accept_is_a_network_error() {
    let dir = tempfile::tempdir().unwrap();
    let session = telegram::session_path(dir.path());
    let server = endpoint(Behaviour::HangUp);
    let (result, took) = connect_once(&session, server.addr);
    assert_network(&result, "hang-up");
    assert!(took < BOUND, "took {took:?}");
    assert!(server.accepted.load(Ordering::SeqCst) >= 1);
}

#[test]
fn silent_server_times_out_as_a_network_error_and_reconnect_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let session = telegram::session_path(dir.path());
    let server = endpoint(Behaviour::Stall);
    let (result, took) = connect_once(&session, server.addr);
    assert_network(&result, "stall");
    assert!(
        took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + Duration::from_secs(5),
        "took {took:?}"
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);

    // A second attempt in the same process must not queue behind the frozen pool: it builds
    // a new one, which connects again (and times out again against the same silent server).
    with_updates(&session, server.addr, async |mut updates| {
        for attempt in 1..=2 {
            let result = tokio::time::timeout(BOUND, updates.connect())
                .await
                .expect("connect() must return");
            assert_network(&result, "stall again");
            assert_eq!(server.accepted.load(Ordering::SeqCst), 1 + attempt);
        }
        // next() refuses to wait on a pool known to be frozen.
        let next = tokio::time::timeout(BOUND, updates.next())
            .await
            .expect("next() must return");
        assert!(matches!(next, Err(MessengerError::Network(_))), "{next:?}");
    });
}

#[test]
fn missing_session_is_not_logged_in_without_touching_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let session = telegram::session_path(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let result = runtime.block_on(telegram::open(API_ID, &session));
    assert!(started.elapsed() < Duration::from_secs(1));
    match result {
        Err(TelegramError::NotLoggedIn(path)) => assert_eq!(path, session),
        Err(other) => panic!("expected NotLoggedIn, got {other}"),
        Ok(_) => panic!("expected NotLoggedIn, got a connection"),
    }
    let message = TelegramError::NotLoggedIn(session.clone()).to_string();
    assert!(message.contains("voice-transcriber login"), "{message}");
    assert!(!session.exists(), "open must not create the session file");
}

#[test]
fn session_without_a_completed_login_is_not_logged_in() {
    let dir = tempfile::tempdir().unwrap();
    let session = telegram::session_path(dir.path());
    // A session written by an interrupted login: data centers known, no owner, no key.
    telegram::FileSession::new(&session).flush().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = runtime.block_on(telegram::open(API_ID, &session));
    assert!(matches!(result, Err(TelegramError::NotLoggedIn(_))));
}
