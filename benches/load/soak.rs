//! Scenario 11, soak: 1,000 sockets chatting for ten minutes, with people coming and going,
//! at the server's default limits. Not part of `make bench`: `make soak` runs it.
//!
//! Shape: [`ROOMS`] public rooms of 50 sockets. In each, [`STAYERS`] "stayers" connect and
//! join before the clock starts and stay to the end, each sending one message every
//! [`STAYER_PERIOD`]; [`CHURNERS`] "churners" loop for the whole run: connect, join (await
//! the join event), stay 2 to 10 s sending 1 to 5 messages spread over the stay (each echo
//! awaited, reading everything else meanwhile), depart, pause 0.2 to 1 s. So about 950 of
//! the 1,000 sockets are open at any moment, and some 60 people come and go each second.
//! Departures take turns: `leave` then a close handshake; a close handshake without
//! `leave`; and vanishing (the TCP connection shut without a close frame), which the
//! server must notice and turn into a leave too. No socket sends more than 2.5 messages a
//! second (at most 4 frames in a churner's busiest second, its join included), well
//! under the default per-socket limit of 20 a second with a burst of 40 and under the
//! issue's 5, so a refusal (error event 603) is a server fault, not the scenario's.
//!
//! Client addresses: the server admits at most 100 sockets per client address
//! (`max_connections_per_ip`), and releases a slot only when a socket's thread has finished,
//! a moment after the client saw the close. So sockets are spread over [`ADDRESSES`] source
//! addresses, 127.0.0.2 to 127.0.0.21 (all of 127.0.0.0/8 is loopback on Linux; the
//! sockets are bound before they connect): each address carries 30 stayers and 20 churner
//! slots, 50 at most at once, half the limit, and every room has members from every
//! address. The 20 rooms are created from 127.0.0.1, under `rooms_per_minute` (30).
//!
//! Figures. Zero server errors: error events and unexpected closes on any socket, failed
//! or refused handshakes (a 503 is an HTTP 5xx), 5xx answers to the scenario's own
//! requests (`/healthz` every 10 s) and in `/metrics` when served, and lines logged at
//! `ERROR`. Delivery: every stayer must receive every message sent in its room, stayers'
//! and churners' alike (a stayer is joined for the whole time anyone sends), exactly once
//! and in each sender's order, tallied per sender by sequence number as in the fan-out
//! scenario; every stayer of a room must see one order. Memory: the server's RSS, threads
//! and descriptors every [`SAMPLE_PERIOD`], as a table; RSS is "flat" when its max - min
//! over the samples from the first minute on (a quarter of the run, for a run shorter than
//! four minutes) stays within [`RSS_SPREAD`] of the lowest. After the run every room must
//! list exactly its stayers (no ghost left by a churner that vanished), and once everyone
//! has gone the server's threads must come back to a fresh server's count.

use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{metric_sum, scrape_metrics, HttpClient};
use crate::report::{Series, Table};
use crate::server::{self, rss_groups, rss_growth, sample, CpuWindow, Server, ServerOptions};
use crate::stats::{self, micros_since, ms};
use crate::ws::{self, Counters, Crowd, Event, Socket, Tally};
use crate::Res;

/// How long the run lasts unless `--soak-seconds` says otherwise.
pub const SECONDS: f64 = 600.0;
/// Rooms.
const ROOMS: usize = 20;
/// Sockets per room that stay the whole run...
const STAYERS: usize = 30;
/// ...and that come and go.
const CHURNERS: usize = 20;
/// Source addresses the sockets are spread over, from 127.0.0.[`FIRST_ADDRESS`].
const ADDRESSES: usize = 20;
const FIRST_ADDRESS: u8 = 2;
/// The server's default `max_connections_per_ip`, which no address may come near.
const PER_IP_LIMIT: usize = 100;
/// Each stayer sends one message this often.
const STAYER_PERIOD: Duration = Duration::from_secs(1);
/// A churner's visit lasts from this many milliseconds...
const VISIT_MS: (u64, u64) = (2_000, 10_000);
/// ...and its pause before the next from this many.
const PAUSE_MS: (u64, u64) = (200, 1_000);
/// Messages a churner sends in one visit, spread evenly over it.
const VISIT_MESSAGES: (u64, u64) = (1, 5);
/// The ceiling on any socket's rate, messages a second; the server's is 20.
const MAX_RATE: f64 = 5.0;
/// How often the server's RSS, threads and descriptors are read.
const SAMPLE_PERIOD: Duration = Duration::from_secs(10);
/// RSS is judged from this far into the run (or a quarter of a shorter run)...
const SETTLE: Duration = Duration::from_secs(60);
/// ...and must stay within this share of its lowest value from then on.
const RSS_SPREAD: f64 = 0.05;
/// Limit on each step of a churner's visit.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the stayers may take to connect and join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// After the last send, how long deliveries may stall before the rest count as missing,
/// and how long they may trickle in at all.
const DRAIN_STALL: Duration = Duration::from_secs(5);
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// How long the rooms may take to list only their stayers, and the server to come back to
/// a fresh server's threads, once the churners (and then everyone) have gone.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Senders per room: stayers are senders `0..STAYERS`, churners `STAYERS..`.
const SENDERS: usize = STAYERS + CHURNERS;

/// Runs the scenario for `seconds`.
pub fn run(options: &ServerOptions, seconds: f64) -> Table {
    let mut table = Table::new(
        format!("11. Soak: {} sockets for {}", ROOMS * SENDERS, duration(seconds)),
        format!(
            "Default limits. {ROOMS} public rooms of {STAYERS} stayers (joined before the clock starts, there to the end, one message every {} s) \
             and {CHURNERS} churners (loop: connect, join, stay {} to {} s sending {} to {} messages, depart by leave + close / close / vanishing, pause {} to {} s). \
             Sockets are bound to {ADDRESSES} source addresses, 127.0.0.{FIRST_ADDRESS} to 127.0.0.{}, {} each at most (the server allows {PER_IP_LIMIT} per address). \
             Every stayer must receive every message sent in its room.",
            STAYER_PERIOD.as_secs(),
            VISIT_MS.0 / 1000,
            VISIT_MS.1 / 1000,
            VISIT_MESSAGES.0,
            VISIT_MESSAGES.1,
            PAUSE_MS.0 as f64 / 1000.0,
            PAUSE_MS.1 as f64 / 1000.0,
            usize::from(FIRST_ADDRESS) + ADDRESSES - 1,
            ROOMS * SENDERS / ADDRESSES,
        ),
    );
    if let Err(e) = measure(options, seconds, &mut table) {
        table.failed(e);
    }
    table
}

/// `600` s as `10 min`, `45` s as `45 s`.
fn duration(seconds: f64) -> String {
    if seconds >= 120.0 {
        format!("{:.0} min", seconds / 60.0)
    } else {
        format!("{seconds:.0} s")
    }
}

/// The source address of socket `slot` (room * 50 + place in the room).
fn source(slot: usize) -> IpAddr {
    let host = u8::try_from(slot % ADDRESSES).unwrap_or(0) + FIRST_ADDRESS;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
}

/// One reading of the server over time.
struct Reading {
    at: Duration,
    rss_kib: u64,
    threads: u64,
    descriptors: usize,
    /// Client sockets the generator had open.
    clients: usize,
    /// `/healthz` status (0: no answer).
    healthz: u16,
    load: String,
}

/// What one churner did.
#[derive(Default)]
struct Churned {
    visits: u64,
    /// Bench messages written, all visits together (its sender's numbers 0..sent).
    sent: u64,
    /// Visits that failed, by kind.
    refused_5xx: u64,
    error_events: u64,
    closed_by_server: u64,
    other_failures: u64,
    first_failures: Vec<String>,
}

/// How a visit failed.
enum Failure {
    /// The handshake was answered with a 5xx.
    Refused(String),
    /// An error event arrived.
    ErrorEvent(String),
    /// The server closed the socket.
    Closed(String),
    /// A timeout or an I/O error.
    Other(String),
}

impl From<ws::Unawaited> for Failure {
    fn from(unawaited: ws::Unawaited) -> Failure {
        match unawaited {
            ws::Unawaited::ErrorEvent(m) => Failure::ErrorEvent(m),
            ws::Unawaited::Closed(m) => Failure::Closed(m),
            ws::Unawaited::Other(m) => Failure::Other(m),
        }
    }
}

/// What every churner thread shares.
#[derive(Clone)]
struct Shared {
    ws: SocketAddr,
    epoch: Instant,
    end: Instant,
    per_sender: u32,
    /// Client sockets the churners have open now.
    open: Arc<AtomicUsize>,
}

fn measure(options: &ServerOptions, seconds: f64, table: &mut Table) -> Res<()> {
    let needed = (ROOMS * (3 * STAYERS + CHURNERS)) as u64 + 200;
    let (limit, _) = crate::scale::raise_open_files_limit();
    if limit < needed {
        return Err(format!(
            "the open-files limit is {limit}; the soak needs {needed} (`ulimit -n`)"
        )
        .into());
    }
    let server = Server::start(options, "soak")?;
    let rooms: Vec<u64> = (0..ROOMS)
        .map(|r| crate::create_room(server.http, &format!("Soak {}", r + 1), "public", None))
        .collect::<Res<_>>()?;
    thread::sleep(Duration::from_millis(300));
    let fresh = server.sample()?;
    let per_sender = (seconds * MAX_RATE).ceil() as usize + 64;

    // The stayers, room by room: tally index i is room i / STAYERS, sender i % STAYERS.
    let joining = Instant::now();
    let mut crowd = Crowd::new(SENDERS, per_sender);
    let mut writers: Vec<Vec<Socket>> = (0..ROOMS).map(|_| Vec::new()).collect();
    for (r, room) in rooms.iter().enumerate() {
        for j in 0..STAYERS {
            let from = Some(source(r * SENDERS + j));
            let writer = crowd
                .join_from(server.ws, *room, format!("s{r}-{j}"), true, from)
                .map_err(|e| format!("stayer {j} of room {}: {e}", r + 1))?;
            writers[r].extend(writer);
        }
    }
    let counters = Arc::clone(&crowd.counters);
    let stayers = ROOMS * STAYERS;
    if !ws::wait_until(JOIN_TIMEOUT, || {
        counters.acked.load(Ordering::SeqCst) == stayers
    }) {
        let acked = counters.acked.load(Ordering::SeqCst);
        crowd.finish();
        return Err(
            format!("only {acked} of {stayers} stayers joined within {JOIN_TIMEOUT:?}").into(),
        );
    }
    let join_time = joining.elapsed();

    let load_before = server::load_average();
    let window = CpuWindow::start(&server)?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let shared = Shared {
        ws: server.ws,
        epoch: counters.epoch,
        end,
        per_sender: u32::try_from(per_sender).unwrap_or(u32::MAX),
        open: Arc::new(AtomicUsize::new(0)),
    };
    let done = Arc::new(AtomicBool::new(false));
    let readings = Arc::new(Mutex::new(Vec::new()));
    let settle = SETTLE.min(Duration::from_secs_f64(seconds / 4.0));
    let sampler = {
        let (done, readings, open) = (
            Arc::clone(&done),
            Arc::clone(&readings),
            Arc::clone(&shared.open),
        );
        let (pid, http, counters) = (server.pid, server.http, Arc::clone(&counters));
        thread::spawn(move || {
            let mut due = t0;
            let mut settled_groups = None;
            // Readings at 0, 10, 20 s ... up to the end of the run (the last as the
            // churners stop): the curve, and the RSS verdict, cover the run itself.
            while due <= end && !done.load(Ordering::SeqCst) {
                if settled_groups.is_none() && t0.elapsed() >= settle {
                    settled_groups = rss_groups(pid).ok();
                }
                let clients = stayers - counters.lost.load(Ordering::SeqCst).min(stayers)
                    + open.load(Ordering::SeqCst);
                if let Ok(reading) = read_server(pid, http, t0, clients) {
                    if let Ok(mut readings) = readings.lock() {
                        readings.push(reading);
                    }
                }
                due += SAMPLE_PERIOD;
                while Instant::now() < due && !done.load(Ordering::SeqCst) {
                    thread::sleep(Duration::from_millis(100));
                }
            }
            settled_groups
        })
    };

    let schedulers: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(r, room_writers)| {
            let (epoch, start) = (
                shared.epoch,
                t0 + STAYER_PERIOD.mul_f64(r as f64 / ROOMS as f64),
            );
            thread::Builder::new()
                .name(format!("stayers{r}"))
                .stack_size(ws::MEMBER_STACK_BYTES)
                .spawn(move || send_for_stayers(room_writers, start, end, epoch))
        })
        .collect::<Result<_, _>>()?;
    let churners: Vec<_> = (0..ROOMS * CHURNERS)
        .map(|c| {
            let (r, k) = (c / CHURNERS, c % CHURNERS);
            let (shared, room) = (shared.clone(), rooms[r]);
            thread::Builder::new()
                .name(format!("churner{r}-{k}"))
                .stack_size(ws::MEMBER_STACK_BYTES)
                .spawn(move || churn(&shared, room, r, k))
        })
        .collect::<Result<_, _>>()?;

    // sent[r][s]: messages sender s of room r wrote.
    let mut sent = vec![vec![0u64; SENDERS]; ROOMS];
    let mut stayer_failures: Vec<String> = Vec::new();
    for (r, handle) in schedulers.into_iter().enumerate() {
        let (counts, failure) = handle.join().map_err(|_| "a stayers' sender panicked")?;
        sent[r][..STAYERS].copy_from_slice(&counts);
        stayer_failures.extend(failure);
    }
    let mut churned = Vec::new();
    for (c, handle) in churners.into_iter().enumerate() {
        let one: Churned = handle.join().map_err(|_| "a churner panicked")?;
        sent[c / CHURNERS][STAYERS + c % CHURNERS] = one.sent;
        churned.push(one);
    }
    let sending_ended = t0.elapsed();
    let expected: u64 = sent
        .iter()
        .map(|room| room.iter().sum::<u64>() * STAYERS as u64)
        .sum();
    drain(&counters, expected);
    let (cpu, _) = window.finish(&server)?;
    let listed = wait_for_listings(server.http, &rooms);
    let metrics = scrape_metrics(server.http).ok().flatten();
    let logged = server.logged();
    let load_after = server::load_average();
    done.store(true, Ordering::SeqCst);
    let settled_groups = sampler.join().map_err(|_| "the sampler panicked")?;
    let growth =
        settled_groups.map(|before| rss_groups(server.pid).map(|now| rss_growth(&before, &now, 3)));
    let readings = std::mem::take(&mut *readings.lock().map_err(|_| "readings lock poisoned")?);

    let tallies = crowd.finish();
    let settling = Instant::now();
    let mut after = server.sample()?;
    while after.threads > fresh.threads && settling.elapsed() < SETTLE_LIMIT {
        thread::sleep(Duration::from_millis(100));
        after = server.sample()?;
    }
    let clean_exit = server.stop();

    table.info(
        "stayers connected and joined in",
        format!("{:.1} s", join_time.as_secs_f64()),
    );
    table.info(
        "run (sending) lasted",
        format!("{:.0} s", sending_ended.as_secs_f64()),
    );
    report_errors(
        table,
        &tallies,
        &churned,
        &stayer_failures,
        &readings,
        metrics.as_deref(),
        &logged,
    );
    report_delivery(table, &tallies, &sent, expected);
    table.check(
        "users listed per room after the churners left",
        listed
            .clone()
            .map_or_else(|e| e, |counts| summarize_counts(&counts)),
        &format!("{STAYERS} in each of {ROOMS}"),
        listed.is_ok_and(|counts| counts.iter().all(|n| *n == STAYERS)),
    );
    report_memory(table, &readings, fresh, settle);
    if let Some(growth) = growth {
        let figure = format!(
            "where RSS grew from {} s on (mappings x size: RSS)",
            settle.as_secs()
        );
        table.info(&figure, growth?);
    }
    table.check(
        "server threads after everyone left",
        format!("{} (fresh server: {})", after.threads, fresh.threads),
        &format!("<= {}", fresh.threads),
        after.threads <= fresh.threads,
    );
    table.info("server RSS after everyone left", stats::kib(after.rss_kib));
    table.check(
        "server exit on SIGTERM",
        if clean_exit { "status 0" } else { "not clean" },
        "status 0",
        clean_exit,
    );
    cpu.report(table);
    table.info(
        "load average at start / end",
        format!("{load_before} / {load_after}"),
    );
    table.series(curve(&readings));
    logged.note(table);
    Ok(())
}

/// Reads the server's RSS, threads and descriptors, and asks `/healthz`.
fn read_server(pid: u32, http: SocketAddr, t0: Instant, clients: usize) -> Res<Reading> {
    let at = t0.elapsed();
    let now = sample(pid)?;
    let descriptors = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let healthz = HttpClient::new(http)
        .get("/healthz")
        .map_or(0, |r| r.status);
    Ok(Reading {
        at,
        rss_kib: now.rss_kib,
        threads: now.threads,
        descriptors,
        clients,
        healthz,
        load: server::load_average(),
    })
}

/// Sends the stayers' messages: `writers[j]` sends one every [`STAYER_PERIOD`], the
/// stayers spread evenly over it, from `start` until `end`; message i of stayer j is
/// stamped with its due time. Returns what each wrote, and the first write failure.
fn send_for_stayers(
    mut writers: Vec<Socket>,
    start: Instant,
    end: Instant,
    epoch: Instant,
) -> (Vec<u64>, Option<String>) {
    let n = writers.len().max(1);
    let step = STAYER_PERIOD / u32::try_from(n).unwrap_or(u32::MAX);
    let mut counts = vec![0u64; writers.len()];
    let mut failed = vec![false; writers.len()];
    let mut failure = None;
    for k in 0u32.. {
        let due = start + step * k;
        if due >= end {
            break;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        let j = k as usize % n;
        let (Some(writer), Some(count)) = (writers.get_mut(j), counts.get_mut(j)) else {
            break;
        };
        if failed[j] {
            continue;
        }
        let due_us = u64::try_from(due.duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
        let seq = u32::try_from(*count).unwrap_or(u32::MAX);
        match ws::send_text(
            writer,
            ws::bench_frame(u32::try_from(j).unwrap_or(0), seq, due_us),
        ) {
            Ok(()) => *count += 1,
            Err(e) => {
                failed[j] = true;
                failure.get_or_insert_with(|| format!("stayer sender {j}: {e}"));
            }
        }
    }
    (counts, failure)
}

/// A number from `range.0` to `range.1` (inclusive), the same for the same `seed` and
/// well spread over seeds (splitmix64), so each churner and visit differ and a rerun repeats.
fn pick(seed: u64, range: (u64, u64)) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    range.0 + z % (range.1 - range.0 + 1)
}

/// What one visit does: how long it stays, how many messages it sends, how it departs.
struct Visit {
    stay: Duration,
    messages: u64,
    /// 0: `leave` and a close handshake; 1: a close handshake; 2: vanish.
    departure: u64,
}

/// One churner's loop of visits until the run ends.
fn churn(shared: &Shared, room: u64, r: usize, k: usize) -> Churned {
    let slot = r * SENDERS + STAYERS + k;
    let from = source(slot);
    let sender = u32::try_from(STAYERS + k).unwrap_or(0);
    let mut churned = Churned::default();
    // Staggered starts, so the churners do not all connect in the same second.
    thread::sleep(Duration::from_millis(pick(slot as u64, (0, VISIT_MS.1))));
    let mut visit = 0u64;
    while Instant::now() < shared.end {
        let seed = (slot as u64) << 32 | visit;
        let plan = Visit {
            stay: Duration::from_millis(pick(seed, VISIT_MS)),
            messages: pick(seed ^ 1, VISIT_MESSAGES),
            departure: visit % 3,
        };
        shared.open.fetch_add(1, Ordering::SeqCst);
        let name = format!("c{r}-{k}-{visit}");
        let result = one_visit(shared, room, from, &name, sender, &plan, &mut churned.sent);
        shared.open.fetch_sub(1, Ordering::SeqCst);
        churned.visits += 1;
        if let Err(failure) = result {
            let (counter, what) = match failure {
                Failure::Refused(what) => (&mut churned.refused_5xx, what),
                Failure::ErrorEvent(what) => (&mut churned.error_events, what),
                Failure::Closed(what) => (&mut churned.closed_by_server, what),
                Failure::Other(what) => (&mut churned.other_failures, what),
            };
            *counter += 1;
            if churned.first_failures.len() < 2 {
                churned
                    .first_failures
                    .push(format!("{from}, visit {visit}: {what}"));
            }
        }
        thread::sleep(Duration::from_millis(pick(seed ^ 2, PAUSE_MS)));
        visit += 1;
    }
    churned
}

/// One visit: connect from `from`, join as `name`, stay as `plan` says sending bench
/// messages as `sender` (numbered on from `*sent`, each echo awaited) and reading all
/// else, then depart.
fn one_visit(
    shared: &Shared,
    room: u64,
    from: IpAddr,
    name: &str,
    sender: u32,
    plan: &Visit,
    sent: &mut u64,
) -> Result<(), Failure> {
    let other = |e: &dyn std::fmt::Display| Failure::Other(e.to_string());
    let mut socket = ws::connect_from(shared.ws, room, Some(from)).map_err(|e| {
        let text = e.to_string();
        if text.contains("HTTP error: 5") {
            Failure::Refused(text)
        } else {
            Failure::Other(format!("connect: {text}"))
        }
    })?;
    socket
        .get_ref()
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| other(&e))?;
    ws::send_text(&mut socket, ws::join_frame(name)).map_err(|e| other(&e))?;
    ws::await_event(
        &mut socket,
        "own join",
        |e| matches!(e, Event::Join { name: n } if n == name),
    )?;
    let joined = Instant::now();
    let spacing = plan.stay / u32::try_from(plan.messages.max(1)).unwrap_or(1);
    // A visit under way when the run ends is cut short: no message is due after the end.
    let leaving = (joined + plan.stay).min(shared.end);
    for i in 0..plan.messages {
        let seq = u32::try_from(*sent).unwrap_or(u32::MAX);
        let due = joined + spacing * u32::try_from(i).unwrap_or(0);
        if seq >= shared.per_sender || due >= leaving {
            break;
        }
        read_until(&mut socket, due)?;
        let frame = ws::bench_frame(sender, seq, micros_since(shared.epoch));
        ws::send_text(&mut socket, frame).map_err(|e| other(&e))?;
        *sent += 1;
        ws::await_event(
            &mut socket,
            "own message",
            |e| matches!(e, Event::Bench { sender: s, seq: q, .. } if *s == sender && *q == seq),
        )?;
    }
    read_until(&mut socket, leaving)?;
    match plan.departure {
        0 | 1 => {
            if plan.departure == 0 {
                let leave = serde_json::json!({"event_type": "leave"}).to_string();
                ws::send_text(&mut socket, leave).map_err(|e| other(&e))?;
            }
            socket.close(None).map_err(|e| other(&e))?;
            // Read until the server answers the close (tungstenite then reports
            // ConnectionClosed); an error event on the way is a failure.
            loop {
                match socket.read() {
                    Ok(tungstenite::Message::Text(text)) => {
                        if let Event::Error(error) = ws::parse_event(&text) {
                            return Err(Failure::ErrorEvent(format!("while leaving: {error}")));
                        }
                    }
                    Ok(_) => {}
                    Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
                    Err(e) => return Err(Failure::Other(format!("awaiting the close frame: {e}"))),
                }
            }
        }
        _ => {
            // Vanish: no leave, no close frame; the server must notice the dead socket.
            let _ = socket.get_ref().shutdown(Shutdown::Both);
            Ok(())
        }
    }
}

/// Reads (and drops) events until `deadline`, so the server never finds this socket
/// slow; an error event or a close is a failure. A read that times out is resumed by
/// tungstenite where it stopped, so no frame is lost to the timeout.
fn read_until(socket: &mut Socket, deadline: Instant) -> Result<(), Failure> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let set = socket
            .get_ref()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))));
        set.map_err(|e| Failure::Other(e.to_string()))?;
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                if let Event::Error(error) = ws::parse_event(&text) {
                    return Err(Failure::ErrorEvent(format!("while staying: {error}")));
                }
            }
            Ok(tungstenite::Message::Close(frame)) => {
                return Err(Failure::Closed(format!("while staying: {frame:?}")))
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(Failure::Other(format!("while staying: {e}"))),
        }
    }
    socket
        .get_ref()
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| Failure::Other(e.to_string()))
}

/// Waits until the stayers have `expected` deliveries, or they stall for [`DRAIN_STALL`],
/// or [`DRAIN_LIMIT`] passes.
fn drain(counters: &Counters, expected: u64) {
    let (mut last, mut last_change, draining) = (0, Instant::now(), Instant::now());
    while draining.elapsed() < DRAIN_LIMIT {
        let delivered = counters.delivered.load(Ordering::Relaxed);
        if delivered >= expected {
            return;
        }
        if delivered != last {
            (last, last_change) = (delivered, Instant::now());
        } else if last_change.elapsed() >= DRAIN_STALL {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Users each room lists, once every room lists only its stayers or [`SETTLE_LIMIT`]
/// passes (a vanished churner is noticed when its socket's read fails).
fn wait_for_listings(http: SocketAddr, rooms: &[u64]) -> Result<Vec<usize>, String> {
    let started = Instant::now();
    loop {
        let counts = rooms
            .iter()
            .map(|room| crate::listed_users(http, *room))
            .collect::<Res<Vec<usize>>>()
            .map_err(|e| e.to_string())?;
        if counts.iter().all(|n| *n == STAYERS) || started.elapsed() >= SETTLE_LIMIT {
            return Ok(counts);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `30 in 19 rooms, 31 in 1`.
fn summarize_counts(counts: &[usize]) -> String {
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    sorted
        .chunk_by(|a, b| a == b)
        .map(|chunk| format!("{} in {}", chunk[0], chunk.len()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows on server errors of every kind.
fn report_errors(
    table: &mut Table,
    tallies: &[Tally],
    churned: &[Churned],
    stayer_failures: &[String],
    readings: &[Reading],
    metrics: Option<&[(String, f64)]>,
    logged: &server::Logged,
) {
    let visits: u64 = churned.iter().map(|c| c.visits).sum();
    let sum = |f: fn(&Churned) -> u64| churned.iter().map(f).sum::<u64>();
    let stayer_errors = tallies.iter().filter(|t| t.error.is_some()).count() as u64;
    let stayer_closed = tallies
        .iter()
        .filter(|t| t.closed_by_server.is_some() && !t.closed_at_teardown)
        .count() as u64;
    table.info(
        "churner visits",
        format!(
            "{} ({}/s)",
            stats::count(visits),
            stats::rate(
                visits as f64 / readings.last().map_or(1.0, |r| r.at.as_secs_f64().max(1.0))
            )
        ),
    );
    let error_events = sum(|c| c.error_events);
    let closes = sum(|c| c.closed_by_server) + stayer_closed;
    let failures = sum(|c| c.other_failures) + stayer_failures.len() as u64;
    table.check(
        "error events, or stayers failing (read error, error event)",
        format!(
            "{} (churners {error_events}, stayers {stayer_errors})",
            stats::count(error_events + stayer_errors)
        ),
        "0",
        error_events + stayer_errors == 0,
    );
    table.check(
        "sockets closed by the server unexpectedly",
        stats::count(closes),
        "0",
        closes == 0,
    );
    table.check(
        "other failed visits or sends (timeouts, I/O)",
        stats::count(failures),
        "0",
        failures == 0,
    );
    let refused = sum(|c| c.refused_5xx);
    let healthz_bad = readings.iter().filter(|r| r.healthz != 200).count() as u64;
    let served_5xx = metrics.map(|m| {
        m.iter()
            .filter(|(series, _)| {
                series.starts_with("chitchat_http_responses_total") && series.contains("status=\"5")
            })
            .map(|(_, v)| *v)
            .sum::<f64>()
    });
    let total_5xx = refused + healthz_bad + served_5xx.map_or(0, |v| v as u64);
    table.check(
        "HTTP 5xx: handshakes refused / /healthz not 200 / counted in /metrics",
        format!(
            "{refused} / {healthz_bad} / {}",
            served_5xx.map_or("not served".into(), |v| format!("{v}"))
        ),
        "0",
        total_5xx == 0,
    );
    match metrics {
        Some(m) => {
            let refusals = metric_sum(m, "chitchat_limit_refusals_total", "");
            table.check(
                "limit refusals counted in /metrics",
                format!("{refusals}"),
                "0 (no limit refuses a well-behaved client)",
                refusals == 0.0,
            );
            let closed: Vec<String> = m
                .iter()
                .filter(|(s, v)| s.starts_with("chitchat_sockets_closed_total") && *v > 0.0)
                .map(|(s, v)| {
                    format!(
                        "{} {v}",
                        s.trim_start_matches("chitchat_sockets_closed_total")
                    )
                })
                .collect();
            table.info("sockets closed by reason (/metrics)", closed.join("; "));
        }
        None => table.info(
            "limit refusals counted in /metrics",
            "not served by this server",
        ),
    }
    table.check(
        "server log lines at ERROR",
        stats::count(logged.errors as u64),
        "0",
        logged.errors == 0,
    );
    table.info(
        "server log lines at WARN",
        stats::count(logged.warnings as u64),
    );
    let firsts: Vec<&String> = churned
        .iter()
        .flat_map(|c| c.first_failures.iter())
        .chain(stayer_failures)
        .chain(tallies.iter().filter_map(|t| t.error.as_ref()))
        .take(3)
        .collect();
    if !firsts.is_empty() {
        table.note(format!("First failures: {firsts:?}"));
    }
}

/// The rows on what reached the stayers.
fn report_delivery(table: &mut Table, tallies: &[Tally], sent: &[Vec<u64>], expected: u64) {
    let sent_by = |range: std::ops::Range<usize>| -> u64 {
        sent.iter()
            .map(|room| room[range.clone()].iter().sum::<u64>())
            .sum()
    };
    table.info(
        "messages sent: by stayers / by churners",
        format!(
            "{} / {}",
            stats::count(sent_by(0..STAYERS)),
            stats::count(sent_by(STAYERS..SENDERS))
        ),
    );
    table.info(
        "expected deliveries to stayers (every message of their room)",
        stats::count(expected),
    );
    let (mut missing, mut complete) = (0u64, 0usize);
    let mut one_order_rooms = 0;
    for (r, room_tallies) in tallies.chunks(STAYERS).enumerate() {
        let mut orders = std::collections::HashSet::new();
        for tally in room_tallies {
            let short: u64 = (0..SENDERS)
                .map(|s| sent[r][s].saturating_sub(tally.from.get(s).map_or(0, |f| f.distinct)))
                .sum();
            missing += short;
            if short == 0 && tally.duplicates == 0 {
                complete += 1;
                orders.insert(tally.order_hash);
            }
        }
        if orders.len() == 1
            && room_tallies.len() == STAYERS
            && room_tallies.iter().all(|t| t.duplicates == 0)
        {
            one_order_rooms += 1;
        }
    }
    let duplicates: u64 = tallies.iter().map(|t| t.duplicates + t.unexpected).sum();
    let out_of_order: u64 = tallies.iter().map(|t| t.out_of_order).sum();
    table.check(
        "missing deliveries to stayers",
        stats::count(missing),
        "0",
        missing == 0,
    );
    table.check("duplicates", stats::count(duplicates), "0", duplicates == 0);
    table.check(
        "out of order (per sender)",
        stats::count(out_of_order),
        "0",
        out_of_order == 0,
    );
    table.check(
        "stayers that got every message / rooms whose stayers saw one order",
        format!(
            "{complete} of {} / {one_order_rooms} of {ROOMS}",
            tallies.len()
        ),
        "all / all",
        complete == tallies.len() && one_order_rooms == ROOMS,
    );
    let latencies: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.from.iter().flat_map(|f| f.latencies.iter().copied()))
        .collect();
    match stats::summarize(latencies).filter(|_| missing == 0) {
        Some(s) => table.info(
            "latency to stayers p50 / p99 / max",
            format!("{} / {} / {}", ms(s.p50_us), ms(s.p99_us), ms(s.max_us)),
        ),
        None => table.info(
            "latency to stayers p50 / p99 / max",
            format!("withheld: {missing} deliveries missing"),
        ),
    }
}

/// The rows on memory over time: the verdict on RSS from `settle` on, and the ranges.
fn report_memory(
    table: &mut Table,
    readings: &[Reading],
    fresh: server::ProcSample,
    settle: Duration,
) {
    let settled: Vec<&Reading> = readings.iter().filter(|r| r.at >= settle).collect();
    table.info(
        "fresh server: RSS, threads",
        format!("{}, {}", stats::kib(fresh.rss_kib), fresh.threads),
    );
    let (Some(low), Some(high)) = (
        settled.iter().map(|r| r.rss_kib).min(),
        settled.iter().map(|r| r.rss_kib).max(),
    ) else {
        table.check("RSS flat after the first minute", "no readings", "", false);
        return;
    };
    let spread = (high - low) as f64 / low.max(1) as f64;
    table.check(
        &format!("RSS from {} s on: min / max (spread)", settle.as_secs()),
        format!(
            "{:.1} / {:.1} MiB ({:.1} %)",
            low as f64 / 1024.0,
            high as f64 / 1024.0,
            100.0 * spread
        ),
        &format!("spread <= {:.0} % of min", 100.0 * RSS_SPREAD),
        spread <= RSS_SPREAD,
    );
    table.info(
        "RSS trend from then on (least squares)",
        format!("{:+.2} MiB/min", slope_mib_per_min(&settled)),
    );
    let range = |f: fn(&Reading) -> u64| {
        let values: Vec<u64> = settled.iter().map(|r| f(r)).collect();
        format!(
            "{} to {}",
            values.iter().min().unwrap_or(&0),
            values.iter().max().unwrap_or(&0)
        )
    };
    table.info(
        &format!("threads / descriptors from {} s on", settle.as_secs()),
        format!(
            "{} / {}",
            range(|r| r.threads),
            range(|r| r.descriptors as u64)
        ),
    );
}

/// The slope of RSS over time, MiB a minute, fitted by least squares.
fn slope_mib_per_min(readings: &[&Reading]) -> f64 {
    let n = readings.len() as f64;
    if readings.len() < 2 {
        return 0.0;
    }
    let xs: Vec<f64> = readings.iter().map(|r| r.at.as_secs_f64() / 60.0).collect();
    let ys: Vec<f64> = readings.iter().map(|r| r.rss_kib as f64 / 1024.0).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let num: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let den: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// The readings as a table.
fn curve(readings: &[Reading]) -> Series {
    Series {
        caption: format!(
            "The server every {} s (t from the start of the run; sockets = client sockets the generator had open; load = 1-minute load average):",
            SAMPLE_PERIOD.as_secs()
        ),
        headers: ["t (s)", "RSS (MiB)", "threads", "fds", "sockets", "/healthz", "load"]
            .map(String::from)
            .to_vec(),
        rows: readings
            .iter()
            .map(|r| {
                vec![
                    format!("{:.0}", r.at.as_secs_f64()),
                    format!("{:.1}", r.rss_kib as f64 / 1024.0),
                    r.threads.to_string(),
                    r.descriptors.to_string(),
                    r.clients.to_string(),
                    r.healthz.to_string(),
                    r.load.split_whitespace().next().unwrap_or("").to_string(),
                ]
            })
            .collect(),
    }
}
