//! Counting WebSocket connections, in all and per client address (`max_connections`,
//! `max_connections_per_ip`): [`Connections`], and the [`ConnectionGuard`] that moves with
//! a socket and releases its count when the socket's last thread ends.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use crate::error::{ApiError, ErrorKind};
use crate::metrics::{Limit, Metrics};

use super::counts::{AddressCounts, AddressSlot};

/// WebSocket connections open now, in all and per client address (`max_connections`,
/// `max_connections_per_ip`). A socket is counted by a [`ConnectionGuard`] from accept to
/// the end of its thread.
pub struct Connections {
    /// `max_connections`; 0 is no limit.
    pub(super) max_total: usize,
    pub(super) open: AtomicUsize,
    /// Open sockets per client address (`max_connections_per_ip`); `None`: no limit.
    pub(super) per_address: Option<Arc<AddressCounts>>,
    /// Set while `max_connections` refuses, so the warning is logged once per episode.
    pub(super) refusing: AtomicBool,
    pub(super) metrics: Arc<Metrics>,
}

/// One open WebSocket connection, counted until dropped.
pub struct ConnectionGuard {
    connections: Arc<Connections>,
    /// Its count against its client address, once known.
    address: Option<AddressSlot>,
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
        self.per_address
            .as_ref()
            .map_or(0, |counts| counts.addresses())
    }
}

impl ConnectionGuard {
    /// Counts the connection against its client address (601 past
    /// `max_connections_per_ip`, or past eight times that for its IPv6 /48). Only the
    /// first call counts.
    pub fn count_address(&mut self, client: IpAddr) -> Result<(), ApiError> {
        if std::mem::replace(&mut self.address_counted, true) {
            return Ok(());
        }
        if let Some(counts) = &self.connections.per_address {
            self.address = Some(counts.take(client)?);
        }
        Ok(())
    }

    /// Whether the connection has been counted against its address yet.
    pub fn address_counted(&self) -> bool {
        self.address_counted
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, SeqCst);
    }
}
