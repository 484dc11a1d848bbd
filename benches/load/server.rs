//! The server under test: one real release `chitchat` process per scenario.
//!
//! Each scenario gets a fresh process so that its memory and thread figures start from the
//! same place and no scenario inherits another's rooms or sockets. The process is started
//! with a temporary config (both listeners on port 0, a new database file of its own,
//! console logging at `warn`, bcrypt at the production cost 10; everything else at the
//! server's defaults), and its ports are read back from the one ready line it prints.
//! Everything it logs is kept under `target/bench/` so a MISS can be explained afterwards.
//!
//! Memory, threads and CPU time are read from `/proc/<pid>/status` and `/proc/<pid>/stat`,
//! the same figures `ps` and `top` show, so anyone can check them by hand.
//!
//! A scenario may start the server under a wrapper (`strace`, for the slow disk): the
//! wrapper is the process spawned, the server its child. [`Server::pid`] is always the
//! server's own process, so `/proc` figures and SIGTERM go to it and not to the wrapper,
//! and stopping or dropping a [`Server`] ends both.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::Res;

/// How long a server may take to print its ready line before the scenario gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What every server in the run shares: which binary, and where its files go.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The release binary under test.
    pub binary: PathBuf,
    /// `send_queue_len` to put in the config; `None` keeps the server's own default.
    pub send_queue_len: Option<usize>,
    /// Run without a database (`db_path: null`), to compare with persistence on.
    pub no_db: bool,
    /// Where configs and logs are written (`target/bench`).
    pub work_dir: PathBuf,
    /// `GLIBC_TUNABLES` for the server's environment (`--glibc-tunables`), to compare
    /// allocator settings side by side; `None` leaves the environment as it is.
    pub glibc_tunables: Option<String>,
    /// A command the server runs under, e.g. `strace -f ...`: its words come before the
    /// server's path. Empty: the server is spawned directly.
    pub wrapper: Vec<String>,
}

/// A running server process; killed on drop if [`Server::stop`] was not called.
pub struct Server {
    /// The process spawned: the server, or the wrapper it runs under.
    child: Child,
    /// The server's own process id, for `/proc` and `kill` (the wrapper's child when there
    /// is a wrapper).
    pub pid: u32,
    /// The REST listener, as the ready line tells it.
    pub http: SocketAddr,
    /// The WebSocket listener, as the ready line tells it.
    pub ws: SocketAddr,
    /// The version from the ready line.
    pub version: String,
    /// From spawn to the ready line.
    pub ready_after: Duration,
    stdout_log: Option<JoinHandle<()>>,
    logs: [PathBuf; 2],
    db_path: PathBuf,
}

/// One reading of a process's `/proc` figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// Resident memory (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Threads (`Threads`).
    pub threads: u64,
    /// User plus system CPU time, in clock ticks (`utime + stime` of `/proc/<pid>/stat`).
    pub cpu_ticks: u64,
    /// CPU time of its children that have been waited for (`cutime + cstime`): `wrk`,
    /// once it has finished, for the generator.
    pub children_ticks: u64,
}

/// What the server has logged so far.
#[derive(Debug, Default)]
pub struct Logged {
    /// Log lines at `WARN`.
    pub warnings: usize,
    /// Log lines at `ERROR`.
    pub errors: usize,
    /// The first few distinct warning or error messages, timestamps stripped.
    pub samples: Vec<String>,
}

impl Server {
    /// Writes a config named after the scenario, starts the binary and waits for its ready
    /// line: `ChitChat <version> started at http://<addr> (ws://<addr>)`.
    pub fn start(options: &ServerOptions, name: &str) -> Res<Server> {
        Server::start_with(options, name, &serde_json::Map::new())
    }

    /// [`Server::start`] with `extra` keys added to the config (they win over the usual
    /// ones). A server that does not know one of them exits with status 2 before its ready
    /// line; [`rejected_key`] then names the key.
    pub fn start_with(
        options: &ServerOptions,
        name: &str,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Res<Server> {
        std::fs::create_dir_all(&options.work_dir)?;
        let work_dir = options.work_dir.canonicalize()?;
        let config_path = work_dir.join(format!("{name}.json"));
        // A database of its own, new each time and removed at the end: every scenario
        // starts from the one room a new server has, never touches a chitchat.db someone
        // keeps in the repository, and never meets a server left over from another run.
        let db_path = work_dir.join(format!("{name}.{}.db", std::process::id()));
        remove_database(&db_path);
        let mut config = serde_json::json!({
            "address": "127.0.0.1:0",
            "ws_address": "127.0.0.1:0",
            "db_path": db_path,
            "log_file": null,
            "log_level": "warn",
            "secret_key": "bench",
            "bcrypt_cost": 10,
            // Every client of the load generator is 127.0.0.1, and each scenario floods on
            // purpose: the limits (SPEC, Limits) would measure themselves, not the server.
            "max_connections": 0,
            "max_connections_per_ip": 0,
            "token_attempts_per_minute": 0,
            "rooms_per_minute": 0,
            "msgs_per_second": 0,
            "bcrypt_queue_len": 0,
            "max_http_connections_per_ip": 0,
            "bcrypt_per_ip": 0,
        });
        if let Some(len) = options.send_queue_len {
            config["send_queue_len"] = len.into();
        }
        if options.no_db {
            config["db_path"] = serde_json::Value::Null;
        }
        for (key, value) in extra {
            config[key] = value.clone();
        }
        loop {
            let launched = Server::launch(options, name, &config_path, &config, &db_path);
            match (launched, rejected_key(options, name)) {
                // A server from before a limit existed (the "before" of a before-and-after
                // run) refuses its key; it has no such limit either, so it runs without it.
                (Err(_), Some(key)) if !extra.contains_key(&key) && config.get(&key).is_some() => {
                    eprintln!(
                        "bench: {name}: the server does not know `{key}`: started without it"
                    );
                    if let Some(keys) = config.as_object_mut() {
                        keys.remove(&key);
                    }
                }
                (launched, _) => return launched,
            }
        }
    }

    /// Writes `config` to `config_path`, starts the binary with it and waits for its ready
    /// line.
    fn launch(
        options: &ServerOptions,
        name: &str,
        config_path: &Path,
        config: &serde_json::Value,
        db_path: &Path,
    ) -> Res<Server> {
        std::fs::write(config_path, serde_json::to_vec_pretty(config)?)?;
        let logs = [
            options.work_dir.join(format!("{name}.stdout.log")),
            options.work_dir.join(format!("{name}.stderr.log")),
        ];

        let started = Instant::now();
        let mut command = match options.wrapper.split_first() {
            None => Command::new(&options.binary),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&options.binary);
                command
            }
        };
        if let Some(tunables) = &options.glibc_tunables {
            command.env("GLIBC_TUNABLES", tunables);
        }
        let mut child = command
            .arg("--config")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(File::create(&logs[1])?))
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", options.binary.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the server's stdout was not piped")?;
        let mut stdout_file = File::create(&logs[0])?;
        let (ready_tx, ready_rx) = mpsc::channel();
        // The ready line goes to us; everything after it (simplelog writes warnings to
        // stdout) is copied to a file, and reading it keeps the pipe from filling up.
        let stdout_log = thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = writeln!(stdout_file, "{first}");
                let _ = ready_tx.send(first);
            }
            for line in lines.map_while(Result::ok) {
                let _ = writeln!(stdout_file, "{line}");
            }
        });
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait()?;
                return Err(format!(
                    "no ready line from {} ({status}); see {}",
                    options.binary.display(),
                    logs[1].display()
                )
                .into());
            }
        };
        let ready_after = started.elapsed();
        let parsed = parse_ready_line(&line).and_then(|parts| {
            // The ready line comes from the server itself, so by now a wrapper has
            // started it and it is the wrapper's one child.
            let pid = if options.wrapper.is_empty() {
                child.id()
            } else {
                only_child(child.id())?
            };
            Ok((parts, pid))
        });
        let ((version, http, ws), pid) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Server {
            pid,
            child,
            http,
            ws,
            version,
            ready_after,
            stdout_log: Some(stdout_log),
            logs,
            db_path: db_path.to_path_buf(),
        })
    }

    /// The server's memory, threads and CPU time now.
    pub fn sample(&self) -> Res<ProcSample> {
        sample(self.pid)
    }

    /// The wrapper's process id, when the server runs under one.
    pub fn wrapper_pid(&self) -> Option<u32> {
        (self.pid != self.child.id()).then(|| self.child.id())
    }

    /// Open file descriptors of the server (entries of `/proc/<pid>/fd`).
    pub fn descriptors(&self) -> Res<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid))?.count())
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL to the server, when it is not the process we spawned (a wrapper that is
    /// killed does not always take its child with it).
    fn kill_wrapped(&self) {
        if self.pid != self.child.id() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.pid.to_string())
                .status();
        }
    }

    /// Counts the warnings and errors logged so far. Read it before tearing a scenario's
    /// clients down: the teardown itself makes the server log (slow readers, leaves).
    pub fn logged(&self) -> Logged {
        let mut logged = Logged::default();
        for path in &self.logs {
            count_log_lines(path, &mut logged);
        }
        logged
    }

    /// SIGTERM (the way an operator stops it), then SIGKILL after [`STOP_TIMEOUT`]; returns
    /// whether it exited with status 0 in time.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        let clean = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.success(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.kill_wrapped();
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break false;
                }
            }
        };
        if let Some(handle) = self.stdout_log.take() {
            let _ = handle.join();
        }
        remove_database(&self.db_path);
        clean
    }
}

impl Logged {
    /// A note under `table` when anything was logged at `WARN` or above.
    pub fn note(&self, table: &mut crate::report::Table) {
        self.note_as(table, "the server");
    }

    /// [`Logged::note`] naming the server `who` (`node B`), when a table has several.
    pub fn note_as(&self, table: &mut crate::report::Table, who: &str) {
        if self.warnings + self.errors > 0 {
            table.note(format!(
                "During the measurement {who} logged {} warnings and {} errors, e.g. {:?}.",
                self.warnings, self.errors, self.samples
            ));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_wrapped();
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        remove_database(&self.db_path);
    }
}

/// The config key a server named `name` refused at start ("key `trusted_proxies`: unknown
/// key"), read from its console log; `None` when it refused none.
pub fn rejected_key(options: &ServerOptions, name: &str) -> Option<String> {
    let log = std::fs::read_to_string(options.work_dir.join(format!("{name}.stderr.log"))).ok()?;
    log.lines().find_map(|line| {
        let (_, rest) = line.split_once("key `")?;
        let (key, problem) = rest.split_once('`')?;
        problem.contains("unknown key").then(|| key.to_string())
    })
}

/// The ids of `pid`'s threads named `name` (`/proc/<pid>/task/*/comm`).
pub fn threads_named(pid: u32, name: &str) -> Res<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let id = entry.file_name().to_str().and_then(|n| n.parse().ok());
        if let (true, Some(id)) = (comm.trim() == name, id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// How many of `pid`'s threads `tids` are in state R (running, or runnable and waiting
/// for a core) now, from `/proc/<pid>/task/<tid>/stat`.
pub fn running_threads(pid: u32, tids: &[u32]) -> usize {
    tids.iter()
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().next().map(|state| state == "R")
                })
                .unwrap_or(false)
        })
        .count()
}

/// The one child process of `parent`, found by scanning `/proc/*/stat` for its parent id.
fn only_child(parent: u32) -> Res<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the parenthesised command name: state, then the parent's id.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    match children.as_slice() {
        [only] => Ok(*only),
        other => Err(format!(
            "the wrapper (pid {parent}) has {} children, not 1",
            other.len()
        )
        .into()),
    }
}

/// Removes a server's database and the files SQLite and ChitChat keep beside it.
fn remove_database(db_path: &Path) {
    for suffix in ["", "-wal", "-shm", ".lock"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
    }
}

/// Splits the ready line into version, REST address and WebSocket address.
pub fn parse_ready_line(line: &str) -> Res<(String, SocketAddr, SocketAddr)> {
    let bad = || format!("unexpected ready line {line:?}");
    let rest = line.trim().strip_prefix("ChitChat ").ok_or_else(bad)?;
    let (version, rest) = rest.split_once(" started at http://").ok_or_else(bad)?;
    let (http, rest) = rest.split_once(" (ws://").ok_or_else(bad)?;
    let ws = rest.strip_suffix(')').ok_or_else(bad)?;
    Ok((
        version.to_string(),
        http.parse().map_err(|_| bad())?,
        ws.parse().map_err(|_| bad())?,
    ))
}

/// Reads `VmRSS` and `Threads` from `/proc/<pid>/status` and CPU time from `/proc/<pid>/stat`.
pub fn sample(pid: u32) -> Res<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Res<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))?;
        let value = line.split_whitespace().nth(1).ok_or("empty field")?;
        Ok(value.parse()?)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name start at field 3 (state); utime and
    // stime are fields 14 and 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("bad /proc stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let tick = |i: usize| -> Res<u64> { Ok(fields.get(i).ok_or("short /proc stat")?.parse()?) };
    Ok(ProcSample {
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
        cpu_ticks: tick(11)? + tick(12)?,
        children_ticks: tick(13)? + tick(14)?,
    })
}

/// Clock ticks per second for `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU used between two samples, as a percentage of one core over `wall`.
pub fn cpu_percent(before: &ProcSample, after: &ProcSample, wall: Duration) -> f64 {
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64;
    100.0 * ticks / clock_ticks_per_second() / wall.as_secs_f64().max(1e-9)
}

fn count_log_lines(path: &Path, report: &mut Logged) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let level = if line.contains("WARN") {
            &mut report.warnings
        } else if line.contains("ERROR") {
            &mut report.errors
        } else {
            continue;
        };
        *level += 1;
        // Drop the timestamp so repeats of one message collapse into one sample.
        let message = line
            .split_once(']')
            .map_or(line, |(_, m)| m)
            .trim()
            .to_string();
        let message: String = message.chars().take(120).collect();
        if report.samples.len() < 3 && !report.samples.contains(&message) {
            report.samples.push(message);
        }
    }
}

/// The whole machine's CPU so far, from `/proc/stat`.
#[derive(Clone, Copy, Default)]
struct MachineStat {
    /// Busy time in clock ticks, summed over cores (the first line less idle and iowait).
    busy: u64,
    /// All time in clock ticks, summed over cores.
    total: u64,
    /// Context switches so far (`ctxt`).
    switches: u64,
}

fn machine_stat() -> MachineStat {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let switches = stat
        .lines()
        .find_map(|l| l.strip_prefix("ctxt "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    MachineStat {
        busy: total.saturating_sub(idle),
        total,
        switches,
    }
}

/// Where the machine's CPU went during a measured window: the server, the processes
/// serving beside it, this generator, and everything else. "Everything else" should be
/// near zero; when it is not, another job was competing for the cores and the figures of
/// that window are suspect.
pub struct CpuWindow {
    started: Instant,
    server: ProcSample,
    generator: ProcSample,
    /// Processes that serve with the server (the wrapper it runs under, the other nodes
    /// of its chat, Redis): each one's name, pid and CPU ticks then.
    companions: Vec<(String, u32, u64)>,
    machine: MachineStat,
}

impl CpuWindow {
    /// Starts a window now; the server's wrapper, if it has one, is counted apart.
    pub fn start(server: &Server) -> Res<CpuWindow> {
        CpuWindow::start_with(server, &[])
    }

    /// [`CpuWindow::start`] with `companions` (name, pid), e.g. `("redis-server", pid)`,
    /// each counted apart and not among the other processes.
    pub fn start_with(server: &Server, companions: &[(&str, u32)]) -> Res<CpuWindow> {
        let wrapper = server.wrapper_pid().map(|pid| ("its wrapper", pid));
        let companions = wrapper
            .into_iter()
            .chain(companions.iter().copied())
            .map(|(name, pid)| {
                let ticks = sample(pid).map_or(0, |s| s.cpu_ticks);
                (name.to_string(), pid, ticks)
            })
            .collect();
        Ok(CpuWindow {
            started: Instant::now(),
            server: server.sample()?,
            generator: sample(std::process::id())?,
            companions,
            machine: machine_stat(),
        })
    }

    /// Ends the window: where the CPU went, and the server's sample at the end.
    pub fn finish(&self, server: &Server) -> Res<(CpuShares, ProcSample)> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let server_now = server.sample()?;
        let generator_now = sample(std::process::id())?;
        let per_core = |ticks: u64| 100.0 * ticks as f64 / clock_ticks_per_second() / wall;
        let server_ticks = server_now.cpu_ticks.saturating_sub(self.server.cpu_ticks);
        let generator_ticks = (generator_now.cpu_ticks + generator_now.children_ticks)
            .saturating_sub(self.generator.cpu_ticks + self.generator.children_ticks);
        let companion_ticks: Vec<(String, u64)> = self
            .companions
            .iter()
            .map(|(name, pid, before)| {
                let ticks = sample(*pid).map_or(0, |s| s.cpu_ticks.saturating_sub(*before));
                (name.clone(), ticks)
            })
            .collect();
        let now = machine_stat();
        let machine = now.busy.saturating_sub(self.machine.busy);
        let total = now.total.saturating_sub(self.machine.total).max(1);
        let ours =
            server_ticks + generator_ticks + companion_ticks.iter().map(|(_, t)| t).sum::<u64>();
        let shares = CpuShares {
            companions: companion_ticks
                .into_iter()
                .map(|(name, ticks)| (name, per_core(ticks)))
                .collect(),
            switches_per_s: now.switches.saturating_sub(self.machine.switches) as f64 / wall,
            host_idle: 100.0 - 100.0 * machine as f64 / total as f64,
            server: per_core(server_ticks),
            generator: per_core(generator_ticks),
            other: per_core(machine.saturating_sub(ours)),
        };
        Ok((shares, server_now))
    }
}

/// CPU used during a window, in percent of one core.
#[derive(Clone, Debug)]
pub struct CpuShares {
    /// The server process.
    pub server: f64,
    /// This generator, with `wrk` when it ran.
    pub generator: f64,
    /// The processes serving beside the server, by name: the wrapper it runs under
    /// (`strace`), the other nodes of its chat, Redis.
    pub companions: Vec<(String, f64)>,
    /// Every other process on the machine.
    pub other: f64,
    /// Context switches per second, whole machine (`ctxt` in `/proc/stat`): with a thread
    /// per socket on both sides, most of the cost of a delivery is here.
    pub switches_per_s: f64,
    /// Idle time of the whole machine (idle plus iowait), in percent of all its cores:
    /// near 0 when the cores are full.
    pub host_idle: f64,
}

impl CpuShares {
    /// Other processes above this share of one core make a window's figures suspect.
    const OTHER_LIMIT: f64 = 20.0;

    /// Adds the CPU row to `table`, and a warning note when other processes competed.
    pub fn report(&self, table: &mut crate::report::Table) {
        self.report_as(table, "");
    }

    /// [`CpuShares::report`] with each figure's name starting with `prefix`.
    pub fn report_as(&self, table: &mut crate::report::Table, prefix: &str) {
        let names: String = self
            .companions
            .iter()
            .map(|(name, _)| format!("{name} / "))
            .collect();
        let shares: String = self
            .companions
            .iter()
            .map(|(_, share)| format!("{share:.0} % / "))
            .collect();
        table.info(
            &format!(
                "{prefix}CPU: server / {names}load generator / other processes (100 % = one core)"
            ),
            format!(
                "{:.0} % / {shares}{:.0} % / {:.0} %",
                self.server, self.generator, self.other
            ),
        );
        table.info(
            &format!("{prefix}context switches/s (whole machine)"),
            crate::stats::rate(self.switches_per_s),
        );
        if self.other > Self::OTHER_LIMIT {
            table.note(format!(
                "Other processes used {:.0} % of a core during this run: the machine was not quiet, so these figures understate the server.",
                self.other
            ));
        }
    }
}

/// `/proc/loadavg`'s three load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resident memory by kind of mapping: (file name or `anonymous`, mapping size in KiB) ->
/// (mappings, RSS KiB). Thread stacks show up as many anonymous mappings of one size (the
/// stack size), malloc arenas as a few large ones.
pub type RssGroups = std::collections::BTreeMap<(String, u64), (u64, u64)>;

/// Reads [`RssGroups`] from `/proc/<pid>/smaps`.
pub fn rss_groups(pid: u32) -> Res<RssGroups> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut groups = RssGroups::new();
    let mut current: Option<(String, u64)> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-') {
            let parse = |hex: &str| u64::from_str_radix(hex, 16).unwrap_or(0);
            let size = parse(end).saturating_sub(parse(start)) / 1024;
            let name = words.nth(4).unwrap_or("anonymous");
            let name = name.rsplit('/').next().unwrap_or(name).to_string();
            current = Some((name, size));
        } else if first == "Rss:" {
            let rss: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            if let Some(key) = &current {
                let entry = groups.entry(key.clone()).or_default();
                entry.0 += 1;
                entry.1 += rss;
            }
        }
    }
    Ok(groups)
}

/// The `top` groups whose RSS grew most from `before` to `after`, as
/// `+count x size KiB name: +rss KiB`.
pub fn rss_growth(before: &RssGroups, after: &RssGroups, top: usize) -> String {
    let mut growth: Vec<(i64, i64, &(String, u64))> = after
        .iter()
        .map(|(key, (count, rss))| {
            let (count0, rss0) = before.get(key).copied().unwrap_or((0, 0));
            let delta = |a: u64, b: u64| {
                i64::try_from(a).unwrap_or(i64::MAX) - i64::try_from(b).unwrap_or(i64::MAX)
            };
            (delta(*rss, rss0), delta(*count, count0), key)
        })
        .collect();
    growth.sort_by_key(|(rss, _, _)| std::cmp::Reverse(*rss));
    growth
        .iter()
        .take(top)
        .map(|(rss, count, (name, size))| format!("{count:+} x {size} KiB {name}: {rss:+} KiB"))
        .collect::<Vec<_>>()
        .join("; ")
}
