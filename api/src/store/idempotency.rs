//! Idempotency keys: the first answer to a post or retry sent with an `Idempotency-Key`,
//! stored in the same transaction as what it answers, so a repeat finds either nothing (the
//! first did not commit) or the answer (it did). A concurrent repeat loses on the primary key.

use super::{Store, StoreError};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use std::time::Duration;
use uuid::Uuid;

/// How long a key answers for its first request.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a key remembers: a digest of the request it came with and the answer's JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub request_hash: String,
    pub response: String,
}

/// A key to store with the operation it answers.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub user_id: Uuid,
    pub key: String,
    pub request_hash: String,
    pub response: String,
}

fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

impl Store {
    /// The answer `user` got for `key` within `ttl`, if any. A row older than that is deleted
    /// here, so the key may be used again at once.
    pub async fn remembered(
        &self,
        user: Uuid,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Remembered>, StoreError> {
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT request_hash, response, \
                     created_at > now() - make_interval(secs => $3) AS fresh \
                 FROM idempotency_keys WHERE user_id = $1 AND key = $2",
                [user.into(), key.into(), seconds(ttl).into()],
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        if !row.try_get::<bool>("", "fresh")? {
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 \
                         AND created_at <= now() - make_interval(secs => $3)",
                    [user.into(), key.into(), seconds(ttl).into()],
                ))
                .await?;
            return Ok(None);
        }
        Ok(Some(Remembered {
            request_hash: row.try_get("", "request_hash")?,
            response: row.try_get("", "response")?,
        }))
    }

    /// Deletes up to `batch` keys older than `ttl` (one short statement); returns how many.
    pub async fn forget_idempotency_keys(
        &self,
        ttl: Duration,
        batch: i64,
    ) -> Result<u64, StoreError> {
        let done = self
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY( \
                     SELECT ctid FROM idempotency_keys \
                     WHERE created_at <= now() - make_interval(secs => $1) LIMIT $2))",
                [seconds(ttl).into(), batch.into()],
            ))
            .await?;
        Ok(done.rows_affected())
    }
}

/// Stores `record` inside the caller's transaction; a key already there is a unique violation.
pub(crate) async fn remember(
    db: &impl ConnectionTrait,
    record: &IdempotencyRecord,
) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO idempotency_keys (user_id, key, request_hash, response) \
         VALUES ($1, $2, $3, $4)",
        [
            record.user_id.into(),
            record.key.clone().into(),
            record.request_hash.clone().into(),
            record.response.clone().into(),
        ],
    ))
    .await?;
    Ok(())
}
