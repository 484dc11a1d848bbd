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
//! The last attack fills the server with rooms: `max_rooms` (10,000) rooms, each with a
//! full history (`history_len`, 50, messages of 4,000 characters, the most a frame of
//! `max_message_bytes` holds). It runs to the end rather than for the run's seconds, with
//! `rooms_per_minute` and `msgs_per_second` off for that server (from one address at the
//! default rates it would take 5.5 hours, and what is measured is what the rooms cost), and
//! reports the RSS each room adds: the figure docs/limits.md states.
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
/// Rooms the hoarding attack creates (`max_rooms`), messages it keeps in each (`history_len`)
/// and the length of each message, and the threads it uses.
const HOARD_ROOMS: usize = 10_000;
const HOARD_MESSAGES: usize = 50;
const HOARD_MSG_CHARS: usize = 4_000;
const HOARD_THREADS: usize = 16;
/// The longest the hoarding attack may take.
const HOARD_DEADLINE: Duration = Duration::from_secs(600);
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
    /// `max_rooms` rooms, each with a full history of the longest messages.
    Hoard,
}

/// The attacks `make bench` runs, in order.
pub const ATTACKS: [Attack; 4] = [
    Attack::HugeHeads,
    Attack::SlowClients,
    Attack::BcryptFlood,
    Attack::Hoard,
];

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::HugeHeads => "huge heads",
            Attack::SlowClients => "slow heads and bodies",
            Attack::BcryptFlood => "bcrypt flood",
            Attack::Hoard => "10,000 rooms with full histories",
        }
    }

    /// Whether the RSS target applies (SPEC: heads and slow clients cost bounded memory).
    fn rss_bounded(self) -> bool {
        !matches!(self, Attack::BcryptFlood | Attack::Hoard)
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
    let mut limits = default_limits();
    if matches!(attack, Attack::Hoard) {
        // What the rooms cost is measured, not how long the rates make it take.
        limits.insert("rooms_per_minute".into(), 0.into());
        limits.insert("msgs_per_second".into(), 0.into());
    }
    let server = Server::start_with(options, "abuse", &limits)?;
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
    let attackers = attack_threads(attack, (addr, server.ws), &rooms, &stop);
    let bystander = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || bystand(addr, room_id, &stop))
    };
    let mut peak_kib = baseline_kib;
    let started = Instant::now();
    let (until, to_the_end) = match attack {
        Attack::Hoard => (started + HOARD_DEADLINE, true),
        _ => (started + Duration::from_secs_f64(seconds), false),
    };
    while Instant::now() < until && !(to_the_end && attackers.iter().all(|a| a.is_finished())) {
        thread::sleep(RSS_PERIOD);
        peak_kib = peak_kib.max(server.sample()?.rss_kib);
    }
    let took = started.elapsed();
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
    if matches!(attack, Attack::Hoard) {
        let after_kib = server.sample()?.rss_kib;
        let rooms = server_rooms(addr)?;
        table.info(
            &format!("{name}: rooms and RSS they added"),
            format!(
                "{rooms} rooms in {:.0} s; RSS {} MiB after, +{} MiB: {:.0} KiB a room",
                took.as_secs_f64(),
                after_kib / 1024,
                after_kib.saturating_sub(baseline_kib) / 1024,
                after_kib.saturating_sub(baseline_kib) as f64 / rooms.max(1) as f64
            ),
        );
    }
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

/// Starts the attack's threads, against the REST and WebSocket addresses; each returns how
/// many requests or connections it made.
fn attack_threads(
    attack: Attack,
    (addr, ws): (SocketAddr, SocketAddr),
    rooms: &[u64],
    stop: &Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<u64>> {
    let count = match attack {
        Attack::HugeHeads => HEAD_THREADS,
        Attack::SlowClients => SLOW_CONNECTIONS,
        Attack::BcryptFlood => BCRYPT_THREADS,
        Attack::Hoard => {
            return (0..HOARD_THREADS)
                .map(|i| {
                    let stop = Arc::clone(stop);
                    thread::spawn(move || {
                        hoard((addr, ws), i, &stop).unwrap_or_else(|e| {
                            eprintln!("abuse: hoarding thread {i}: {e}");
                            0
                        })
                    })
                })
                .collect()
        }
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
                        Attack::Hoard => Ok(()),
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

/// Thread `i`'s share of the hoard: rooms of its own, each filled with a full history by
/// one socket that joins, sends the messages and reads them back. Returns the messages
/// sent; stops early, with an error, when the server refuses (606 past `max_rooms`).
fn hoard((addr, ws): (SocketAddr, SocketAddr), i: usize, stop: &AtomicBool) -> Res<u64> {
    let mut client = HttpClient::new_from(addr, ATTACKER);
    let msg = "h".repeat(HOARD_MSG_CHARS);
    let frame = serde_json::json!({"event_type": "send", "msg": msg}).to_string();
    let mut sent = 0;
    for k in (i..HOARD_ROOMS).step_by(HOARD_THREADS) {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let body = serde_json::json!({"title": format!("Hoard {k}"), "visibility": "public"});
        let created = client.post("/chats", &body)?;
        if created.status != 201 {
            return Err(format!("room {k}: {}", created.status).into());
        }
        let room = created.json()?["id"].as_u64().ok_or("no room id")?;
        let mut socket = crate::ws::connect(ws, room)?;
        crate::ws::send_text(&mut socket, crate::ws::join_frame("hoarder"))?;
        for _ in 0..HOARD_MESSAGES {
            crate::ws::send_text(&mut socket, frame.clone())?;
        }
        let mut heard = 0;
        while heard < HOARD_MESSAGES {
            if let tungstenite::Message::Text(text) = socket.read()? {
                heard += usize::from(text.contains(r#""event_type":"send""#));
            }
        }
        let _ = socket.close(None);
        sent += HOARD_MESSAGES as u64;
    }
    Ok(sent)
}

/// How many rooms `GET /chats` lists.
fn server_rooms(addr: SocketAddr) -> Res<usize> {
    let mut client = HttpClient::new_from(addr, BYSTANDER);
    let rooms = client.get("/chats")?.json()?;
    Ok(rooms.as_array().map_or(0, Vec::len))
}
