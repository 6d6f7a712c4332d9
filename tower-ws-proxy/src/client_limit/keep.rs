//! Values a layer above the proxy keeps alive for as long as a WebSocket is open.

use std::{any::Any, fmt, sync::Arc};

use http::Request;

/// Values that live as long as the WebSocket a request opens: a layer above the
/// [`WebSocketLayer`](crate::WebSocketLayer) adds them to the request, the proxy takes them
/// out before the request goes on and keeps them until the relay ends (or drops them at once
/// when the handshake fails). A per-client count is one: its slot is freed exactly when the
/// connection ends.
///
/// ```
/// use std::sync::Arc;
/// use tower_ws_proxy::client_limit::KeepWhileOpen;
///
/// let open = Arc::new(());
/// let mut request = http::Request::new(());
/// KeepWhileOpen::add(&mut request, open.clone());
/// assert_eq!(Arc::strong_count(&open), 2);
/// drop(request);
/// assert_eq!(Arc::strong_count(&open), 1);
/// ```
#[derive(Clone, Default)]
pub struct KeepWhileOpen(Vec<Arc<dyn Any + Send + Sync>>);

impl KeepWhileOpen {
    /// Adds `value` to what `request`'s WebSocket keeps.
    pub fn add<B>(request: &mut Request<B>, value: impl Any + Send + Sync) {
        let extensions = request.extensions_mut();
        match extensions.get_mut::<KeepWhileOpen>() {
            Some(kept) => kept.0.push(Arc::new(value)),
            None => {
                extensions.insert(KeepWhileOpen(vec![Arc::new(value)]));
            }
        }
    }
}

impl fmt::Debug for KeepWhileOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeepWhileOpen").field(&self.0.len()).finish()
    }
}
