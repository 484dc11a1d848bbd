//! Scenario 2, fan-out: many sockets in one room, a few of them sending on a schedule.
//!
//! All subscribers join one fresh public room, each read by its own thread (see `ws.rs`).
//! The first [`SENDERS`] subscribers also send: together `rate` messages a second, each
//! sender on its own fixed schedule (message `i` is due at `t0 + offset + i * period`),
//! so a sender that falls behind catches up instead of drifting, and its lateness is
//! reported. Every subscriber, senders included, must receive every message exactly once
//! and in order (SPEC: the sender is included; one order for the whole room).
//!
//! Latency is measured from a message's *scheduled* send time to its arrival, so a sender
//! held up by a busy machine shows up as latency rather than hiding it. No latency is
//! reported when any delivery is missing.
//!
//! The run starts only after every join has reached every socket (n(n+1)/2 join events),
//! so the join storm does not land inside the measured window.
//!
//! The pieces are shared with the scenarios that put a fan-out under other pressure
//! (`slowdisk.rs`, `overload.rs`) or spread it over several nodes (`cluster.rs`):
//! [`FullRoom`] joins the room, sends one phase at a time and waits for its deliveries;
//! [`Figures`] sums up one phase from the members' tallies; [`drive`] does one whole run
//! of this scenario against one server or the nodes of one chat.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crate::report::Table;
use crate::server::{CpuShares, CpuWindow, Logged, ProcSample, Server, ServerOptions};
use crate::stats::{self, ms};
use crate::ws::{self, wait_until, Crowd, Socket, Tally};
use crate::Res;

/// One fan-out configuration.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Sockets joined to the room.
    pub subscribers: usize,
    /// Messages per second, all senders together.
    pub rate: u32,
    /// p99 target, µs, where the issue sets one.
    pub p99_target_us: Option<u64>,
}

/// The configurations the issue asks for.
pub const SHAPES: [Shape; 4] = [
    Shape {
        subscribers: 100,
        rate: 200,
        p99_target_us: None,
    },
    Shape {
        subscribers: 500,
        rate: 200,
        p99_target_us: Some(10_000),
    },
    Shape {
        subscribers: 500,
        rate: 1_000,
        p99_target_us: Some(50_000),
    },
    Shape {
        subscribers: 2_000,
        rate: 50,
        p99_target_us: None,
    },
];

impl Shape {
    /// `500x200`: 500 subscribers, 200 messages/s; the target is the when the shape
    /// is one of [`SHAPES`].
    pub fn parse(name: &str) -> Option<Shape> {
        let (subscribers, rate) = name.split_once('x')?;
        let (subscribers, rate) = (subscribers.parse().ok()?, rate.parse().ok()?);
        let known = SHAPES
            .iter()
            .find(|s| s.subscribers == subscribers && s.rate == rate);
        let p99_target_us = known.and_then(|s| s.p99_target_us);
        (subscribers > 0 && rate > 0).then_some(Shape {
            subscribers,
            rate,
            p99_target_us,
        })
    }
}

/// Subscribers that also send.
pub const SENDERS: usize = 4;
/// How long the whole room may take to join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// After the last send, how long deliveries may stall before the rest count as missing...
const DRAIN_STALL: Duration = Duration::from_secs(3);
/// ...and how long they may trickle in at all.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Runs one configuration.
pub fn run(options: &ServerOptions, shape: &Shape, seconds: f64) -> Table {
    let senders = SENDERS.min(shape.subscribers);
    let mut table = Table::new(
        format!("2. Fan-out, {} subscribers x {} messages/s", stats::count(shape.subscribers as u64), stats::count(u64::from(shape.rate))),
        format!(
            "One public room, {} sockets joined, each read by its own thread; {senders} of them also send, together {} messages/s on a fixed schedule for {seconds:.0} s. \
             Latency runs from a message's scheduled send time to its arrival at a subscriber.",
            stats::count(shape.subscribers as u64),
            stats::count(u64::from(shape.rate)),
        ),
    );
    if let Err(e) = measure(options, shape, senders, seconds, &mut table) {
        table.failed(e);
    }
    table
}

/// What one sender did.
#[derive(Default)]
pub struct Sent {
    /// Messages sent.
    pub count: u64,
    /// How late against its schedule the latest message went, µs.
    pub max_late_us: u64,
    /// Why the sender stopped early, if it did.
    pub error: Option<String>,
}

fn measure(
    options: &ServerOptions,
    shape: &Shape,
    senders: usize,
    seconds: f64,
    table: &mut Table,
) -> Res<()> {
    let n = shape.subscribers;
    let server = Server::start(options, &format!("fanout-{}x{}", n, shape.rate))?;
    let title = format!("Fan-out {}x{}", n, shape.rate);
    let outcome = drive(vec![server], &title, shape, senders, seconds, &[])?;

    table.info(
        "subscribers (of which send)",
        format!("{} ({senders})", stats::count(n as u64)),
    );
    outcome.report(
        table,
        shape.p99_target_us,
        "users the server lists in the room, before / after",
        "server RSS, threads while the room was full",
    );
    for logged in &outcome.logged {
        logged.note(table);
    }
    Ok(())
}

/// What one fan-out run measured, for its scenario to report.
pub struct Outcome {
    /// The deliveries, summed up.
    pub figures: Figures,
    /// Where the CPU went while the messages were sent.
    pub cpu: CpuShares,
    /// The first server's memory and threads at the end of the sending.
    pub server_after: ProcSample,
    /// Users each server listed in the room before and after the sending, in server order.
    pub listed: Vec<(usize, usize)>,
    /// From the first connect until every join had reached every member.
    pub join_time: Duration,
    /// What each server logged up to the end of the measurement, in server order.
    pub logged: Vec<Logged>,
}

impl Outcome {
    /// The run's rows: joining, deliveries (the p99 checked against `p99_target_us` when
    /// given), the servers' listings under `listed_figure` ([`Outcome::listed_rows`]), CPU,
    /// and the first server's memory under `rss_figure`.
    pub fn report(
        &self,
        table: &mut Table,
        p99_target_us: Option<u64>,
        listed_figure: &str,
        rss_figure: &str,
    ) {
        table.info(
            "time to connect and join all",
            format!("{:.1} s", self.join_time.as_secs_f64()),
        );
        self.figures.report(table, "", p99_target_us);
        self.listed_rows(table, listed_figure);
        self.cpu.report(table);
        table.info(
            "server CPU per delivery (CPU time / deliveries)",
            self.cpu_per_delivery(),
        );
        table.info(
            rss_figure,
            format!(
                "{}, {}",
                stats::kib(self.server_after.rss_kib),
                self.server_after.threads
            ),
        );
    }

    /// The server's CPU time per delivery, in µs: what one member hearing one message
    /// costs, the figure that decides how many people a small host holds.
    pub fn cpu_per_delivery(&self) -> String {
        let per_s = self.figures.deliveries_per_s;
        if per_s <= 0.0 {
            return "no deliveries".into();
        }
        format!("{:.2} µs", self.cpu.server / 100.0 / per_s * 1e6)
    }

    /// The check that every server listed every subscriber before and after the sending
    /// (SPEC: with several nodes, `users` lists the members of every node): `figure`
    /// names the servers, the value is `before / after` for each, in server order.
    pub fn listed_rows(&self, table: &mut Table, figure: &str) {
        let n = self.figures.subscribers;
        let pairs = |pairs: Vec<(usize, usize)>| {
            let pairs: Vec<String> = pairs.iter().map(|(b, a)| format!("{b} / {a}")).collect();
            pairs.join("; ")
        };
        table.check(
            figure,
            pairs(self.listed.clone()),
            &pairs(vec![(n, n); self.listed.len()]),
            self.listed.iter().all(|l| *l == (n, n)),
        );
    }
}

/// One fan-out run against `servers`, one server or the nodes of one chat: a public room
/// `title` is created over REST on the first, `shape.subscribers` sockets join it, spread
/// over the servers' WebSocket listeners ([`FullRoom::join`]), the first `senders` of them
/// send `shape.rate` messages a second for `seconds`, every delivery is awaited, and the
/// servers are stopped. The CPU window covers the first server and `companions` (name,
/// pid): the other nodes and Redis.
pub fn drive(
    servers: Vec<Server>,
    title: &str,
    shape: &Shape,
    senders: usize,
    seconds: f64,
    companions: &[(&str, u32)],
) -> Res<Outcome> {
    let [first, ..] = servers.as_slice() else {
        return Err("a fan-out needs a server".into());
    };
    let room = crate::create_room(first.http, title, "public", None)?;
    let listed = || -> Res<Vec<usize>> {
        servers
            .iter()
            .map(|server| crate::listed_users(server.http, room))
            .collect()
    };
    let addrs: Vec<SocketAddr> = servers.iter().map(|server| server.ws).collect();
    let per_sender = messages_per_sender(seconds, shape.rate, senders);
    let n = shape.subscribers;
    let mut full = FullRoom::join(&addrs, room, n, senders, senders, per_sender)?;
    let listed_before = listed()?;
    let window = CpuWindow::start_with(first, companions)?;
    let phase = full.send(0, shape.rate, seconds)?;
    let (cpu, server_after) = window.finish(first)?;
    let listed_after = listed()?;
    // Before the teardown, which makes the servers log (leaves) on its own.
    let logged = servers.iter().map(|server| server.logged()).collect();
    let join_time = full.join_time;
    let tallies = full.finish();
    for server in servers {
        server.stop();
    }
    Ok(Outcome {
        figures: Figures::of(&tallies, &phase),
        cpu,
        server_after,
        listed: listed_before.into_iter().zip(listed_after).collect(),
        join_time,
        logged,
    })
}

/// How many messages each of `senders` sends in `seconds` at `rate` messages/s together.
pub fn messages_per_sender(seconds: f64, rate: u32, senders: usize) -> usize {
    (seconds * f64::from(rate) / senders.max(1) as f64).floor() as usize
}

/// A room full of joined members, the first few of which can also send.
pub struct FullRoom {
    crowd: Crowd,
    writers: Vec<Socket>,
    subscribers: usize,
    per_sender: usize,
    /// From the first connect until every join event had reached every member.
    pub join_time: Duration,
}

impl FullRoom {
    /// Connects `subscribers` sockets to `room` one after another, joins each, and waits
    /// until every join event has reached every member. Socket `i` goes to `addrs[i %
    /// addrs.len()]`: one WebSocket listener, or those of the nodes of one chat, each
    /// getting an equal share of the members and of the writers. The first `writers`
    /// members also get a write handle. Members track `senders` senders (writers x phases)
    /// of up to `per_sender` messages each.
    ///
    /// A member sees its own join and every later one in the room's order, so n members
    /// see n(n+1)/2 joins whichever order the room (or Redis, across nodes) put them in.
    pub fn join(
        addrs: &[SocketAddr],
        room: u64,
        subscribers: usize,
        writers: usize,
        senders: usize,
        per_sender: usize,
    ) -> Res<FullRoom> {
        let n = subscribers;
        if addrs.is_empty() {
            return Err("no WebSocket address to join".into());
        }
        let mut crowd = Crowd::new(senders, per_sender);
        let counters = std::sync::Arc::clone(&crowd.counters);
        let joining = Instant::now();
        let mut handles: Vec<Socket> = Vec::new();
        let opened = (0..n).try_for_each(|i| -> Res<()> {
            let addr = addrs[i % addrs.len()];
            handles.extend(crowd.join(addr, room, format!("s{i}"), i < writers)?);
            Ok(())
        });
        let joins_expected = (n as u64) * (n as u64 + 1) / 2;
        let joined = opened.is_ok()
            && wait_until(JOIN_TIMEOUT, || {
                counters.acked.load(Ordering::SeqCst) == n
                    && counters.joins_seen.load(Ordering::Relaxed) >= joins_expected
            });
        let join_time = joining.elapsed();
        if let Err(e) = opened {
            let opened = crowd.len();
            crowd.finish();
            return Err(format!("opening socket {} of {n}: {e}", opened + 1).into());
        }
        if !joined {
            let tallies = crowd.finish();
            let acked = counters.acked.load(Ordering::SeqCst);
            let seen = counters.joins_seen.load(Ordering::Relaxed);
            let closed = tallies
                .iter()
                .filter(|t| t.closed_by_server.is_some())
                .count();
            return Err(format!(
                "room not joined within {JOIN_TIMEOUT:?}: {acked}/{n} joins acknowledged, {seen}/{joins_expected} join events delivered, {closed} sockets closed by the server"
            )
            .into());
        }
        Ok(FullRoom {
            crowd,
            writers: handles,
            subscribers: n,
            per_sender,
            join_time,
        })
    }

    /// Sends `rate` messages a second for `seconds` from the writers, numbered as senders
    /// `first_sender..first_sender + writers`, then waits for the deliveries
    /// ([`FullRoom::drain`]).
    pub fn send(&mut self, first_sender: usize, rate: u32, seconds: f64) -> Res<Phase> {
        let phase = self.send_only(first_sender, rate, seconds)?;
        self.drain(&phase);
        Ok(phase)
    }

    /// Sends, and returns as soon as the last message is out. Each writer keeps its own
    /// fixed schedule: sender j's message i is due at t0 + j * period / writers + i * period.
    pub fn send_only(&mut self, first_sender: usize, rate: u32, seconds: f64) -> Res<Phase> {
        let writers = std::mem::take(&mut self.writers);
        let count = writers.len().max(1);
        let per_sender = messages_per_sender(seconds, rate, count).min(self.per_sender);
        let counters = &self.crowd.counters;
        let delivered_before = counters.delivered.load(Ordering::Relaxed);
        let period = Duration::from_secs_f64(count as f64 / f64::from(rate.max(1)));
        let t0 = Instant::now() + Duration::from_millis(100);
        let epoch = counters.epoch;
        let t0_us = u64::try_from(t0.duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
        let handles: Vec<_> = writers
            .into_iter()
            .enumerate()
            .map(|(j, writer)| {
                let start = t0 + period.mul_f64(j as f64 / count as f64);
                let sender = u32::try_from(first_sender + j).unwrap_or(u32::MAX);
                thread::Builder::new()
                    .name(format!("sender{sender}"))
                    .stack_size(ws::MEMBER_STACK_BYTES)
                    .spawn(move || {
                        send_on_schedule(writer, sender, start, period, per_sender, epoch)
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut sent = Vec::new();
        for handle in handles {
            let (writer, done) = handle.join().map_err(|_| "a sender thread panicked")?;
            self.writers.push(writer);
            sent.push(done);
        }
        Ok(Phase {
            senders: first_sender..first_sender + sent.len(),
            sent,
            subscribers: self.subscribers,
            t0_us,
            delivered_before,
        })
    }

    /// Waits until every delivery of `phase` has arrived, or deliveries stall for
    /// [`DRAIN_STALL`], or [`DRAIN_LIMIT`] passes.
    pub fn drain(&self, phase: &Phase) {
        let counters = &self.crowd.counters;
        let expected = phase.expected();
        let (mut last, mut last_change, draining) = (0, Instant::now(), Instant::now());
        while draining.elapsed() < DRAIN_LIMIT {
            let delivered = counters
                .delivered
                .load(Ordering::Relaxed)
                .saturating_sub(phase.delivered_before);
            if delivered >= expected {
                break;
            }
            if delivered != last {
                (last, last_change) = (delivered, Instant::now());
            } else if last_change.elapsed() >= DRAIN_STALL {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Shuts every member's socket and collects what each saw.
    pub fn finish(self) -> Vec<Tally> {
        self.crowd.finish()
    }
}

/// One sending phase: who sent what, to how many.
pub struct Phase {
    /// The sender numbers this phase used.
    pub senders: Range<usize>,
    /// What each of them did, in sender order.
    pub sent: Vec<Sent>,
    /// Members in the room, each of which should receive every message.
    pub subscribers: usize,
    /// When the first message was due, µs on the members' clock.
    pub t0_us: u64,
    /// Deliveries counted (all members, all phases) before this phase began.
    delivered_before: u64,
}

impl Phase {
    /// Messages sent, all senders together.
    pub fn sent_total(&self) -> u64 {
        self.sent.iter().map(|s| s.count).sum()
    }

    /// Deliveries due: every message to every member.
    pub fn expected(&self) -> u64 {
        self.sent_total() * self.subscribers as u64
    }
}

/// One phase summed up over every member.
pub struct Figures {
    /// Messages sent.
    pub sent: u64,
    /// Deliveries due (sent x members).
    pub expected: u64,
    /// Distinct deliveries of this phase's messages.
    pub distinct: u64,
    /// Due and never delivered.
    pub missing: u64,
    /// Deliveries seen twice, or of messages never sent (whole run, every phase).
    pub duplicates: u64,
    /// Deliveries out of order from their sender (whole run).
    pub out_of_order: u64,
    /// Deliveries out of the room's order: a message id at or below one the member saw
    /// before (whole run).
    pub out_of_room_order: u64,
    /// Close codes of the sockets the server closed during the run (whole run, every
    /// phase; not while the scenario was shutting them at the end).
    pub closed: Vec<u16>,
    /// Sockets the server closed while the scenario was shutting them at the end.
    pub closed_at_teardown: usize,
    /// Sockets that failed without a close frame (whole run).
    pub errors: Vec<String>,
    /// Distinct delivery orders among the complete members. The order hash covers the
    /// whole run, so after several phases a member that missed an earlier one counts
    /// as an order of its own.
    pub orders: usize,
    /// Members that saw every message of this phase exactly once.
    pub complete: usize,
    /// Members in the room.
    pub subscribers: usize,
    /// Latency of this phase's deliveries; `None` when there were none.
    pub latency: Option<stats::Summary>,
    /// This phase's distinct deliveries over the time from its first due message to
    /// its last arrival.
    pub deliveries_per_s: f64,
    /// The senders' worst lateness against their schedule, µs.
    pub worst_late_us: u64,
    /// Why a sender stopped early, if one did.
    pub sender_error: Option<String>,
}

impl Figures {
    /// Sums up `phase` from the members' tallies.
    pub fn of(tallies: &[Tally], phase: &Phase) -> Figures {
        fn of_phase<'t>(t: &'t Tally, senders: &Range<usize>) -> Vec<&'t ws::FromSender> {
            senders.clone().filter_map(|s| t.from.get(s)).collect()
        }
        let mine = |t| of_phase(t, &phase.senders);
        let distinct: u64 = tallies
            .iter()
            .flat_map(|t| mine(t).into_iter().map(|f| f.distinct))
            .sum();
        let complete: Vec<&Tally> = tallies
            .iter()
            .filter(|t| {
                let got = mine(t);
                t.duplicates == 0
                    && got.len() == phase.sent.len()
                    && got
                        .iter()
                        .zip(&phase.sent)
                        .all(|(f, s)| f.distinct == s.count)
            })
            .collect();
        let orders: HashSet<u64> = complete.iter().map(|t| t.order_hash).collect();
        let last_us = tallies
            .iter()
            .flat_map(|t| mine(t).into_iter().map(|f| f.last_receive_us))
            .max()
            .unwrap_or(phase.t0_us);
        let span_s = (last_us.saturating_sub(phase.t0_us) as f64 / 1e6).max(1e-6);
        let latencies: Vec<u32> = tallies
            .iter()
            .flat_map(|t| {
                mine(t)
                    .into_iter()
                    .flat_map(|f| f.latencies.iter().copied())
            })
            .collect();
        let expected = phase.expected();
        Figures {
            sent: phase.sent_total(),
            expected,
            distinct,
            missing: expected.saturating_sub(distinct),
            duplicates: tallies.iter().map(|t| t.duplicates + t.unexpected).sum(),
            out_of_order: tallies.iter().map(|t| t.out_of_order).sum(),
            out_of_room_order: tallies.iter().map(|t| t.out_of_room_order).sum(),
            closed: tallies
                .iter()
                .filter(|t| !t.closed_at_teardown)
                .filter_map(|t| t.closed_by_server)
                .collect(),
            closed_at_teardown: tallies
                .iter()
                .filter(|t| t.closed_at_teardown && t.closed_by_server.is_some())
                .count(),
            errors: tallies.iter().filter_map(|t| t.error.clone()).collect(),
            orders: orders.len(),
            complete: complete.len(),
            subscribers: phase.subscribers,
            latency: stats::summarize(latencies),
            deliveries_per_s: distinct as f64 / span_s,
            worst_late_us: phase.sent.iter().map(|s| s.max_late_us).max().unwrap_or(0),
            sender_error: phase.sent.iter().find_map(|s| s.error.clone()),
        }
    }

    /// The close codes, each with how many sockets got it: `1008 x 3, 1001 x 1`; `none`.
    pub fn close_codes(&self) -> String {
        let mut codes = self.closed.clone();
        codes.sort_unstable();
        let mut out: Vec<String> = Vec::new();
        for chunk in codes.chunk_by(|a, b| a == b) {
            if let Some(code) = chunk.first() {
                out.push(format!("{code} x {}", chunk.len()));
            }
        }
        if out.is_empty() {
            "none".into()
        } else {
            out.join(", ")
        }
    }

    /// Adds the delivery rows to `table`, each figure's name starting with `prefix`; the
    /// p99 is checked against `p99_target_us` when there is one. Latency is withheld when
    /// any delivery is missing.
    pub fn report(&self, table: &mut Table, prefix: &str, p99_target_us: Option<u64>) {
        let name = |figure: &str| format!("{prefix}{figure}");
        table.info(&name("messages sent"), stats::count(self.sent));
        table.info(
            &name("expected deliveries (sent x subscribers)"),
            stats::count(self.expected),
        );
        table.info(
            &name("delivered"),
            stats::count(self.distinct + self.duplicates),
        );
        table.check(
            &name("missing"),
            stats::count(self.missing),
            "0",
            self.missing == 0,
        );
        table.check(
            &name("duplicates"),
            stats::count(self.duplicates),
            "0",
            self.duplicates == 0,
        );
        table.check(
            &name("out of order"),
            stats::count(self.out_of_order),
            "0",
            self.out_of_order == 0,
        );
        table.check(
            &name("out of the room's order (an id below one seen before)"),
            stats::count(self.out_of_room_order),
            "0",
            self.out_of_room_order == 0,
        );
        table.check(
            &name("sockets closed or failed during the run"),
            stats::count((self.closed.len() + self.errors.len()) as u64),
            "0",
            self.closed.is_empty() && self.errors.is_empty(),
        );
        table.check(
            &name("delivery orders among complete sockets"),
            format!("{} order(s) across {} sockets", self.orders, self.complete),
            "1 across all",
            self.orders == 1 && self.complete == self.subscribers,
        );
        self.latency_rows(table, prefix, p99_target_us);
        table.info(&name("deliveries/s"), stats::rate(self.deliveries_per_s));
        table.info(
            &name("senders' worst lateness against schedule"),
            ms(self.worst_late_us),
        );
        self.notes(table);
    }

    /// The latency to show, or why none is shown: it is withheld when any delivery is
    /// missing (a lost message is a failure, not an outlier).
    pub fn shown_latency(&self) -> Result<stats::Summary, String> {
        match self.latency {
            _ if self.missing > 0 => Err(format!(
                "withheld: {} deliveries missing",
                stats::count(self.missing)
            )),
            None => Err("no deliveries".to_string()),
            Some(summary) => Ok(summary),
        }
    }

    /// The p50, p99 and max rows; withheld, with the reason, when deliveries are missing.
    pub fn latency_rows(&self, table: &mut Table, prefix: &str, p99_target_us: Option<u64>) {
        let name = |figure: &str| format!("{prefix}{figure}");
        let target = p99_target_us.map(|us| format!("< {}", ms(us)));
        match self.shown_latency() {
            Err(withheld) => {
                table.info(&name("latency p50"), withheld.clone());
                match &target {
                    Some(t) => table.check(&name("latency p99"), withheld.clone(), t, false),
                    None => table.info(&name("latency p99"), withheld.clone()),
                }
                table.info(&name("latency max"), withheld);
            }
            Ok(summary) => {
                table.info(&name("latency p50"), ms(summary.p50_us));
                match (&target, p99_target_us) {
                    (Some(t), Some(us)) => table.check(
                        &name("latency p99"),
                        ms(summary.p99_us),
                        t,
                        summary.p99_us < us,
                    ),
                    _ => table.info(&name("latency p99"), ms(summary.p99_us)),
                }
                table.info(&name("latency max"), ms(summary.max_us));
            }
        }
    }

    /// Notes under the table on closed and failed sockets and on a failed sender.
    pub fn notes(&self, table: &mut Table) {
        if self.closed_at_teardown > 0 {
            table.note(format!(
                "{} sockets got a close frame from the server while the scenario was shutting the sockets at the end (not counted above).",
                self.closed_at_teardown
            ));
        }
        if !self.closed.is_empty() {
            table.note(format!(
                "{} sockets were closed by the server, close codes: {}.",
                self.closed.len(),
                self.close_codes()
            ));
        }
        if let Some(first) = self.errors.first() {
            table.note(format!(
                "{} sockets failed; the first: {first}",
                self.errors.len()
            ));
        }
        if let Some(error) = &self.sender_error {
            table.note(format!("A sender failed: {error}"));
        }
    }
}

/// Sends `count` bench messages, message `i` at `start + i * period`, stamped with its
/// due time; a late message goes at once, and the lateness is recorded. Hands the writer
/// back for the next phase.
fn send_on_schedule(
    mut writer: Socket,
    sender: u32,
    start: Instant,
    period: Duration,
    count: usize,
    epoch: Instant,
) -> (Socket, Sent) {
    let mut sent = Sent::default();
    for i in 0..count {
        let due = start + period.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else {
            sent.max_late_us = sent.max_late_us.max(stats::sample_us(now - due).into());
        }
        let due_us = u64::try_from(due.duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
        let seq = u32::try_from(i).unwrap_or(u32::MAX);
        if let Err(e) = ws::send_text(&mut writer, ws::bench_frame(sender, seq, due_us)) {
            sent.error = Some(format!("sender {sender}, message {i}: {e}"));
            break;
        }
        sent.count += 1;
    }
    (writer, sent)
}
