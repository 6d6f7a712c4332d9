//! Per-client state: open WebSockets and the handshake rate, under one lock.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;

use super::ClientLimits;

/// Why a client was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// It holds its share of WebSockets.
    Websockets,
    /// It starts handshakes too fast; the next is allowed after this long.
    Rate(Duration),
}

/// What is known of one client.
#[derive(Debug)]
struct Client {
    open: usize,
    /// GCRA's theoretical arrival time: a handshake at `now` is allowed while
    /// `now >= allowed_from - burst × interval`.
    allowed_from: Instant,
}

#[derive(Debug, Default)]
struct Clients {
    by_ip: HashMap<IpAddr, Client>,
    /// Entries after the last sweep, and when it was. The next sweep waits until there are
    /// twice as many or a second has passed, so sweeping costs O(1) per handshake and
    /// clients that went away leave no state behind for long.
    swept_at: usize,
    swept: Option<Instant>,
}

/// The clients of one limit layer. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(super) struct ClientTable {
    clients: Arc<Mutex<Clients>>,
}

impl ClientTable {
    fn lock(&self) -> MutexGuard<'_, Clients> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a handshake from `ip`, or says why not. The slot holds one of its WebSockets
    /// until dropped.
    pub(super) fn admit(&self, ip: IpAddr, limits: &ClientLimits) -> Result<ClientSlot, Refusal> {
        let now = Instant::now();
        let mut clients = self.lock();
        clients.sweep(now);
        let client = clients.by_ip.entry(ip).or_insert(Client {
            open: 0,
            allowed_from: now,
        });
        if limits.websockets.is_some_and(|most| client.open >= most) {
            return Err(Refusal::Websockets);
        }
        if let Some(rate) = limits.handshakes_per_second {
            let interval = Duration::from_secs(1) / rate.get();
            let tolerance = interval * limits.burst();
            let allowed_from = client.allowed_from.max(now);
            if allowed_from > now + tolerance - interval {
                let wait = allowed_from - (now + tolerance - interval);
                return Err(Refusal::Rate(wait));
            }
            client.allowed_from = allowed_from + interval;
        }
        client.open += 1;
        Ok(ClientSlot {
            table: self.clone(),
            ip,
        })
    }

    /// How many clients are known (holding WebSockets or inside their rate window).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().by_ip.len()
    }
}

impl Clients {
    fn sweep(&mut self, now: Instant) {
        let grown = self.by_ip.len() >= (self.swept_at * 2).max(1024);
        let due = self
            .swept
            .is_none_or(|swept| now.duration_since(swept) >= Duration::from_secs(1));
        if !grown && !due {
            return;
        }
        self.by_ip
            .retain(|_, client| client.open > 0 || client.allowed_from > now);
        self.swept_at = self.by_ip.len();
        self.swept = Some(now);
    }
}

/// One WebSocket of a client, counted until dropped.
#[derive(Debug)]
pub(super) struct ClientSlot {
    table: ClientTable,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = self.table.lock();
        let now = Instant::now();
        if let Some(client) = clients.by_ip.get_mut(&self.ip) {
            client.open = client.open.saturating_sub(1);
            if client.open == 0 && client.allowed_from <= now {
                clients.by_ip.remove(&self.ip);
            }
        }
    }
}
