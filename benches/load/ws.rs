//! WebSocket clients: connecting and joining, the room member thread, and the bench message.
//!
//! A member is one joined socket with one thread of its own that reads every event the
//! server sends it, for as long as the scenario lasts. Members are what the fan-out and
//! idle scenarios are made of. A member never stops reading, because the server closes a
//! socket whose queue overflows (SPEC: slow readers are closed with 1008), and a bench that
//! stopped reading would be measuring itself.
//!
//! Bench messages carry `b|<sender>|<seq>|<sent µs>` in `msg`. Each member keeps, per
//! sender, a bitset of the sequence numbers it has seen, so it can tell a missing message
//! from a duplicate or one out of order, and it computes latency from the send time in the
//! message (sender and receivers share one clock: they live in this process). The server's
//! message `id` is the room's one order (SPEC: ids are assigned in that order, the same on
//! every node), so a member also checks that the ids it gets only rise: per-sender order
//! alone would miss two members, on two nodes say, seeing two senders' messages swapped.
//!
//! Threads are spawned with a small stack ([`MEMBER_STACK_BYTES`]): thousands of them run
//! on a two-core machine, and the receive loop needs little. A member's thread ends when
//! its socket is shut down from outside (the scenario keeps a clone of every `TcpStream`
//! for this), so no read ever waits on a timeout or polls a flag.

use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::stats::{micros_since, sample_us};
use crate::Res;

/// Stack for each client thread: the receive loop keeps its state on the heap.
pub const MEMBER_STACK_BYTES: usize = 128 * 1024;

/// A client socket; plain TCP (the bench never uses TLS).
pub type Socket = WebSocket<TcpStream>;

/// Small buffers, eager writes: thousands of client sockets are open at once, and a bench
/// message must leave the moment it is due, not when a write buffer fills.
pub fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens a WebSocket to `ws://addr/chats/<room>/ws`.
pub fn connect(addr: SocketAddr, room: u64) -> Res<Socket> {
    connect_from(addr, room, None)
}

/// [`connect`] from the local address `from` (any port) when given: the server counts
/// sockets per client address (`max_connections_per_ip`), and on Linux every address of
/// 127.0.0.0/8 is loopback, so one generator can be many clients.
pub fn connect_from(addr: SocketAddr, room: u64, from: Option<IpAddr>) -> Res<Socket> {
    let stream = match from {
        None => TcpStream::connect(addr)?,
        Some(ip) => tcp_from(ip, addr)?,
    };
    stream.set_nodelay(true)?;
    let url = format!("ws://{addr}/chats/{room}/ws");
    match tungstenite::client::client_with_config(url.as_str(), stream, Some(client_config())) {
        Ok((socket, _response)) => Ok(socket),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(format!("handshake: {e}").into()),
        Err(tungstenite::HandshakeError::Interrupted(_)) => Err("handshake interrupted".into()),
    }
}

/// A TCP connection to `to` from the local address `from`, port chosen by the kernel.
pub fn tcp_from(from: IpAddr, to: SocketAddr) -> Res<TcpStream> {
    use socket2::{Domain, Socket as RawSocket, Type};
    let socket = RawSocket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    socket.connect(&to.into())?;
    Ok(socket.into())
}

/// Sends one JSON text frame.
pub fn send_text(socket: &mut Socket, text: String) -> Res<()> {
    socket.send(Message::text(text))?;
    Ok(())
}

/// The `join` frame for `name`.
pub fn join_frame(name: &str) -> String {
    serde_json::json!({"event_type": "join", "name": name, "color": "#3366cc"}).to_string()
}

/// The `send` frame of bench message `seq` from `sender`, stamped `sent_us`.
pub fn bench_frame(sender: u32, seq: u32, sent_us: u64) -> String {
    format!(r#"{{"event_type":"send","msg":"b|{sender}|{seq}|{sent_us}"}}"#)
}

/// A second handle on `socket`'s connection that only writes: lets one thread send on a
/// schedule while the member thread keeps reading the same connection. Every byte this
/// handle writes is a whole masked frame; the reading handle writes nothing unless the
/// server pings (every 54 s: only the soak lasts that long). Then the reader's pong and a
/// bench frame may be written at the same moment, each a small frame in one `write(2)`
/// on a socket whose send buffer is nearly empty; Linux copies such a write into the
/// stream under the socket's lock, whole, so the two frames cannot interleave.
pub fn writer_for(socket: &Socket) -> Res<Socket> {
    let stream = socket.get_ref().try_clone()?;
    Ok(WebSocket::from_raw_socket(
        stream,
        Role::Client,
        Some(client_config()),
    ))
}

/// What a member needs to know about one server event.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A bench message: who sent it, its number, when it was due, and the message id the
    /// server gave it (`None` when the event carries none).
    Bench {
        sender: u32,
        seq: u32,
        sent_us: u64,
        id: Option<u64>,
    },
    /// Someone joined.
    Join { name: String },
    /// Someone left.
    Leave { name: String },
    /// Some other chat message.
    Message { name: String, msg: String },
    /// An error event (the rendered error object).
    Error(String),
    /// Anything else.
    Other,
}

/// Classifies one text frame. Bench messages take a fast path (a substring search, no
/// JSON parse) because a member may get a thousand a second on a shared core; so do
/// joins and leaves in the server's field order (a join storm of n sockets delivers
/// n(n+1)/2 of them), with the full parse as the fallback.
pub fn parse_event(text: &str) -> Event {
    const MARK: &str = r#""msg":"b|"#;
    for (prefix, join) in [
        (r#"{"event_type":"join","name":""#, true),
        (r#"{"event_type":"leave","name":""#, false),
    ] {
        let name = text
            .strip_prefix(prefix)
            .and_then(|rest| rest.split_once('"'))
            .map(|(name, _)| name)
            .filter(|name| !name.contains('\\'));
        if let Some(name) = name {
            let name = name.to_string();
            return if join {
                Event::Join { name }
            } else {
                Event::Leave { name }
            };
        }
    }
    if let Some(at) = text.find(MARK) {
        let rest = &text[at + MARK.len() - 2..];
        if let Some(end) = rest.find('"') {
            // The server puts `"id":N` after `msg` (and `room_id`, whose key does not
            // contain `"id":`); a bench `msg` holds no quote, so this is the event's id.
            let id = rest[end..]
                .split_once(r#""id":"#)
                .and_then(|(_, after)| after.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok());
            if let Some(event) = parse_bench_msg(&rest[..end], id) {
                return event;
            }
        }
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Event::Other;
    };
    let field = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    match value.get("event_type").and_then(|v| v.as_str()) {
        Some("join") => Event::Join {
            name: field("name"),
        },
        Some("leave") => Event::Leave {
            name: field("name"),
        },
        Some("send") => {
            let msg = field("msg");
            let id = value.get("id").and_then(|v| v.as_u64());
            parse_bench_msg(&msg, id).unwrap_or(Event::Message {
                name: field("name"),
                msg,
            })
        }
        Some("error") => Event::Error(
            value
                .get("error")
                .map(|e| e.to_string())
                .unwrap_or_default(),
        ),
        _ => Event::Other,
    }
}

fn parse_bench_msg(msg: &str, id: Option<u64>) -> Option<Event> {
    let mut parts = msg.strip_prefix("b|")?.split('|');
    let event = Event::Bench {
        sender: parts.next()?.parse().ok()?,
        seq: parts.next()?.parse().ok()?,
        sent_us: parts.next()?.parse().ok()?,
        id,
    };
    parts.next().is_none().then_some(event)
}

/// Counters every member of a scenario updates, read by the scenario while it runs.
pub struct Counters {
    /// The clock bench messages are stamped with.
    pub epoch: Instant,
    /// Members that have seen their own join event.
    pub acked: AtomicUsize,
    /// Join events seen, summed over members.
    pub joins_seen: AtomicU64,
    /// Distinct bench messages received, summed over members.
    pub delivered: AtomicU64,
    /// Members whose socket ended before the scenario shut it.
    pub lost: AtomicUsize,
    /// Set by the scenario before it shuts the sockets, so the ends are not counted lost.
    pub stopping: AtomicBool,
}

impl Counters {
    /// Fresh counters with their clock starting now.
    pub fn new() -> Arc<Counters> {
        Arc::new(Counters {
            epoch: Instant::now(),
            acked: AtomicUsize::new(0),
            joins_seen: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            lost: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        })
    }
}

/// What one member saw, handed back when its thread ends.
#[derive(Debug, Default)]
pub struct Tally {
    /// What arrived from each sender, by sender number. A scenario that sends in phases
    /// gives each phase senders of their own, so each phase can be summarised apart.
    pub from: Vec<FromSender>,
    /// Bench messages seen more than once.
    pub duplicates: u64,
    /// Bench messages with a lower number than one already seen from the same sender.
    pub out_of_order: u64,
    /// Bench messages with a message id at or below one already seen: out of the room's
    /// one order. A message without an id is not counted here.
    pub out_of_room_order: u64,
    /// Bench messages with a sender or number the scenario never sent.
    pub unexpected: u64,
    /// A hash of the order bench messages arrived in, with their ids: equal for members
    /// that saw the same messages, numbered alike, in the same order (SPEC: one order for
    /// the whole room).
    pub order_hash: u64,
    /// The close code, if the server closed this socket.
    pub closed_by_server: Option<u16>,
    /// Whether that close came while the scenario was shutting its sockets (a leave
    /// storm of its own making), not during the measurement.
    pub closed_at_teardown: bool,
    /// The first read error or error event, if any.
    pub error: Option<String>,
}

/// What one member saw of one sender's bench messages.
#[derive(Clone, Debug, Default)]
pub struct FromSender {
    /// Distinct messages seen.
    pub distinct: u64,
    /// Send-to-receive latency of each first delivery, µs.
    pub latencies: Vec<u32>,
    /// When the last one arrived, µs on the [`Counters`] clock.
    pub last_receive_us: u64,
}

/// A running member: its thread, and a clone of its stream to end it with.
pub struct Member {
    stream: TcpStream,
    thread: JoinHandle<Tally>,
}

impl Member {
    /// Ends the member by shutting its socket, and returns what it saw.
    pub fn finish(self) -> Tally {
        let _ = self.stream.shutdown(Shutdown::Both);
        self.thread.join().unwrap_or_else(|_| Tally {
            error: Some("member thread panicked".into()),
            ..Tally::default()
        })
    }
}

/// Starts a thread that reads `socket` until it is shut, tallying bench messages from
/// `senders` senders that send at most `per_sender` messages each.
pub fn spawn_member(
    socket: Socket,
    name: String,
    senders: usize,
    per_sender: usize,
    counters: Arc<Counters>,
) -> Res<Member> {
    let stream = socket.get_ref().try_clone()?;
    let thread = thread::Builder::new()
        .name(name.clone())
        .stack_size(MEMBER_STACK_BYTES)
        .spawn(move || receive(socket, &name, senders, per_sender, &counters))?;
    Ok(Member { stream, thread })
}

/// Per-sender state of one member: which numbers arrived, and the highest so far.
struct Track {
    seen: Vec<u64>,
    highest: Option<u32>,
}

fn receive(
    mut socket: Socket,
    me: &str,
    senders: usize,
    per_sender: usize,
    counters: &Counters,
) -> Tally {
    let words = per_sender.div_ceil(64);
    let mut tracks: Vec<Track> = (0..senders)
        .map(|_| Track {
            seen: vec![0; words],
            highest: None,
        })
        .collect();
    let mut tally = Tally {
        from: vec![FromSender::default(); senders],
        order_hash: 0xcbf2_9ce4_8422_2325,
        ..Tally::default()
    };
    let mut acked = false;
    let mut highest_id: Option<u64> = None;
    loop {
        let text = match socket.read() {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(frame)) => {
                tally.closed_by_server = Some(frame.map_or(1005, |f| u16::from(f.code)));
                tally.closed_at_teardown = counters.stopping.load(Ordering::SeqCst);
                break;
            }
            Ok(_) => continue,
            Err(e) => {
                if !counters.stopping.load(Ordering::SeqCst) {
                    tally.error.get_or_insert_with(|| format!("read: {e}"));
                    counters.lost.fetch_add(1, Ordering::SeqCst);
                }
                break;
            }
        };
        match parse_event(&text) {
            Event::Bench {
                sender,
                seq,
                sent_us,
                id,
            } => {
                let now_us = micros_since(counters.epoch);
                let slot = usize::try_from(seq).ok().filter(|s| *s < per_sender);
                let index = usize::try_from(sender).ok();
                let track = index.and_then(|s| tracks.get_mut(s));
                let from = index.and_then(|s| tally.from.get_mut(s));
                let (Some(slot), Some(track), Some(from)) = (slot, track, from) else {
                    tally.unexpected += 1;
                    continue;
                };
                let (word, bit) = (slot / 64, 1u64 << (slot % 64));
                if track.seen[word] & bit != 0 {
                    tally.duplicates += 1;
                    continue;
                }
                track.seen[word] |= bit;
                from.distinct += 1;
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                if track.highest.is_some_and(|h| seq < h) {
                    tally.out_of_order += 1;
                }
                track.highest = Some(track.highest.map_or(seq, |h| h.max(seq)));
                if let Some(id) = id {
                    if highest_id.is_some_and(|h| id <= h) {
                        tally.out_of_room_order += 1;
                    }
                    highest_id = Some(highest_id.map_or(id, |h| h.max(id)));
                }
                from.latencies
                    .push(sample_us(std::time::Duration::from_micros(
                        now_us.saturating_sub(sent_us),
                    )));
                from.last_receive_us = now_us;
                for word in [u64::from(sender) << 32 | u64::from(seq), id.unwrap_or(0)] {
                    tally.order_hash = (tally.order_hash ^ word).wrapping_mul(0x0100_0000_01b3);
                }
            }
            Event::Join { name } => {
                counters.joins_seen.fetch_add(1, Ordering::Relaxed);
                if !acked && name == me {
                    acked = true;
                    counters.acked.fetch_add(1, Ordering::SeqCst);
                }
            }
            Event::Error(error) => {
                tally
                    .error
                    .get_or_insert_with(|| format!("error event: {error}"));
            }
            _ => {}
        }
    }
    if tally.closed_by_server.is_some() && !counters.stopping.load(Ordering::SeqCst) {
        counters.lost.fetch_add(1, Ordering::SeqCst);
    }
    tally
}

/// Waits (polling every 10 ms) until `done` or `limit` passes; returns whether `done`.
pub fn wait_until(limit: std::time::Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// A crowd of members, possibly spread over several rooms, ended together.
pub struct Crowd {
    /// The counters all its members update.
    pub counters: Arc<Counters>,
    members: Vec<Member>,
    senders: usize,
    per_sender: usize,
}

impl Crowd {
    /// An empty crowd whose members will track `senders` senders of up to `per_sender`
    /// bench messages each.
    pub fn new(senders: usize, per_sender: usize) -> Crowd {
        Crowd {
            counters: Counters::new(),
            members: Vec::new(),
            senders,
            per_sender,
        }
    }

    /// How many members have been started.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Connects one more socket to `room`, joins it as `name` and starts its member
    /// thread; with `writer`, also returns a write-only handle on the same connection.
    pub fn join(
        &mut self,
        addr: SocketAddr,
        room: u64,
        name: String,
        writer: bool,
    ) -> Res<Option<Socket>> {
        self.join_from(addr, room, name, writer, None)
    }

    /// [`Crowd::join`] from the local address `from` when given (see [`connect_from`]).
    pub fn join_from(
        &mut self,
        addr: SocketAddr,
        room: u64,
        name: String,
        writer: bool,
        from: Option<IpAddr>,
    ) -> Res<Option<Socket>> {
        let mut socket = connect_from(addr, room, from)?;
        send_text(&mut socket, join_frame(&name))?;
        let writer = if writer {
            Some(writer_for(&socket)?)
        } else {
            None
        };
        let member = spawn_member(
            socket,
            name,
            self.senders,
            self.per_sender,
            Arc::clone(&self.counters),
        )?;
        self.members.push(member);
        Ok(writer)
    }

    /// Shuts every member's socket and collects what each saw.
    pub fn finish(self) -> Vec<Tally> {
        self.counters.stopping.store(true, Ordering::SeqCst);
        self.members.into_iter().map(Member::finish).collect()
    }
}

/// Why [`await_event`] gave up; each carries its message, naming what was awaited.
#[derive(Debug)]
pub enum Unawaited {
    /// An error event arrived.
    ErrorEvent(String),
    /// The server closed the socket.
    Closed(String),
    /// A timeout or an I/O error.
    Other(String),
}

impl std::fmt::Display for Unawaited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unawaited::ErrorEvent(m) | Unawaited::Closed(m) | Unawaited::Other(m) => f.write_str(m),
        }
    }
}

/// Reads events until one matches; an error event or a close is a failure.
pub fn await_event(
    socket: &mut Socket,
    what: &str,
    wanted: impl Fn(&Event) -> bool,
) -> Result<(), Unawaited> {
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => {
                let event = parse_event(&text);
                if wanted(&event) {
                    return Ok(());
                }
                if let Event::Error(error) = event {
                    let message = format!("awaiting {what}: error event {error}");
                    return Err(Unawaited::ErrorEvent(message));
                }
            }
            Ok(Message::Close(frame)) => {
                let message = format!("awaiting {what}: closed by the server ({frame:?})");
                return Err(Unawaited::Closed(message));
            }
            Ok(_) => {}
            Err(e) => return Err(Unawaited::Other(format!("awaiting {what}: {e}"))),
        }
    }
}
