//! The Sluice schema as an ordered list of sea-orm migrations. `sluice-api` applies the pending
//! ones at start (under an advisory lock) and `sluice-api migrate` applies them and exits.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_initial;
mod m20261202_000001_reply_origin;
mod m20261202_000100_pending_by_chat;
mod m20261203_000001_chat_version;
mod m20261207_000200_idempotency_keys;
mod m20261207_000300_accounts;
mod m20261207_000900_chat_activity;
mod m20261208_000100_requested_model;
mod m20261208_000200_usage_records;
mod m20261209_000100_branches;
mod m20261209_000200_chat_search;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_initial::Migration),
            Box::new(m20261202_000001_reply_origin::Migration),
            Box::new(m20261202_000100_pending_by_chat::Migration),
            Box::new(m20261203_000001_chat_version::Migration),
            Box::new(m20261207_000200_idempotency_keys::Migration),
            Box::new(m20261207_000300_accounts::Migration),
            Box::new(m20261207_000900_chat_activity::Migration),
            Box::new(m20261208_000100_requested_model::Migration),
            Box::new(m20261208_000200_usage_records::Migration),
            Box::new(m20261209_000100_branches::Migration),
            Box::new(m20261209_000200_chat_search::Migration),
        ]
    }
}
