//! Fuzz target: `Config::parse`, what `Config::load` does with the file's text and the
//! environment.
//!
//! The input is the file's text, then (each after a NUL byte, when present) the values of
//! `PORT`, `WS_PORT` and `SECRET_KEY`. Invariants beyond "no panic": parsing is
//! deterministic; an error names the file (or the environment) and, when it names a key,
//! its message says which; an accepted config has no zero limits or durations, and
//! honours the environment (`PORT` -> `0.0.0.0:$PORT`).

#![no_main]

use chitchat::Config;
use libfuzzer_sys::fuzz_target;

const SOURCE: &str = "fuzz/config.json";
const ENV_NAMES: [&str; 3] = ["PORT", "WS_PORT", "SECRET_KEY"];

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    let mut parts = input.split('\0');
    let text = parts.next().unwrap_or_default();
    let values: Vec<&str> = parts.take(ENV_NAMES.len()).collect();
    let env = |name: &str| {
        let i = ENV_NAMES.iter().position(|n| *n == name)?;
        values.get(i).map(|v| v.to_string())
    };

    let parsed = Config::parse(SOURCE, text, env);
    let again = Config::parse(SOURCE, text, env);
    match (&parsed, &again) {
        (Ok((a, wa)), Ok((b, wb))) => {
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "parse is deterministic");
            assert_eq!(wa, wb);
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "parse is deterministic"),
        _ => panic!("parse is deterministic: {parsed:?} then {again:?}"),
    }

    match parsed {
        Err(error) => {
            assert!(
                error.source == SOURCE || error.source == "environment",
                "the error names its source: {error:?}"
            );
            let message = error.to_string();
            assert!(message.starts_with(&error.source), "{message}");
            if let Some(key) = &error.key {
                assert!(message.contains(key.as_str()), "{message} names {key}");
                if error.source == "environment" {
                    assert!(ENV_NAMES.contains(&key.as_str()), "{key}");
                }
            }
        }
        Ok((config, warnings)) => {
            assert!(config.max_message_bytes > 0 && config.max_body_bytes > 0);
            assert!(config.send_queue_len > 0);
            assert!((4..=31).contains(&config.bcrypt_cost));
            assert!(!config.read_timeout.is_zero() && !config.write_timeout.is_zero());
            assert!(!config.token_ttl.is_zero());
            assert!(!config.ping_interval.is_zero() && !config.pong_timeout.is_zero());
            for warning in &warnings {
                assert!(warning.starts_with(SOURCE), "{warning}");
            }
            if let Some(port) = env("PORT") {
                let port: u16 = port.trim().parse().expect("an accepted PORT is a port");
                assert_eq!(config.address, format!("0.0.0.0:{port}"));
            }
            if let Some(port) = env("WS_PORT") {
                let port: u16 = port.trim().parse().expect("an accepted WS_PORT is a port");
                assert_eq!(config.ws_address, format!("0.0.0.0:{port}"));
            }
            match env("SECRET_KEY").filter(|s| !s.is_empty()) {
                Some(secret) => assert_eq!(config.secret_key, Some(secret)),
                None => assert_ne!(config.secret_key.as_deref(), Some("")),
            }
        }
    }
});
