//! Both ends of handing live WebSockets over: [`hand_over`] parks and sends them in batches
//! from the old process, [`receive`] resumes them in the new one.

use std::time::Duration;

use tokio::{task::JoinSet, time::Instant};

use super::{connections, Arrivals, HandoverError, Taken, MAX_BATCH};
use crate::{
    close_code, ConnectionHandle, ConnectionId, LiveConnections, MakeHandle, ParkError,
    ParkedConnection, Resumer,
};

/// How [`hand_over`] paces itself.
///
/// ```
/// use std::time::Duration;
/// use tower_ws_proxy::server::handover::TransferOptions;
///
/// let options = TransferOptions::default().batch(50).deadline(Duration::from_secs(20));
/// assert_eq!(options.batch_size(), 50);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TransferOptions {
    batch: usize,
    deadline: Duration,
    settle: Duration,
}

impl Default for TransferOptions {
    /// Batches of 100 connections, everything within 30 s, a settle time of 2 s.
    fn default() -> Self {
        Self {
            batch: 100,
            deadline: Duration::from_secs(30),
            settle: Duration::from_secs(2),
        }
    }
}

impl TransferOptions {
    /// Connections parked and sent together (1 to [`MAX_BATCH`]): each waits, parked, for
    /// its whole batch to be received.
    pub fn batch(mut self, connections: usize) -> Self {
        self.batch = connections.clamp(1, MAX_BATCH);
        self
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Past this, no new batch starts: what is left stays with the old process.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// After the old process stops accepting, how long it goes on handing over the
    /// WebSockets whose upgrades were under way (a client's first request has a second to
    /// arrive, then the backend answers).
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }
}

/// What [`hand_over`] did.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Handed {
    /// Connections the new process took.
    pub handed: usize,
    /// Connections with no message boundary within the switch timeout: closed with 1012.
    pub closed: usize,
    /// Connections that stay here (TLS, HTTP/2, closing, or left at the deadline or after a
    /// failure): the old process serves them until they end or it drains them.
    pub kept: usize,
    /// Batches sent.
    pub batches: usize,
    /// How long it took.
    pub elapsed: Duration,
    /// How long each handed connection stayed parked, in the order they went: from its
    /// park to the new process's go.
    pub pauses: Vec<Duration>,
    /// Why it stopped early, if it did: the new process refused, broke off or died. The
    /// batch in flight was resumed here.
    pub failed: Option<String>,
}

impl Handed {
    /// The median, the 99th percentile and the longest of [`pauses`](Self::pauses) (zero
    /// when nothing was handed over).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_ws_proxy::server::handover::Handed;
    ///
    /// let mut handed = Handed::default();
    /// handed.pauses = (1..=100).map(Duration::from_millis).collect();
    /// let (p50, p99, max) = handed.pause_percentiles();
    /// assert_eq!((p50, p99, max), (Duration::from_millis(51), Duration::from_millis(100), Duration::from_millis(100)));
    /// ```
    pub fn pause_percentiles(&self) -> (Duration, Duration, Duration) {
        let mut pauses = self.pauses.clone();
        pauses.sort_unstable();
        let at = |share: f64| {
            let index =
                ((pauses.len() as f64 * share) as usize).min(pauses.len().saturating_sub(1));
            pauses.get(index).copied().unwrap_or_default()
        };
        (
            at(0.5),
            at(0.99),
            pauses.last().copied().unwrap_or_default(),
        )
    }
}

/// Hands every live WebSocket that can leave this process to the new one that took the
/// listeners: parked (each connection at a message boundary of both directions), sent in
/// batches with their sockets, and dropped here once the new process has them.
///
/// The first pass runs while both processes accept. Then `stop_accepting` is called, and
/// for the settle time the connections upgraded meanwhile go the same way, as do those that
/// were busy (in a live move) until none is left or the deadline; then the new process is
/// told that none follow. A connection inside a message for the switch timeout
/// is closed with 1012 (service restart), as a live move would. If the new process refuses
/// or dies during the first pass, the batch in flight is resumed here with `resumer` (its
/// handles made by `make`), `stop_accepting` is never called, and this process keeps serving
/// everything: the report says why.
pub async fn hand_over<H: ConnectionHandle>(
    taken: &mut Taken,
    connections: &LiveConnections<H>,
    (resumer, make): (&Resumer<H>, Option<&MakeHandle<H>>),
    options: TransferOptions,
    stop_accepting: impl FnOnce(),
) -> Handed {
    let started = Instant::now();
    let deadline = started + options.deadline;
    let mut report = Handed::default();
    pass(
        taken,
        connections,
        (resumer, make),
        (options.batch, deadline),
        &mut report,
    )
    .await;
    if report.failed.is_some() {
        return report.ended(connections, started);
    }
    stop_accepting();
    // Upgrades under way when accepting stopped, and connections that were busy (moving to
    // another backend, say), go too: until the settle time is over and nothing that could
    // leave is left, or the deadline.
    let settled = Instant::now() + options.settle;
    while report.failed.is_none() && Instant::now() < deadline {
        let waiting = !connections.transferable().is_empty();
        if Instant::now() >= settled && !waiting {
            break;
        }
        tokio::time::sleep(SETTLE_STEP).await;
        pass(
            taken,
            connections,
            (resumer, make),
            (options.batch, deadline),
            &mut report,
        )
        .await;
    }
    if let Err(error) = finish(taken).await {
        report.failed.get_or_insert(error.to_string());
    }
    report.ended(connections, started)
}

impl Handed {
    /// The report once handing over ended: what stays, and how long it took.
    fn ended<H>(mut self, connections: &LiveConnections<H>, started: Instant) -> Self {
        self.kept = connections.len();
        self.elapsed = started.elapsed();
        self
    }
}

/// How often the settle time looks for connections upgraded after the first pass.
const SETTLE_STEP: Duration = Duration::from_millis(100);

/// Hands over what can leave now, in batches; stops at the first failure.
async fn pass<H: ConnectionHandle>(
    taken: &mut Taken,
    connections: &LiveConnections<H>,
    (resumer, make): (&Resumer<H>, Option<&MakeHandle<H>>),
    (batch_size, deadline): (usize, Instant),
    report: &mut Handed,
) {
    let ids = connections.transferable();
    for chunk in ids.chunks(batch_size) {
        if Instant::now() >= deadline {
            return;
        }
        let mut parking = park_each(connections, chunk, deadline);
        while let Some(parked) = next_parked(&mut parking, connections, report).await {
            let (batch, since): (Vec<_>, Vec<Instant>) = parked.into_iter().unzip();
            if let Err(error) = send(taken, &batch).await {
                tracing::warn!(%error, "handover broke off: resuming the parked connections here");
                // The batch, and the parks of this chunk that were not sent yet.
                let mut parked = batch;
                while let Some(result) = parking.join_next().await {
                    if let Ok((_, Ok(connection))) = result {
                        parked.push(connection);
                    }
                }
                for connection in parked {
                    if let Err(error) = resumer.resume(connection, make) {
                        tracing::warn!(%error, "a connection taken back was lost");
                    }
                }
                report.failed = Some(error.to_string());
                return;
            }
            report.batches += 1;
            report.handed += batch.len();
            report.pauses.extend(since.iter().map(Instant::elapsed));
            // Our copies of the sockets close here; the new process holds its own.
            drop(batch);
        }
    }
}

/// Tells the new process that no more connections come.
async fn finish(taken: &Taken) -> Result<(), HandoverError> {
    connections::send_done(&taken.stream).await
}

async fn send(taken: &Taken, batch: &[ParkedConnection]) -> Result<(), HandoverError> {
    connections::send_batch(&taken.stream, batch).await?;
    connections::send_go(&taken.stream).await
}

type Parking = JoinSet<(ConnectionId, Result<ParkedConnection, ParkError>)>;

/// Parks `ids` at once, each on a task of its own, none past `deadline` (a relay that
/// parks after its caller gave up relays on).
fn park_each<H: ConnectionHandle>(
    connections: &LiveConnections<H>,
    ids: &[ConnectionId],
    deadline: Instant,
) -> Parking {
    let mut parking = JoinSet::new();
    for &id in ids {
        let connections = connections.clone();
        parking.spawn(async move {
            let parked = tokio::time::timeout_at(deadline, connections.park(id)).await;
            (id, parked.unwrap_or(Err(ParkError::Busy)))
        });
    }
    parking
}

/// The parks that completed together (those between messages complete at once; one stuck
/// in a message does not hold the others back): `None` when every park has answered. A
/// connection without a boundary is closed with 1012; others that cannot park stay.
async fn next_parked<H: ConnectionHandle>(
    parking: &mut Parking,
    connections: &LiveConnections<H>,
    report: &mut Handed,
) -> Option<Vec<(ParkedConnection, Instant)>> {
    const TOGETHER: Duration = Duration::from_millis(5);
    let mut parked = Vec::new();
    let mut next = parking.join_next().await;
    loop {
        match next {
            None => break,
            Some(Err(error)) => tracing::warn!(%error, "a park task failed"),
            Some(Ok((_, Ok(connection)))) => parked.push((connection, Instant::now())),
            Some(Ok((id, Err(ParkError::NoBoundary)))) => {
                report.closed += 1;
                connections.close(id, close_code::SERVICE_RESTART, "gateway restarting");
            }
            Some(Ok((_, Err(_)))) => {}
        }
        next = match tokio::time::timeout(TOGETHER, parking.join_next()).await {
            Ok(next) => next,
            Err(_) if parked.is_empty() => parking.join_next().await,
            Err(_) => break,
        };
    }
    (!parked.is_empty()).then_some(parked)
}

/// What [`receive`] did (with the `serde` feature, also as JSON: `elapsed` as `"2s 871ms"`).
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub struct Received {
    /// Connections relayed here now.
    pub resumed: usize,
    /// Connections taken but not resumed (no place under the cap): closed with 1012.
    pub refused: usize,
    /// Batches taken.
    pub batches: usize,
    /// From the first batch's arrival to the old process's end.
    #[cfg_attr(feature = "serde", serde(with = "humantime_serde"))]
    pub elapsed: Duration,
    /// Why it stopped before the old process was done, if it did.
    pub failed: Option<String>,
}

/// In the new process: resumes every connection the old one hands over, batch by batch
/// (each relayed only once the old process said go), until it is done.
pub async fn receive<H: ConnectionHandle>(
    mut arrivals: Arrivals,
    resumer: &Resumer<H>,
    make: Option<&MakeHandle<H>>,
) -> Received {
    let mut report = Received::default();
    let mut first = None;
    loop {
        let next = arrivals.next_batch().await;
        let started = *first.get_or_insert_with(Instant::now);
        report.elapsed = started.elapsed();
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(error) => {
                report.failed = Some(error.to_string());
                break;
            }
        };
        if let Err(error) = arrivals.committed().await {
            // Still the old process's: it takes the batch back.
            report.failed = Some(error.to_string());
            break;
        }
        report.batches += 1;
        for connection in batch {
            match resumer.resume(connection, make) {
                Ok(()) => report.resumed += 1,
                Err(error) => {
                    tracing::warn!(%error, "a handed-over connection was refused");
                    report.refused += 1;
                }
            }
        }
    }
    report
}
