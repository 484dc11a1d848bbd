//! Scenario 14, a small host (issue 22): the server in a control group capped at half a
//! core and 64 MiB, with 1,000 subscribers and 50 messages a second from the generator,
//! which runs outside the group. Targets: 0 missing, p99 under 100 ms, peak memory (the
//! group's own count, page cache included) under 48 MiB.
//!
//! The group is made with cgroup v1 (`/sys/fs/cgroup/cpu` and `/sys/fs/cgroup/memory`)
//! where the machine has it, else cgroup v2 (`cpu.max`, `memory.max`); making one needs
//! root. Where neither can be used, the table says "skipped" and why. The group is removed
//! when the run ends.

use std::fs;
use std::path::{Path, PathBuf};

use crate::fanout::{drive, Shape, SENDERS};
use crate::report::Table;
use crate::server::{Server, ServerOptions};
use crate::stats::{self, ms};
use crate::Res;

/// The scenario's fan-out.
const SHAPE: Shape = Shape {
    subscribers: 1_000,
    rate: 50,
    p99_target_us: Some(100_000),
};
/// Half a core: 50 ms of CPU in every 100 ms.
const CPU_PERIOD_US: u64 = 100_000;
const CPU_QUOTA_US: u64 = 50_000;
/// The group's memory limit, and the peak the issue asks to stay under.
const MEMORY_LIMIT_BYTES: u64 = 64 * 1024 * 1024;
const MEMORY_TARGET_BYTES: u64 = 48 * 1024 * 1024;

/// A control group the server runs in: one directory per controller (v1) or one (v2).
struct Group {
    dirs: Vec<PathBuf>,
    /// Where the peak memory is read: `memory.max_usage_in_bytes` (v1) or `memory.peak`.
    peak_file: PathBuf,
}

impl Group {
    /// A new group capped at half a core and 64 MiB, or why none can be made here.
    fn create() -> Res<Group> {
        let name = format!("chitchat-bench-{}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup");
        if v1.join("cpu/cpu.cfs_quota_us").exists()
            && v1.join("memory/memory.limit_in_bytes").exists()
        {
            let cpu = v1.join("cpu").join(&name);
            let memory = v1.join("memory").join(&name);
            let group = Group {
                dirs: vec![cpu.clone(), memory.clone()],
                peak_file: memory.join("memory.max_usage_in_bytes"),
            };
            for dir in &group.dirs {
                fs::create_dir(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
            }
            fs::write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
            fs::write(cpu.join("cpu.cfs_quota_us"), CPU_QUOTA_US.to_string())?;
            fs::write(
                memory.join("memory.limit_in_bytes"),
                MEMORY_LIMIT_BYTES.to_string(),
            )?;
            return Ok(group);
        }
        if v1.join("cgroup.controllers").exists() {
            let dir = v1.join(&name);
            fs::create_dir(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
            let group = Group {
                dirs: vec![dir.clone()],
                peak_file: dir.join("memory.peak"),
            };
            fs::write(
                dir.join("cpu.max"),
                format!("{CPU_QUOTA_US} {CPU_PERIOD_US}"),
            )?;
            fs::write(dir.join("memory.max"), MEMORY_LIMIT_BYTES.to_string())?;
            return Ok(group);
        }
        Err("this machine offers neither cgroup v1 (cpu, memory) nor cgroup v2".into())
    }

    /// Moves process `pid`, every thread of it, into the group.
    fn enter(&self, pid: u32) -> Res<()> {
        for dir in &self.dirs {
            fs::write(dir.join("cgroup.procs"), pid.to_string())
                .map_err(|e| format!("cannot move the server into {}: {e}", dir.display()))?;
        }
        Ok(())
    }

    /// The most memory the group has used, in bytes.
    fn peak_bytes(&self) -> Res<u64> {
        let text = fs::read_to_string(&self.peak_file)?;
        Ok(text.trim().parse()?)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for dir in &self.dirs {
            // Empty once the server has exited; a group that lingers is only a directory.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// Runs the scenario.
pub fn run(options: &ServerOptions, seconds: f64) -> Table {
    let mut table = Table::new(
        "14. A small host: half a core and 64 MiB",
        format!(
            "The server alone in a control group capped at half a core and 64 MiB; one public room, {} sockets joined, {} of them sending {} messages/s together for {seconds:.0} s, from the generator outside the group.",
            stats::count(SHAPE.subscribers as u64),
            SENDERS,
            SHAPE.rate
        ),
    );
    let group = match Group::create() {
        Ok(group) => group,
        Err(e) => {
            table.note(format!("skipped: {e}"));
            return table;
        }
    };
    if let Err(e) = measure(options, &group, seconds, &mut table) {
        table.failed(e);
    }
    table
}

fn measure(options: &ServerOptions, group: &Group, seconds: f64, table: &mut Table) -> Res<()> {
    let server = Server::start(options, "smallhost")?;
    group.enter(server.pid)?;
    let outcome = drive(vec![server], "Small host", &SHAPE, SENDERS, seconds, &[])?;
    let figures = &outcome.figures;
    table.check(
        "missing",
        figures.missing.to_string(),
        "0",
        figures.missing == 0,
    );
    let p99 = figures.latency.as_ref().map(|l| l.p99_us);
    table.check(
        "latency p99",
        p99.map_or("no samples".into(), ms),
        "< 100 ms",
        p99.is_some_and(|p99| p99 < 100_000),
    );
    let peak = group.peak_bytes()?;
    table.check(
        "peak memory of the group",
        stats::kib(peak / 1024),
        "< 48 MiB",
        peak < MEMORY_TARGET_BYTES,
    );
    table.info(
        "server CPU per delivery (CPU time / deliveries)",
        outcome.cpu_per_delivery(),
    );
    outcome.cpu.report(table);
    Ok(())
}
