//! Tracks live WebSocket connections and migrates those whose owner changed on the ring (filled by a later issue).
