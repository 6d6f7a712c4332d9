//! Reloading certificates when their files change.

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;

use super::Certificates;

impl Certificates {
    /// Spawns a task that reads the certificate and key files every `every` and reloads
    /// the certificates whose files changed, once the new contents stayed the same for one
    /// period (so a pair caught halfway through being written is not tried). A new
    /// certificate is served within two periods of its files being written. The task ends
    /// when the certificates are dropped.
    ///
    /// Why polling rather than file notifications: it is portable, follows symlink swaps
    /// (a Kubernetes secret volume), and reading a few small files each second costs
    /// nothing next to the handshakes.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// use tower_ws_proxy::server::tls::{Certificates, TlsSettings};
    ///
    /// let certificates = Certificates::load(&TlsSettings::new("cert.pem", "key.pem"))?;
    /// let _watcher = certificates.watch(Duration::from_secs(1));
    /// # Ok(()) }
    /// ```
    pub fn watch(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let certificates = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(certificates) = certificates.upgrade() else {
                    return;
                };
                // Reading files blocks: off the runtime's worker threads.
                let reloading =
                    tokio::task::spawn_blocking(move || certificates.reload_settled()).await;
                // Errors are logged and counted by the reload itself.
                drop(reloading);
            }
        })
    }
}
