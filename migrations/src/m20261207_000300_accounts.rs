//! Accounts that can be signed out of, suspended and deleted: `users.tokens_valid_after` (a
//! password change ends every earlier token), `users.suspended_at`, the revoked token ids of
//! logouts, and `dead_letters.user_id`, so a user's dead letters are found after their chat is
//! gone. Existing dead letters get their user from their chat, else from their request body
//! where it is readable JSON (poison stays without one).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const UP: &str = r#"
ALTER TABLE users ADD COLUMN tokens_valid_after timestamptz;
ALTER TABLE users ADD COLUMN suspended_at timestamptz;

CREATE TABLE revoked_tokens (
    jti        uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- When the token would have expired anyway: the row is useless after that.
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_tokens_by_expiry ON revoked_tokens (expires_at);

ALTER TABLE dead_letters ADD COLUMN user_id uuid;
UPDATE dead_letters d SET user_id = c.user_id FROM chats c WHERE d.chat_id = c.id;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id, body FROM dead_letters WHERE user_id IS NULL AND request_id IS NOT NULL LOOP
        BEGIN
            UPDATE dead_letters SET user_id = (r.body::jsonb ->> 'user_id')::uuid WHERE id = r.id;
        EXCEPTION WHEN others THEN
            NULL; -- not JSON, or no user id in it
        END;
    END LOOP;
END $$;
CREATE INDEX dead_letters_by_user ON dead_letters (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX dead_letters_by_chat ON dead_letters (chat_id) WHERE chat_id IS NOT NULL;
"#;

const DOWN: &str = r#"
DROP INDEX IF EXISTS dead_letters_by_chat;
DROP INDEX IF EXISTS dead_letters_by_user;
ALTER TABLE dead_letters DROP COLUMN IF EXISTS user_id;
DROP TABLE IF EXISTS revoked_tokens;
ALTER TABLE users DROP COLUMN IF EXISTS suspended_at;
ALTER TABLE users DROP COLUMN IF EXISTS tokens_valid_after;
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
