//! Scenario 1, REST: `GET /chats/1` over 64 keep-alive connections for 10 s.
//!
//! `wrk` drives it when installed (two threads, one per core, the way it is normally run);
//! otherwise the generator's own client does, one thread per connection, each sending the
//! next request as soon as the previous response is read (a closed loop, like `wrk`).
//! Latency is per request, from writing it to reading the whole response. Requests that
//! failed (an I/O error or a status other than 200) are counted, and when there are any the
//! latency figures are withheld. A histogram only covers answered requests, so the run also
//! checks that all 64 connections were really served: by Little's law, requests/s times
//! mean latency is the number of connections in play (our client also counts connections
//! left waiting over a second for an answer).

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
/// A connection that waits this long for one answer was left unserved, not slow.
const STARVED: Duration = Duration::from_secs(1);
/// Target throughput, requests per second.
const TARGET_RPS: f64 = 75_000.0;
/// Target p99, µs.
const TARGET_P99_US: u64 = 5_000;

/// Runs the scenario; also returns the `wrk` command line when `wrk` ran. With `wrk`
/// installed and `client` left at `Auto`, the generator's own client runs too, as a
/// cross-check whose figures are shown without verdicts: the two clients load the server
/// differently, and only ours can tell a connection that never got an answer.
pub fn run(
    options: &ServerOptions,
    seconds: f64,
    client: RestClient,
) -> (Vec<Table>, Option<String>) {
    let clients: Vec<bool> = match client {
        RestClient::Own => vec![false],
        RestClient::Wrk => vec![true],
        RestClient::Auto if http::wrk_available() => vec![true, false],
        RestClient::Auto => vec![false],
    };
    let mut command = None;
    let mut tables = Vec::new();
    for (i, use_wrk) in clients.into_iter().enumerate() {
        let title = if i == 0 {
            "1. REST: GET /chats/1".to_string()
        } else {
            "1. REST: GET /chats/1, cross-check with the generator's own client".to_string()
        };
        let mut table = Table::new(
            title,
            format!("{CONNECTIONS} keep-alive connections for {seconds:.0} s, each sending its next request as soon as the previous response is in."),
        );
        if let Err(e) = measure(options, seconds, use_wrk, &mut table, &mut command) {
            table.failed(e);
        }
        if i > 0 {
            table.without_verdicts();
        }
        tables.push(table);
    }
    (tables, command)
}

/// What one throughput run produced, from either client.
struct Outcome {
    tool: String,
    requests: u64,
    errors: u64,
    rps: f64,
    latency: Option<stats::Summary>,
    /// Mean latency, µs: with `rps`, tells how many connections were really in play.
    mean_us: f64,
    /// Connections that waited longer than [`STARVED`] for some answer, or got none, when
    /// the client can tell (ours).
    starved: Option<usize>,
}

fn measure(
    options: &ServerOptions,
    seconds: f64,
    use_wrk: bool,
    table: &mut Table,
    command: &mut Option<String>,
) -> Res<()> {
    let server = Server::start(options, "rest")?;
    let first = HttpClient::new(server.http).get("/chats/1")?;
    if first.status != 200 {
        return Err(format!("GET /chats/1 answered {} before the run", first.status).into());
    }
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
            mean_us: result.mean_us as f64,
            starved: None,
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
    // Little's law: a closed loop of N busy connections has rps x mean latency = N. A client
    // short of CPU undercounts (it times only its own send-to-receive), but below half
    // means most connections were waiting on the server without an answer, which a latency
    // histogram of the answered requests cannot show.
    let in_play = outcome.rps * outcome.mean_us / 1e6;
    let starved = outcome.starved.map_or(String::new(), |n| {
        format!("; {n} left waiting over {} s", STARVED.as_secs())
    });
    table.check(
        "connections in play (requests/s x mean latency)",
        format!("{in_play:.1} of {CONNECTIONS}{starved}"),
        &format!(">= {}", CONNECTIONS / 2),
        in_play >= (CONNECTIONS / 2) as f64 && outcome.starved.unwrap_or(0) == 0,
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
    let (mut samples, mut errors, mut starved) = (Vec::new(), 0, 0);
    for worker in workers {
        let (s, e) = worker.join().map_err(|_| "client thread panicked")?;
        let longest = s.iter().max().copied().unwrap_or(u32::MAX);
        starved += usize::from(Duration::from_micros(u64::from(longest)) > STARVED);
        samples.extend(s);
        errors += e;
    }
    let total_us: f64 = samples.iter().map(|&us| f64::from(us)).sum();
    let mean_us = total_us / samples.len().max(1) as f64;
    let wall = started.elapsed();
    let requests = samples.len() as u64 + errors;
    Ok(Outcome {
        tool: format!("own client, {CONNECTIONS} threads"),
        requests,
        errors,
        rps: samples.len() as f64 / wall.as_secs_f64(),
        latency: stats::summarize(samples),
        mean_us,
        starved: Some(starved),
    })
}
