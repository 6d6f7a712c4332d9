//! The embedded demo: reference backends in the gateway's own process
//! ([`InProcessBackends`], a [`Scaler`](discovery::Scaler) the admin API scales). Nothing
//! else in the gateway knows of them.

use std::{net::SocketAddr, sync::Arc};

use reference_backend::InProcessBackends;
use tower_hashring::NodeId;
use tower_ws_migrate::MigrationSecret;

use crate::{config::GatewayConfig, gateway::Gateway};

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
