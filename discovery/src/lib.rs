//! `tower::discover::Discover` streams for static lists, Redis, Docker and RabbitMQ (filled by a later issue).
