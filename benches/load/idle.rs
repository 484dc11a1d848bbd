//! Scenario 3, idle: 1,000 and then 5,000 joined sockets that say nothing.
//!
//! What an idle member costs the server: its RSS and thread count are read on a fresh
//! server, again once 1,000 sockets have joined and gone quiet, and again at 5,000. The
//! per-socket figure is the growth divided by the sockets held. Sockets join rooms of
//! [`ROOM_SIZE`]: every join is broadcast to the whole room (n(n+1)/2 events for a room
//! of n), and 5,000 in one room would spend the run on 12.5 million join events rather
//! than on holding sockets. Each is still read by its own client thread, as a real client
//! would, so the server never counts one as a slow reader.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::report::Table;
use crate::server::{cpu_percent, rss_groups, rss_growth, Server, ServerOptions};
use crate::stats;
use crate::ws::{wait_until, Crowd};
use crate::Res;

/// Sockets held at each step.
pub const STEPS: [usize; 2] = [1_000, 5_000];
/// Sockets per room, unless `--idle-room-size` says otherwise.
pub const ROOM_SIZE: usize = 500;
/// Target server RSS per idle joined socket, KiB.
const TARGET_KIB_PER_SOCKET: f64 = 16.0;
/// Memory is read once the server's thread count has not changed for this long: longer
/// than the server keeps an idle socket's writer thread (5 s), so what is read is the cost
/// of a socket at rest, not of one that just spoke...
const STEADY: Duration = Duration::from_secs(6);
/// ...or after this long, whichever comes first.
const SETTLE_LIMIT: Duration = Duration::from_secs(15);
/// Window over which idle CPU is measured, once settled.
const IDLE_WINDOW: Duration = Duration::from_secs(1);
/// How long one step may take to join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs the scenario.
pub fn run(options: &ServerOptions, steps: &[usize], room_size: usize) -> Table {
    let mut table = Table::new(
        "3. Idle joined sockets",
        format!(
            "Sockets connect and join rooms of {room_size}, then stay silent (each still read by a client thread). \
             Memory and threads are read once the server's thread count has been steady for {} s (at most {} s after the last join event arrived). \
             Per socket = growth over the fresh server / sockets.",
            STEADY.as_secs(),
            SETTLE_LIMIT.as_secs()
        ),
    );
    if let Err(e) = measure(options, steps, room_size.max(1), &mut table) {
        table.failed(e);
    }
    table
}

fn measure(
    options: &ServerOptions,
    steps: &[usize],
    room_size: usize,
    table: &mut Table,
) -> Res<()> {
    let mut server = Server::start(options, "idle")?;
    thread::sleep(Duration::from_millis(500));
    let fresh = server.sample()?;
    let fresh_groups = rss_groups(server.pid)?;
    table.info(
        "fresh server: RSS, threads",
        format!("{}, {}", stats::kib(fresh.rss_kib), fresh.threads),
    );
    let mut crowd = Crowd::new(0, 0);
    let counters = std::sync::Arc::clone(&crowd.counters);
    let mut room_sizes: Vec<u64> = Vec::new();
    let mut room = 0;
    let mut room_ids: Vec<u64> = Vec::new();
    let result = (|| -> Res<()> {
        for &step in steps {
            let joining = Instant::now();
            while crowd.len() < step {
                if crowd.len().is_multiple_of(room_size) {
                    let title = format!("Idle {}", room_sizes.len() + 1);
                    room = crate::create_room(server.http, &title, "public", None)?;
                    room_ids.push(room);
                    room_sizes.push(0);
                }
                let name = format!("i{}", crowd.len());
                crowd
                    .join(server.ws, room, name, false)
                    .map_err(|e| format!("socket {}: {e}", crowd.len() + 1))?;
                if let Some(size) = room_sizes.last_mut() {
                    *size += 1;
                }
            }
            let joins_expected: u64 = room_sizes.iter().map(|n| n * (n + 1) / 2).sum();
            let joined = wait_until(JOIN_TIMEOUT, || {
                counters.acked.load(Ordering::SeqCst) == step
                    && counters.joins_seen.load(Ordering::Relaxed) >= joins_expected
            });
            if !joined {
                return Err(format!(
                    "{step} sockets not joined within {JOIN_TIMEOUT:?}: {} acknowledged, {} of {joins_expected} join events, {} lost",
                    counters.acked.load(Ordering::SeqCst),
                    counters.joins_seen.load(Ordering::Relaxed),
                    counters.lost.load(Ordering::SeqCst)
                )
                .into());
            }
            let join_time = joining.elapsed();
            let settle_time = settle(&server)?;
            let quiet_from = server.sample()?;
            thread::sleep(IDLE_WINDOW);
            let held = server.sample()?;
            let label = stats::count(step as u64);
            let per_socket = held.rss_kib.saturating_sub(fresh.rss_kib) as f64 / step as f64;
            table.info(
                &format!("{label} sockets: time to connect and join"),
                format!("{:.1} s", join_time.as_secs_f64()),
            );
            table.info(
                &format!("{label} sockets: time until threads were steady"),
                format!("{:.1} s", settle_time.as_secs_f64()),
            );
            table.info(
                &format!("{label} sockets: server RSS, threads"),
                format!("{}, {}", stats::kib(held.rss_kib), held.threads),
            );
            table.check(
                &format!("{label} sockets: RSS per socket"),
                format!("{per_socket:.1} KiB"),
                "<= 16 KiB",
                per_socket <= TARGET_KIB_PER_SOCKET,
            );
            table.info(
                &format!("{label} sockets: where RSS grew (mappings x size: RSS)"),
                rss_growth(&fresh_groups, &rss_groups(server.pid)?, 3),
            );
            table.info(
                &format!("{label} sockets: threads per socket"),
                format!(
                    "{:.2}",
                    held.threads.saturating_sub(fresh.threads) as f64 / step as f64
                ),
            );
            table.info(
                &format!("{label} sockets: server CPU while idle"),
                format!("{:.1} %", cpu_percent(&quiet_from, &held, IDLE_WINDOW)),
            );
        }
        Ok(())
    })();
    let last = steps.last().copied().unwrap_or(0);
    let listed = room_ids
        .iter()
        .map(|id| crate::listed_users(server.http, *id))
        .sum::<Res<usize>>();
    let acked = counters.acked.load(Ordering::SeqCst);
    let lost = counters.lost.load(Ordering::SeqCst);
    let alive = server.is_running();
    let logged = server.logged();
    let tallies = crowd.finish();
    server.stop();
    result?;
    let held = if alive { acked.saturating_sub(lost) } else { 0 };
    let listed = listed.map_err(|e| format!("counting users: {e}"))?;
    table.check(
        &format!("{} joined sockets held", stats::count(last as u64)),
        format!("{} held, {lost} lost", stats::count(held as u64)),
        &format!("all {}", stats::count(last as u64)),
        held == last && lost == 0,
    );
    table.check(
        "users the server lists, summed over the rooms",
        stats::count(listed as u64),
        &stats::count(last as u64),
        listed == last,
    );
    if let Some(error) = tallies.iter().find_map(|t| t.error.as_ref()) {
        table.note(format!("First socket failure: {error}"));
    }
    logged.note(table);
    Ok(())
}

/// Waits until the server's thread count has not changed for [`STEADY`], or
/// [`SETTLE_LIMIT`]; returns how long that took.
fn settle(server: &Server) -> Res<Duration> {
    let started = Instant::now();
    let mut threads = server.sample()?.threads;
    let mut steady_since = Instant::now();
    while steady_since.elapsed() < STEADY && started.elapsed() < SETTLE_LIMIT {
        thread::sleep(Duration::from_millis(250));
        let now = server.sample()?.threads;
        if now != threads {
            (threads, steady_since) = (now, Instant::now());
        }
    }
    Ok(started.elapsed())
}
