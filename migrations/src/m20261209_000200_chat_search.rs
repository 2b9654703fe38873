//! Full-text search of a user's chats (`GET /api/chats?q=`): a GIN index over message text,
//! with the `simple` configuration (no stemming, no stop words: users write in every language).
//! Titles have no index: a chat's row is updated by every post and answer (its version), so an
//! index on it would be written twice an exchange — a GIN one tripled the database's CPU per
//! message in the flood — while a user's few titles (`users.max_chats`, 1 000) are read
//! through `chats_by_user` in a few milliseconds.
//!
//! A message's `tsvector` is stored (`content_tsv`, generated) rather than only indexed: ranking
//! and phrase rechecks read it per matching row, and recomputing `to_tsvector` there cost about
//! 100 µs a reply — seconds for a common word (docs/BENCHMARKS.md, "Chat search"). Computing it
//! costs the writes nothing more than an expression index would (it is computed once, on insert
//! and when `content` changes; PostgreSQL skips it on updates that leave `content` alone); what
//! it adds is bytes. The index is partial: a reply is inserted empty and a failed one is emptied,
//! so only rows with text are indexed.
//!
//! A reply's vector is about twice its text, so most rows with both passed the 2 kB past
//! which PostgreSQL compresses them and moves values out of line (TOAST); reading a vector back
//! from there, for every match, cost more than ranking it. `toast_tuple_target = 8160` keeps
//! rows whole up to a page: some more bytes, no compression or TOAST index on the write path.
//!
//! Adding the column rewrites `messages` under an exclusive lock: plan the upgrade of a large
//! database as downtime (docs/OPERATIONS.md).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
ALTER TABLE messages SET (toast_tuple_target = 8160);
ALTER TABLE messages ADD COLUMN content_tsv tsvector
    GENERATED ALWAYS AS (to_tsvector('simple', content)) STORED;
CREATE INDEX messages_search ON messages USING gin (content_tsv) WHERE content <> '';
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS messages_search;
ALTER TABLE messages DROP COLUMN IF EXISTS content_tsv;
ALTER TABLE messages RESET (toast_tuple_target);
"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(DOWN).await?;
        Ok(())
    }
}
