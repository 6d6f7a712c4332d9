//! The embedded demo: reference backends in the gateway's own process, started and stopped
//! through the admin API by [`InProcessBackends`], a [`Scaler`]. Nothing else in the gateway
//! knows of them.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::{mpsc, Notify};
use tower::discover::Change;
use tower_hashring::NodeId;
use tower_ws_migrate::MigrationSecret;

use crate::{
    backend::ReferenceBackend,
    gateway::{Gateway, GatewayConfig},
    scale::{Ownership, ScaleError, ScaleFuture, ScaledMembers, Scaler},
};

/// Reference backends on loopback in this process, each announced to the gateway as it
/// starts and withdrawn as it stops.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use gateway_bin::{demo::InProcessBackends, scale::Scaler};
///
/// let backends = InProcessBackends::new(None);
/// let id = backends.start_named("backend-a").await?;
/// assert_eq!(id.as_str(), "backend-a");
/// assert!(backends.members().is_some()); // for the gateway, once
/// assert!(backends.members().is_none());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct InProcessBackends {
    secret: Option<MigrationSecret>,
    changes: mpsc::UnboundedSender<Change<NodeId, discovery::Backend>>,
    announced: Mutex<Option<mpsc::UnboundedReceiver<Change<NodeId, discovery::Backend>>>>,
    running: Mutex<BTreeMap<NodeId, Arc<Notify>>>,
}

impl InProcessBackends {
    /// None yet; their live moves are checked with `secret`, the gateway's.
    pub fn new(secret: Option<MigrationSecret>) -> Self {
        let (changes, announced) = mpsc::unbounded_channel();
        Self {
            secret,
            changes,
            announced: Mutex::new(Some(announced)),
            running: Mutex::default(),
        }
    }

    /// Starts a reference backend named `id` and announces it.
    pub async fn start_named(&self, id: &str) -> std::io::Result<NodeId> {
        let listener = ReferenceBackend::listen(([127, 0, 0, 1], 0).into())?;
        let address: SocketAddr = listener.local_addr()?;
        let backend = match &self.secret {
            Some(secret) => ReferenceBackend::new(id).with_secret(secret.clone()),
            None => ReferenceBackend::new(id),
        };
        let stop = Arc::new(Notify::new());
        let stopped = stop.clone();
        tokio::spawn(backend.serve(listener, async move { stopped.notified().await }));
        let node = NodeId::from(id);
        self.lock().insert(node.clone(), stop);
        let member = discovery::Backend::new(id, address);
        let _ = self.changes.send(Change::Insert(node.clone(), member));
        tracing::info!(backend = %node, %address, "started in-process backend");
        Ok(node)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Arc<Notify>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Scaler for InProcessBackends {
    /// Names it `backend-N`, N the first number not taken.
    fn start_one(&self) -> ScaleFuture<'_, NodeId> {
        Box::pin(async move {
            let id = {
                let running = self.lock();
                (running.len()..)
                    .map(|n| format!("backend-{n}"))
                    .find(|id| !running.contains_key(id.as_str()))
                    .unwrap_or_default()
            };
            self.start_named(&id)
                .await
                .map_err(|error| ScaleError::Failed(format!("cannot start a backend: {error}")))
        })
    }

    fn ownership<'a>(&'a self, id: &'a NodeId) -> ScaleFuture<'a, Ownership> {
        let ours = self.lock().contains_key(id);
        Box::pin(std::future::ready(Ok(if ours {
            Ownership::Ours
        } else {
            Ownership::Unknown
        })))
    }

    fn stop<'a>(&'a self, id: &'a NodeId) -> ScaleFuture<'a, ()> {
        if let Some(stop) = self.lock().remove(id) {
            stop.notify_waiters();
            let _ = self.changes.send(Change::Remove(id.clone()));
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn members(&self) -> Option<ScaledMembers> {
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        let stream = futures_util::stream::unfold(announced, |mut announced| async move {
            let change = announced.recv().await?;
            Some((Ok(change), announced))
        });
        Some(Box::pin(stream))
    }
}

/// A gateway over `backends` plus `count` in-process reference backends (`backend-a`,
/// `backend-b`, …), which the admin API scales: the demo, and a quick gateway for tests.
pub async fn start(
    config: GatewayConfig,
    backends: Vec<(NodeId, SocketAddr)>,
    count: usize,
) -> std::io::Result<Gateway> {
    let scaler = InProcessBackends::new(config.migration.secret.clone());
    for n in 0..count.min(26) {
        let id = format!("backend-{}", (b'a' + n as u8) as char);
        scaler.start_named(&id).await?;
    }
    Gateway::start_scaled(config, backends, Arc::new(scaler)).await
}

/// A fresh secret the demo's gateway and its in-process backends share for live moves.
pub fn fresh_secret() -> MigrationSecret {
    MigrationSecret::new(random_hex())
}

/// A fresh admin token for the demo, printed once at start.
pub fn fresh_token() -> String {
    random_hex()
}

/// 256 bits, as hex, from the OS-seeded keys std gives every `RandomState`.
fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..4)
        .map(|_| {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(0);
            format!("{:016x}", hasher.finish())
        })
        .collect()
}
