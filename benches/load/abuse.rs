//! Scenario 13, abuse: one client address attacks, another goes about its business (issue
//! 19). Each [`Attack`] runs against a fresh server started with the default limits, from
//! 127.0.0.1, for the run's seconds, while the other address, 127.0.0.2 (client sockets
//! bound to it with socket2: every address of 127.0.0.0/8 is loopback), times
//! `GET /chats/1` every 5 ms on a keep-alive connection and a token request for its own
//! private room every 250 ms. For each attack the table reports that address's p99s and
//! errors, and the server's peak RSS over its RSS before the attack.
//!
//! Targets: the other address gets no error and its GET p99 stays under 50 ms; under huge
//! heads and slow clients the server's RSS grows by at most 64 MiB.
//!
//! Every loop is bounded in time (the run's seconds) and in count (the attackers' threads
//! and connections are constants); all traffic is to the server on loopback. To add an
//! attack: a variant of [`Attack`], its name and RSS target, and its `attack` arm.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::http::HttpClient;
use crate::report::Table;
use crate::server::{Server, ServerOptions};
use crate::stats::{self, ms, sample_us};
use crate::ws::tcp_from;
use crate::Res;

/// The attacking address.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// The other address, whose requests are timed.
const BYSTANDER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// How often the bystander's GET is due.
const GET_PERIOD: Duration = Duration::from_millis(5);
/// How often the bystander's token request is due.
const TOKEN_PERIOD: Duration = Duration::from_millis(250);
/// How often the server's RSS is read.
const RSS_PERIOD: Duration = Duration::from_millis(100);
/// The bystander's GET p99 target.
const GET_P99_TARGET_US: u64 = 50_000;
/// The most the server's RSS may grow under head and slow-client attacks.
const RSS_GROWTH_TARGET_KIB: u64 = 64 * 1024;
/// Attacking threads (connections at once, for the slow clients).
const HEAD_THREADS: usize = 3;
const SLOW_CONNECTIONS: usize = 100;
const BCRYPT_THREADS: usize = 16;
/// Password rooms of the attacker's own, cycled through by the bcrypt flood.
const ATTACKER_ROOMS: usize = 8;
const PASSWORD: &str = "abuse-bench-password";

/// One way a single address tries to take the server.
#[derive(Debug, Clone, Copy)]
pub enum Attack {
    /// Endless request lines and endless header lines, on a few connections at once.
    HugeHeads,
    /// Connections that trickle a head or a body a byte a second.
    SlowClients,
    /// Right-password token requests for password rooms of its own, as fast as answered.
    BcryptFlood,
}

/// The attacks `make bench` runs, in order.
pub const ATTACKS: [Attack; 3] = [Attack::HugeHeads, Attack::SlowClients, Attack::BcryptFlood];

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::HugeHeads => "huge heads",
            Attack::SlowClients => "slow heads and bodies",
            Attack::BcryptFlood => "bcrypt flood",
        }
    }

    /// Whether the RSS target applies (SPEC: heads and slow clients cost bounded memory).
    fn rss_bounded(self) -> bool {
        !matches!(self, Attack::BcryptFlood)
    }
}

/// Runs every attack in [`ATTACKS`] for `seconds` each.
pub fn run(options: &ServerOptions, seconds: f64) -> Table {
    let mut table = Table::new(
        "13. Abuse from one address",
        format!(
            "Each attack comes from 127.0.0.1 for {seconds:.0} s against a fresh server at the default limits; \
             meanwhile 127.0.0.2 times GET /chats/1 every {} ms and a token request every {} ms.",
            GET_PERIOD.as_millis(),
            TOKEN_PERIOD.as_millis()
        ),
    );
    for attack in ATTACKS {
        if let Err(e) = measure(options, attack, seconds, &mut table) {
            table.failed(format!("{}: {e}", attack.name()));
        }
    }
    table
}

/// The default limits, which the bench's usual config turns off.
fn default_limits() -> serde_json::Map<String, serde_json::Value> {
    let limits = serde_json::json!({
        "max_http_connections_per_ip": 32,
        "bcrypt_per_ip": 2,
        "bcrypt_queue_len": 64,
        "token_attempts_per_minute": 10,
        "rooms_per_minute": 30,
    });
    limits.as_object().cloned().unwrap_or_default()
}

/// What the bystander saw of one kind of request: latencies (µs) and errors.
#[derive(Default)]
struct Seen {
    samples: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Seen {
    fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

fn measure(options: &ServerOptions, attack: Attack, seconds: f64, table: &mut Table) -> Res<()> {
    let server = Server::start_with(options, "abuse", &default_limits())?;
    let addr = server.http;
    let mut setup = HttpClient::new_from(addr, BYSTANDER);
    let room = setup.post(
        "/chats",
        &serde_json::json!({"title": "Bystander", "visibility": "private", "password": PASSWORD}),
    )?;
    let room_id = room.json()?["id"].as_u64().ok_or("no room id")?;
    let rooms = attacker_rooms(addr, attack)?;
    let baseline_kib = server.sample()?.rss_kib;
    let stop = Arc::new(AtomicBool::new(false));
    let attackers = attack_threads(attack, addr, &rooms, &stop);
    let bystander = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || bystand(addr, room_id, &stop))
    };
    let mut peak_kib = baseline_kib;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        thread::sleep(RSS_PERIOD);
        peak_kib = peak_kib.max(server.sample()?.rss_kib);
    }
    stop.store(true, Ordering::SeqCst);
    let (gets, tokens) = bystander.join().map_err(|_| "the bystander panicked")?;
    let attempts: u64 = attackers
        .into_iter()
        .map(|handle| handle.join().unwrap_or(0))
        .sum();
    let name = attack.name();
    let get_summary = stats::summarize(gets.samples.clone());
    let get_p99 = get_summary.as_ref().map_or(u64::MAX, |s| s.p99_us);
    table.check(
        &format!("{name}: 127.0.0.2 GET p99"),
        get_summary.map_or("no samples".into(), |s| {
            format!("{} ({} GETs)", ms(s.p99_us), s.count)
        }),
        "< 50 ms",
        get_p99 < GET_P99_TARGET_US,
    );
    table.info(
        &format!("{name}: 127.0.0.2 token p99"),
        stats::summarize(tokens.samples.clone()).map_or("no samples".into(), |s| {
            format!("{} ({} requests)", ms(s.p99_us), s.count)
        }),
    );
    let errors = gets.errors + tokens.errors;
    table.check(
        &format!("{name}: 127.0.0.2 errors"),
        match gets.first_error.or(tokens.first_error) {
            None => "0".into(),
            Some(first) => format!("{errors} (first: {first})"),
        },
        "0",
        errors == 0,
    );
    let growth = peak_kib.saturating_sub(baseline_kib);
    let rss = format!(
        "{} MiB peak, +{} MiB ({attempts} attacking requests or connections)",
        peak_kib / 1024,
        growth / 1024
    );
    if attack.rss_bounded() {
        table.check(
            &format!("{name}: server RSS"),
            rss,
            "+64 MiB at most",
            growth <= RSS_GROWTH_TARGET_KIB,
        );
    } else {
        table.info(&format!("{name}: server RSS"), rss);
    }
    server
        .logged()
        .note_as(table, &format!("the server ({name})"));
    server.stop();
    Ok(())
}

/// The bcrypt flood's password rooms, created by the attacker before it starts.
fn attacker_rooms(addr: SocketAddr, attack: Attack) -> Res<Vec<u64>> {
    if !matches!(attack, Attack::BcryptFlood) {
        return Ok(Vec::new());
    }
    let mut client = HttpClient::new_from(addr, ATTACKER);
    (0..ATTACKER_ROOMS)
        .map(|i| {
            let body = serde_json::json!({"title": format!("Mine {i}"), "visibility": "private", "password": PASSWORD});
            let created = client.post("/chats", &body)?;
            created.json()?["id"].as_u64().ok_or_else(|| "no room id".into())
        })
        .collect()
}

/// The bystander: a GET every [`GET_PERIOD`] and, on a thread of its own, a token request
/// every [`TOKEN_PERIOD`], each timed from when it was due, until `stop`. Returns what the
/// GETs saw and what the token requests saw.
fn bystand(addr: SocketAddr, room: u64, stop: &Arc<AtomicBool>) -> (Seen, Seen) {
    let token_stop = Arc::clone(stop);
    let tokens = thread::spawn(move || {
        let path = format!("/chats/{room}/token");
        let body = serde_json::json!({"name": "bea", "secret": PASSWORD});
        every(TOKEN_PERIOD, &token_stop, addr, |client| {
            client.post(&path, &body).map(|r| (r.status == 201, r))
        })
    });
    let gets = every(GET_PERIOD, stop, addr, |client| {
        client.get("/chats/1").map(|r| (r.status == 200, r))
    });
    let mut tokens = tokens.join().unwrap_or_default();
    if tokens.samples.is_empty() && tokens.errors == 0 {
        tokens.error("the token thread panicked or sent nothing".into());
    }
    (gets, tokens)
}

/// Sends `request` from the bystander's address every `period` until `stop`; the samples
/// are from when each was due, so a request held up delays the next ones and
/// they count the wait.
fn every(
    period: Duration,
    stop: &AtomicBool,
    addr: SocketAddr,
    mut request: impl FnMut(&mut HttpClient) -> Res<(bool, crate::http::Response)>,
) -> Seen {
    let mut seen = Seen::default();
    let mut client = HttpClient::new_from(addr, BYSTANDER);
    let mut due = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        match request(&mut client) {
            Ok((true, _)) => seen.samples.push(sample_us(due.elapsed())),
            Ok((false, r)) => seen.error(format!(
                "{}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )),
            Err(e) => seen.error(e.to_string()),
        }
        due += period;
    }
    seen
}

/// Starts the attack's threads; each returns how many requests or connections it made.
fn attack_threads(
    attack: Attack,
    addr: SocketAddr,
    rooms: &[u64],
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<u64>> {
    let count = match attack {
        Attack::HugeHeads => HEAD_THREADS,
        Attack::SlowClients => SLOW_CONNECTIONS,
        Attack::BcryptFlood => BCRYPT_THREADS,
    };
    (0..count)
        .map(|i| {
            let stop = Arc::clone(stop);
            let room = rooms.get(i % rooms.len().max(1)).copied();
            thread::spawn(move || {
                let mut made = 0;
                while !stop.load(Ordering::SeqCst) {
                    made += 1;
                    // A refused or cut-off attempt is what the server should do: go again.
                    let _ = match attack {
                        Attack::HugeHeads => huge_head(addr, i % 2 == 0, &stop),
                        Attack::SlowClients => {
                            let _ = slow_client(addr, i % 2 == 0, &stop);
                            // Refused past the per-address limit: a slow client, not a
                            // connection flood, so it waits before the next one.
                            thread::sleep(Duration::from_secs(1));
                            Ok(())
                        }
                        Attack::BcryptFlood => bcrypt_request(addr, room),
                    };
                }
                made
            })
        })
        .collect()
}

/// One connection sending an endless request line (`line`) or endless header lines, until
/// the server cuts it off or `stop`.
fn huge_head(addr: SocketAddr, line: bool, stop: &AtomicBool) -> Res<()> {
    let mut stream = tcp_from(ATTACKER, addr)?;
    let chunk: Vec<u8> = if line {
        stream.write_all(b"GET /")?;
        vec![b'a'; 64 * 1024]
    } else {
        stream.write_all(b"GET / HTTP/1.1\r\n")?;
        let header = format!("X-Filler: {}\r\n", "v".repeat(188));
        header.repeat(300).into_bytes()
    };
    while !stop.load(Ordering::SeqCst) {
        stream.write_all(&chunk)?;
    }
    Ok(())
}

/// One connection trickling a head (`head`) or a body, a byte a second, until the server
/// ends it or `stop`.
fn slow_client(addr: SocketAddr, head: bool, stop: &AtomicBool) -> Res<()> {
    let mut stream = tcp_from(ATTACKER, addr)?;
    stream.write_all(if head {
        b"GET /chats HTTP/1.1\r\nX-Slow: "
    } else {
        b"POST /chats/1/token HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"
    })?;
    while !stop.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_secs(1));
        stream.write_all(b" ")?;
    }
    Ok(())
}

/// One right-password token request for the attacker's room `room`.
fn bcrypt_request(addr: SocketAddr, room: Option<u64>) -> Res<()> {
    let room = room.ok_or("no room")?;
    let body = serde_json::json!({"name": "mal", "secret": PASSWORD}).to_string();
    let mut stream: TcpStream = tcp_from(ATTACKER, addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST /chats/{room}/token HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    std::io::copy(&mut stream, &mut std::io::sink())?;
    Ok(())
}
