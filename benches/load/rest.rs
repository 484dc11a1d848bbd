//! Scenario 1, REST: `GET /chats/1` over 64 keep-alive connections for 10 s.
//!
//! `wrk` drives it when installed (two threads, one per core, the way it is normally run);
//! otherwise the generator's own client does, one thread per connection, each sending the
//! next request as soon as the previous response is read (a closed loop, like `wrk`).
//! Latency is per request, from writing it to reading the whole response. Requests that
//! failed (an I/O error or a status other than 200) are counted, and when there are any the
//! latency figures are withheld.

use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{self, HttpClient};
use crate::report::Table;
use crate::server::{CpuWindow, Server, ServerOptions};
use crate::stats::{self, ms, sample_us};
use crate::{Res, RestClient};

/// Keep-alive connections.
pub const CONNECTIONS: usize = 64;
/// Target throughput, requests per second.
const TARGET_RPS: f64 = 75_000.0;
/// Target p99, µs.
const TARGET_P99_US: u64 = 5_000;

/// Runs the scenario; also returns the `wrk` command line when `wrk` ran.
pub fn run(options: &ServerOptions, seconds: f64, client: RestClient) -> (Table, Option<String>) {
    let mut table = Table::new(
        "1. REST: GET /chats/1",
        format!("{CONNECTIONS} keep-alive connections for {seconds:.0} s, each sending its next request as soon as the previous response is in."),
    );
    let mut command = None;
    if let Err(e) = measure(options, seconds, client, &mut table, &mut command) {
        table.failed(e);
    }
    (table, command)
}

/// What one throughput run produced, from either client.
struct Outcome {
    tool: String,
    requests: u64,
    errors: u64,
    rps: f64,
    latency: Option<stats::Summary>,
}

fn measure(
    options: &ServerOptions,
    seconds: f64,
    client: RestClient,
    table: &mut Table,
    command: &mut Option<String>,
) -> Res<()> {
    let server = Server::start(options, "rest")?;
    let first = HttpClient::new(server.http).get("/chats/1")?;
    if first.status != 200 {
        return Err(format!("GET /chats/1 answered {} before the run", first.status).into());
    }
    let use_wrk = match client {
        RestClient::Own => false,
        RestClient::Wrk => true,
        RestClient::Auto => http::wrk_available(),
    };
    let window = CpuWindow::start(&server)?;
    let outcome = if use_wrk {
        let url = format!("http://{}/chats/1", server.http);
        let args = http::wrk_args(2, CONNECTIONS, seconds.ceil() as u64, &url);
        *command = Some(format!("wrk {}", args.join(" ")));
        let result = http::run_wrk(&args)?;
        Outcome {
            tool: format!("wrk {}", args[..3].join(" ")),
            requests: result.requests,
            errors: result.errors,
            rps: result.requests_per_second,
            latency: Some(stats::Summary {
                count: usize::try_from(result.requests).unwrap_or(usize::MAX),
                p50_us: result.p50_us,
                p99_us: result.p99_us,
                max_us: result.max_us,
            }),
        }
    } else {
        own_client(&server, seconds)?
    };
    let (cpu, after) = window.finish(&server)?;
    let logged = server.logged();
    server.stop();

    table.info("client", &outcome.tool);
    table.info("requests", stats::count(outcome.requests));
    table.check(
        "errors (I/O or status other than 200)",
        stats::count(outcome.errors),
        "0",
        outcome.errors == 0,
    );
    table.check(
        "requests/s",
        stats::rate(outcome.rps),
        ">= 75,000",
        outcome.rps >= TARGET_RPS,
    );
    match (outcome.errors, outcome.latency) {
        (0, Some(latency)) => {
            table.info("latency p50", ms(latency.p50_us));
            table.check(
                "latency p99",
                ms(latency.p99_us),
                "< 5 ms",
                latency.p99_us < TARGET_P99_US,
            );
            table.info("latency max", ms(latency.max_us));
        }
        (errors, _) => {
            table.check(
                "latency p99",
                format!("withheld: {errors} requests failed"),
                "< 5 ms",
                false,
            );
        }
    }
    cpu.report(table);
    table.info("server threads during the run", after.threads.to_string());
    table.info("server RSS after the run", stats::kib(after.rss_kib));
    logged.note(table);
    Ok(())
}

/// Our own closed-loop client: one thread per connection. Every connection is opened
/// before the clock starts, as `wrk` does.
fn own_client(server: &Server, seconds: f64) -> Res<Outcome> {
    let addr = server.http;
    let ready = Arc::new(Barrier::new(CONNECTIONS + 1));
    let start = Arc::new(Mutex::new(None::<Instant>));
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (ready, start) = (Arc::clone(&ready), Arc::clone(&start));
            thread::spawn(move || {
                let mut client = HttpClient::new(addr);
                let connected = client.connect().map(|_| ());
                ready.wait();
                let deadline = start
                    .lock()
                    .ok()
                    .and_then(|s| *s)
                    .unwrap_or_else(Instant::now)
                    + Duration::from_secs_f64(seconds);
                let (mut samples, mut errors) = (Vec::new(), u64::from(connected.is_err()));
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match client.get("/chats/1") {
                        Ok(r) if r.status == 200 => samples.push(sample_us(t.elapsed())),
                        _ => errors += 1,
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    let started = Instant::now();
    if let Ok(mut start) = start.lock() {
        *start = Some(started);
    }
    ready.wait();
    let (mut samples, mut errors) = (Vec::new(), 0);
    for worker in workers {
        let (s, e) = worker.join().map_err(|_| "client thread panicked")?;
        samples.extend(s);
        errors += e;
    }
    let wall = started.elapsed();
    let requests = samples.len() as u64 + errors;
    Ok(Outcome {
        tool: format!("own client, {CONNECTIONS} threads"),
        requests,
        errors,
        rps: samples.len() as f64 / wall.as_secs_f64(),
        latency: stats::summarize(samples),
    })
}
