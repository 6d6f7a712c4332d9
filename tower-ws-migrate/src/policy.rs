//! What happens to a connection whose owner changed, and the handle that carries it out.

use std::{future::Future, pin::Pin, sync::Arc};

use tower_hashring::NodeId;
use tower_ws_proxy::{close_code, RelayHandle};

use crate::{Fallback, FallbackKind, Outcome};

/// How a connection whose owner changed is moved.
///
/// ```
/// use tower_ws_migrate::MigrationPolicy;
///
/// // A normal close, and the client reconnects: not the default code (1012).
/// let normal = MigrationPolicy::Reconnect { code: 1000, reason: "moved".into() };
/// assert_ne!(normal, MigrationPolicy::reconnect());
/// assert!(matches!(MigrationPolicy::live(), MigrationPolicy::Live { code: 1012, .. }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationPolicy {
    /// Close the client with this code and reason (at a message boundary) and close the
    /// upstream; the client reconnects and the ring sends it to the new owner.
    Reconnect {
        /// The close code sent to the client.
        code: u16,
        /// The close reason sent to the client.
        reason: String,
    },
    /// Dial the new owner with the client's original request, then switch the relay to it
    /// at a message boundary: the client sees no close and loses no frame. Where that is
    /// impossible (the dial fails, a negotiated extension keeps state across messages),
    /// fall back to [`Reconnect`](Self::Reconnect) with this code and reason.
    Live {
        /// The close code of the fallback.
        code: u16,
        /// The close reason of the fallback.
        reason: String,
    },
}

impl MigrationPolicy {
    /// Reconnect with 1012 "Service Restart", which clients treat as "try again".
    pub fn reconnect() -> Self {
        MigrationPolicy::Reconnect {
            code: close_code::SERVICE_RESTART,
            reason: "Service Restart".into(),
        }
    }

    /// Live, falling back to a 1012 "Service Restart" close.
    pub fn live() -> Self {
        MigrationPolicy::Live {
            code: close_code::SERVICE_RESTART,
            reason: "Service Restart".into(),
        }
    }

    /// The close sent to the client when it has to reconnect under this policy.
    pub fn close(&self) -> (u16, &str) {
        match self {
            MigrationPolicy::Reconnect { code, reason }
            | MigrationPolicy::Live { code, reason } => (*code, reason),
        }
    }
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        Self::reconnect()
    }
}

/// The future of one migration; resolves with how it ended.
pub type MigrateFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A live connection that can be moved: implemented by the relay's handle (Reconnect only),
/// by [`ProxiedConnection`](crate::ProxiedConnection) (Reconnect and Live), and by test
/// doubles.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower_hashring::NodeId;
/// use tower_ws_migrate::{Migrate, MigrationPolicy, Outcome};
/// use tower_ws_proxy::{close_code, RelayHandle};
///
/// let (handle, _commands) = RelayHandle::new();
/// let (from, to) = (NodeId::from("a"), NodeId::from("b"));
/// let outcome = handle.migrate(&MigrationPolicy::reconnect(), &from, Some(&to)).await;
/// assert_eq!(outcome, Outcome::Moved);
/// # }
/// ```
pub trait Migrate: Clone + Send + Sync + 'static {
    /// Moves the connection from `from` to `to` (`None`: the new ring is empty) per
    /// `policy`.
    fn migrate(
        &self,
        policy: &MigrationPolicy,
        from: &NodeId,
        to: Option<&NodeId>,
    ) -> MigrateFuture;

    /// The policy of this connection's route; `None` (the default): the migrator's.
    fn policy(&self) -> Option<Arc<MigrationPolicy>> {
        None
    }
}

impl Migrate for RelayHandle {
    fn migrate(&self, policy: &MigrationPolicy, _: &NodeId, _: Option<&NodeId>) -> MigrateFuture {
        let outcome = if self.is_finished() {
            Outcome::Failed("the connection already ended".into())
        } else {
            let (code, reason) = policy.close();
            self.close(code, reason);
            match policy {
                MigrationPolicy::Live { .. } => Outcome::FellBack(Fallback::new(
                    FallbackKind::NoNewOwner,
                    "a bare relay handle cannot dial the new owner",
                )),
                _ => Outcome::Moved,
            }
        };
        Box::pin(std::future::ready(outcome))
    }
}
