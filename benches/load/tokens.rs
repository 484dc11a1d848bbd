//! Scenario 5, tokens: bcrypt-heavy token requests next to cheap reads.
//!
//! Eight threads ask for tokens to a private room as fast as they are answered (each
//! answer costs the server one bcrypt verification at cost 10, tens of milliseconds of one
//! core), while one more thread sends `GET /chats/1` every [`GET_PERIOD`] on its own
//! keep-alive connection and times each. The question is whether slow, CPU-bound requests
//! starve fast ones: the GET p99 should stay where it is on an idle server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::HttpClient;
use crate::report::Table;
use crate::server::{CpuWindow, Server, ServerOptions};
use crate::stats::{self, ms, sample_us};
use crate::Res;

/// Threads asking for tokens.
pub const TOKEN_THREADS: usize = 8;
/// Interval between timed GETs.
pub const GET_PERIOD: Duration = Duration::from_millis(5);
/// Password of the private room.
const PASSWORD: &str = "bench-password";
/// Tokens per second expected of two cores at bcrypt cost 10, and the floor for PASS.
const TARGET_TOKENS: f64 = 40.0;
const FLOOR_TOKENS: f64 = 32.0;
/// GET p99 target, µs.
const TARGET_GET_P99_US: u64 = 5_000;

/// Runs the scenario.
pub fn run(options: &ServerOptions, threads: usize, seconds: f64) -> Table {
    let mut table = Table::new(
        "5. Tokens under load",
        format!(
            "{threads} threads POST /chats/<private room>/token back to back (bcrypt cost 10) for {seconds:.0} s, \
             while one more thread times GET /chats/1 every {} ms on its own keep-alive connection.",
            GET_PERIOD.as_millis()
        ),
    );
    if let Err(e) = measure(options, threads, seconds, &mut table) {
        table.failed(e);
    }
    table
}

/// Starts a thread that sends `GET /chats/1` every [`GET_PERIOD`] on its own keep-alive
/// connection until `stop` is set, and hands back each answer's time (µs) and how many
/// failed or were not 200. A GET that is late (the one before took longer than the
/// period) goes at once; with `from_due` its time is counted from when it was due, so a
/// stall of a second counts as the two hundred GETs it held up, not as one slow GET among
/// a burst of fast catch-up ones.
pub fn time_gets(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    from_due: bool,
) -> JoinHandle<(Vec<u32>, u64)> {
    thread::spawn(move || {
        let mut client = HttpClient::new(addr);
        let (mut samples, mut errors) = (Vec::new(), 0u64);
        let mut due = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            let t = if from_due { due } else { Instant::now() };
            due += GET_PERIOD;
            match client.get("/chats/1") {
                Ok(r) if r.status == 200 => samples.push(sample_us(t.elapsed())),
                _ => errors += 1,
            }
        }
        (samples, errors)
    })
}

fn measure(options: &ServerOptions, threads: usize, seconds: f64, table: &mut Table) -> Res<()> {
    let server = Server::start(options, "tokens")?;
    let room = crate::create_room(server.http, "Token bench", "private", Some(PASSWORD))?;
    let addr = server.http;
    let window = CpuWindow::start(&server)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);

    let token_threads: Vec<_> = (0..threads)
        .map(|t| {
            thread::spawn(move || {
                let mut client = HttpClient::new(addr);
                let body = serde_json::json!({"secret": PASSWORD, "name": format!("t{t}")});
                let path = format!("/chats/{room}/token");
                let (mut issued, mut errors, mut first_error) = (0u64, 0u64, None);
                while Instant::now() < deadline {
                    match client.post(&path, &body) {
                        Ok(r)
                            if r.status == 201
                                && r.json().is_ok_and(|j| j["token"].is_string()) =>
                        {
                            issued += 1
                        }
                        Ok(r) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| {
                                format!("status {}: {}", r.status, String::from_utf8_lossy(&r.body))
                            });
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                (issued, errors, first_error, Instant::now())
            })
        })
        .collect();

    let stop_gets = Arc::new(AtomicBool::new(false));
    let get_thread = time_gets(addr, Arc::clone(&stop_gets), false);

    let (mut issued, mut errors, mut first_error, mut last_end) = (0, 0, None, started);
    for handle in token_threads {
        let (i, e, f, end) = handle.join().map_err(|_| "token thread panicked")?;
        issued += i;
        errors += e;
        first_error = first_error.or(f);
        last_end = last_end.max(end);
    }
    stop_gets.store(true, Ordering::SeqCst);
    let (samples, get_errors) = get_thread.join().map_err(|_| "GET thread panicked")?;
    let wall = last_end - started;
    let (cpu, after) = window.finish(&server)?;
    let logged = server.logged();
    server.stop();

    let tokens_per_s = issued as f64 / wall.as_secs_f64();
    table.info("tokens issued", stats::count(issued));
    table.check("token errors", stats::count(errors), "0", errors == 0);
    table.check(
        "tokens/s",
        stats::rate(tokens_per_s),
        &format!("~{TARGET_TOKENS:.0}/s (>= {FLOOR_TOKENS:.0})"),
        tokens_per_s >= FLOOR_TOKENS,
    );
    report_gets(table, samples, get_errors);
    cpu.report(table);
    table.info("server threads during the run", after.threads.to_string());
    if let Some(error) = first_error {
        table.note(format!("First token error: {error}"));
    }
    logged.note(table);
    Ok(())
}

/// The rows on the GETs [`time_gets`] timed: errors, p50, p99 against the target, max; no
/// latency when any GET failed.
pub fn report_gets(table: &mut Table, samples: Vec<u32>, get_errors: u64) {
    table.check("GET errors", stats::count(get_errors), "0", get_errors == 0);
    match (get_errors, stats::summarize(samples)) {
        (0, Some(s)) => {
            table.info("GET requests timed", stats::count(s.count as u64));
            table.info("GET p50", ms(s.p50_us));
            table.check(
                "GET p99",
                ms(s.p99_us),
                "< 5 ms",
                s.p99_us < TARGET_GET_P99_US,
            );
            table.info("GET max", ms(s.max_us));
        }
        (n, _) => table.check(
            "GET p99",
            format!("withheld: {n} GETs failed"),
            "< 5 ms",
            false,
        ),
    }
}
