//! RabbitMQ: the gateway publishes every ring change and every migration, so backends can
//! hand state off before a user arrives.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use lapin::{
    options::{BasicPublishOptions, ExchangeDeclareOptions},
    types::FieldTable,
    BasicProperties, Connection, ConnectionProperties, ExchangeKind,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tower_hashring::RingSnapshot;

use crate::backoff::Backoff;

/// The most events waiting while the broker is unreachable; older ones are dropped (and
/// counted) past it. After a reconnect the current ring is published first, so a consumer
/// that missed changes catches up.
const QUEUE: usize = 10_000;

/// Publishes JSON events to a fanout exchange, reconnecting by itself; cheap to clone.
/// Nothing blocks or fails while the broker is down: events wait in a bounded queue.
///
/// Events (all with `"type"`):
/// - `ring`: `version`, `previous_version`, `members` (`id`, `weight`), `moved` (key
///   ranges `start`..`end` on the ring, `from`, `to`);
/// - `ring_state`: `version`, `members`: the current ring, published after every
///   (re)connect so a consumer that missed changes can catch up;
/// - `migration`: `ring_version`, `key`, `from`, `to`, `policy`, `outcome`.
///
/// ```no_run
/// # async fn f() {
/// use discovery::AmqpEvents;
///
/// let events = AmqpEvents::spawn("amqp://127.0.0.1:5672/%2f", "wscluster.events");
/// events.publish(serde_json::json!({ "type": "hello" }));
/// # }
/// ```
#[derive(Clone)]
pub struct AmqpEvents {
    queue: mpsc::Sender<Vec<u8>>,
    state: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    stats: Arc<Stats>,
}

#[derive(Debug, Default)]
struct Stats {
    published: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
}

impl fmt::Debug for AmqpEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpEvents")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AmqpEvents {
    /// Starts publishing to `exchange` (declared as a durable fanout) at `url`.
    pub fn spawn(url: &str, exchange: &str) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let this = Self {
            queue,
            state: Arc::default(),
            stats: Arc::default(),
        };
        tokio::spawn(run(
            url.to_owned(),
            exchange.to_owned(),
            receiver,
            this.state.clone(),
            this.stats.clone(),
        ));
        this
    }

    /// Queues an event.
    pub fn publish(&self, event: Value) {
        let payload = serde_json::to_vec(&event).expect("JSON serializes");
        if self.queue.try_send(payload).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a `ring` event for the change from `old` to `new`, and remembers `new` as the
    /// state to publish after a reconnect.
    pub fn ring_changed(&self, old: &RingSnapshot, new: &RingSnapshot) {
        let event = ring_event(old, new);
        let mut current = ring_event(new, new);
        current["type"] = "ring_state".into();
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(serde_json::to_vec(&current).expect("JSON serializes"));
        self.publish(event);
    }

    /// Events the broker took.
    pub fn published(&self) -> u64 {
        self.stats.published.load(Ordering::Relaxed)
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed)
    }

    /// Successful connections so far (more than one: it reconnected).
    pub fn connects(&self) -> u64 {
        self.stats.connects.load(Ordering::Relaxed)
    }
}

/// The `ring` event for going from `old` to `new`.
///
/// ```
/// use tower_hashring::{HashScheme, Ring, RingSnapshot};
///
/// let old = RingSnapshot::initial(HashScheme::default()).next(Ring::builder().node("a", 1).build()?);
/// let new = old.next(Ring::builder().node("a", 1).node("b", 1).build()?);
/// let event = discovery::ring_event(&old, &new);
/// assert_eq!(event["members"].as_array().unwrap().len(), 2);
/// assert!(event["moved"].as_array().unwrap().iter().all(|r| r["to"] == "b"));
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
pub fn ring_event(old: &RingSnapshot, new: &RingSnapshot) -> Value {
    let members: Vec<Value> = new
        .ring()
        .nodes()
        .iter()
        .map(|n| json!({ "id": n.id().as_str(), "weight": n.weight() }))
        .collect();
    let moved: Vec<Value> = if old.version() == new.version() {
        Vec::new()
    } else {
        old.diff(new)
            .ranges()
            .iter()
            .map(|r| {
                json!({
                    "start": r.start,
                    "end": r.end,
                    "from": r.from.as_ref().map(|n| n.as_str()),
                    "to": r.to.as_ref().map(|n| n.as_str()),
                })
            })
            .collect()
    };
    json!({
        "type": "ring",
        "version": new.version(),
        "previous_version": old.version(),
        "members": members,
        "moved": moved,
    })
}

async fn run(
    url: String,
    exchange: String,
    mut queue: mpsc::Receiver<Vec<u8>>,
    state: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    stats: Arc<Stats>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut unsent: Option<Vec<u8>> = None;
    loop {
        let channel = match fanout_channel(&url, &exchange).await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(%error, "cannot reach the broker; events wait");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        stats.connects.fetch_add(1, Ordering::Relaxed);
        // Whoever missed events while we were away can catch up from the current ring.
        let current = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(current) = current {
            if publish(&channel, &exchange, &current).await.is_err() {
                continue;
            }
        }
        loop {
            let payload = match unsent.take() {
                Some(payload) => payload,
                None => match queue.recv().await {
                    Some(payload) => payload,
                    None => return,
                },
            };
            match publish(&channel, &exchange, &payload).await {
                Ok(()) => {
                    stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, "lost the broker; reconnecting");
                    unsent = Some(payload);
                    break;
                }
            }
        }
    }
}

/// A channel to `url` with the durable fanout `exchange` declared.
pub(crate) async fn fanout_channel(url: &str, exchange: &str) -> lapin::Result<lapin::Channel> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    // The channel keeps the connection open for as long as it is used.
    Ok(channel)
}

/// Publishes `payload` to `exchange` and waits for the broker to take it.
pub(crate) async fn publish(
    channel: &lapin::Channel,
    exchange: &str,
    payload: &[u8],
) -> lapin::Result<()> {
    channel
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await?
        .await?;
    Ok(())
}
