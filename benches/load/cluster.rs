//! Scenario 12, several nodes: the fan-out of scenario 2 (500 subscribers x 200 messages/s)
//! served through Redis, first by two nodes of one chat, then by one node beside one on
//! SQLite.
//!
//! Two nodes (SPEC, "Several nodes (Redis)"): both are started with the same `redis_url`
//! and secret, the room is created over REST on node A, and `fanout::FullRoom` joins the members
//! alternately on A's and B's WebSocket listeners, so each node has 250 of them and two of
//! the four senders (100 messages/s each side). Every member must get every message once,
//! whatever node sent it, and all members must see one order. Per-sender order cannot show
//! that: two members on two nodes could see two senders' messages swapped and each still
//! be in order per sender. So each member also checks that the message ids it gets only
//! rise (Redis numbers a message and publishes it in one script, so the id order is the
//! room's one order), and the members' order hashes, over (sender, number, id) in arrival
//! order, must all be equal: one message under two ids, or two messages in two orders,
//! make two orders.
//!
//! One node, Redis or SQLite: the same load on a single node, once with its store in
//! SQLite (`db_path`) and once in Redis, back to back in the same run, so the price of
//! Redis (a Lua script per send, the fan-out through a subscription even on one node) is
//! read side by side on the same machine in the same state.
//!
//! Each measurement starts a `redis-server` of its own, like tests/cluster.rs: a free port,
//! a scratch directory under `target/bench`, no persistence (`--save "" --appendonly no`),
//! never the system service; a guard kills it when dropped, so a run that fails half-way
//! leaves none behind. Without `redis-server` installed the tables say so in a MISS row
//! (`make redis-server` installs it).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::fanout::{self, Outcome, Shape};
use crate::report::Table;
use crate::server::{self, Server, ServerOptions};
use crate::stats::{self, ms};
use crate::Res;

/// The load of both measurements: scenario 2's 500 x 200, without its p99 target (which
/// is for one node on SQLite; here the figure is what is being found out).
const SHAPE: Shape = Shape {
    subscribers: 500,
    rate: 200,
    p99_target_us: None,
};
/// How long `redis-server` may take to answer PING.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs both measurements: two nodes, then one node on SQLite and on Redis.
pub fn run(options: &ServerOptions, seconds: f64) -> Vec<Table> {
    let each = format!(
        "{} subscribers x {} messages/s",
        stats::count(SHAPE.subscribers as u64),
        stats::count(u64::from(SHAPE.rate))
    );
    let mut two = Table::new(
        format!("12. Two nodes over Redis, {each}"),
        format!(
            "Two nodes with the same `redis_url`, one public room created over REST on node A, {each} for {seconds:.0} s: \
             the sockets join alternately on node A and node B, so each node has half of them and {} of the {} senders. \
             Latency runs from a message's scheduled send time to its arrival. In the CPU row, \"server\" is node A.",
            fanout::SENDERS / 2,
            fanout::SENDERS,
        ),
    );
    if let Err(e) = two_nodes(options, seconds, &mut two) {
        two.failed(e);
    }
    let mut one = Table::new(
        format!("12. One node, SQLite or Redis, {each}"),
        format!(
            "The fan-out of scenario 2 ({each} for {seconds:.0} s, one node) twice, back to back: \
             the node keeping its rooms and history in SQLite (`db_path`), then in Redis (`redis_url`). \
             Each cell reads SQLite / Redis."
        ),
    );
    if let Err(e) = one_node(options, seconds, &mut one) {
        one.failed(e);
    }
    vec![two, one]
}

/// The two-node fan-out and its rows.
fn two_nodes(options: &ServerOptions, seconds: f64, table: &mut Table) -> Res<()> {
    // Declared first, so dropped last: the nodes stop before their Redis goes.
    let redis = Redis::start(&options.work_dir, "cluster-two")?;
    let a = node(options, &redis, "cluster-a")?;
    let b = node(options, &redis, "cluster-b")?;
    let companions = [("node B", b.pid), ("redis-server", redis.pid())];
    let outcome = fanout::drive(
        vec![a, b],
        "Two nodes",
        &SHAPE,
        fanout::SENDERS,
        seconds,
        &companions,
    )?;
    let redis_after = server::sample(redis.pid())?;

    table.info("redis-server", redis_version());
    let half = |n: usize| stats::count((n / 2) as u64);
    table.info(
        "subscribers (of which send) on node A / node B",
        format!(
            "{} ({}) / {} ({})",
            half(SHAPE.subscribers),
            half(fanout::SENDERS),
            half(SHAPE.subscribers),
            half(fanout::SENDERS)
        ),
    );
    outcome.report(
        table,
        None,
        "users node A; node B list in the room, before / after",
        "node A RSS, threads while the room was full",
    );
    table.info(
        "redis-server RSS at the end",
        stats::kib(redis_after.rss_kib),
    );
    for (logged, who) in outcome.logged.iter().zip(["node A", "node B"]) {
        logged.note_as(table, who);
    }
    Ok(())
}

/// One node on SQLite, then one on Redis, and their rows side by side.
fn one_node(options: &ServerOptions, seconds: f64, table: &mut Table) -> Res<()> {
    // First, so that a missing redis-server stops the comparison before its SQLite half.
    let redis = Redis::start(&options.work_dir, "cluster-one")?;
    // SQLite whatever `--no-db` says: it is one side of the comparison.
    let mut sqlite_options = options.clone();
    sqlite_options.no_db = false;
    let sqlite_node = Server::start(&sqlite_options, "cluster-sqlite")?;
    let sqlite = fanout::drive(
        vec![sqlite_node],
        "One node on SQLite",
        &SHAPE,
        fanout::SENDERS,
        seconds,
        &[],
    )?;
    let redis_node = node(options, &redis, "cluster-redis")?;
    let redis_cpu = [("redis-server", redis.pid())];
    let on_redis = fanout::drive(
        vec![redis_node],
        "One node on Redis",
        &SHAPE,
        fanout::SENDERS,
        seconds,
        &redis_cpu,
    )?;

    let both =
        |cell: &dyn Fn(&Outcome) -> String| format!("{} / {}", cell(&sqlite), cell(&on_redis));
    let all = |ok: &dyn Fn(&Outcome) -> bool| ok(&sqlite) && ok(&on_redis);
    table.info(
        "time to connect and join all",
        both(&|o| format!("{:.1} s", o.join_time.as_secs_f64())),
    );
    table.info(
        "delivered (of expected)",
        both(&|o| {
            let f = &o.figures;
            format!(
                "{} of {}",
                stats::count(f.distinct + f.duplicates),
                stats::count(f.expected)
            )
        }),
    );
    table.check(
        "missing",
        both(&|o| stats::count(o.figures.missing)),
        "0 / 0",
        all(&|o| o.figures.missing == 0),
    );
    table.check(
        "duplicates",
        both(&|o| stats::count(o.figures.duplicates)),
        "0 / 0",
        all(&|o| o.figures.duplicates == 0),
    );
    table.check(
        "out of order: per sender, against the room's ids",
        both(&|o| {
            format!(
                "{}, {}",
                o.figures.out_of_order, o.figures.out_of_room_order
            )
        }),
        "0, 0 / 0, 0",
        all(&|o| o.figures.out_of_order + o.figures.out_of_room_order == 0),
    );
    table.check(
        "sockets closed or failed during the run",
        both(&|o| (o.figures.closed.len() + o.figures.errors.len()).to_string()),
        "0 / 0",
        all(&|o| o.figures.closed.is_empty() && o.figures.errors.is_empty()),
    );
    for (figure, pick) in [
        ("latency p50", (|s| s.p50_us) as fn(&stats::Summary) -> u64),
        ("latency p99", |s| s.p99_us),
        ("latency max", |s| s.max_us),
    ] {
        table.info(
            figure,
            both(&|o| {
                o.figures
                    .shown_latency()
                    .map_or_else(|why| why, |s| ms(pick(&s)))
            }),
        );
    }
    table.info(
        "deliveries/s",
        both(&|o| stats::rate(o.figures.deliveries_per_s)),
    );
    // A node makes its own speakers wait while one of its readers is behind, its channel full
    // (SPEC: no reader loses an event), so readers that cannot keep up show here as well
    // as in the latency. A subscription that falls behind shows only in the latency: a
    // speaker is answered once Redis has its message, before any node delivers it.
    table.info(
        "senders' worst lateness against schedule",
        both(&|o| ms(o.figures.worst_late_us)),
    );
    sqlite.listed_rows(
        table,
        "users the SQLite node lists in the room, before / after",
    );
    on_redis.listed_rows(
        table,
        "users the Redis node lists in the room, before / after",
    );
    sqlite.cpu.report_as(table, "SQLite: ");
    on_redis.cpu.report_as(table, "Redis: ");
    for (outcome, who) in [(&sqlite, "the SQLite node"), (&on_redis, "the Redis node")] {
        for logged in &outcome.logged {
            logged.note_as(table, who);
        }
    }
    Ok(())
}

/// A node of the chat `redis` serves: the bench's usual server with `redis_url` set and no
/// `db_path` (a node with Redis does not use it; SPEC, Several nodes). Nodes need nothing
/// else of their own: both listeners are on port 0 and each node makes up its own id.
fn node(options: &ServerOptions, redis: &Redis, name: &str) -> Res<Server> {
    let mut extra = serde_json::Map::new();
    extra.insert("redis_url".into(), redis.url().into());
    extra.insert("db_path".into(), serde_json::Value::Null);
    Server::start_with(options, name, &extra)
}

/// `redis-server --version`'s version (`v=7.0.15`), for the report.
fn redis_version() -> String {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let word = text.split_whitespace().find(|w| w.starts_with("v="))?;
            Some(word.trim_start_matches("v=").to_string())
        })
        .unwrap_or_else(|| "unknown version".into())
}

/// A `redis-server` of the scenario's own; killed, and its directory removed, on drop.
struct Redis {
    child: Child,
    port: u16,
    /// Its `--dir`: nothing is written there with persistence off, but Redis wants one,
    /// and it must not be the system service's.
    dir: PathBuf,
}

impl Redis {
    /// Starts one named `name` on a free port and waits until it answers PING. Its output
    /// goes to `<work_dir>/<name>.redis.log`.
    fn start(work_dir: &Path, name: &str) -> Res<Redis> {
        std::fs::create_dir_all(work_dir)?;
        let work_dir = work_dir.canonicalize()?;
        let dir = work_dir.join(format!("{name}.{}.redis", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let log_path = work_dir.join(format!("{name}.redis.log"));
        let log = File::create(&log_path)?;
        let port = free_port()?;
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(if e.kind() == std::io::ErrorKind::NotFound {
                    "redis-server is not installed (`make redis-server` installs Debian's)".into()
                } else {
                    format!("cannot start redis-server: {e}").into()
                });
            }
        };
        // From here on the guard kills it, whatever goes wrong.
        let mut redis = Redis { child, port, dir };
        let deadline = Instant::now() + REDIS_READY_TIMEOUT;
        while !redis.answers_ping() {
            if let Some(status) = redis.child.try_wait()? {
                return Err(format!(
                    "redis-server exited ({status}) before answering PING; see {}",
                    log_path.display()
                )
                .into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server did not answer PING within {REDIS_READY_TIMEOUT:?}; see {}",
                    log_path.display()
                )
                .into());
            }
            // Polling a process that is starting, with a deadline.
            thread::sleep(Duration::from_millis(10));
        }
        Ok(redis)
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 5];
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .is_ok()
            && stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG"
    }

    /// The `redis_url` of its database 0.
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now (the kernel's pick for port 0). Another process
/// could take it before Redis binds it; Redis then exits and the start says so.
fn free_port() -> Res<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
