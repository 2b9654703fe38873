//! Users, chats, messages, prompt templates, the outbox and dead letters. Self-contained SQL:
//! a migration must never depend on today's entity types.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chats (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title      text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chats_by_user ON chats (user_id, created_at, id);

CREATE TABLE messages (
    id                uuid PRIMARY KEY,
    chat_id           uuid NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    role              text NOT NULL CHECK (role IN ('user', 'assistant')),
    content           text NOT NULL DEFAULT '',
    status            text NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
    -- Bumped by a replay; a response applies only to the generation it answers.
    generation        integer NOT NULL DEFAULT 0,
    model             text,
    prompt_tokens     integer,
    completion_tokens integer,
    key_alias         text,
    attempts          integer NOT NULL DEFAULT 0,
    error_kind        text,
    error_message     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz
);
CREATE INDEX messages_by_chat ON messages (chat_id, created_at, id);

CREATE TABLE prompt_templates (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name       text NOT NULL,
    body       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prompt_templates_by_user ON prompt_templates (user_id, created_at, id);

-- Envelopes waiting for the relay. Ids are UUIDv7, so the primary key is also the scan order.
CREATE TABLE outbox (
    id         uuid PRIMARY KEY,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- What the dead-letter queue delivered. Poison has no request id and is kept raw in `body`.
CREATE TABLE dead_letters (
    id          uuid PRIMARY KEY,
    request_id  uuid,
    generation  integer,
    chat_id     uuid,
    reason      text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    headers     jsonb NOT NULL DEFAULT '{}'::jsonb,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz
);
CREATE UNIQUE INDEX dead_letters_once_per_generation
    ON dead_letters (request_id, generation) WHERE request_id IS NOT NULL;
CREATE INDEX dead_letters_by_time ON dead_letters (created_at, id);
"#;

const DOWN: &str = r#"
DROP TABLE IF EXISTS dead_letters;
DROP TABLE IF EXISTS outbox;
DROP TABLE IF EXISTS prompt_templates;
DROP TABLE IF EXISTS messages;
DROP TABLE IF EXISTS chats;
DROP TABLE IF EXISTS users;
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
