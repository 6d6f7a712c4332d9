//! Integration tests against real Redis, RabbitMQ and Docker live in `tests/` (filled by later issues).
