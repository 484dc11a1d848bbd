//! Scenario 6, footprint: what the server costs before anyone uses it.
//!
//! The release binary's size on disk, and the RSS and threads of a fresh process read
//! the moment its ready line arrives (and once more a second later, in case start-up work
//! continues after the line).

use std::thread;
use std::time::Duration;

use crate::report::Table;
use crate::server::{Server, ServerOptions};
use crate::stats;
use crate::Res;

/// Binary size and idle RSS targets, bytes and KiB (issue 21, "A small stack", whose goal
/// for the RSS is 3 MiB).
const TARGET_BINARY_BYTES: u64 = 3 * 1024 * 1024;
const TARGET_RSS_KIB: u64 = 4 * 1024;

/// Runs the scenario; also returns the version the ready line gave.
pub fn run(options: &ServerOptions, binary_bytes: u64) -> (Table, Option<String>) {
    let mut table = Table::new(
        "6. Footprint",
        "The release binary on disk, and a fresh server read from /proc right after its ready line.",
    );
    let mut version = None;
    table.check(
        "release binary size",
        format!(
            "{} bytes ({:.2} MiB)",
            stats::count(binary_bytes),
            binary_bytes as f64 / 1048576.0
        ),
        "<= 3 MiB",
        binary_bytes <= TARGET_BINARY_BYTES,
    );
    if let Err(e) = measure(options, &mut table, &mut version) {
        table.failed(e);
    }
    (table, version)
}

fn measure(options: &ServerOptions, table: &mut Table, version: &mut Option<String>) -> Res<()> {
    let server = Server::start(options, "footprint")?;
    let fresh = server.sample()?;
    *version = Some(server.version.clone());
    let ready_after = server.ready_after;
    thread::sleep(Duration::from_secs(1));
    let later = server.sample()?;
    let clean_exit = server.stop();
    table.info(
        "start to ready line",
        format!("{:.1} ms", ready_after.as_secs_f64() * 1000.0),
    );
    table.check(
        "idle RSS right after start",
        stats::kib(fresh.rss_kib),
        "<= 4 MiB (goal 3 MiB)",
        fresh.rss_kib <= TARGET_RSS_KIB,
    );
    table.info("threads right after start", fresh.threads.to_string());
    table.info(
        "RSS, threads 1 s later",
        format!("{}, {}", stats::kib(later.rss_kib), later.threads),
    );
    table.info(
        "stops cleanly on SIGTERM",
        if clean_exit { "yes" } else { "no" },
    );
    Ok(())
}
