//! End-to-end tests against the real PostgreSQL, RabbitMQ and Redis; only the model provider is
//! stood in for, by mock-gemini over real HTTP. Each test owns its database and prefixes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_errors;
mod broker_outage;
mod keypool;
mod least_privilege;
mod pipeline;
mod responses;
mod retries;
mod topology;
