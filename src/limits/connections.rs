//! Counting WebSocket connections, in all and per client address (`max_connections`,
//! `max_connections_per_ip`): [`Connections`], and the [`ConnectionGuard`] that moves with
//! a socket and releases its count when the socket's last thread ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use crate::error::{ApiError, ErrorKind};
use crate::metrics::{Limit, Metrics};
use crate::sync::lock;

use super::addr::addr_key;

/// WebSocket connections open now, in all and per client address (`max_connections`,
/// `max_connections_per_ip`). A socket is counted by a [`ConnectionGuard`] from accept to
/// the end of its thread.
pub struct Connections {
    /// `max_connections`; 0 is no limit.
    pub(super) max_total: usize,
    /// `max_connections_per_ip`; 0 is no limit (and no table).
    pub(super) max_per_address: usize,
    pub(super) open: AtomicUsize,
    /// Open sockets per [`addr_key`]; a key leaves with its last socket. Held for a hash
    /// update only.
    pub(super) per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Set while `max_connections` refuses, so the warning is logged once per episode.
    pub(super) refusing: AtomicBool,
    pub(super) metrics: Arc<Metrics>,
}

/// One open WebSocket connection, counted until dropped.
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    /// The address key it is counted under, once known.
    address: Option<IpAddr>,
    /// Set once [`ConnectionGuard::count_address`] has run.
    address_counted: bool,
}

impl Connections {
    /// Counts a new connection (601 past `max_connections`).
    pub fn open(self: &Arc<Self>) -> Result<ConnectionGuard, ApiError> {
        let before = self.open.fetch_add(1, SeqCst);
        if self.max_total > 0 && before >= self.max_total {
            self.open.fetch_sub(1, SeqCst);
            self.metrics.refused(Limit::MaxConnections);
            if !self.refusing.swap(true, SeqCst) {
                log::warn!(
                    "max_connections ({}) WebSocket connections open: refusing new ones",
                    self.max_total
                );
            }
            return Err(ApiError::new(ErrorKind::TooManyConnections));
        }
        if self.refusing.load(SeqCst) && self.refusing.swap(false, SeqCst) {
            log::info!("WebSocket connections below max_connections again");
        }
        Ok(ConnectionGuard {
            connections: Arc::clone(self),
            address: None,
            address_counted: false,
        })
    }

    /// Connections open now.
    pub fn open_now(&self) -> usize {
        self.open.load(SeqCst)
    }

    /// Client addresses with a connection open (the size of the per-address table).
    pub fn addresses(&self) -> usize {
        lock(&self.per_address).len()
    }
}

impl ConnectionGuard {
    /// Counts the connection against its client address (601 past
    /// `max_connections_per_ip`). Only the first call counts.
    pub fn count_address(&mut self, client: IpAddr) -> Result<(), ApiError> {
        if std::mem::replace(&mut self.address_counted, true) {
            return Ok(());
        }
        let connections = &self.connections;
        if connections.max_per_address == 0 {
            return Ok(());
        }
        let key = addr_key(client);
        let mut per_address = lock(&connections.per_address);
        let count = per_address.entry(key).or_insert(0);
        if *count >= connections.max_per_address {
            drop(per_address);
            connections.metrics.refused(Limit::MaxConnectionsPerIp);
            return Err(ApiError::new(ErrorKind::TooManyConnections));
        }
        *count += 1;
        self.address = Some(key);
        Ok(())
    }

    /// Whether the connection has been counted against its address yet.
    pub fn address_counted(&self) -> bool {
        self.address_counted
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let connections = &self.connections;
        connections.open.fetch_sub(1, SeqCst);
        if let Some(key) = self.address {
            let mut per_address = lock(&connections.per_address);
            if let Some(count) = per_address.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_address.remove(&key);
                }
            }
        }
    }
}
