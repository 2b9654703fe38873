//! End-to-end tests against the real PostgreSQL, RabbitMQ and Redis; only the model provider is
//! stood in for, by mock-gemini over real HTTP. Each test owns its database and prefixes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod accounts;
mod api_errors;
mod branches;
mod broker_outage;
mod caps;
mod chat_titles;
mod dead_letter_consumer;
mod events;
mod export;
mod fairness;
mod fallback;
mod hostile_input;
mod hostile_provider;
mod http_timeouts;
mod idempotency;
mod key_rotation;
mod keypool;
mod least_privilege;
mod metrics;
mod migrate_on_start;
mod openai;
mod openapi;
mod pipeline;
mod polling;
mod reaper;
mod replay_rebuild;
mod reply_actions;
mod responses;
mod retention;
mod retries;
mod rolling_restart;
mod row_isolation;
mod search;
mod security;
mod sessions;
mod sizes;
mod stop_marks;
mod streaming;
mod supervision;
mod topology;
mod usage;
mod user_limits;
mod web;
