//! Scenario 7, slow disk: a fan-out while rooms are created on a disk whose every flush
//! takes 30 ms, as on a small host with an SD card.
//!
//! The server runs with its database on (a fresh file) under `strace`, which delays every
//! `fsync` and `fdatasync` by [`FSYNC_DELAY`] on its way in (`--seccomp-bpf` stops the
//! server only at those two calls, so nothing else is slowed). One room of
//! [`SUBSCRIBERS`] members gets [`RATE`] messages a second in two phases of the run's
//! length: first quiet, then while one more client creates rooms over REST back to back
//! (`POST /chats`, a unique title each, the next as soon as the answer is in; each answer
//! waits for its commit to reach the disk, so about one room per flush or two, some 10 a
//! second). The phases use sender numbers of their own, so each is summed up apart.
//!
//! Why: the disk is slow only for the writes that must be durable (a 201 means the room
//! survives a crash), and those should cost the room creator the wait, not every chat
//! message in every room. The target is that the busy phase's p99 is at most twice the
//! quiet phase's, with nothing missing. The table also counts the flushes (strace's own
//! output, a line per call, kept under `target/bench/`), so a change in how many flushes
//! a room or a batch of messages costs shows up.
//!
//! Why `set_robust_list` is traced too: strace 6.1 (Debian 12) resumes every new thread
//! so that it stops at *every* system call until its first traced one, and only then
//! leaves it to the seccomp filter. A session thread never flushes, so it would stay
//! fully traced for its whole life: measured here, strace took 25,000 stops a second
//! and half a core in the quiet phase alone, and the quiet p99 was several times a bare
//! server's. glibc calls `set_robust_list` first thing in every new thread, so tracing it
//! costs one stop per thread and lets every thread run free afterwards (a Python test
//! with two busy threads: 180,000 system calls in 3 s, 5 million with it). Only
//! `fsync` and `fdatasync` are delayed, and only their lines are counted.
//!
//! Without `strace` (or where ptrace is not allowed) the scenario is skipped and its row
//! says why: `apt-get install -y strace`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::fanout::{self, Figures, FullRoom};
use crate::http::HttpClient;
use crate::report::Table;
use crate::server::{CpuWindow, Server, ServerOptions};
use crate::stats::{self, ms, sample_us};
use crate::Res;

/// Members of the chat room.
pub const SUBSCRIBERS: usize = 100;
/// Messages per second, all senders together, in each phase.
pub const RATE: u32 = 100;
/// Members that also send, in each phase.
const WRITERS: usize = 4;
/// Added to every `fsync` and `fdatasync` on its way into the kernel.
const FSYNC_DELAY: Duration = Duration::from_millis(30);
/// The busy phase's p99 may be at most this many times the quiet phase's.
const P99_RATIO: u64 = 2;
/// Rooms the creator may make in one phase, whatever the disk does: a bound on the loop.
const MAX_ROOMS: usize = 100_000;

/// Runs the scenario: `seconds` quiet, then `seconds` with rooms being created.
pub fn run(options: &ServerOptions, seconds: f64) -> Table {
    let mut table = Table::new(
        "7. Slow disk: fan-out while rooms are created",
        format!(
            "Database on (a fresh file), every fsync and fdatasync delayed {} ms by `strace -f --seccomp-bpf -e trace=fsync,fdatasync,set_robust_list -e inject=fsync,fdatasync:delay_enter=...`. \
             One room of {SUBSCRIBERS} sockets, {WRITERS} of them sending {RATE} messages/s together on a fixed schedule: {seconds:.0} s quiet, \
             then {seconds:.0} s while one more client creates rooms over REST back to back (POST /chats, unique titles).",
            FSYNC_DELAY.as_millis()
        ),
    );
    if let Err(why) = strace_usable() {
        table.info("scenario skipped", why);
        table.note("Install strace (`apt-get install -y strace`) to run this scenario.");
        return table;
    }
    if let Err(e) = measure(options, seconds, &mut table) {
        table.failed(e);
    }
    table
}

/// Whether `strace` is installed and may trace here (ptrace can be forbidden in a
/// container): the same options, on `true`.
fn strace_usable() -> Result<(), String> {
    let out = Command::new("strace")
        .args([
            "-f",
            "--seccomp-bpf",
            "-e",
            "trace=fsync",
            "-o",
            "/dev/null",
            "true",
        ])
        .output()
        .map_err(|e| format!("no `strace` on the PATH ({e})"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`strace` cannot trace here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What the room creator did in one phase.
#[derive(Default)]
struct Created {
    rooms: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u32>,
    wall: Duration,
}

fn measure(options: &ServerOptions, seconds: f64, table: &mut Table) -> Res<()> {
    let mut options = options.clone();
    options.no_db = false;
    std::fs::create_dir_all(&options.work_dir)?;
    let trace_log = options.work_dir.canonicalize()?.join("slowdisk.strace.log");
    let delay_us = FSYNC_DELAY.as_micros().to_string();
    options.wrapper = vec![
        "strace".into(),
        "-f".into(),
        "--seccomp-bpf".into(),
        "-e".into(),
        "trace=fsync,fdatasync,set_robust_list".into(),
        "-e".into(),
        format!("inject=fsync,fdatasync:delay_enter={delay_us}"),
        "-o".into(),
        trace_log.display().to_string(),
    ];
    let server = Server::start(&options, "slowdisk")?;
    let room = crate::create_room(server.http, "Slow disk", "public", None)?;
    let per_sender = fanout::messages_per_sender(seconds, RATE, WRITERS);
    let mut full = FullRoom::join(
        &[server.ws],
        room,
        SUBSCRIBERS,
        WRITERS,
        2 * WRITERS,
        per_sender,
    )?;
    let listed_before = crate::listed_users(server.http, room)?;

    let flushes_at_start = count_flushes(&trace_log);
    let window = CpuWindow::start(&server)?;
    let quiet = full.send(0, RATE, seconds)?;
    let (quiet_cpu, _) = window.finish(&server)?;
    let flushes_after_quiet = count_flushes(&trace_log);
    // Threads that flush while only messages are sent write messages; in the busy phase
    // the others are the HTTP workers committing rooms.
    let writers = flushing_threads(&flushes_at_start, &flushes_after_quiet);
    let (quiet_writer, quiet_other) =
        flushes_between(&flushes_at_start, &flushes_after_quiet, &writers);
    let flushes_quiet = quiet_writer + quiet_other;

    let stop = Arc::new(AtomicBool::new(false));
    let creator = {
        let (stop, addr) = (Arc::clone(&stop), server.http);
        // Bounded in time too: the phase's length plus the drain's limit, whatever happens.
        let deadline = Instant::now() + Duration::from_secs_f64(seconds) + Duration::from_secs(40);
        thread::Builder::new()
            .name("room-creator".into())
            .spawn(move || create_rooms(addr, &stop, deadline))?
    };
    let window = CpuWindow::start(&server)?;
    let busy = full.send(WRITERS, RATE, seconds);
    stop.store(true, Ordering::SeqCst);
    let created = creator.join().map_err(|_| "the room creator panicked")?;
    let (busy_cpu, server_after) = window.finish(&server)?;
    let (busy_writer, busy_rooms) =
        flushes_between(&flushes_after_quiet, &count_flushes(&trace_log), &writers);
    let flushes_busy = busy_writer + busy_rooms;
    let busy = busy?;
    let listed_after = crate::listed_users(server.http, room)?;
    let logged = server.logged();
    let join_time = full.join_time;
    let tallies = full.finish();
    let server_pid = server.pid;
    server.stop();

    let quiet = Figures::of(&tallies, &quiet);
    let busy = Figures::of(&tallies, &busy);
    table.info(
        "subscribers (of which send)",
        format!("{SUBSCRIBERS} ({WRITERS})"),
    );
    table.info(
        "time to connect and join all",
        format!("{:.1} s", join_time.as_secs_f64()),
    );
    table.info(
        "server process measured (strace's child)",
        format!("pid {server_pid}"),
    );
    phase_rows(table, "quiet: ", &quiet);
    phase_rows(table, "busy: ", &busy);
    match (quiet.latency, busy.latency) {
        (Some(q), Some(b)) if quiet.missing == 0 && busy.missing == 0 => table.check(
            "busy p99 / quiet p99",
            format!(
                "{} / {} = {:.2}",
                ms(b.p99_us),
                ms(q.p99_us),
                b.p99_us as f64 / q.p99_us.max(1) as f64
            ),
            &format!("<= {P99_RATIO}"),
            b.p99_us <= P99_RATIO * q.p99_us,
        ),
        _ => table.check(
            "busy p99 / quiet p99",
            "withheld: deliveries missing",
            &format!("<= {P99_RATIO}"),
            false,
        ),
    }
    table.check(
        "sockets closed or failed (both phases)",
        format!(
            "{} (close codes: {})",
            stats::count((busy.closed.len() + busy.errors.len()) as u64),
            busy.close_codes()
        ),
        "0",
        busy.closed.is_empty() && busy.errors.is_empty(),
    );
    table.check(
        "duplicates, out of order (both phases)",
        format!("{}, {}", busy.duplicates, busy.out_of_order),
        "0, 0",
        busy.duplicates == 0 && busy.out_of_order == 0,
    );
    table.check(
        "users the server lists in the room, before / after",
        format!("{listed_before} / {listed_after}"),
        &format!("{SUBSCRIBERS} / {SUBSCRIBERS}"),
        listed_before == SUBSCRIBERS && listed_after == SUBSCRIBERS,
    );
    creator_rows(table, &created);
    table.info(
        "flushes (fsync + fdatasync): quiet / busy phase",
        format!(
            "{} / {} ({:.1}/s / {:.1}/s)",
            stats::count(flushes_quiet),
            stats::count(flushes_busy),
            flushes_quiet as f64 / seconds.max(1e-9),
            flushes_busy as f64 / seconds.max(1e-9)
        ),
    );
    table.info(
        "busy: flushes by the threads that flushed in the quiet phase (messages) / by others (rooms)",
        format!(
            "{} / {}{}",
            stats::count(busy_writer),
            stats::count(busy_rooms),
            if created.rooms > 0 {
                format!(" ({:.1} per room)", busy_rooms as f64 / created.rooms as f64)
            } else {
                String::new()
            }
        ),
    );
    quiet_cpu.report_as(table, "quiet: ");
    busy_cpu.report_as(table, "busy: ");
    table.info(
        "server RSS, threads at the end",
        format!(
            "{}, {}",
            stats::kib(server_after.rss_kib),
            server_after.threads
        ),
    );
    busy.notes(table);
    logged.note(table);
    Ok(())
}

/// One phase's rows: sent, missing, p50 / p99 / max.
fn phase_rows(table: &mut Table, prefix: &str, figures: &Figures) {
    table.info(
        &format!("{prefix}messages sent"),
        stats::count(figures.sent),
    );
    table.info(
        &format!("{prefix}delivered (of expected)"),
        format!(
            "{} of {}",
            stats::count(figures.distinct),
            stats::count(figures.expected)
        ),
    );
    table.check(
        &format!("{prefix}missing"),
        stats::count(figures.missing),
        "0",
        figures.missing == 0,
    );
    figures.latency_rows(table, prefix, None);
    table.info(
        &format!("{prefix}senders' worst lateness against schedule"),
        ms(figures.worst_late_us),
    );
}

fn creator_rows(table: &mut Table, created: &Created) {
    let wall = created.wall.as_secs_f64().max(1e-9);
    table.info("busy: rooms created", stats::count(created.rooms));
    table.info(
        "busy: rooms created/s",
        stats::rate(created.rooms as f64 / wall),
    );
    if let Some(summary) = stats::summarize(created.latencies.clone()) {
        table.info(
            "busy: POST /chats latency p50 / p99 / max",
            format!(
                "{} / {} / {}",
                ms(summary.p50_us),
                ms(summary.p99_us),
                ms(summary.max_us)
            ),
        );
    }
    table.check(
        "busy: POST /chats errors",
        stats::count(created.errors),
        "0",
        created.errors == 0,
    );
    if let Some(error) = &created.first_error {
        table.note(format!("First room creation error: {error}"));
    }
}

/// Creates rooms one after another until `stop` is set, [`MAX_ROOMS`] are made, or
/// `deadline` passes.
fn create_rooms(addr: std::net::SocketAddr, stop: &AtomicBool, deadline: Instant) -> Created {
    let mut client = HttpClient::new(addr);
    let mut created = Created::default();
    let started = Instant::now();
    for i in 0..MAX_ROOMS {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break;
        }
        let body = serde_json::json!({"title": format!("Busy room {i}"), "visibility": "public"});
        let sent = Instant::now();
        match client.post("/chats", &body) {
            Ok(r) if r.status == 201 => {
                created.rooms += 1;
                created.latencies.push(sample_us(sent.elapsed()));
            }
            Ok(r) => {
                created.errors += 1;
                created.first_error.get_or_insert_with(|| {
                    format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body))
                });
            }
            Err(e) => {
                created.errors += 1;
                created.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    created.wall = started.elapsed();
    created
}

/// Flushes strace has logged so far, per thread id (the number each line starts with
/// under `-f`): lines with `fsync(` or `fdatasync(`. A call that another thread's line
/// splits in two shows its name with `(` only on the first half, so each counts once.
fn count_flushes(trace_log: &std::path::Path) -> BTreeMap<u32, u64> {
    let text = std::fs::read_to_string(trace_log).unwrap_or_default();
    let mut flushes = BTreeMap::new();
    for line in text.lines() {
        if !(line.contains("fsync(") || line.contains("fdatasync(")) {
            continue;
        }
        if let Some(tid) = line.split_whitespace().next().and_then(|t| t.parse().ok()) {
            *flushes.entry(tid).or_insert(0) += 1;
        }
    }
    flushes
}

/// Flushes between `before` and `after`, split into those by `writers` and the rest.
fn flushes_between(
    before: &BTreeMap<u32, u64>,
    after: &BTreeMap<u32, u64>,
    writers: &BTreeSet<u32>,
) -> (u64, u64) {
    let (mut by_writers, mut by_others) = (0, 0);
    for (tid, count) in after {
        let grew = count.saturating_sub(before.get(tid).copied().unwrap_or(0));
        if writers.contains(tid) {
            by_writers += grew;
        } else {
            by_others += grew;
        }
    }
    (by_writers, by_others)
}

/// Threads whose flushes grew from `before` to `after`.
fn flushing_threads(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> BTreeSet<u32> {
    after
        .iter()
        .filter(|(tid, count)| **count > before.get(tid).copied().unwrap_or(0))
        .map(|(tid, _)| *tid)
        .collect()
}
