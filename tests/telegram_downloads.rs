//! Downloads through the real grammers client against the fake Telegram data center
//! (`tests/fake_telegram/`), in-process and with a short request deadline: a slow link, a
//! chunk that is never answered, a connection dropped half-way through a 150 MB file, media
//! on another data center behind a slow authorization hand-over, and a file reference that
//! expires mid-download. Each test says what the client asked for, from the fake's request
//! log: which offsets, on which connection, and how often.

mod common;
mod fake_telegram;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fake_telegram::{FakeDc, Scenario};
use serde_json::Value;
use voice_transcriber::daemon::download::Download;
use voice_transcriber::daemon::messenger::{Connection, Messenger, MessengerError};
use voice_transcriber::telegram::{self, TelegramOptions};

const OWNER: i64 = 1000;
const ANN: i64 = 111;

/// The request deadline of these tests: short, so a missed one costs little time.
const DEADLINE: Duration = Duration::from_secs(2);

fn jfk() -> PathBuf {
    common::root().join("tests/data/audio_jfk_ask_not.ogg")
}

/// Ann sends one voice (`voice` is the body of its `[messages.voice]` table), then `extra`.
fn scenario(voice: &str, extra: &str) -> Scenario {
    let text = format!(
        r#"
[owner]
id = {OWNER}
first_name = "Olga"

[[users]]
key = "ann"
id = {ANN}
access_hash = 5555
first_name = "Ann"
contact = true
known = true

[[messages]]
chat = "ann"
id = 7
delivery = "offline"
[messages.voice]
{voice}

{extra}
"#
    );
    Scenario::from_toml(&text, &common::root()).unwrap_or_else(|e| panic!("scenario: {e}"))
}

/// A file of `len` bytes that is not audio (the tests here only download).
fn blob(dir: &Path, len: usize) -> PathBuf {
    let path = dir.join("blob.bin");
    let bytes: Vec<u8> = (0..len).map(|i| (i * 131 % 251) as u8).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Opens the daemon's Telegram link on `dir` (request deadline [`DEADLINE`]) in a
/// current-thread runtime with a LocalSet, as the daemon runs it, and hands it to `body`.
fn with_link<T>(
    dir: &Path,
    body: impl AsyncFnOnce(telegram::Telegram, telegram::TelegramUpdates) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let options = TelegramOptions {
            request_timeout: DEADLINE,
            ..TelegramOptions::default()
        };
        let (tg, mut updates) =
            telegram::open_with(fake_telegram::API_ID, &telegram::session_path(dir), options)
                .await
                .expect("the session written by the fake opens");
        tokio::time::timeout(Duration::from_secs(30), updates.connect())
            .await
            .expect("connect returns")
            .expect("connect succeeds");
        body(tg, updates).await
    })
}

/// Downloads Ann's voice into the file `dest` as the worker does: a network error is tried
/// again (here at once, at most `tries` times) with the bytes received so far; anything else
/// fails the test.
async fn download(tg: &telegram::Telegram, dest: &Path, tries: usize) -> u64 {
    let mut errors = Vec::new();
    let mut into = Download::in_file(dest).unwrap();
    for _ in 0..tries {
        match tg.download(ANN, 7, &mut into).await {
            Ok(n) => return n,
            Err(e @ MessengerError::Network(_)) => errors.push(e),
            Err(e) => panic!("download failed: {e} (after {errors:?})"),
        }
    }
    panic!("no download in {tries} tries: {errors:?}");
}

/// The `upload.getFile` calls as (offset, limit, answer, connection).
fn chunks(dc: &FakeDc) -> Vec<(i64, i64, String, i64)> {
    dc.calls("upload.getFile")
        .iter()
        .map(|c| {
            (
                c["offset"].as_i64().unwrap(),
                c["limit"].as_i64().unwrap(),
                c["answer"].as_str().unwrap().to_string(),
                c["conn"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// How many connections the client opened to data center `dc`.
fn connections_to(dc: &FakeDc, id: i64) -> usize {
    dc.log()
        .iter()
        .filter(|e| e["event"] == "connect" && e["dc"] == id)
        .count()
}

/// True when every byte of the file was asked for, in order, each offset exactly once among
/// the answered calls.
fn covers_once(chunks: &[(i64, i64, String, i64)], size: i64) -> Result<(), String> {
    let mut at = 0;
    for (offset, limit, answer, _) in chunks.iter().filter(|c| c.2 == "ok") {
        if *offset != at {
            return Err(format!("expected offset {at}, got {offset} ({answer})"));
        }
        at = (offset + limit).min(size);
    }
    if at != size {
        return Err(format!("stopped at {at} of {size}"));
    }
    Ok(())
}

#[test]
fn a_slow_link_downloads_in_smaller_parts_on_the_same_connection() {
    // 700 KB at 150 KB/s: a 512 KiB part takes 3.5 s, longer than the 2 s deadline, so a
    // fixed part size can never finish; smaller parts each fit.
    let files = tempfile::tempdir().unwrap();
    let size = 700_000;
    let file = blob(files.path(), size);
    let dc = FakeDc::start(
        scenario(
            &format!("file = {file:?}\nduration_s = 40\nkind = \"audio\""),
            "[[faults]]\nmethod = \"upload.getFile\"\ntimes = 1000\naction = \"slow\"\n\
             bytes_per_s = 150000",
        ),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    dc.write_state_dir(dir.path(), "").unwrap();
    let dest = dir.path().join("voice.media");
    with_link(dir.path(), async |tg, mut updates| {
        let n = download(&tg, &dest, 3).await;
        assert_eq!(n, size as u64);
        // The link never counted as stalled: checking it opens no new connection.
        updates.connect().await.expect("connect");
    });
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&file).unwrap());
    let chunks = chunks(&dc);
    covers_once(&chunks, size as i64).unwrap_or_else(|e| panic!("{e}: {chunks:?}"));
    assert_eq!(connections_to(&dc, 2), 1, "{}", dc.log_text());
    assert!(dc.calls("updates.getDifference").len() <= 1, "{chunks:?}");
}

#[test]
fn a_chunk_that_is_never_answered_is_asked_again_on_the_same_connection() {
    let files = tempfile::tempdir().unwrap();
    let size = 700_000;
    let file = blob(files.path(), size);
    let dc = FakeDc::start(
        scenario(
            &format!("file = {file:?}\nduration_s = 40\nkind = \"audio\""),
            "[[faults]]\nmethod = \"upload.getFile\"\ncall = 2\naction = \"stall\"",
        ),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    dc.write_state_dir(dir.path(), "").unwrap();
    let dest = dir.path().join("voice.media");
    with_link(dir.path(), async |tg, mut updates| {
        let n = download(&tg, &dest, 3).await;
        assert_eq!(n, size as u64);
        updates.connect().await.expect("connect");
    });
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&file).unwrap());
    let chunks = chunks(&dc);
    assert_eq!(chunks[1].2, "stall", "{chunks:?}");
    assert_eq!(
        chunks[2].0, chunks[1].0,
        "the stalled part asked again: {chunks:?}"
    );
    assert!(
        chunks.iter().all(|c| c.3 == chunks[0].3),
        "one connection: {chunks:?}"
    );
    covers_once(&chunks, size as i64).unwrap_or_else(|e| panic!("{e}: {chunks:?}"));
    // No rebuilt pool: one connection, no second catch-up.
    assert_eq!(connections_to(&dc, 2), 1, "{}", dc.log_text());
    assert!(dc.calls("updates.getDifference").len() <= 1);
}

#[test]
fn a_150_mb_file_dropped_half_way_resumes_where_it_stopped() {
    // 300 parts of 512 KiB; the connection drops at the 150th request and again at grammers'
    // own retry of it (one dropped request alone is re-sent by grammers, a second one comes
    // back as an error), and a few parts before come slowly. Not audio: only the download is
    // checked here.
    const SIZE: i64 = 300 * 512 * 1024;
    let dc = FakeDc::start(
        scenario(
            &format!("size = {SIZE}\nduration_s = 9000\nkind = \"audio\""),
            "[[faults]]\nmethod = \"upload.getFile\"\ncall = 150\ntimes = 2\naction = \"drop\"\n\
             [[faults]]\nmethod = \"upload.getFile\"\ncall = 20\ntimes = 5\naction = \"slow\"\n\
             delay_s = 0.5",
        ),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    dc.write_state_dir(dir.path(), "").unwrap();
    let dest = dir.path().join("audio.media");
    let started = std::time::Instant::now();
    with_link(dir.path(), async |tg, _updates| {
        let n = download(&tg, &dest, 5).await;
        assert_eq!(n, SIZE as u64);
    });
    eprintln!(
        "150 MB downloaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        std::fs::read(&dest).unwrap() == fake_telegram::scenario::generated_payload(SIZE as u64),
        "the bytes are the file's"
    );
    let chunks = chunks(&dc);
    let dropped = chunks
        .iter()
        .position(|c| c.2 == "drop")
        .expect("the drop happened");
    let after: Vec<i64> = chunks[dropped + 1..].iter().map(|c| c.0).collect();
    assert_eq!(
        after[0], chunks[dropped].0,
        "the part in flight asked again"
    );
    assert!(after[0] > 0);
    let mut seen = std::collections::HashSet::new();
    for c in &chunks {
        assert!(
            seen.insert(c.0) || c.0 == chunks[dropped].0,
            "offset {} asked for twice: {chunks:?}",
            c.0
        );
    }
    covers_once(&chunks, SIZE).unwrap_or_else(|e| panic!("{e}: {chunks:?}"));
}

#[test]
fn media_on_another_data_center_gets_its_own_deadlines_for_connecting_and_authorizing() {
    // The document says data center 1, the file is on 4; handing the authorization over takes
    // 1.2 s per request, so connection, export, import and a part together exceed one 2 s
    // deadline while each fits its own.
    let dc = FakeDc::start(
        scenario(
            &format!("file = {:?}\nduration_s = 11\ndc = 4\nlisted_dc = 1", jfk()),
            "[[faults]]\nmethod = \"auth.exportAuthorization\"\ntimes = 10\naction = \"slow\"\n\
             delay_s = 1.2\n\
             [[faults]]\nmethod = \"auth.importAuthorization\"\ntimes = 10\naction = \"slow\"\n\
             delay_s = 1.2",
        ),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    dc.write_state_dir(dir.path(), "").unwrap();
    let dest = dir.path().join("voice.media");
    with_link(dir.path(), async |tg, mut updates| {
        // One try: the whole hand-over has to work in it.
        download(&tg, &dest, 1).await;
        updates.connect().await.expect("connect");
    });
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(jfk()).unwrap());
    let imports: Vec<(i64, String)> = dc
        .calls("auth.importAuthorization")
        .iter()
        .map(|c| {
            (
                c["dc"].as_i64().unwrap(),
                c["answer"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        imports,
        [(1, "ok".into()), (4, "ok".into())],
        "{}",
        dc.log_text()
    );
    let last = dc.calls("upload.getFile").last().cloned().unwrap();
    assert_eq!(
        (last["dc"].as_i64(), last["answer"].as_str()),
        (Some(4), Some("ok"))
    );
    // The home connection was never given up.
    assert_eq!(connections_to(&dc, 2), 1, "{}", dc.log_text());
}

#[test]
fn an_expired_file_reference_is_renewed_by_fetching_the_message_again() {
    let files = tempfile::tempdir().unwrap();
    let size = 1_500_000;
    let file = blob(files.path(), size);
    let dc = FakeDc::start(
        scenario(
            &format!("file = {file:?}\nduration_s = 90\nkind = \"audio\""),
            "[[faults]]\nmethod = \"upload.getFile\"\ncall = 2\nerror = \"FILE_REFERENCE_EXPIRED\"",
        ),
        None,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    dc.write_state_dir(dir.path(), "").unwrap();
    let dest = dir.path().join("voice.media");
    with_link(dir.path(), async |tg, _updates| {
        download(&tg, &dest, 3).await;
    });
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&file).unwrap());
    let chunks = chunks(&dc);
    assert_eq!(chunks[1].2, "400 FILE_REFERENCE_EXPIRED", "{chunks:?}");
    assert_eq!(chunks[2].0, chunks[1].0, "went on where it was: {chunks:?}");
    assert!(chunks[2..].iter().all(|c| c.2 == "ok"), "{chunks:?}");
    covers_once(&chunks, size as i64).unwrap_or_else(|e| panic!("{e}: {chunks:?}"));
    // The message was fetched again between the refusal and the next part.
    let log = dc.log();
    let at = |pred: &dyn Fn(&Value) -> bool| log.iter().position(pred).unwrap();
    let refused = at(&|e| e["answer"] == "400 FILE_REFERENCE_EXPIRED");
    let refetched = log[refused..]
        .iter()
        .position(|e| e["method"] == "messages.getMessages")
        .map(|i| i + refused)
        .expect("messages.getMessages after the refusal");
    let next = log[refused + 1..]
        .iter()
        .position(|e| e["method"] == "upload.getFile")
        .map(|i| i + refused + 1)
        .unwrap();
    assert!(refetched < next, "{}", dc.log_text());
}
