//! Configuration: defaults, `config.json`, then environment overrides.
//!
//! Owns every tunable of the server and how it is read. The file uses snake_case keys; the Go
//! version's keys (`Address`, `ReadTimeout`, `WriteTimeout`, `Static`) are accepted as
//! aliases so an old deployment keeps starting. Its `RedisURL`, which the Go version never
//! used (its repository ships `"RedisURL": "127.0.0.1:6379"`), is accepted and ignored with
//! a warning that names `redis_url`, so a Go config.json starts a one-node server unchanged
//! (SPEC, Running). Anything else stops start-up: an unknown key, a value of the wrong kind
//! or an unreadable file is a [`ConfigError`] naming the file and the key, and `main` exits
//! with code 2. Nothing falls back silently (the Go version tried `../config.json`); so a
//! server built without the `redis` feature refuses `redis_url` rather than ignore it.
//!
//! Relative paths (`db_path`, `log_file`, `static_dir`) are relative to the working
//! directory the server is started in. With no file at all ([`Config::from_env`]: `main`
//! when no `--config` is given and `./config.json` does not exist) every key has its default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;
use serde_json::{Map, Value};

use crate::net::AddrRange;

/// Everything the server needs to start. Built by [`Config::load`] in `main`, or by hand
/// (starting from [`Config::default`]) in tests.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the REST API and the web page listen (`address`).
    pub address: String,
    /// Where the WebSocket listener listens (`ws_address`), a port of its own.
    pub ws_address: String,
    /// How long a connection may take to send a request or a frame part (`read_timeout_s`).
    pub read_timeout: Duration,
    /// How long a write to a stalled client may block before it is given up (`write_timeout_s`).
    pub write_timeout: Duration,
    /// Optional folder of extra files served under `/static/` (`static_dir`).
    pub static_dir: Option<PathBuf>,
    /// The token signing secret (`secret_key`); `None` means generate one at start.
    pub secret_key: Option<String>,
    /// The operator's key (`admin_key`, or `ADMIN_KEY`): presented as a bearer token it
    /// changes and deletes any room, room 1 included. `None`: nobody is admin.
    pub admin_key: Option<String>,
    /// How long an owner token lives (`owner_token_days`, fractions allowed).
    pub owner_token_ttl: Duration,
    /// Sites besides the server's own host whose pages may `POST`, `PUT`, `DELETE` and open
    /// sockets (`allowed_origins`, `scheme://host[:port]`, lower-cased).
    pub allowed_origins: Vec<String>,
    /// How long a token lives (`token_ttl_minutes`, fractions allowed).
    pub token_ttl: Duration,
    /// The largest WebSocket message accepted; larger closes the socket with 1009.
    pub max_message_bytes: usize,
    /// The largest HTTP request body accepted; larger is answered 413.
    pub max_body_bytes: usize,
    /// Log file next to the console (`log_file`); `None` logs to the console only.
    pub log_file: Option<PathBuf>,
    /// The most detailed log level written (`log_level`).
    pub log_level: LevelFilter,
    /// bcrypt work factor for room passwords (`bcrypt_cost`); tests use the minimum, 4.
    pub bcrypt_cost: u32,
    /// Events a member's channel may hold untaken before a speaker waits for it (or, if its
    /// client stopped reading, it is closed): `send_queue_len`. The bound of each socket's
    /// queue.
    pub send_queue_len: usize,
    /// How often an idle socket is pinged (`ping_interval_s`).
    pub ping_interval: Duration,
    /// How long a socket may stay silent before it counts as dead (`pong_timeout_s`).
    pub pong_timeout: Duration,
    /// The SQLite file rooms and history are kept in (`db_path`); `None` keeps everything
    /// in memory only, for tests and teaching.
    pub db_path: Option<PathBuf>,
    /// How many `send` events each room keeps for sockets that join later (`history_len`);
    /// 0 keeps none.
    pub history_len: usize,
    /// HTTP connections open at once (`max_http_connections`); past it a new one is
    /// answered 503, code 601, and closed (SPEC, "Limits"). 0 turns the limit off.
    pub max_http_connections: usize,
    /// HTTP connections open at once per client address (`max_http_connections_per_ip`):
    /// past it 503 (601) at once, from tiny_http's accept thread, which knows only the
    /// peer address (behind a proxy, the proxy's). 0: no limit.
    pub max_http_connections_per_ip: usize,
    /// The whole head of an HTTP request (or of a WebSocket handshake) must arrive within
    /// this (`head_timeout_s`), else 408 and close. `None` (0): no deadline but
    /// `read_timeout_s` per read.
    pub head_timeout: Option<Duration>,
    /// The whole body of an HTTP request must arrive within this from the end of its head
    /// (`body_timeout_s`), else 408 and close. `None` (0): no deadline.
    pub body_timeout: Option<Duration>,
    /// bcrypt jobs in flight per client address, successful ones included
    /// (`bcrypt_per_ip`): past it 429 (602) with `Retry-After: 1`. 0: no limit.
    pub bcrypt_per_ip: usize,
    /// Peers whose `X-Forwarded-For` header names the client (`trusted_proxies`): a
    /// reverse proxy's address. None by default: the peer is the client.
    pub trusted_proxies: Vec<AddrRange>,
    /// Client addresses `/metrics` is served to (`metrics_allow`); others get a 404.
    pub metrics_allow: Vec<AddrRange>,
    /// WebSocket connections open at once, handshaking or chatting (`max_connections`);
    /// past it a handshake is answered 503 (601). 0: no limit.
    pub max_connections: usize,
    /// The same, per client address (`max_connections_per_ip`). 0: no limit.
    pub max_connections_per_ip: usize,
    /// Failed token requests (wrong secret) per client address and room per minute
    /// (`token_attempts_per_minute`); past it 429 (602), before any bcrypt work. 0: none.
    pub token_attempts_per_minute: usize,
    /// Rooms created per client address per minute (`rooms_per_minute`); past it 429
    /// (602). 0: no limit.
    pub rooms_per_minute: usize,
    /// Rooms that may exist at once (`max_rooms`); past it `POST /chats` answers 503
    /// (606). 0: no limit.
    pub max_rooms: usize,
    /// Chat frames per socket per second (`msgs_per_second`), in bursts of up to
    /// `msgs_burst`; past it an error event (603) and the frame is dropped. 0 in either:
    /// no limit.
    pub msgs_per_second: usize,
    /// See `msgs_per_second` (`msgs_burst`).
    pub msgs_burst: usize,
    /// Refused frames within a minute that close a socket with 1008 (`flood_close_after`).
    /// 0: never closed for it.
    pub flood_close_after: usize,
    /// bcrypt jobs that may wait for a hashing thread (`bcrypt_queue_len`); when it is
    /// full a token or password request is answered 503 (604) with `Retry-After: 1`.
    /// 0: no bound.
    pub bcrypt_queue_len: usize,
    /// Several nodes (`redis_url`, `redis://host:port/db`, or `host:port` for db 0, kept
    /// as `redis://host:port/0`): rooms, history, presence and the fan-out go through this
    /// Redis, and `db_path` is not used. Always `None` in a build without the `redis`
    /// feature (the key is refused).
    pub redis_url: Option<String>,
    /// With Redis: how long a node that stopped keeps its members (`presence_ttl_s`).
    pub presence_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: "127.0.0.1:8080".into(),
            ws_address: "127.0.0.1:8081".into(),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            static_dir: None,
            secret_key: None,
            admin_key: None,
            owner_token_ttl: Duration::from_secs(30 * 24 * 60 * 60),
            allowed_origins: Vec::new(),
            token_ttl: Duration::from_secs(60 * 60),
            max_message_bytes: 4096,
            max_body_bytes: 64 * 1024,
            log_file: Some(PathBuf::from("chitchat.log")),
            log_level: LevelFilter::Info,
            bcrypt_cost: 10,
            send_queue_len: 256,
            ping_interval: Duration::from_secs(54),
            pong_timeout: Duration::from_secs(60),
            db_path: Some(PathBuf::from("chitchat.db")),
            history_len: 50,
            max_http_connections: 1024,
            max_http_connections_per_ip: 32,
            head_timeout: Some(Duration::from_secs(10)),
            body_timeout: Some(Duration::from_secs(30)),
            bcrypt_per_ip: 2,
            trusted_proxies: Vec::new(),
            metrics_allow: ["127.0.0.1/8", "::1/128"]
                .iter()
                .map(|range| AddrRange::parse(range).expect("the default ranges are valid"))
                .collect(),
            max_connections: 10_000,
            max_connections_per_ip: 100,
            token_attempts_per_minute: 10,
            rooms_per_minute: 30,
            max_rooms: 10_000,
            msgs_per_second: 20,
            msgs_burst: 40,
            flood_close_after: 100,
            bcrypt_queue_len: 64,
            redis_url: None,
            presence_ttl: Duration::from_secs(15),
        }
    }
}

/// Why the configuration could not be loaded. Its message names the file and, where there
/// is one, the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or the environment variable, the problem was found in.
    pub source: String,
    /// The key at fault, if the problem is about one key.
    pub key: Option<String>,
    /// What is wrong, in a few words.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{}`: {}", self.source, key, self.problem),
            None => write!(f, "{}: {}", self.source, self.problem),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `path` over the defaults, then applies the environment through `env` (a
    /// function so tests need not touch the process environment). Returns the config and
    /// the warnings to log once logging is up.
    pub fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: source.clone(),
            key: None,
            problem: format!("cannot read the file: {e}"),
        })?;
        Config::parse(&source, &text, env)
    }

    /// What [`Config::load`] does once the file is read: `text` is its contents and
    /// `source` names it in errors and warnings. Separate so the parser can be tested and
    /// fuzzed without a file (`fuzz/fuzz_targets/config.rs`).
    pub fn parse(
        source: &str,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let fail = |key: Option<&str>, problem: String| ConfigError {
            source: source.to_owned(),
            key: key.map(str::to_owned),
            problem,
        };
        let map: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| fail(None, format!("not a JSON object: {e}")))?;
        let mut config = Config::default();
        let mut warnings = Vec::new();
        for (key, value) in &map {
            if key == "RedisURL" {
                warnings.push(format!("{source}: key `RedisURL` (from the Go version, which never used it) is ignored; to run several nodes, set `redis_url` (\"redis://host:port/db\" or \"host:port\")"));
                continue;
            }
            config
                .set(key, value)
                .map_err(|problem| fail(Some(key), problem))?;
        }
        config.apply_env(env)?;
        Ok((config, warnings))
    }

    /// The defaults with the environment applied, no file read: what `chitchat` runs with
    /// when no `--config` is given and `./config.json` does not exist. The same as loading a
    /// file holding `{}` (a unit test keeps it so).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        config.apply_env(env)?;
        Ok(config)
    }

    /// Sets one key from the file; the error is what is wrong with it.
    fn set(&mut self, key: &str, value: &Value) -> Result<(), String> {
        match key {
            "address" | "Address" => self.address = string(value)?,
            "ws_address" => self.ws_address = string(value)?,
            "read_timeout_s" | "ReadTimeout" => self.read_timeout = seconds(value)?,
            "write_timeout_s" | "WriteTimeout" => self.write_timeout = seconds(value)?,
            "static_dir" | "Static" => {
                self.static_dir = optional(value, string)?.map(PathBuf::from)
            }
            "secret_key" => self.secret_key = optional(value, string)?.filter(|s| !s.is_empty()),
            "admin_key" => self.admin_key = optional(value, string)?.map(admin_key).transpose()?,
            "owner_token_days" => {
                self.owner_token_ttl = duration(positive(value)? * 24.0 * 60.0 * 60.0)?
            }
            "allowed_origins" => self.allowed_origins = origins(value)?,
            "token_ttl_minutes" => self.token_ttl = duration(positive(value)? * 60.0)?,
            "max_message_bytes" => self.max_message_bytes = count(value)?,
            "max_body_bytes" => self.max_body_bytes = count(value)?,
            "log_file" => self.log_file = optional(value, string)?.map(PathBuf::from),
            "log_level" => self.log_level = level(value)?,
            "bcrypt_cost" => self.bcrypt_cost = bcrypt_cost(value)?,
            "send_queue_len" => self.send_queue_len = count(value)?,
            "ping_interval_s" => self.ping_interval = seconds(value)?,
            "pong_timeout_s" => self.pong_timeout = seconds(value)?,
            "db_path" => self.db_path = optional(value, string)?.map(PathBuf::from),
            "history_len" => self.history_len = whole(value)?,
            "max_http_connections" => self.max_http_connections = whole(value)?,
            "max_http_connections_per_ip" => self.max_http_connections_per_ip = whole(value)?,
            "head_timeout_s" => self.head_timeout = deadline(value)?,
            "body_timeout_s" => self.body_timeout = deadline(value)?,
            "bcrypt_per_ip" => self.bcrypt_per_ip = whole(value)?,
            "trusted_proxies" => self.trusted_proxies = ranges(value)?,
            "metrics_allow" => self.metrics_allow = ranges(value)?,
            "max_connections" => self.max_connections = whole(value)?,
            "max_connections_per_ip" => self.max_connections_per_ip = whole(value)?,
            "token_attempts_per_minute" => self.token_attempts_per_minute = whole(value)?,
            "rooms_per_minute" => self.rooms_per_minute = whole(value)?,
            "max_rooms" => self.max_rooms = whole(value)?,
            "msgs_per_second" => self.msgs_per_second = whole(value)?,
            "msgs_burst" => self.msgs_burst = whole(value)?,
            "flood_close_after" => self.flood_close_after = whole(value)?,
            "bcrypt_queue_len" => self.bcrypt_queue_len = whole(value)?,
            "redis_url" => self.redis_url = optional(value, redis_url)?,
            "presence_ttl_s" => self.presence_ttl = seconds(value)?,
            _ => return Err("unknown key".into()),
        }
        Ok(())
    }

    /// `PORT` and `WS_PORT` listen on every interface (PaaS style); `SECRET_KEY` and
    /// `ADMIN_KEY` win over the file so neither need be written to disk.
    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let port = |name: &str| -> Result<Option<u16>, ConfigError> {
            env(name)
                .map(|v| {
                    v.trim().parse::<u16>().map_err(|_| ConfigError {
                        source: "environment".into(),
                        key: Some(name.into()),
                        problem: format!("expected a port number, got {v:?}"),
                    })
                })
                .transpose()
        };
        if let Some(p) = port("PORT")? {
            self.address = format!("0.0.0.0:{p}");
        }
        if let Some(p) = port("WS_PORT")? {
            self.ws_address = format!("0.0.0.0:{p}");
        }
        if let Some(secret) = env("SECRET_KEY").filter(|s| !s.is_empty()) {
            self.secret_key = Some(secret);
        }
        if let Some(key) = env("ADMIN_KEY").filter(|s| !s.is_empty()) {
            self.admin_key = Some(admin_key(key).map_err(|problem| ConfigError {
                source: "environment".into(),
                key: Some("ADMIN_KEY".into()),
                problem,
            })?);
        }
        Ok(())
    }
}

fn string(value: &Value) -> Result<String, String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "expected a string".into())
}

fn optional<T>(value: &Value, read: fn(&Value) -> Result<T, String>) -> Result<Option<T>, String> {
    if value.is_null() {
        Ok(None)
    } else {
        read(value).map(Some)
    }
}

fn positive(value: &Value) -> Result<f64, String> {
    match value.as_f64() {
        Some(n) if n > 0.0 && n.is_finite() && n < 1e9 => Ok(n),
        _ => Err("expected a positive number".into()),
    }
}

fn seconds(value: &Value) -> Result<Duration, String> {
    duration(positive(value)?)
}

/// `secs` as a `Duration`, which must not round to zero: a zero socket timeout is refused
/// by the OS, and the server would then run with no timeout at all.
fn duration(secs: f64) -> Result<Duration, String> {
    Some(Duration::from_secs_f64(secs))
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "expected a positive number: this one rounds to no time at all".into())
}

/// A deadline in seconds; 0 turns it off (`None`).
fn deadline(value: &Value) -> Result<Option<Duration>, String> {
    match value.as_f64() {
        Some(0.0) => Ok(None),
        _ => seconds(value).map(Some),
    }
}

fn count(value: &Value) -> Result<usize, String> {
    value
        .as_u64()
        .filter(|n| *n > 0)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| "expected a whole number above zero".into())
}

/// Like [`count`], but zero is allowed.
fn whole(value: &Value) -> Result<usize, String> {
    value
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| "expected a whole number".into())
}

/// A list of addresses and CIDR ranges: `["10.0.0.0/8", "::1"]`.
fn ranges(value: &Value) -> Result<Vec<AddrRange>, String> {
    let expected = "expected a list of addresses or CIDR ranges, such as [\"10.0.0.0/8\", \"::1\"]";
    list(value, expected, AddrRange::parse)
}

/// A list of strings, each read by `parse`; `expected` names what the list should hold.
fn list<T>(value: &Value, expected: &str, parse: fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    let items = value.as_array().ok_or(expected)?;
    items
        .iter()
        .map(|item| {
            item.as_str()
                .and_then(parse)
                .ok_or_else(|| format!("{expected}; {item} is not one"))
        })
        .collect()
}

/// `redis://[:password@]host[:port][/db]`, a Unix socket (`unix://` or `redis+unix://`), or
/// `host:port`, which is taken as `redis://host:port/0` (SPEC, Several nodes). TLS
/// (`rediss://`) is not built in: it would bring a TLS stack for one optional feature.
#[cfg(feature = "redis")]
fn redis_url(value: &Value) -> Result<String, String> {
    let url = string(value)?;
    if url.starts_with("rediss://") {
        return Err("rediss:// (TLS) is not supported; use redis:// on a private network".into());
    }
    let schemes = ["redis://", "unix://", "redis+unix://"];
    if schemes.iter().any(|s| url.starts_with(s)) {
        return Ok(url);
    }
    if is_host_and_port(&url) {
        Ok(format!("redis://{url}/0"))
    } else {
        Err(format!(
            "expected redis://host:port/db or host:port, got {url:?}"
        ))
    }
}

/// A server built without the `redis` feature runs one node only: a configured Redis is an
/// error, not something to ignore (the operator would believe the nodes share a chat).
#[cfg(not(feature = "redis"))]
fn redis_url(value: &Value) -> Result<String, String> {
    string(value)?;
    Err("this chitchat was built without Redis (cargo feature `redis`): remove the key to run one node, or build with the default features".into())
}

/// `host:port` with a port number and a host without a scheme, path or user part:
/// `127.0.0.1:6379`, `redis.internal:6379`, `[::1]:6379`.
#[cfg(feature = "redis")]
fn is_host_and_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let plain = |c: char| c.is_ascii_alphanumeric() || ".-_".contains(c);
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.chars().all(plain),
    };
    host_ok && port.parse::<u16>().is_ok()
}

/// The shortest `admin_key`: it opens every room, and a wrong one costs a guesser nothing
/// but a request, so it must be too long to guess.
pub const MIN_ADMIN_KEY_CHARS: usize = 16;

fn admin_key(key: String) -> Result<String, String> {
    if key.trim().chars().count() < MIN_ADMIN_KEY_CHARS || key.trim() != key {
        return Err(format!(
            "expected at least {MIN_ADMIN_KEY_CHARS} characters, without spaces around them"
        ));
    }
    Ok(key)
}

/// A list of origins: `["https://chat.example.org", "http://localhost:3000"]`.
fn origins(value: &Value) -> Result<Vec<String>, String> {
    let expected = "expected a list of origins, such as [\"https://chat.example.org\"]";
    list(value, expected, crate::origin::normalize)
}

fn level(value: &Value) -> Result<LevelFilter, String> {
    string(value)?
        .parse()
        .map_err(|_| "expected one of off, error, warn, info, debug, trace".into())
}

fn bcrypt_cost(value: &Value) -> Result<u32, String> {
    value
        .as_u64()
        .filter(|n| (4..=31).contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| "expected a whole number from 4 to 31".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(json: &str, env: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
        let mut file = tempfile_in_target();
        file.1.write_all(json.as_bytes()).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&file.0, |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn tempfile_in_target() -> (PathBuf, std::fs::File) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir();
        let path = dir.join(format!(
            "chitchat-config-{}-{}.json",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let file = std::fs::File::create(&path).unwrap();
        (path, file)
    }

    #[test]
    fn go_keys_are_aliases() {
        let (config, warnings) = load(
            r#"{"Address":"0.0.0.0:9000","ReadTimeout":5,"WriteTimeout":7,"Static":"public"}"#,
            &[],
        )
        .unwrap();
        assert_eq!(config.address, "0.0.0.0:9000");
        assert_eq!(config.read_timeout, Duration::from_secs(5));
        assert_eq!(config.write_timeout, Duration::from_secs(7));
        assert_eq!(config.static_dir, Some(PathBuf::from("public")));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    /// The Go repository's config.json carries `"RedisURL": "127.0.0.1:6379"`, a key the
    /// Go version never read: ignored, whatever its value, with a warning naming the key
    /// that does run several nodes.
    #[test]
    fn go_redis_url_is_ignored_with_a_warning_naming_redis_url() {
        for value in [r#""127.0.0.1:6379""#, r#""redis://x""#, "7", "null"] {
            let (config, warnings) = load(&format!(r#"{{"RedisURL":{value}}}"#), &[]).unwrap();
            assert_eq!(config.redis_url, None, "{value}");
            assert_eq!(warnings.len(), 1, "{value}");
            assert!(warnings[0].contains("`RedisURL`"), "{}", warnings[0]);
            assert!(warnings[0].contains("`redis_url`"), "{}", warnings[0]);
        }
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_url_and_presence_ttl_are_read_and_checked() {
        let (config, _) = load("{}", &[]).unwrap();
        assert_eq!(
            (config.redis_url, config.presence_ttl),
            (None, Duration::from_secs(15))
        );
        let (config, _) = load(
            r#"{"redis_url":"redis://127.0.0.1:6390/0","presence_ttl_s":2}"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            config.redis_url.as_deref(),
            Some("redis://127.0.0.1:6390/0")
        );
        assert_eq!(config.presence_ttl, Duration::from_secs(2));
        for (json, key) in [
            (r#"{"redis_url":"127.0.0.1"}"#, "redis_url"),
            (r#"{"redis_url":"127.0.0.1:port"}"#, "redis_url"),
            (r#"{"redis_url":"user@host:6379"}"#, "redis_url"),
            (r#"{"redis_url":"http://host:6379"}"#, "redis_url"),
            (r#"{"redis_url":"rediss://host:6380"}"#, "redis_url"),
            (r#"{"redis_url":7}"#, "redis_url"),
            (r#"{"presence_ttl_s":0}"#, "presence_ttl_s"),
        ] {
            let err = load(json, &[]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{json}");
        }
    }

    /// SPEC, Several nodes: `redis_url` also takes `host:port`, for db 0.
    #[cfg(feature = "redis")]
    #[test]
    fn redis_url_takes_host_and_port_for_db_0() {
        for (given, kept) in [
            ("127.0.0.1:6379", "redis://127.0.0.1:6379/0"),
            ("redis.internal:6380", "redis://redis.internal:6380/0"),
            ("[::1]:6379", "redis://[::1]:6379/0"),
            ("redis://h:1/2", "redis://h:1/2"),
        ] {
            let (config, _) = load(&format!(r#"{{"redis_url":"{given}"}}"#), &[]).unwrap();
            assert_eq!(config.redis_url.as_deref(), Some(kept), "{given}");
        }
    }

    /// Without the `redis` feature a configured Redis stops start-up (exit 2) instead of
    /// being ignored; `null` is still "one node".
    #[cfg(not(feature = "redis"))]
    #[test]
    fn redis_url_is_refused_by_a_build_without_redis() {
        let err = load(r#"{"redis_url":"redis://127.0.0.1:6379/0"}"#, &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("redis_url"));
        assert!(err.problem.contains("without Redis"), "{}", err.problem);
        let (config, _) = load(r#"{"redis_url":null}"#, &[]).unwrap();
        assert_eq!(config.redis_url, None);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(r#"{"adress":"x"}"#, &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("adress"));
        assert!(err.to_string().contains("adress"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = load(r#"{"read_timeout_s":"ten"}"#, &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("read_timeout_s"));
        let err = load(r#"{"bcrypt_cost":99}"#, &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("bcrypt_cost"));
        let err = load(r#"{"log_level":"loud"}"#, &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("log_level"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let (config, _) = load(
            r#"{"address":"127.0.0.1:1","secret_key":"file"}"#,
            &[("PORT", "9090"), ("WS_PORT", "9091"), ("SECRET_KEY", "env")],
        )
        .unwrap();
        assert_eq!(config.address, "0.0.0.0:9090");
        assert_eq!(config.ws_address, "0.0.0.0:9091");
        assert_eq!(config.secret_key.as_deref(), Some("env"));
        let err = load("{}", &[("PORT", "eighty")]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("PORT"));
    }

    /// SPEC, Who may change a room: `admin_key` from the file or `ADMIN_KEY` (which wins),
    /// unset by default; too short a key stops start-up, naming it.
    #[test]
    fn admin_key_owner_token_days_and_allowed_origins_are_read_and_checked() {
        let (config, _) = load("{}", &[]).unwrap();
        assert_eq!(config.admin_key, None);
        assert_eq!(config.owner_token_ttl, Duration::from_secs(30 * 86400));
        assert!(config.allowed_origins.is_empty());
        let (config, _) = load(
            r#"{"admin_key":"file-key-0123456789","owner_token_days":0.5,
                "allowed_origins":["HTTPS://Chat.Example.org/","http://[::1]:3000"]}"#,
            &[],
        )
        .unwrap();
        assert_eq!(config.admin_key.as_deref(), Some("file-key-0123456789"));
        assert_eq!(config.owner_token_ttl, Duration::from_secs(43200));
        assert_eq!(
            config.allowed_origins,
            ["https://chat.example.org", "http://[::1]:3000"]
        );
        let (config, _) = load(
            r#"{"admin_key":"file-key-0123456789"}"#,
            &[("ADMIN_KEY", "env-key-0123456789")],
        )
        .unwrap();
        assert_eq!(config.admin_key.as_deref(), Some("env-key-0123456789"));
        assert_eq!(
            load(r#"{"admin_key":"short"}"#, &[])
                .unwrap_err()
                .key
                .as_deref(),
            Some("admin_key")
        );
        assert_eq!(
            load("{}", &[("ADMIN_KEY", "short")])
                .unwrap_err()
                .key
                .as_deref(),
            Some("ADMIN_KEY")
        );
        for bad in [
            r#"["chat.example.org"]"#,
            r#"["https://a/b"]"#,
            r#""https://a""#,
        ] {
            let json = format!(r#"{{"allowed_origins":{bad}}}"#);
            assert_eq!(
                load(&json, &[]).unwrap_err().key.as_deref(),
                Some("allowed_origins"),
                "{bad}"
            );
        }
    }

    #[test]
    fn db_path_and_history_len_have_defaults_and_can_be_set() {
        let (config, _) = load("{}", &[]).unwrap();
        assert_eq!(config.db_path, Some(PathBuf::from("chitchat.db")));
        assert_eq!(config.history_len, 50);
        let (config, _) = load(r#"{"db_path":"data/chat.db","history_len":0}"#, &[]).unwrap();
        assert_eq!(config.db_path, Some(PathBuf::from("data/chat.db")));
        assert_eq!(config.history_len, 0);
        let (config, _) = load(r#"{"db_path":null}"#, &[]).unwrap();
        assert_eq!(config.db_path, None);
    }

    #[test]
    fn bad_db_path_or_history_len_is_named() {
        for (json, key) in [
            (r#"{"db_path":7}"#, "db_path"),
            (r#"{"history_len":-1}"#, "history_len"),
            (r#"{"history_len":"many"}"#, "history_len"),
        ] {
            let err = load(json, &[]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{json}");
        }
        // The history is replayed straight to the socket, not through its channel: no bound.
        let (config, _) = load(r#"{"history_len":300,"send_queue_len":4}"#, &[]).unwrap();
        assert_eq!((config.history_len, config.send_queue_len), (300, 4));
    }

    #[test]
    fn max_http_connections_defaults_to_1024_and_0_turns_it_off() {
        assert_eq!(load("{}", &[]).unwrap().0.max_http_connections, 1024);
        let (config, _) = load(r#"{"max_http_connections":0}"#, &[]).unwrap();
        assert_eq!(config.max_http_connections, 0);
        let err = load(r#"{"max_http_connections":-3}"#, &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("max_http_connections"));
    }

    #[test]
    fn from_env_is_the_same_as_an_empty_file() {
        let env = [("PORT", "9090"), ("SECRET_KEY", "env")];
        let (from_file, warnings) = load("{}", &env).unwrap();
        assert!(warnings.is_empty());
        let from_env = Config::from_env(|name| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        assert_eq!(format!("{from_env:?}"), format!("{from_file:?}"));
        let err = Config::from_env(|_| Some("eighty".into())).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("PORT"));
    }

    #[test]
    fn address_lists_have_defaults_and_are_checked() {
        let (config, _) = load("{}", &[]).unwrap();
        assert!(config.trusted_proxies.is_empty());
        let loopback = ["127.0.0.0/8", "::1/128"].map(|r| AddrRange::parse(r).unwrap());
        assert_eq!(config.metrics_allow, loopback);
        let (config, _) = load(r#"{"trusted_proxies":["10.0.0.0/8","::1"]}"#, &[]).unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
        for (json, key) in [
            (r#"{"trusted_proxies":"10.0.0.1"}"#, "trusted_proxies"),
            (r#"{"metrics_allow":["10.0.0.0/40"]}"#, "metrics_allow"),
            (r#"{"metrics_allow":[7]}"#, "metrics_allow"),
        ] {
            let err = load(json, &[]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{json}");
        }
        let err = load(r#"{"metrics_allow":["nope"]}"#, &[]).unwrap_err();
        assert!(err.to_string().contains("\"nope\" is not one"), "{err}");
    }

    #[test]
    fn limits_have_the_spec_defaults_and_zero_turns_them_off() {
        let (config, _) = load("{}", &[]).unwrap();
        let limits = [
            config.max_connections,
            config.max_connections_per_ip,
            config.token_attempts_per_minute,
            config.rooms_per_minute,
            config.msgs_per_second,
            config.msgs_burst,
            config.flood_close_after,
            config.bcrypt_queue_len,
        ];
        assert_eq!(limits, [10_000, 100, 10, 30, 20, 40, 100, 64]);
        let (config, _) = load(r#"{"rooms_per_minute":0,"msgs_burst":0}"#, &[]).unwrap();
        assert_eq!((config.rooms_per_minute, config.msgs_burst), (0, 0));
        assert_eq!(load("{}", &[]).unwrap().0.max_rooms, 10_000);
        assert_eq!(load(r#"{"max_rooms":0}"#, &[]).unwrap().0.max_rooms, 0);
        let err = load(r#"{"max_rooms":-1}"#, &[]).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("max_rooms"));
        for (json, key) in [
            (r#"{"max_connections":-1}"#, "max_connections"),
            (r#"{"msgs_burst":"lots"}"#, "msgs_burst"),
            (r#"{"bcrypt_queue_len":1.5}"#, "bcrypt_queue_len"),
        ] {
            let err = load(json, &[]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{json}");
        }
    }

    #[test]
    fn request_limits_have_the_spec_defaults_and_zero_turns_them_off() {
        let (config, _) = load("{}", &[]).unwrap();
        assert_eq!(
            (config.head_timeout, config.body_timeout),
            (Some(Duration::from_secs(10)), Some(Duration::from_secs(30)))
        );
        assert_eq!(
            (config.max_http_connections_per_ip, config.bcrypt_per_ip),
            (32, 2)
        );
        let (config, _) = load(
            r#"{"head_timeout_s":0,"body_timeout_s":2.5,"max_http_connections_per_ip":0,"bcrypt_per_ip":0}"#,
            &[],
        )
        .unwrap();
        assert_eq!(
            (config.head_timeout, config.body_timeout),
            (None, Some(Duration::from_millis(2500)))
        );
        assert_eq!(
            (config.max_http_connections_per_ip, config.bcrypt_per_ip),
            (0, 0)
        );
        for (json, key) in [
            (r#"{"head_timeout_s":-1}"#, "head_timeout_s"),
            (r#"{"body_timeout_s":"30"}"#, "body_timeout_s"),
            (r#"{"body_timeout_s":1e-300}"#, "body_timeout_s"),
            (
                r#"{"max_http_connections_per_ip":1.5}"#,
                "max_http_connections_per_ip",
            ),
            (r#"{"bcrypt_per_ip":-2}"#, "bcrypt_per_ip"),
        ] {
            let err = load(json, &[]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{json}");
        }
    }

    /// Found by the `config` fuzz target (fuzz/fuzz_targets/config.rs) with
    /// `{"write_timeout_s":21e-303}`: positive, so accepted, but a zero `Duration`; the OS
    /// refuses a zero socket timeout, the error is ignored, and the socket has none at all.
    #[test]
    fn a_duration_that_rounds_to_zero_is_refused() {
        for (json, key) in [
            (r#"{"write_timeout_s":21e-303}"#, "write_timeout_s"),
            (r#"{"read_timeout_s":1e-10}"#, "read_timeout_s"),
            (r#"{"ping_interval_s":1e-300}"#, "ping_interval_s"),
            (r#"{"token_ttl_minutes":1e-300}"#, "token_ttl_minutes"),
        ] {
            let err = load(json, &[]).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{json}");
        }
        let (config, _) = load(r#"{"read_timeout_s":1e-9}"#, &[]).unwrap();
        assert_eq!(config.read_timeout, Duration::from_nanos(1));
    }

    #[test]
    fn null_log_file_means_console_only() {
        let (config, _) = load(r#"{"log_file":null,"token_ttl_minutes":0.5}"#, &[]).unwrap();
        assert_eq!(config.log_file, None);
        assert_eq!(config.token_ttl, Duration::from_secs(30));
    }
}
