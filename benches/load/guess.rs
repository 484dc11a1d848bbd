//! Scenario 10, guess: a password-guessing flood from many addresses, next to cheap reads.
//!
//! [`GUESSERS`] threads each keep one token request in flight, back to back, against one
//! private room, every one with a wrong `secret`: 100 concurrent guesses. They come through
//! a trusted proxy: the server is started with `trusted_proxies: ["127.0.0.1"]`, and each
//! request names its client in `X-Forwarded-For` (`10.<thread>.<n>.<n>`, only a header
//! value: no traffic goes there). By default every request names a new address, as a
//! guesser spread over many hosts would, so the per-address limit
//! (`token_attempts_per_minute`) never trips and only the bcrypt queue (`bcrypt_queue_len`)
//! stands between the flood and the cores; `--guess-per-address N` sends N requests from
//! each address before moving on, so that limit (429, code 602) shows too. Meanwhile one
//! more thread times `GET /chats/1` every 5 ms on its own keep-alive connection, each from
//! when it was due: a GET held up behind the flood delays the ones after it, and they
//! count the wait.
//!
//! Every answer is sorted by status and code: 401 code 304 (wrong password: the server ran
//! one bcrypt verification), 429 code 602 (too many attempts from that address, answered
//! before any bcrypt work), 503 code 604 (the bcrypt queue is full); anything else is a
//! failure. "One hash per core at most" is observed, not trusted: every 5 ms the scenario
//! reads the state of the server's threads named `bcrypt` from `/proc/<pid>/task/*/stat`
//! and counts those in state R (running, or runnable and waiting for a core); bcrypt run
//! on a thread with another name would not be seen, which the CPU row can reveal. Every
//! 250 ms it also reads `GET /metrics`, when the server serves it, for any series whose
//! name mentions bcrypt, and keeps the highest value each reached.
//!
//! A server that predates the limits refuses the `trusted_proxies` key and exits with
//! status 2; the scenario then starts it without the key, says "server lacks limits", and
//! runs the same flood, every guess then coming from 127.0.0.1.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::http::{metric_sum, scrape_metrics, HttpClient};
use crate::report::Table;
use crate::server::ServerOptions;
use crate::server::{self, rejected_key, running_threads, threads_named, CpuWindow, Server};
use crate::stats::{self, ms, sample_us};
use crate::Res;

/// Concurrent guessers.
pub const GUESSERS: usize = 100;
/// Requests from one `X-Forwarded-For` address before a guesser moves to the next.
pub const PER_ADDRESS: u64 = 1;
/// The room's real password; every guess is something else.
const PASSWORD: &str = "guess-bench-password";
/// The proxy the server is told to trust: the generator itself.
const TRUSTED_PROXY: &str = "127.0.0.1";
/// How often the bcrypt threads' states are read.
const STATE_PERIOD: Duration = Duration::from_millis(5);
/// How often `/metrics` is read during the flood.
const METRICS_PERIOD: Duration = Duration::from_millis(250);

/// Runs the scenario: `guessers` threads for `seconds`, `per_address` requests per
/// forwarded address.
pub fn run(options: &ServerOptions, guessers: usize, per_address: u64, seconds: f64) -> Table {
    let mut table = Table::new(
        "10. Guessing flood",
        format!(
            "{guessers} threads keep one wrong-password POST /chats/<private room>/token each in flight for {seconds:.0} s (bcrypt cost 10), \
             through a trusted proxy: X-Forwarded-For names a new client address every {per_address} request(s). \
             One more thread times GET /chats/1 every {} ms; the server's `bcrypt` threads are read from /proc every {} ms.",
            crate::tokens::GET_PERIOD.as_millis(),
            STATE_PERIOD.as_millis()
        ),
    );
    if let Err(e) = measure(options, guessers, per_address.max(1), seconds, &mut table) {
        table.failed(e);
    }
    table
}

/// How the guesses were answered.
#[derive(Default)]
struct Answers {
    /// 401, code 304: one bcrypt verification each.
    hashed: u64,
    /// 429, code 602.
    rate_refused: u64,
    /// 503, code 604.
    queue_refused: u64,
    /// Anything else, or no answer.
    other: u64,
    /// The first few other answers.
    other_samples: Vec<String>,
    /// How long each answer took, µs.
    latencies: Vec<u32>,
}

impl Answers {
    fn add(&mut self, other: Answers) {
        self.hashed += other.hashed;
        self.rate_refused += other.rate_refused;
        self.queue_refused += other.queue_refused;
        self.other += other.other;
        for sample in other.other_samples {
            if self.other_samples.len() < 3 && !self.other_samples.contains(&sample) {
                self.other_samples.push(sample);
            }
        }
        self.latencies.extend(other.latencies);
    }

    fn sort(&mut self, answer: Res<crate::http::Response>) {
        let response = match answer {
            Ok(response) => response,
            Err(e) => return self.other_answer(e.to_string()),
        };
        let code = response
            .json()
            .ok()
            .and_then(|j| j["error"]["code"].as_u64());
        match (response.status, code) {
            (401, Some(304)) => self.hashed += 1,
            (429, Some(602)) => self.rate_refused += 1,
            (503, Some(604)) => self.queue_refused += 1,
            (status, _) => self.other_answer(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&response.body)
            )),
        }
    }

    fn other_answer(&mut self, what: String) {
        self.other += 1;
        if self.other_samples.len() < 3 {
            self.other_samples.push(what);
        }
    }
}

/// What the watcher saw of the bcrypt threads and the metrics.
#[derive(Default)]
struct Watched {
    /// Samples by how many `bcrypt` threads were in state R.
    running: BTreeMap<usize, u64>,
    /// `bcrypt` threads found (the most at any time).
    threads: usize,
    /// The highest value each bcrypt series of `/metrics` reached.
    bcrypt_series: BTreeMap<String, f64>,
}

fn measure(
    options: &ServerOptions,
    guessers: usize,
    per_address: u64,
    seconds: f64,
    table: &mut Table,
) -> Res<()> {
    let mut extra = serde_json::Map::new();
    extra.insert("trusted_proxies".into(), serde_json::json!([TRUSTED_PROXY]));
    let (server, lacking) = match Server::start_with(options, "guess", &extra) {
        Ok(server) => (server, None),
        Err(e) => match rejected_key(options, "guess") {
            Some(key) => (Server::start(options, "guess")?, Some(key)),
            None => return Err(e),
        },
    };
    let load_before = server::load_average();
    let room = crate::create_room(server.http, "Guess bench", "private", Some(PASSWORD))?;
    let addr = server.http;
    let metrics_before = scrape_metrics(addr)?;
    let before = server.sample()?;

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, pid) = (Arc::clone(&stop), server.pid);
        let serves_metrics = metrics_before.is_some();
        thread::spawn(move || watch(pid, addr, serves_metrics, &stop))
    };
    let gets = crate::tokens::time_gets(addr, Arc::clone(&stop), true);
    let window = CpuWindow::start(&server)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let flood: Vec<_> = (0..guessers)
        .map(|t| {
            thread::Builder::new()
                .stack_size(crate::ws::MEMBER_STACK_BYTES)
                .spawn(move || guess(addr, room, t, per_address, deadline))
        })
        .collect::<Result<_, _>>()?;
    let mut answers = Answers::default();
    for handle in flood {
        answers.add(handle.join().map_err(|_| "a guesser thread panicked")?);
    }
    let wall = started.elapsed();
    let (cpu, after) = window.finish(&server)?;
    stop.store(true, Ordering::SeqCst);
    let (samples, get_errors) = gets.join().map_err(|_| "GET thread panicked")?;
    let watched = watcher.join().map_err(|_| "watcher thread panicked")?;
    let metrics_after = scrape_metrics(addr)?;
    let load_after = server::load_average();
    let logged = server.logged();
    server.stop();

    let per_s = |n: u64| stats::rate(n as f64 / wall.as_secs_f64());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    table.info(
        "server limits",
        match &lacking {
            None => format!("`trusted_proxies: [\"{TRUSTED_PROXY}\"]` accepted: each guess is from its X-Forwarded-For address"),
            Some(key) => format!("server lacks limits: it refused the config key `{key}`; started without it, so every guess is from 127.0.0.1"),
        },
    );
    let total = answers.hashed + answers.rate_refused + answers.queue_refused + answers.other;
    table.info("guesses answered", stats::count(total));
    table.info(
        "wrong-password answers (401, code 304) = bcrypt hashes, per s",
        per_s(answers.hashed),
    );
    table.info(
        "refused: 429 code 602 (per address), per s",
        per_s(answers.rate_refused),
    );
    table.info(
        "refused: 503 code 604 (bcrypt queue full), per s",
        per_s(answers.queue_refused),
    );
    table.check(
        "other answers or failures",
        stats::count(answers.other),
        "0",
        answers.other == 0,
    );
    if let Some(s) = stats::summarize(std::mem::take(&mut answers.latencies)) {
        table.info(
            "guess answer time p50 / p99 / max",
            format!("{} / {} / {}", ms(s.p50_us), ms(s.p99_us), ms(s.max_us)),
        );
    }
    crate::tokens::report_gets(table, samples, get_errors);
    report_bcrypt(table, &watched, cores);
    let server_cpu_s = cpu.server / 100.0 * wall.as_secs_f64();
    if answers.hashed > 0 {
        table.info(
            "server CPU per wrong-password answer",
            ms((server_cpu_s * 1e6 / answers.hashed as f64) as u64),
        );
    }
    report_metrics(table, metrics_before.as_deref(), metrics_after.as_deref());
    cpu.report(table);
    table.info(
        "server RSS before / after, threads after",
        format!(
            "{} / {}, {}",
            stats::kib(before.rss_kib),
            stats::kib(after.rss_kib),
            after.threads
        ),
    );
    table.info(
        "load average before / after",
        format!("{load_before} / {load_after}"),
    );
    if !answers.other_samples.is_empty() {
        table.note(format!("First other answers: {:?}", answers.other_samples));
    }
    logged.note(table);
    Ok(())
}

/// One guesser: wrong passwords back to back until `deadline`, from a new forwarded
/// address every `per_address` requests.
fn guess(
    addr: std::net::SocketAddr,
    room: u64,
    t: usize,
    per_address: u64,
    deadline: Instant,
) -> Answers {
    let mut client = HttpClient::new(addr);
    let path = format!("/chats/{room}/token");
    let mut answers = Answers::default();
    let mut k = 0u64;
    while Instant::now() < deadline {
        let a = k / per_address;
        let client_address = format!("10.{}.{}.{}", t % 256, (a >> 8) % 256, a % 256);
        let body =
            serde_json::json!({"secret": format!("wrong-{t}-{k}"), "name": "guesser"}).to_string();
        let sent = Instant::now();
        let answer = client.request_with(
            "POST",
            &path,
            Some(&body),
            &[("X-Forwarded-For", &client_address)],
        );
        answers.latencies.push(sample_us(sent.elapsed()));
        answers.sort(answer);
        k += 1;
    }
    answers
}

/// Samples the `bcrypt` threads' states every [`STATE_PERIOD`] and, when the server serves
/// it, `/metrics` every [`METRICS_PERIOD`], until `stop`.
fn watch(pid: u32, addr: std::net::SocketAddr, serves_metrics: bool, stop: &AtomicBool) -> Watched {
    let mut watched = Watched::default();
    let mut tids = Vec::new();
    let (mut listed, mut scraped) = (Instant::now() - Duration::from_secs(1), Instant::now());
    while !stop.load(Ordering::SeqCst) {
        // The thread list is read again each second: a server may start hashing threads
        // on demand.
        if listed.elapsed() >= Duration::from_secs(1) {
            tids = threads_named(pid, "bcrypt").unwrap_or_default();
            watched.threads = watched.threads.max(tids.len());
            listed = Instant::now();
        }
        *watched
            .running
            .entry(running_threads(pid, &tids))
            .or_default() += 1;
        if serves_metrics && scraped.elapsed() >= METRICS_PERIOD {
            scraped = Instant::now();
            for (series, value) in scrape_metrics(addr).ok().flatten().unwrap_or_default() {
                if series.contains("bcrypt") {
                    let max = watched.bcrypt_series.entry(series).or_insert(value);
                    *max = max.max(value);
                }
            }
        }
        thread::sleep(STATE_PERIOD);
    }
    watched
}

/// The rows on how many hashes ran at once.
fn report_bcrypt(table: &mut Table, watched: &Watched, cores: usize) {
    let samples: u64 = watched.running.values().sum();
    let most = watched.running.keys().next_back().copied().unwrap_or(0);
    table.info("threads named `bcrypt`", watched.threads.to_string());
    if watched.threads == 0 {
        table.check(
            "bcrypt threads running at once (state R), most seen",
            "not observed: no thread named `bcrypt`",
            &format!("<= {cores} (cores)"),
            false,
        );
    } else {
        table.check(
            "bcrypt threads running at once (state R), most seen",
            format!("{most} (in {} samples)", stats::count(samples)),
            &format!("<= {cores} (cores)"),
            most <= cores,
        );
        let shares: Vec<String> = watched
            .running
            .iter()
            .map(|(n, count)| {
                format!(
                    "{n}: {:.0} %",
                    100.0 * *count as f64 / samples.max(1) as f64
                )
            })
            .collect();
        table.info(
            "share of samples by bcrypt threads running",
            shares.join(", "),
        );
    }
    if !watched.bcrypt_series.is_empty() {
        let maxima: Vec<String> = watched
            .bcrypt_series
            .iter()
            .map(|(series, max)| format!("`{series}` {max}"))
            .collect();
        table.info("bcrypt series in /metrics, highest seen", maxima.join("; "));
    }
}

/// The refusals the server counted in `/metrics` during the run, by limit.
fn report_metrics(
    table: &mut Table,
    before: Option<&[(String, f64)]>,
    after: Option<&[(String, f64)]>,
) {
    const REFUSALS: &str = "chitchat_limit_refusals_total";
    let (Some(before), Some(after)) = (before, after) else {
        table.info(
            format!("/metrics {REFUSALS}").as_str(),
            "not served by this server",
        );
        return;
    };
    let counted: Vec<String> = after
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(REFUSALS))
        .map(|(series, value)| {
            let labels = series.strip_prefix(REFUSALS).unwrap_or(series);
            format!("{labels} +{}", value - metric_sum(before, REFUSALS, labels))
        })
        .collect();
    table.info(
        format!("/metrics {REFUSALS} during the run").as_str(),
        if counted.is_empty() {
            "no such series".to_string()
        } else {
            counted.join("; ")
        },
    );
}
