//! Scenario 2, fan-out: many sockets in one room, a few of them sending on a schedule.
//!
//! All subscribers join one fresh public room, each read by its own thread (see `ws.rs`).
//! The first [`SENDERS`] subscribers also send: together `rate` messages a second, each
//! sender on its own fixed schedule (message `i` is due at `t0 + offset + i * period`),
//! so a sender that falls behind catches up instead of drifting, and its lateness is
//! reported. Every subscriber, senders included, must receive every message exactly once
//! and in order (SPEC: the sender is included; one order for the whole room).
//!
//! Latency is measured from a message's *scheduled* send time to its arrival, so a sender
//! held up by a busy machine shows up as latency rather than hiding it. No latency is
//! reported when any delivery is missing.
//!
//! The run starts only after every join has reached every socket (n(n+1)/2 join events),
//! so the join storm does not land inside the measured window.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::report::Table;
use crate::server::{CpuWindow, Server, ServerOptions};
use crate::stats::{self, ms};
use crate::ws::{self, wait_until, Crowd, Socket, Tally};
use crate::Res;

/// One fan-out configuration.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Sockets joined to the room.
    pub subscribers: usize,
    /// Messages per second, all senders together.
    pub rate: u32,
    /// p99 target, µs, where the issue sets one.
    pub p99_target_us: Option<u64>,
}

/// The configurations the issue asks for.
pub const SHAPES: [Shape; 4] = [
    Shape {
        subscribers: 100,
        rate: 200,
        p99_target_us: None,
    },
    Shape {
        subscribers: 500,
        rate: 200,
        p99_target_us: Some(10_000),
    },
    Shape {
        subscribers: 500,
        rate: 1_000,
        p99_target_us: Some(50_000),
    },
    Shape {
        subscribers: 2_000,
        rate: 50,
        p99_target_us: None,
    },
];

impl Shape {
    /// `500x200`: 500 subscribers, 200 messages/s; the target is the when the shape
    /// is one of [`SHAPES`].
    pub fn parse(name: &str) -> Option<Shape> {
        let (subscribers, rate) = name.split_once('x')?;
        let (subscribers, rate) = (subscribers.parse().ok()?, rate.parse().ok()?);
        let known = SHAPES
            .iter()
            .find(|s| s.subscribers == subscribers && s.rate == rate);
        let p99_target_us = known.and_then(|s| s.p99_target_us);
        (subscribers > 0 && rate > 0).then_some(Shape {
            subscribers,
            rate,
            p99_target_us,
        })
    }
}

/// Subscribers that also send.
pub const SENDERS: usize = 4;
/// How long the whole room may take to join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// After the last send, how long deliveries may stall before the rest count as missing...
const DRAIN_STALL: Duration = Duration::from_secs(3);
/// ...and how long they may trickle in at all.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Runs one configuration.
pub fn run(options: &ServerOptions, shape: &Shape, seconds: f64) -> Table {
    let senders = SENDERS.min(shape.subscribers);
    let mut table = Table::new(
        format!("2. Fan-out, {} subscribers x {} messages/s", stats::count(shape.subscribers as u64), stats::count(u64::from(shape.rate))),
        format!(
            "One public room, {} sockets joined, each read by its own thread; {senders} of them also send, together {} messages/s on a fixed schedule for {seconds:.0} s. \
             Latency runs from a message's scheduled send time to its arrival at a subscriber.",
            stats::count(shape.subscribers as u64),
            stats::count(u64::from(shape.rate)),
        ),
    );
    if let Err(e) = measure(options, shape, senders, seconds, &mut table) {
        table.failed(e);
    }
    table
}

/// What one sender did.
#[derive(Default)]
struct Sent {
    count: u64,
    max_late_us: u64,
    error: Option<String>,
}

fn measure(
    options: &ServerOptions,
    shape: &Shape,
    senders: usize,
    seconds: f64,
    table: &mut Table,
) -> Res<()> {
    let n = shape.subscribers;
    let server = Server::start(options, &format!("fanout-{}x{}", n, shape.rate))?;
    let room = crate::create_room(
        server.http,
        &format!("Fan-out {}x{}", n, shape.rate),
        "public",
        None,
    )?;
    let per_sender = (seconds * f64::from(shape.rate) / senders as f64).floor() as usize;
    let mut crowd = Crowd::new(senders, per_sender);
    let counters = std::sync::Arc::clone(&crowd.counters);

    let joining = Instant::now();
    let mut writers: Vec<Socket> = Vec::new();
    let opened = (0..n).try_for_each(|i| -> Res<()> {
        writers.extend(crowd.join(server.ws, room, format!("s{i}"), i < senders)?);
        Ok(())
    });
    let joins_expected = (n as u64) * (n as u64 + 1) / 2;
    let joined = opened.is_ok()
        && wait_until(JOIN_TIMEOUT, || {
            counters.acked.load(Ordering::SeqCst) == n
                && counters.joins_seen.load(Ordering::Relaxed) >= joins_expected
        });
    let join_time = joining.elapsed();
    if let Err(e) = opened {
        let opened = crowd.len();
        crowd.finish();
        return Err(format!("opening socket {} of {n}: {e}", opened + 1).into());
    }
    if !joined {
        let tallies = crowd.finish();
        let acked = counters.acked.load(Ordering::SeqCst);
        let seen = counters.joins_seen.load(Ordering::Relaxed);
        let closed = tallies
            .iter()
            .filter(|t| t.closed_by_server.is_some())
            .count();
        return Err(format!(
            "room not joined within {JOIN_TIMEOUT:?}: {acked}/{n} joins acknowledged, {seen}/{joins_expected} join events delivered, {closed} sockets closed by the server"
        )
        .into());
    }

    // The schedule: sender j's message i is due at t0 + j * period / senders + i * period.
    let period = Duration::from_secs_f64(senders as f64 / f64::from(shape.rate));
    let listed_before = crate::listed_users(server.http, room)?;
    let window = CpuWindow::start(&server)?;
    let t0 = Instant::now() + Duration::from_millis(100);
    let epoch = counters.epoch;
    let t0_us = u64::try_from(t0.duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
    let handles: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(j, writer)| {
            let start = t0 + period.mul_f64(j as f64 / senders as f64);
            let sender = u32::try_from(j).unwrap_or(u32::MAX);
            thread::Builder::new()
                .name(format!("sender{j}"))
                .stack_size(ws::MEMBER_STACK_BYTES)
                .spawn(move || send_on_schedule(writer, sender, start, period, per_sender, epoch))
        })
        .collect::<Result<_, _>>()?;
    let sent: Vec<Sent> = handles
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    let sent_total: u64 = sent.iter().map(|s| s.count).sum();
    let expected = sent_total * n as u64;

    // Drain: wait until everything arrived, or until deliveries stall.
    let (mut last, mut last_change, draining) = (0, Instant::now(), Instant::now());
    while draining.elapsed() < DRAIN_LIMIT {
        let delivered = counters.delivered.load(Ordering::Relaxed);
        if delivered >= expected {
            break;
        }
        if delivered != last {
            (last, last_change) = (delivered, Instant::now());
        } else if last_change.elapsed() >= DRAIN_STALL {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let (cpu, server_after) = window.finish(&server)?;
    let listed_after = crate::listed_users(server.http, room)?;
    let logged = server.logged();
    let tallies = crowd.finish();
    server.stop();

    report(
        table, shape, senders, &sent, &tallies, expected, t0_us, join_time,
    );
    table.check(
        "users the server lists in the room, before / after",
        format!("{listed_before} / {listed_after}"),
        &format!("{n} / {n}"),
        listed_before == n && listed_after == n,
    );
    cpu.report(table);
    table.info(
        "server RSS, threads while the room was full",
        format!(
            "{}, {}",
            stats::kib(server_after.rss_kib),
            server_after.threads
        ),
    );
    logged.note(table);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    table: &mut Table,
    shape: &Shape,
    senders: usize,
    sent: &[Sent],
    tallies: &[Tally],
    expected: u64,
    t0_us: u64,
    join_time: Duration,
) {
    let n = shape.subscribers;
    let distinct: u64 = tallies.iter().flat_map(|t| t.distinct.iter()).sum();
    let duplicates: u64 = tallies.iter().map(|t| t.duplicates).sum();
    let out_of_order: u64 = tallies.iter().map(|t| t.out_of_order).sum();
    let unexpected: u64 = tallies.iter().map(|t| t.unexpected).sum();
    let missing = expected.saturating_sub(distinct);
    let closed: Vec<u16> = tallies.iter().filter_map(|t| t.closed_by_server).collect();
    let errors: Vec<&String> = tallies.iter().filter_map(|t| t.error.as_ref()).collect();
    let sent_total: u64 = sent.iter().map(|s| s.count).sum();
    let complete: Vec<&Tally> = tallies
        .iter()
        .filter(|t| t.distinct.iter().zip(sent).all(|(d, s)| *d == s.count) && t.duplicates == 0)
        .collect();
    let orders: HashSet<u64> = complete.iter().map(|t| t.order_hash).collect();
    let last_us = tallies
        .iter()
        .map(|t| t.last_receive_us)
        .max()
        .unwrap_or(t0_us);
    let span_s = (last_us.saturating_sub(t0_us) as f64 / 1e6).max(1e-6);

    table.info(
        "subscribers (of which send)",
        format!("{} ({senders})", stats::count(n as u64)),
    );
    table.info(
        "time to connect and join all",
        format!("{:.1} s", join_time.as_secs_f64()),
    );
    table.info("messages sent", stats::count(sent_total));
    table.info(
        "expected deliveries (sent x subscribers)",
        stats::count(expected),
    );
    table.info(
        "delivered",
        stats::count(distinct + duplicates + unexpected),
    );
    table.check("missing", stats::count(missing), "0", missing == 0);
    table.check(
        "duplicates",
        stats::count(duplicates + unexpected),
        "0",
        duplicates + unexpected == 0,
    );
    table.check(
        "out of order",
        stats::count(out_of_order),
        "0",
        out_of_order == 0,
    );
    table.check(
        "sockets closed or failed during the run",
        stats::count((closed.len() + errors.len()) as u64),
        "0",
        closed.is_empty() && errors.is_empty(),
    );
    table.check(
        "delivery orders among complete sockets",
        format!(
            "{} order(s) across {} sockets",
            orders.len(),
            complete.len()
        ),
        "1 across all",
        orders.len() == 1 && complete.len() == n,
    );
    let target = shape.p99_target_us.map(|us| format!("< {}", ms(us)));
    if missing > 0 {
        let withheld = format!("withheld: {} deliveries missing", stats::count(missing));
        table.info("latency p50", withheld.clone());
        match &target {
            Some(t) => table.check("latency p99", withheld.clone(), t, false),
            None => table.info("latency p99", withheld.clone()),
        }
        table.info("latency max", withheld);
    } else {
        let latencies: Vec<u32> = tallies
            .iter()
            .flat_map(|t| t.latencies.iter().copied())
            .collect();
        if let Some(summary) = stats::summarize(latencies) {
            table.info("latency p50", ms(summary.p50_us));
            match (&target, shape.p99_target_us) {
                (Some(t), Some(us)) => {
                    table.check("latency p99", ms(summary.p99_us), t, summary.p99_us < us)
                }
                _ => table.info("latency p99", ms(summary.p99_us)),
            }
            table.info("latency max", ms(summary.max_us));
        }
    }
    table.info("deliveries/s", stats::rate(distinct as f64 / span_s));
    let late = sent.iter().map(|s| s.max_late_us).max().unwrap_or(0);
    table.info("senders' worst lateness against schedule", ms(late));
    if !closed.is_empty() {
        let mut codes: Vec<u16> = closed.clone();
        codes.sort_unstable();
        codes.dedup();
        table.note(format!(
            "{} sockets were closed by the server, close codes {codes:?}.",
            closed.len()
        ));
    }
    if let Some(first) = errors.first() {
        table.note(format!(
            "{} sockets failed; the first: {first}",
            errors.len()
        ));
    }
    if let Some(error) = sent.iter().find_map(|s| s.error.as_ref()) {
        table.note(format!("A sender failed: {error}"));
    }
}

/// Sends `count` bench messages, message `i` at `start + i * period`, stamped with its
/// due time; a late message goes at once, and the lateness is recorded.
fn send_on_schedule(
    mut writer: Socket,
    sender: u32,
    start: Instant,
    period: Duration,
    count: usize,
    epoch: Instant,
) -> Sent {
    let mut sent = Sent::default();
    for i in 0..count {
        let due = start + period.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else {
            sent.max_late_us = sent.max_late_us.max(stats::sample_us(now - due).into());
        }
        let due_us = u64::try_from(due.duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
        let seq = u32::try_from(i).unwrap_or(u32::MAX);
        if let Err(e) = ws::send_text(&mut writer, ws::bench_frame(sender, seq, due_us)) {
            sent.error = Some(format!("sender {sender}, message {i}: {e}"));
            break;
        }
        sent.count += 1;
    }
    sent
}
