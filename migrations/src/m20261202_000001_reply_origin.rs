//! What a reply needs so the API can rebuild its request from the database (the template it
//! was asked with) and tell how long it has been waiting (`pending_since`, the reaper's clock).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
ALTER TABLE messages
    ADD COLUMN template_id uuid REFERENCES prompt_templates (id) ON DELETE SET NULL;
-- When the reply last became pending: its post, or its latest replay or retry.
ALTER TABLE messages ADD COLUMN pending_since timestamptz NOT NULL DEFAULT now();
UPDATE messages SET pending_since = created_at;
CREATE INDEX messages_pending ON messages (pending_since) WHERE status = 'pending';
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS messages_pending;
ALTER TABLE messages DROP COLUMN IF EXISTS pending_since;
ALTER TABLE messages DROP COLUMN IF EXISTS template_id;
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
