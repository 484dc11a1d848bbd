//! Scenario 2's second yardstick (issue 22): the barest broadcaster a blocking server can
//! be, run by this same binary in a child process (`load --floor-relay ADDR`, started by
//! `relay.rs`). Every text frame a client sends is encoded once and written to every
//! connected client, the sender included, by the thread that read it: one `write(2)` per
//! delivery and nothing else (no rooms, names, ids, history, disk, channels or wake-ups of
//! other threads). What it costs per delivery is what the kernel charges for a send to a
//! client on this machine, the loopback receive and the client's wake-up included: the
//! floor under any server that sends each event when it happens.
//!
//! It is as trusting as a yardstick may be: the clients are the bench's own, which read
//! promptly, so a blocking write to one of them never holds the others up for long.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::Message;

use crate::Res;

/// A member's thread only reads frames and writes to sockets.
const STACK_BYTES: usize = 128 * 1024;

/// Serves broadcasts on `addr` until the process is killed.
pub fn serve(addr: &str) -> Res<()> {
    let listener = TcpListener::bind(addr)?;
    let members: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let members = Arc::clone(&members);
        thread::Builder::new()
            .stack_size(STACK_BYTES)
            .spawn(move || {
                // A client that leaves or misbehaves only ends its own thread.
                let _ = member(stream, &members);
            })?;
    }
    Ok(())
}

/// One client: the handshake, then every text frame it sends goes to every member.
fn member(stream: TcpStream, members: &Mutex<Vec<TcpStream>>) -> Res<()> {
    stream.set_nodelay(true)?;
    let writer = stream.try_clone()?;
    let mut socket = tungstenite::accept(stream).map_err(|e| e.to_string())?;
    lock(members).push(writer);
    loop {
        match socket.read()? {
            Message::Text(text) => {
                let mut frame = Vec::with_capacity(text.len() + 10);
                let header = FrameHeader {
                    opcode: OpCode::Data(Data::Text),
                    ..FrameHeader::default()
                };
                header.format(text.len() as u64, &mut frame)?;
                frame.extend_from_slice(text.as_bytes());
                for mut member in lock(members).iter() {
                    // A member that left is not this sender's concern.
                    let _ = member.write_all(&frame);
                }
            }
            Message::Close(_) => return Ok(()),
            _ => {}
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
