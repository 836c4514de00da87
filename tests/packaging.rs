//! The files installed on the board agree with the program: the example config parses and
//! validates with the daemon's own [`Config`], documents every key, and its commented-out
//! examples are valid too; the unit, sysusers and tmpfiles files name the same user, paths
//! and exit codes. (`systemd-analyze verify` of the unit runs in `.ci/board`.)

use std::path::Path;

use voice_transcriber::daemon::config::{self, Config};

fn read(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn parse_valid(text: &str) -> Config {
    let c = Config::parse(text).unwrap_or_else(|e| panic!("does not parse: {e}"));
    c.validate()
        .unwrap_or_else(|e| panic!("does not validate: {e}"));
    c
}

/// The value of `key=` in the unit (last occurrence, as systemd reads a single-valued key).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

#[test]
fn example_config_parses_and_validates_with_defaults() {
    let c = parse_valid(&read("systemd/config.example.toml"));
    // The values written in the example are the defaults, but for the state directory, which
    // is the service's, so that `sudo -u voice-transcriber voice-transcriber login` finds it.
    let expected = Config {
        state_dir: Some("/var/lib/voice-transcriber".into()),
        ..Config::default()
    };
    assert_eq!(c, expected);
}

#[test]
fn example_config_commented_out_keys_are_valid_when_uncommented() {
    let text = read("systemd/config.example.toml");
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            // A commented-out setting is `# key = value` that is TOML on its own; prose is not.
            Some(rest) if is_setting(rest) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let c = parse_valid(&uncommented);
    let (id, hash) = c
        .credentials()
        .expect("both credentials are in the example");
    assert!(id > 0 && hash.len() == 32);
    assert!(c.models_dir.is_some());
}

fn is_setting(line: &str) -> bool {
    let key_ok = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    line.split_once(" = ").is_some_and(|(k, _)| key_ok(k)) && line.parse::<toml::Table>().is_ok()
}

#[test]
fn example_config_documents_every_key() {
    let text = read("systemd/config.example.toml");
    // Every key the program knows, with the optional ones filled in so they are rendered.
    let mut all = Config {
        state_dir: Some("/x".into()),
        models_dir: Some("/x".into()),
        ..Config::default()
    };
    all.telegram.api_id = Some(1);
    all.telegram.api_hash = Some("0".repeat(32));
    let rendered = toml::to_string(&all).unwrap();
    for line in rendered.lines() {
        let key = match line.split_once(" = ") {
            Some((k, _)) => k,
            None => continue,
        };
        let written = text.lines().any(|l| {
            let l = l.trim_start_matches("# ");
            l.starts_with(&format!("{key} = "))
        });
        assert!(written, "config.example.toml does not mention `{key}`");
    }
    for table in ["[telegram]", "[transcribe]", "[reply]"] {
        assert!(text.contains(table), "config.example.toml has no {table}");
    }
}

#[test]
fn unit_runs_the_default_config_as_the_sysusers_user() {
    let unit = read("systemd/voice-transcriber.service");
    let exec = unit_value(&unit, "ExecStart");
    assert_eq!(
        exec,
        format!(
            "/usr/bin/voice-transcriber run --config {}",
            config::DEFAULT_PATH
        )
    );
    let user = unit_value(&unit, "User");
    let sysusers = read("systemd/voice-transcriber.sysusers");
    let entry: Vec<&str> = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .expect("sysusers has a `u` line")
        .split_whitespace()
        .collect();
    assert_eq!(entry[1], user);
    // The tmpfiles entry creates the same state directory, with the same owner and mode,
    // that StateDirectory= makes at the first start.
    let state = unit_value(&unit, "StateDirectory");
    let mode = unit_value(&unit, "StateDirectoryMode");
    let tmpfiles = read("systemd/voice-transcriber.tmpfiles");
    let line = tmpfiles
        .lines()
        .find(|l| l.starts_with("d "))
        .expect("tmpfiles has a `d` line");
    let want = format!("d /var/lib/{state} {mode} {user} {user} -");
    assert_eq!(line, want);
    assert_eq!(
        config::DEFAULT_PATH,
        format!(
            "/etc/{}/config.toml",
            unit_value(&unit, "ConfigurationDirectory")
        )
    );
}

#[test]
fn unit_does_not_restart_into_revoked_login_or_bad_config() {
    let unit = read("systemd/voice-transcriber.service");
    // 77: not logged in / authorization revoked; 78: bad configuration (the CLI's exit codes).
    let codes: Vec<&str> = unit_value(&unit, "RestartPreventExitStatus")
        .split_whitespace()
        .collect();
    assert_eq!(codes, ["77", "78"]);
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");
    assert_eq!(unit_value(&unit, "Type"), "notify");
}
