//! Scenario 4, churn: connect, join, send, leave, close, over and over from 50 threads.
//!
//! Each cycle is a whole visit: open the socket, join under a fresh name and wait for the
//! join event, send a message and wait for it to come back, leave, then close with a close
//! handshake and wait for the server's close frame. Every step has a 5 s limit; a cycle
//! that fails any step counts as an error. The server's memory and threads are read
//! before, sampled during (for the peak), and read again once its thread count has come
//! back down (or after [`SETTLE_LIMIT`]): a server that leaks per connection does not
//! come back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::report::Table;
use crate::server::{rss_groups, rss_growth, sample, CpuWindow, ProcSample, Server, ServerOptions};
use crate::stats;
use crate::ws::{self, Event};
use crate::Res;

/// Client threads.
pub const THREADS: usize = 50;
/// Threads sharing a room: enough that joins, messages and leaves cross between visitors,
/// few enough that the run measures connections coming and going rather than broadcasts.
const ROOM_THREADS: usize = 10;
/// Limit on each step of a cycle.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server may take to return to its starting thread count.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);
/// How far above its starting RSS the server may stay afterwards.
const RSS_SLACK_KIB: u64 = 1024;

/// Runs the scenario.
pub fn run(options: &ServerOptions, threads: usize, seconds: f64) -> Table {
    let mut table = Table::new(
        "4. Churn",
        format!(
            "{threads} threads for {seconds:.0} s, each looping: connect, join (await the join event), send (await the echo), leave, close (await the close frame). \
             {ROOM_THREADS} threads share a room; every step has a {} s limit.",
            STEP_TIMEOUT.as_secs()
        ),
    );
    if let Err(e) = measure(options, threads, seconds, &mut table) {
        table.failed(e);
    }
    table
}

/// What the client threads did.
#[derive(Default)]
struct Totals {
    cycles: u64,
    errors: u64,
    first_errors: Vec<String>,
}

fn measure(options: &ServerOptions, threads: usize, seconds: f64, table: &mut Table) -> Res<()> {
    let server = Server::start(options, "churn")?;
    let rooms: Vec<u64> = (0..threads.div_ceil(ROOM_THREADS))
        .map(|r| crate::create_room(server.http, &format!("Churn {}", r + 1), "public", None))
        .collect::<Res<_>>()?;
    thread::sleep(Duration::from_millis(300));
    let before = server.sample()?;
    let before_groups = rss_groups(server.pid)?;

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(Mutex::new(before));
    let sampler = {
        let (done, peak, pid) = (Arc::clone(&done), Arc::clone(&peak), server.pid);
        thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let (Ok(now), Ok(mut peak)) = (sample(pid), peak.lock()) {
                    peak.rss_kib = peak.rss_kib.max(now.rss_kib);
                    peak.threads = peak.threads.max(now.threads);
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let totals = Arc::new(Mutex::new(Totals::default()));
    let window = CpuWindow::start(&server)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let addr = server.ws;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let totals = Arc::clone(&totals);
            let room = rooms[t / ROOM_THREADS];
            thread::Builder::new()
                .stack_size(ws::MEMBER_STACK_BYTES)
                .spawn(move || {
                    let mut mine = Totals::default();
                    let mut k = 0u64;
                    while Instant::now() < deadline {
                        match cycle(addr, room, &format!("c{t}-{k}")) {
                            Ok(()) => mine.cycles += 1,
                            Err(e) => {
                                mine.errors += 1;
                                if mine.first_errors.len() < 2 {
                                    mine.first_errors.push(e.to_string());
                                }
                            }
                        }
                        k += 1;
                    }
                    if let Ok(mut all) = totals.lock() {
                        all.cycles += mine.cycles;
                        all.errors += mine.errors;
                        for error in mine.first_errors {
                            if all.first_errors.len() < 3 && !all.first_errors.contains(&error) {
                                all.first_errors.push(error);
                            }
                        }
                    }
                })
        })
        .collect::<Result<_, _>>()?;
    for worker in workers {
        worker.join().map_err(|_| "churn thread panicked")?;
    }
    let wall = started.elapsed();
    let (cpu, _) = window.finish(&server)?;

    // Let the server finish closing: wait for its threads to come back down.
    let settling = Instant::now();
    let mut after = server.sample()?;
    while after.threads > before.threads && settling.elapsed() < SETTLE_LIMIT {
        thread::sleep(Duration::from_millis(100));
        after = server.sample()?;
    }
    thread::sleep(Duration::from_millis(500));
    after = server.sample()?;
    done.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let peak: ProcSample = peak
        .lock()
        .map(|p| *p)
        .map_err(|_| "sampler lock poisoned")?;
    let growth = rss_growth(&before_groups, &rss_groups(server.pid)?, 3);
    let logged = server.logged();
    server.stop();
    let totals = totals.lock().map_err(|_| "totals lock poisoned")?;

    table.info("cycles", stats::count(totals.cycles));
    table.info(
        "cycles/s",
        stats::rate(totals.cycles as f64 / wall.as_secs_f64()),
    );
    table.check(
        "errors",
        stats::count(totals.errors),
        "0",
        totals.errors == 0,
    );
    table.info(
        "server RSS before / peak",
        format!(
            "{} / {}",
            stats::kib(before.rss_kib),
            stats::kib(peak.rss_kib)
        ),
    );
    table.check(
        "server RSS after",
        stats::kib(after.rss_kib),
        &format!("<= before + {} KiB", RSS_SLACK_KIB),
        after.rss_kib <= before.rss_kib + RSS_SLACK_KIB,
    );
    table.info("where RSS grew (mappings x size: RSS)", growth);
    table.info(
        "server threads before / peak",
        format!("{} / {}", before.threads, peak.threads),
    );
    table.check(
        "server threads after",
        after.threads.to_string(),
        &format!("<= {} (before)", before.threads),
        after.threads <= before.threads,
    );
    table.info(
        "time for threads to come back down",
        format!("{:.1} s", settling.elapsed().as_secs_f64()),
    );
    cpu.report(table);
    if !totals.first_errors.is_empty() {
        table.note(format!("First errors: {:?}", totals.first_errors));
    }
    logged.note(table);
    Ok(())
}

/// One visit: connect, join, send, leave, close.
fn cycle(addr: std::net::SocketAddr, room: u64, name: &str) -> Res<()> {
    let mut socket = ws::connect(addr, room)?;
    socket.get_ref().set_read_timeout(Some(STEP_TIMEOUT))?;
    ws::send_text(&mut socket, ws::join_frame(name))?;
    ws::await_event(
        &mut socket,
        "own join",
        |e| matches!(e, Event::Join { name: n } if n == name),
    )
    .map_err(|e| e.to_string())?;
    let msg = format!("hello from {name}");
    ws::send_text(
        &mut socket,
        serde_json::json!({"event_type": "send", "msg": msg}).to_string(),
    )?;
    ws::await_event(
        &mut socket,
        "own message",
        |e| matches!(e, Event::Message { msg: m, .. } if *m == msg),
    )
    .map_err(|e| e.to_string())?;
    ws::send_text(
        &mut socket,
        serde_json::json!({"event_type": "leave"}).to_string(),
    )?;
    socket.close(None)?;
    // Read until the server answers the close (tungstenite then reports ConnectionClosed).
    loop {
        match socket.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(format!("awaiting the close frame: {e}").into()),
        }
    }
}
