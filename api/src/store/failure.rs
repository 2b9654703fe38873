//! What a database error means, decided by SQLSTATE rather than by its text, and the retry
//! loop built on that: outages are waited out, lost deadlocks tried again a few times.

use super::StoreError;
use backon::ExponentialBuilder;
use sea_orm::sqlx;
use sea_orm::{DbErr, RuntimeErr};
use sluice_shared::retry::Retry;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest wait between database retries during an outage.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Retries of a statement that lost a deadlock or a serialization conflict. Two API replicas
/// meet like this only briefly; past this the statement is treated as refused.
const CONFLICT_RETRIES: usize = 5;

/// What a database error means for whoever meets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The database is unreachable, restarting or out of connections: wait and try again.
    Outage,
    /// A deadlock or serialization failure: the same statement may succeed at once.
    Conflict,
    /// The database refuses this statement; trying it again will not help.
    Refused,
}

impl DbFailure {
    pub fn of(e: &DbErr) -> Self {
        match e {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Self::Outage,
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                Self::of_sqlx(e)
            }
            _ => Self::Refused,
        }
    }

    /// The SQLSTATE of an error the database answered, if it was one.
    pub fn sqlstate(e: &DbErr) -> Option<String> {
        match e {
            DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
                match &**e {
                    sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn of_sqlx(e: &sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) => db.code().map_or(Self::Refused, |c| Self::of_code(&c)),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => Self::Outage,
            _ => Self::Refused,
        }
    }

    /// PostgreSQL's SQLSTATE codes (appendix A of its manual).
    pub fn of_code(code: &str) -> Self {
        match code {
            // connection_exception class; admin, crash and startup shutdowns; too many
            // connections.
            c if c.starts_with("08") => Self::Outage,
            "57P01" | "57P02" | "57P03" | "53300" => Self::Outage,
            "40001" | "40P01" => Self::Conflict,
            _ => Self::Refused,
        }
    }

    /// Whether waiting could help (the HTTP side answers 503 rather than 500).
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Outage | Self::Conflict)
    }
}

/// Runs `op` until it succeeds, is refused, or shutdown (`None`): [`db_retry`], stopped by
/// `cancel`.
pub async fn with_db_retry<T, F, Fut>(
    cancel: &CancellationToken,
    what: &str,
    op: F,
) -> Option<Result<T, StoreError>>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        result = db_retry(what, op) => Some(result),
    }
}

/// Runs `op` until it succeeds or is refused: through a database outage it waits and tries
/// again for as long as it lasts; a deadlock or serialization failure is tried again a few
/// times, then returned like a refusal. Dropping the future stops it.
pub async fn db_retry<T, F, Fut>(what: &str, op: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let outage = ExponentialBuilder::default()
        .with_max_delay(MAX_BACKOFF)
        .without_max_times();
    // Jittered, so two replicas that deadlocked do not meet again in step.
    let conflict = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(CONFLICT_RETRIES)
        .with_jitter();
    let log = |error: &str, wait: Duration| {
        tracing::warn!(%error, retry_in = ?wait, "cannot {what} yet");
    };
    // Outages are waited out for as long as they last; within each try, a lost deadlock is
    // tried again a few times.
    Retry::new("db_outage", outage)
        .notify(log)
        .run(
            |e: &StoreError| e.failure() == DbFailure::Outage,
            || {
                Retry::new("db_conflict", conflict)
                    .notify(log)
                    .run(|e: &StoreError| e.failure() == DbFailure::Conflict, &op)
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_decides_the_failure() {
        for code in ["08006", "08001", "57P01", "57P02", "57P03", "53300"] {
            assert_eq!(DbFailure::of_code(code), DbFailure::Outage, "{code}");
        }
        for code in ["40001", "40P01"] {
            assert_eq!(DbFailure::of_code(code), DbFailure::Conflict, "{code}");
        }
        // invalid byte sequence, unique violation, raise_exception, query_canceled
        for code in ["22021", "23505", "P0001", "57014", "53100"] {
            assert_eq!(DbFailure::of_code(code), DbFailure::Refused, "{code}");
        }
    }

    #[test]
    fn error_shapes_without_a_code() {
        let io = DbErr::Exec(RuntimeErr::SqlxError(
            sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()).into(),
        ));
        assert_eq!(DbFailure::of(&io), DbFailure::Outage);
        let pool = DbErr::Query(RuntimeErr::SqlxError(sqlx::Error::PoolTimedOut.into()));
        assert_eq!(DbFailure::of(&pool), DbFailure::Outage);
        let decode = DbErr::Query(RuntimeErr::SqlxError(
            sqlx::Error::ColumnNotFound("x".into()).into(),
        ));
        assert_eq!(DbFailure::of(&decode), DbFailure::Refused);
        // Text that merely mentions a connection is not an outage any more.
        let text = DbErr::Exec(RuntimeErr::Internal(
            "connection refused by the trigger".into(),
        ));
        assert_eq!(DbFailure::of(&text), DbFailure::Refused);
        assert_eq!(
            DbFailure::of(&DbErr::Conn(RuntimeErr::Internal("Disconnected".into()))),
            DbFailure::Outage
        );
    }
}
