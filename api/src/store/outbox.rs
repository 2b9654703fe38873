//! The transactional outbox: the one place requests are written for the broker ([`insert`],
//! inside the transaction that creates or restarts their reply), handed to the publisher right
//! after the commit ([`Handoff`]), swept by the relay when older than a grace period
//! ([`Store::claim_outbox`]) and deleted once the broker has confirmed them.

use super::{Store, StoreError};
use sea_orm::sea_query::ArrayType;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement, TransactionTrait, Value,
};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

/// One request waiting for the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: Uuid,
    /// Names the AMQP message (easy to find in the management UI).
    pub request_id: Uuid,
    /// The envelope as JSON text, published as it is.
    pub payload: String,
}

/// Writes `rows` in one statement (inside the caller's transaction).
pub(crate) async fn insert(db: &impl ConnectionTrait, rows: &[OutboxRow]) -> Result<(), DbErr> {
    if rows.is_empty() {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO outbox (id, payload, created_at) \
         SELECT id, payload::jsonb, now() FROM UNNEST($1::uuid[], $2::text[]) AS v(id, payload)",
        [
            rows.iter().map(|r| r.id).collect::<Vec<_>>().into(),
            texts(rows.iter().map(|r| r.payload.clone())),
        ],
    ))
    .await?;
    Ok(())
}

/// A text array for `UNNEST`.
pub(crate) fn texts(values: impl Iterator<Item = String>) -> Value {
    Value::Array(
        ArrayType::String,
        Some(Box::new(values.map(|s| Value::String(Some(s))).collect())),
    )
}

/// An int array for `UNNEST`.
pub(crate) fn ints(values: impl Iterator<Item = i32>) -> Value {
    Value::Array(
        ArrayType::Int,
        Some(Box::new(values.map(|n| Value::Int(Some(n))).collect())),
    )
}

/// Hands committed rows to the publisher. Never waits: when the publisher is behind (or the
/// broker away) the rows simply stay for the relay's sweep.
#[derive(Clone, Debug)]
pub struct Handoff(Option<mpsc::Sender<Vec<OutboxRow>>>);

impl Handoff {
    pub fn new(publisher: mpsc::Sender<Vec<OutboxRow>>) -> Self {
        Self(Some(publisher))
    }

    /// No publisher: every row waits for the sweep (tests of the relay alone).
    pub fn none() -> Self {
        Self(None)
    }

    pub fn hand_over(&self, rows: Vec<OutboxRow>) {
        if rows.is_empty() {
            return;
        }
        if let Some(publisher) = &self.0
            && publisher.try_send(rows).is_err()
        {
            metrics::counter!("sluice_outbox_handoff_skipped_total").increment(1);
        }
    }
}

/// The outbox's backlog, for the relay's gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    pub rows: u64,
    /// The age of the oldest row (zero when there is none).
    pub oldest: Duration,
}

/// Outbox rows claimed by the sweep; they stay locked (`FOR UPDATE SKIP LOCKED`) until
/// [`Claim::finish`] deletes the published ones and commits.
pub struct Claim {
    txn: DatabaseTransaction,
    pub rows: Vec<OutboxRow>,
    /// More rows were waiting than this claim took: claim again at once.
    pub more: bool,
}

impl Claim {
    /// Deletes the rows the broker confirmed and releases the rest.
    pub async fn finish(self, published: &[Uuid]) -> Result<(), StoreError> {
        if !published.is_empty() {
            delete(&self.txn, published).await?;
        }
        Ok(self.txn.commit().await?)
    }
}

async fn delete(db: &impl ConnectionTrait, ids: &[Uuid]) -> Result<(), DbErr> {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "DELETE FROM outbox WHERE id = ANY($1)",
        [ids.to_vec().into()],
    ))
    .await?;
    Ok(())
}

impl Store {
    /// Claims up to `max_rows` rows older than `older_than` (about `max_bytes` of payload; the
    /// first row always comes), oldest first.
    pub async fn claim_outbox(
        &self,
        older_than: Duration,
        max_rows: usize,
        max_bytes: i64,
    ) -> Result<Claim, StoreError> {
        let txn = self.db.begin().await?;
        let older_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        // Rows past the byte budget are locked with the claim but not read; the commit frees
        // them for the next claim.
        let found = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH claimed AS ( \
                     SELECT id, payload::text AS payload, payload->>'request_id' AS request_id \
                     FROM outbox WHERE created_at < now() - $3 * interval '1 millisecond' \
                     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED), \
                 sized AS ( \
                     SELECT id, payload, request_id, count(*) OVER () AS claimed, \
                     sum(octet_length(payload)) OVER (ORDER BY id) - octet_length(payload) \
                         AS bytes_before \
                     FROM claimed) \
                 SELECT id, payload, request_id, claimed \
                 FROM sized WHERE bytes_before < $2 ORDER BY id",
                [
                    i64::try_from(max_rows).unwrap_or(i64::MAX).into(),
                    max_bytes.into(),
                    older_ms.into(),
                ],
            ))
            .await?;
        let mut rows = Vec::with_capacity(found.len());
        let mut claimed = 0;
        for row in &found {
            let id: Uuid = row.try_get("", "id")?;
            claimed = row.try_get::<i64>("", "claimed")?;
            let request_id: Option<String> = row.try_get("", "request_id")?;
            rows.push(OutboxRow {
                id,
                request_id: request_id
                    .and_then(|r| Uuid::parse_str(&r).ok())
                    .unwrap_or(id),
                payload: row.try_get("", "payload")?,
            });
        }
        let claimed = usize::try_from(claimed).unwrap_or(max_rows);
        Ok(Claim {
            more: claimed == max_rows || rows.len() < claimed,
            rows,
            txn,
        })
    }

    /// How many rows wait in the outbox and how old the oldest is (zero when empty), in one
    /// statement for the relay's gauges. The count reads the whole table, which stays small
    /// while the relay keeps up and is read at most every few seconds when it does not; the
    /// oldest row is the first of the primary key (UUIDv7 ids are time-ordered).
    pub async fn outbox_backlog(&self) -> Result<Backlog, StoreError> {
        let row = self
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS rows, COALESCE(EXTRACT(EPOCH FROM now() - \
                 (SELECT created_at FROM outbox ORDER BY id LIMIT 1)), 0)::float8 AS lag \
                 FROM outbox",
            ))
            .await?;
        let Some(row) = row else {
            return Ok(Backlog::default());
        };
        Ok(Backlog {
            rows: u64::try_from(row.try_get::<i64>("", "rows")?).unwrap_or_default(),
            oldest: Duration::try_from_secs_f64(row.try_get::<f64>("", "lag")?).unwrap_or_default(),
        })
    }

    /// Deletes rows the broker confirmed, in one statement on the `unflushed` pool: if the
    /// database crashed before flushing it, the rows would come back and be published again,
    /// which the generation check makes harmless — so no fsync is waited for.
    pub async fn delete_outbox(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        Ok(delete(&self.unflushed, ids).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::TempDatabase;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[tokio::test]
    async fn backlog_counts_rows_and_ages_the_oldest() -> TestResult {
        let database = TempDatabase::create().await?;
        let store = Store::connect(&database.url, 2).await?;
        let empty = store.outbox_backlog().await;
        store
            .execute_for_test(
                "INSERT INTO outbox (id, payload, created_at) VALUES \
                 ('00000000-0000-7000-8000-000000000001', '{}', now() - interval '30 seconds'), \
                 ('00000000-0000-7000-8000-000000000002', '{}', now())",
            )
            .await?;
        let two = store.outbox_backlog().await;
        store.close().await?;
        database.drop().await?;
        assert_eq!(empty?, Backlog::default());
        let two = two?;
        assert_eq!(two.rows, 2);
        assert!((30.0..60.0).contains(&two.oldest.as_secs_f64()), "{two:?}");
        Ok(())
    }
}
