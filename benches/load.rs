//! ChitChat's load generator: drives a real release server over loopback and writes
//! BENCHMARKS.md. Run it with `make bench` (see `bench/run.sh`).
//!
//! Layout, in reading order:
//! - this file: arguments, the order of scenarios, writing the report;
//! - `load/server.rs`: start one server process per scenario, read its ready line, read
//!   its memory, threads and CPU time from `/proc`;
//! - `load/ws.rs`: WebSocket members (a joined socket with a reading thread) and the bench
//!   message that lets every receiver detect loss, duplicates and reordering;
//! - `load/http.rs`: a keep-alive HTTP/1.1 client, and the `wrk` runner;
//! - one file per scenario, numbered as in the issues: `rest.rs` (1), `fanout.rs` (2;
//!   `relay.rs` runs its 500 x 200 through websocat's broadcast relay and through
//!   `floor.rs`, this binary as the barest blocking broadcaster, for comparison),
//!   `idle.rs` (3), `churn.rs` (4), `tokens.rs` (5), `footprint.rs` (6), `slowdisk.rs`
//!   (7: a fan-out while rooms are created on a disk whose flushes take 30 ms),
//!   `overload.rs` (8: the heaviest fan-out, five times, with the cores full),
//!   `scale.rs` (9: 9 rooms x 1,000 sockets joining at once, then idle), `guess.rs`
//!   (10: 100 concurrent wrong-password token requests from many forwarded addresses,
//!   next to timed GETs), `soak.rs` (11: 1,000 sockets chatting with churn for ten
//!   minutes at the default limits, from 20 source addresses; only with `--only soak`,
//!   which `make soak` passes, never in a plain `make bench`) and `cluster.rs` (12:
//!   500 x 200 over two nodes sharing a `redis-server` the scenario starts itself, then
//!   one node on Redis beside one on SQLite), `abuse.rs` (13: huge heads, slow clients, a
//!   bcrypt flood and 10,000 full rooms from 127.0.0.1 while 127.0.0.2 times GETs and token
//!   requests) and `smallhost.rs` (14: 1,000 x 50 msg/s with the server in a control group
//!   of half a core and 64 MiB);
//! - `load/stats.rs` (percentiles, formatting) and `load/report.rs` (tables, markdown).
//!
//! Design: plain threads and blocking sockets, like the server; tungstenite is the
//! WebSocket client. Each scenario gets a fresh server so memory and thread figures are not
//! polluted by an earlier one. A latency is never reported for a run that lost messages: a
//! lost message is a failure, not an outlier, and the row says so instead of a number.
//!
//! Arguments (all optional): `--server PATH` (default `$CHITCHAT_BIN`, else
//! `target/release/chitchat`), `--out PATH` (default `BENCHMARKS.md`), `--only
//! rest,fanout,idle,churn,tokens,footprint,slowdisk,overload,scale,guess,cluster,abuse,smallhost` (the
//! default: all of these) or `--only soak`, `--seconds N` (length of each timed run, default 10;
//! slowdisk has two, each overload run one; the guessing flood one; cluster three),
//! `--rest-client auto|wrk|own`, `--no-db` (`db_path: null`: no database; slowdisk,
//! overload and cluster's SQLite node always run with one, scale and the Redis nodes never), `--send-queue-len N` (put in the server's
//! config; default: the server's own), `--fanout 500x200,300x100` (these fan-out shapes,
//! subscribers x messages/s, instead of the four), `--idle-room-size N` (sockets
//! per room in the idle scenario, default 500), `--burn N` (CPU burner threads beside
//! each overload run, default one per core), `--overload-runs N` (default 5),
//! `--scale-idle-seconds N` (how long the scale scenario's sockets stay silent, default
//! 60), `--soak-seconds N` (how long the soak runs, default 600), `--guess-per-address N`
//! (guesses sent from each forwarded address before the next, default 1: a new address
//! every request; 20 also shows the per-address limit), `--glibc-tunables STRING` (`GLIBC_TUNABLES` in every server's environment, e.g.
//! `glibc.malloc.tcache_count=0:glibc.malloc.arena_max=2`), `--prelude CMD` (a command
//! that ran before this one, listed in the report; repeatable). `--bench`, which `cargo
//! bench` adds, is ignored. `--floor-relay ADDR`, alone, makes this binary the floor
//! yardstick instead (`load/floor.rs`); the fan-out starts it so.

// The modules live in benches/load/ so that cargo sees one bench target, `load`.
#[path = "load/abuse.rs"]
mod abuse;
#[path = "load/churn.rs"]
mod churn;
#[path = "load/cluster.rs"]
mod cluster;
#[path = "load/fanout.rs"]
mod fanout;
#[path = "load/floor.rs"]
mod floor;
#[path = "load/footprint.rs"]
mod footprint;
#[path = "load/guess.rs"]
mod guess;
#[path = "load/http.rs"]
mod http;
#[path = "load/idle.rs"]
mod idle;
#[path = "load/overload.rs"]
mod overload;
#[path = "load/relay.rs"]
mod relay;
#[path = "load/report.rs"]
mod report;
#[path = "load/rest.rs"]
mod rest;
#[path = "load/scale.rs"]
mod scale;
#[path = "load/server.rs"]
mod server;
#[path = "load/slowdisk.rs"]
mod slowdisk;
#[path = "load/smallhost.rs"]
mod smallhost;
#[path = "load/soak.rs"]
mod soak;
#[path = "load/stats.rs"]
mod stats;
#[path = "load/tokens.rs"]
mod tokens;
#[path = "load/ws.rs"]
mod ws;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use report::{Context, Machine, Table};
use server::ServerOptions;

/// Errors in the generator are reported, not recovered: a boxed error is enough.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Every scenario `make bench` runs, in report order.
const SCENARIOS: [&str; 13] = [
    "rest",
    "fanout",
    "idle",
    "churn",
    "tokens",
    "footprint",
    "slowdisk",
    "overload",
    "scale",
    "guess",
    "cluster",
    "abuse",
    "smallhost",
];
/// Scenarios that run only when `--only` names them: the soak takes ten minutes.
const ON_REQUEST: [&str; 1] = ["soak"];

/// Which HTTP client drives the REST throughput run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RestClient {
    /// `wrk` when it is installed, else our own.
    Auto,
    /// `wrk`; the scenario fails without it.
    Wrk,
    /// The generator's own keep-alive client.
    Own,
}

struct Args {
    server: PathBuf,
    out: PathBuf,
    only: Vec<String>,
    seconds: f64,
    rest_client: RestClient,
    send_queue_len: Option<usize>,
    no_db: bool,
    preludes: Vec<String>,
    fanout: Option<Vec<String>>,
    idle_room_size: usize,
    burn: usize,
    overload_runs: usize,
    scale_idle_seconds: f64,
    soak_seconds: f64,
    guess_per_address: u64,
    glibc_tunables: Option<String>,
}

fn parse_args() -> Res<Args> {
    let mut args = Args {
        server: std::env::var_os("CHITCHAT_BIN")
            .map_or_else(|| PathBuf::from("target/release/chitchat"), PathBuf::from),
        out: PathBuf::from("BENCHMARKS.md"),
        only: SCENARIOS.iter().map(|s| s.to_string()).collect(),
        seconds: 10.0,
        rest_client: RestClient::Auto,
        send_queue_len: None,
        no_db: false,
        preludes: Vec::new(),
        fanout: None,
        idle_room_size: idle::ROOM_SIZE,
        burn: overload::burn_threads(),
        overload_runs: overload::RUNS,
        scale_idle_seconds: scale::IDLE_SECONDS,
        soak_seconds: soak::SECONDS,
        guess_per_address: guess::PER_ADDRESS,
        glibc_tunables: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--server" => args.server = PathBuf::from(value()?),
            "--out" => args.out = PathBuf::from(value()?),
            "--only" => {
                args.only = value()?.split(',').map(|s| s.trim().to_string()).collect();
                let known = |s: &String| {
                    SCENARIOS.contains(&s.as_str()) || ON_REQUEST.contains(&s.as_str())
                };
                if let Some(bad) = args.only.iter().find(|s| !known(s)) {
                    return Err(format!(
                        "unknown scenario {bad:?}; known: {},{}",
                        SCENARIOS.join(","),
                        ON_REQUEST.join(",")
                    )
                    .into());
                }
            }
            "--seconds" => args.seconds = value()?.parse()?,
            "--rest-client" => {
                args.rest_client = match value()?.as_str() {
                    "auto" => RestClient::Auto,
                    "wrk" => RestClient::Wrk,
                    "own" => RestClient::Own,
                    other => {
                        return Err(format!("--rest-client {other:?}: auto, wrk or own").into())
                    }
                }
            }
            "--send-queue-len" => args.send_queue_len = Some(value()?.parse()?),
            "--no-db" => args.no_db = true,
            "--prelude" => args.preludes.push(value()?),
            "--idle-room-size" => args.idle_room_size = value()?.parse()?,
            "--burn" => args.burn = value()?.parse()?,
            "--overload-runs" => args.overload_runs = value()?.parse()?,
            "--scale-idle-seconds" => args.scale_idle_seconds = value()?.parse()?,
            "--soak-seconds" => args.soak_seconds = value()?.parse()?,
            "--guess-per-address" => args.guess_per_address = value()?.parse()?,
            "--glibc-tunables" => args.glibc_tunables = Some(value()?),
            "--fanout" => {
                args.fanout = Some(value()?.split(',').map(|s| s.trim().to_string()).collect())
            }
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // The floor yardstick is this binary in a child process (see `load/floor.rs`).
    let mut argv = std::env::args().skip(1);
    if let (Some("--floor-relay"), Some(addr)) = (argv.next().as_deref(), argv.next()) {
        return match floor::serve(&addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("floor relay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::from(2);
        }
    };
    let Ok(binary_meta) = std::fs::metadata(&args.server) else {
        eprintln!(
            "load: no server binary at {} (build it with `cargo build --release`, or set CHITCHAT_BIN)",
            args.server.display()
        );
        return ExitCode::from(2);
    };
    let options = ServerOptions {
        binary: args.server.clone(),
        send_queue_len: args.send_queue_len,
        no_db: args.no_db,
        work_dir: PathBuf::from("target/bench"),
        glibc_tunables: args.glibc_tunables.clone(),
        wrapper: Vec::new(),
    };
    let started = Instant::now();
    let load_before = server::load_average();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut commands = args.preludes.clone();
    commands.push(own_command_line());

    let wanted = |name: &str| args.only.iter().any(|s| s == name);
    let mut tables: Vec<Table> = Vec::new();
    let mut version = String::from("unknown");
    let mut run = |name: &str, scenario: &mut dyn FnMut() -> Vec<Table>| {
        if wanted(name) {
            eprintln!("load: {name} ...");
            let t = Instant::now();
            let done = scenario();
            eprintln!("load: {name} done in {:.1} s", t.elapsed().as_secs_f64());
            for table in &done {
                eprint!("{}", report::render_table(table));
            }
            tables.extend(done);
        }
    };
    let seconds = args.seconds;
    run("rest", &mut || {
        let (tables, wrk_command) = rest::run(&options, seconds, args.rest_client);
        commands.extend(wrk_command);
        tables
    });
    run("fanout", &mut || {
        let shapes = match &args.fanout {
            None => fanout::SHAPES.to_vec(),
            Some(names) => names
                .iter()
                .filter_map(|name| fanout::Shape::parse(name))
                .collect(),
        };
        // 500 x 200 also runs through the yardsticks of issue 22: websocat's relay and
        // the floor.
        let relayed = shapes
            .iter()
            .filter(|shape| (shape.subscribers, shape.rate) == (500, 200))
            .flat_map(|shape| {
                [relay::Yardstick::Websocat, relay::Yardstick::Floor]
                    .map(|yardstick| relay::run(yardstick, shape, seconds))
            });
        shapes
            .iter()
            .map(|shape| fanout::run(&options, shape, seconds))
            .collect::<Vec<_>>()
            .into_iter()
            .chain(relayed)
            .collect()
    });
    run("idle", &mut || {
        vec![idle::run(&options, &idle::STEPS, args.idle_room_size)]
    });
    run("churn", &mut || {
        vec![churn::run(&options, churn::THREADS, seconds)]
    });
    run("tokens", &mut || {
        vec![tokens::run(&options, tokens::TOKEN_THREADS, seconds)]
    });
    run("footprint", &mut || {
        let (table, found_version) = footprint::run(&options, binary_meta.len());
        version = found_version.unwrap_or(version.clone());
        vec![table]
    });
    run("slowdisk", &mut || vec![slowdisk::run(&options, seconds)]);
    run("overload", &mut || {
        vec![overload::run(
            &options,
            seconds,
            args.overload_runs,
            args.burn,
        )]
    });
    run("scale", &mut || {
        vec![scale::run(&options, args.scale_idle_seconds)]
    });
    run("guess", &mut || {
        vec![guess::run(
            &options,
            guess::GUESSERS,
            args.guess_per_address,
            seconds,
        )]
    });
    run("cluster", &mut || cluster::run(&options, seconds));
    run("abuse", &mut || vec![abuse::run(&options, seconds)]);
    run("smallhost", &mut || vec![smallhost::run(&options, seconds)]);
    run("soak", &mut || vec![soak::run(&options, args.soak_seconds)]);

    let context = Context {
        machine: Machine::detect(),
        date,
        server: format!(
            "`{}` {}, {} bytes",
            args.server.display(),
            version,
            stats::count(binary_meta.len())
        ),
        commands,
        elapsed_s: started.elapsed().as_secs_f64(),
        load_before,
    };
    let markdown = report::render(&context, &tables);
    if let Err(e) = std::fs::write(&args.out, markdown) {
        eprintln!("load: cannot write {}: {e}", args.out.display());
        return ExitCode::from(1);
    }
    let misses = tables.iter().filter(|t| t.missed()).count();
    eprintln!(
        "load: wrote {} in {:.0} s; {misses} of {} tables have a MISS",
        args.out.display(),
        started.elapsed().as_secs_f64(),
        tables.len()
    );
    ExitCode::SUCCESS
}

/// Creates a room over REST and returns its id.
pub fn create_room(
    addr: std::net::SocketAddr,
    title: &str,
    visibility: &str,
    password: Option<&str>,
) -> Res<u64> {
    let mut body = serde_json::json!({"title": title, "visibility": visibility});
    if let Some(password) = password {
        body["password"] = password.into();
    }
    let response = http::HttpClient::new(addr).post("/chats", &body)?;
    if response.status != 201 {
        return Err(format!(
            "POST /chats answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )
        .into());
    }
    response.json()?["id"]
        .as_u64()
        .ok_or_else(|| "POST /chats: no numeric id".into())
}

/// This run's command line as someone would type it: the generator's path relative to the
/// working directory, without the `--prelude` lines (they are listed separately).
fn own_command_line() -> String {
    let mut argv = std::env::args();
    let program = argv.next().unwrap_or_default();
    let cwd = std::env::current_dir().unwrap_or_default();
    let program = std::path::Path::new(&program)
        .strip_prefix(&cwd)
        .map_or(program.clone(), |p| p.display().to_string());
    let mut words = vec![program];
    while let Some(arg) = argv.next() {
        if arg == "--prelude" {
            argv.next();
        } else {
            words.push(arg);
        }
    }
    words.join(" ")
}

/// How many users the server lists in a room (`GET /chats/<id>`, field `users`).
pub fn listed_users(addr: std::net::SocketAddr, room: u64) -> Res<usize> {
    let response = http::HttpClient::new(addr).get(&format!("/chats/{room}"))?;
    if response.status != 200 {
        return Err(format!("GET /chats/{room} answered {}", response.status).into());
    }
    let users = response.json()?["users"].as_array().map(Vec::len);
    users.ok_or_else(|| format!("GET /chats/{room}: no users array").into())
}
