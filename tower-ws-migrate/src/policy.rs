//! What happens to a connection whose owner changed, and the handle that carries it out.

use tower_ws_proxy::RelayHandle;

/// How a connection whose owner changed is moved.
///
/// ```
/// use tower_ws_migrate::MigrationPolicy;
///
/// // The seed project's behaviour: a normal close, and the client reconnects.
/// let seed = MigrationPolicy::Reconnect { code: 1000, reason: "moved".into() };
/// assert_ne!(seed, MigrationPolicy::reconnect());
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
}

impl MigrationPolicy {
    /// Reconnect with 1012 "Service Restart", which clients treat as "try again".
    pub fn reconnect() -> Self {
        MigrationPolicy::Reconnect {
            code: 1012,
            reason: "Service Restart".into(),
        }
    }
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        Self::reconnect()
    }
}

/// A live connection that can be moved: implemented by the relay's handle, and by test
/// doubles.
///
/// ```
/// use tower_ws_migrate::{Migrate, MigrationPolicy};
/// use tower_ws_proxy::RelayHandle;
///
/// let (handle, _commands) = RelayHandle::new();
/// assert!(handle.migrate(&MigrationPolicy::reconnect()).is_ok());
/// ```
pub trait Migrate {
    /// Starts moving the connection per `policy`. An error says why it could not.
    fn migrate(&self, policy: &MigrationPolicy) -> Result<(), String>;
}

impl Migrate for RelayHandle {
    fn migrate(&self, policy: &MigrationPolicy) -> Result<(), String> {
        if self.is_finished() {
            return Err("the connection already ended".into());
        }
        match policy {
            MigrationPolicy::Reconnect { code, reason } => self.close(*code, reason.clone()),
        }
        Ok(())
    }
}
