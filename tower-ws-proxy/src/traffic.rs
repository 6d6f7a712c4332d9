//! What relays carried: messages and bytes per direction, counted per connection by its
//! relay and summed per backend by [`LiveConnections`](crate::LiveConnections).

use std::{
    ops::{Add, AddAssign, Sub},
    sync::atomic::{AtomicU64, Ordering},
};

/// What one direction carried.
///
/// ```
/// use tower_ws_proxy::Flow;
///
/// let flow = Flow { messages: 1, bytes: 12 } + Flow { messages: 2, bytes: 30 };
/// assert_eq!(flow, Flow { messages: 3, bytes: 42 });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Complete data messages (text or binary, the final frame of each).
    pub messages: u64,
    /// Bytes, framing included.
    pub bytes: u64,
}

/// What both directions of one or more connections carried.
///
/// ```
/// use tower_ws_proxy::{Flow, TrafficTotals};
///
/// let a = TrafficTotals { to_backend: Flow { messages: 2, bytes: 20 }, ..Default::default() };
/// assert_eq!((a + a).to_backend.messages, 4);
/// assert_eq!((a - a), TrafficTotals::default());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficTotals {
    /// From the client toward the backend.
    pub to_backend: Flow,
    /// From the backend toward the client.
    pub to_client: Flow,
}

impl Add for Flow {
    type Output = Flow;
    fn add(self, other: Flow) -> Flow {
        Flow {
            messages: self.messages.saturating_add(other.messages),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

impl Sub for Flow {
    type Output = Flow;
    fn sub(self, other: Flow) -> Flow {
        Flow {
            messages: self.messages.saturating_sub(other.messages),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }
}

impl Add for TrafficTotals {
    type Output = TrafficTotals;
    fn add(self, other: TrafficTotals) -> TrafficTotals {
        TrafficTotals {
            to_backend: self.to_backend + other.to_backend,
            to_client: self.to_client + other.to_client,
        }
    }
}

impl AddAssign for TrafficTotals {
    fn add_assign(&mut self, other: TrafficTotals) {
        *self = *self + other;
    }
}

impl Sub for TrafficTotals {
    type Output = TrafficTotals;
    fn sub(self, other: TrafficTotals) -> TrafficTotals {
        TrafficTotals {
            to_backend: self.to_backend - other.to_backend,
            to_client: self.to_client - other.to_client,
        }
    }
}

/// One connection's running counts, written by its relay (each direction by its own pump,
/// once per read, so no two writers share a counter) and read at any time.
///
/// ```
/// use tower_ws_proxy::Traffic;
///
/// let traffic = Traffic::default();
/// assert_eq!(traffic.totals().to_client.bytes, 0);
/// ```
#[derive(Debug, Default)]
pub struct Traffic {
    to_backend_messages: AtomicU64,
    to_backend_bytes: AtomicU64,
    to_client_messages: AtomicU64,
    to_client_bytes: AtomicU64,
}

impl Traffic {
    /// What the connection carried so far.
    pub fn totals(&self) -> TrafficTotals {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TrafficTotals {
            to_backend: Flow {
                messages: load(&self.to_backend_messages),
                bytes: load(&self.to_backend_bytes),
            },
            to_client: Flow {
                messages: load(&self.to_client_messages),
                bytes: load(&self.to_client_bytes),
            },
        }
    }

    /// Adds what a resumed connection carried before it was handed over.
    pub(crate) fn add(&self, totals: TrafficTotals) {
        self.count(true, totals.to_backend.messages, totals.to_backend.bytes);
        self.count(false, totals.to_client.messages, totals.to_client.bytes);
    }

    /// Counts one read's worth toward the backend (`true`) or the client.
    pub(crate) fn count(&self, to_backend: bool, messages: u64, bytes: u64) {
        let (m, b) = if to_backend {
            (&self.to_backend_messages, &self.to_backend_bytes)
        } else {
            (&self.to_client_messages, &self.to_client_bytes)
        };
        if messages > 0 {
            m.fetch_add(messages, Ordering::Relaxed);
        }
        b.fetch_add(bytes, Ordering::Relaxed);
    }
}
