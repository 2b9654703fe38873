//! Changing replies, each change a [`Transition`] of the state machine: answers from the
//! pipeline (in batches, with row isolation), give-ups, the reaper's time-outs, cancel and
//! restart (replay and retry). Every statement names its source state, so repeating one
//! changes nothing, and every transaction touches the chats first (see `store`).

use super::chats::touch;
use super::entities::{dead_letters, prompt_templates};
use super::idempotency::{self, IdempotencyRecord};
use super::message_state::{Transition, kind};
use super::messages::{History, HistoryEnd, history};
use super::outbox::{self, OutboxRow, ints, texts};
use super::{Message, Status, Store, StoreError, with_db_retry};
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, FromQueryResult,
    QueryResult, QuerySelect, Statement, TransactionTrait,
};
use sluice_shared::envelope::{ResponseEnvelope, ResponseStatus};
use sluice_shared::text::strip_nul;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the user reads on a reply the database would not take.
const UNSTORABLE_MESSAGE: &str = "the model's reply could not be stored";
const TIMED_OUT_MESSAGE: &str = "no answer arrived in time; the request was given up";
const CANCELLED_MESSAGE: &str = "stopped before the answer arrived";

/// What became of one response.
#[derive(Debug)]
pub enum Stored {
    /// Applied (or found already answered: duplicates and stale ones change nothing).
    Applied,
    /// Refused by the database; its reply is now `failed`, kind `reply_unstorable`.
    Unstorable,
    /// Not even the failure could be written; the caller must set the delivery aside.
    Unsettled(StoreError),
}

/// Why a reply is given up, as its user will read it.
#[derive(Debug, Clone)]
pub struct GiveUp {
    pub request_id: Uuid,
    pub chat_id: Uuid,
    pub generation: i32,
    pub kind: String,
    pub message: String,
    pub attempts: i32,
}

/// A failed reply put back to `pending` at the next generation, with what its request is
/// rebuilt from.
#[derive(Debug)]
pub struct Restarted {
    pub reply_id: Uuid,
    pub chat_id: Uuid,
    pub generation: i32,
    pub model: Option<String>,
    /// The body of its template now (a deleted template means none).
    pub system: Option<String>,
    pub history: History,
}

/// What is being restarted.
#[derive(Debug, Clone, Copy)]
pub enum RestartOf {
    /// The reply of a recorded dead letter (an operator's replay); marks it replayed.
    DeadLetter(Uuid),
    /// A reply of this chat (its user's retry).
    Reply { chat_id: Uuid, reply_id: Uuid },
}

/// How a restart ended.
#[derive(Debug)]
pub enum Restart {
    /// Committed; the request is in the outbox (hand it over).
    Done {
        reply: Box<Message>,
        request: OutboxRow,
    },
    /// Nothing changed, for this reason.
    Skipped(SkipReason),
}

/// How a cancel ended.
#[derive(Debug)]
pub enum Cancel {
    /// Committed: the reply is `failed`, kind `cancelled`.
    Done(Box<Message>),
    /// Nothing changed, for this reason.
    Skipped(SkipReason),
}

/// Why a restart or a cancel changed nothing. The first reasons are the store's; the last
/// ones, from [`SkipReason::UnknownModel`] on, are the request rebuild's refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// No dead letter of that id.
    NotFound,
    AlreadyReplayed,
    /// A dead letter without a request id (undecodable): there is no reply to restart.
    PoisonCannotBeReplayed,
    /// The reply is not `failed` (or no longer exists).
    MessageNotFailed,
    /// The reply is not `pending` (a cancel came too late).
    MessageNotPending,
    /// The reply is not in the chat that was named.
    MessageNotFound,
    ChatNotFound,
    /// The reply's model is no longer offered.
    UnknownModel,
    /// No user message before the reply.
    QuestionNotFound,
    /// With its history the request is now over `queues.max_message_bytes`.
    MessageTooLarge,
    CannotEncode,
}

impl SkipReason {
    /// The code reported for it (the admin replay's `skipped[].reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::AlreadyReplayed => "already_replayed",
            Self::PoisonCannotBeReplayed => "poison_cannot_be_replayed",
            Self::MessageNotFailed => "message_not_failed",
            Self::MessageNotPending => "message_not_pending",
            Self::MessageNotFound => "message_not_found",
            Self::ChatNotFound => "chat_not_found",
            Self::UnknownModel => "unknown_model",
            Self::QuestionNotFound => "question_not_found",
            Self::MessageTooLarge => "message_too_large",
            Self::CannotEncode => "cannot_encode",
        }
    }
}

fn message_from_row(row: &QueryResult) -> Result<Message, DbErr> {
    <Message as FromQueryResult>::from_query_result(row, "")
}

fn clamp(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn sorted_unique(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// One fixed statement over arrays: the same text whatever the batch size, so PostgreSQL
/// prepares it once. It keeps the lock order in one statement: `locked` takes the chats in id
/// order as it is read, and a message is updated only once its chat came out of it. The
/// version is bumped even for a stale answer (a client's next poll is then a 200 instead of a
/// 304, nothing worse). `m.id = ANY($1)` pins the plan to primary-key lookups: joining on the
/// list alone let PostgreSQL pick a nested loop over the whole table while its statistics were
/// still empty (seen in the benchmark: 10 s for one batch of 256). NULL cannot travel in
/// these arrays, so an absent text is `''` and an absent count -1, turned back by `NULLIF`.
const APPLY: &str = "WITH locked AS ( \
         SELECT id FROM chats WHERE id = ANY($14::uuid[]) ORDER BY id FOR NO KEY UPDATE), \
     touched AS ( \
         UPDATE chats AS c SET version = c.version + 1, updated_at = now() \
         FROM locked WHERE c.id = locked.id) \
     UPDATE messages AS m SET status = v.status, content = v.content, \
     model = v.model, prompt_tokens = NULLIF(v.prompt_tokens, -1), \
     completion_tokens = NULLIF(v.completion_tokens, -1), key_alias = NULLIF(v.key_alias, ''), \
     attempts = v.attempts, error_kind = NULLIF(v.error_kind, ''), \
     error_message = NULLIF(v.error_message, ''), completed_at = now() \
     FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::text[], $6::text[], \
     $7::int4[], $8::int4[], $9::text[], $10::int4[], $11::text[], $12::text[]) \
     AS v(id, chat_id, generation, status, content, model, prompt_tokens, completion_tokens, \
     key_alias, attempts, error_kind, error_message), locked \
     WHERE m.id = ANY($1::uuid[]) AND m.id = v.id AND m.chat_id = v.chat_id \
     AND m.chat_id = locked.id \
     AND m.role = 'assistant' AND m.status = $13 AND m.generation = v.generation";

/// [`Transition::Answer`] for every response, in one statement. Text is stored without
/// U+0000 (workers strip it already; this covers any other sender).
async fn apply_answers(
    db: &impl ConnectionTrait,
    responses: &[ResponseEnvelope],
) -> Result<u64, DbErr> {
    let text = |s: Option<&str>| strip_nul(s.unwrap_or_default()).into_owned();
    let usage = |r: &ResponseEnvelope| match r.status {
        ResponseStatus::Completed => Some(r.usage),
        ResponseStatus::Failed => None,
    };
    let outcome = |r: &ResponseEnvelope| match r.status {
        ResponseStatus::Completed => Status::Completed,
        ResponseStatus::Failed => Status::Failed,
    };
    let values: Vec<sea_orm::Value> = vec![
        responses
            .iter()
            .map(|r| r.request_id)
            .collect::<Vec<_>>()
            .into(),
        responses
            .iter()
            .map(|r| r.chat_id)
            .collect::<Vec<_>>()
            .into(),
        ints(responses.iter().map(|r| r.generation)),
        texts(responses.iter().map(|r| outcome(r).as_str().to_owned())),
        texts(responses.iter().map(|r| text(r.text.as_deref()))),
        texts(responses.iter().map(|r| text(Some(&r.model)))),
        ints(
            responses
                .iter()
                .map(|r| usage(r).map_or(-1, |u| clamp(u.prompt_tokens))),
        ),
        ints(
            responses
                .iter()
                .map(|r| usage(r).map_or(-1, |u| clamp(u.completion_tokens))),
        ),
        texts(responses.iter().map(|r| text(r.key_alias.as_deref()))),
        ints(responses.iter().map(|r| clamp(r.attempts))),
        texts(
            responses
                .iter()
                .map(|r| text(r.error.as_ref().map(|e| e.kind.as_str()))),
        ),
        texts(
            responses
                .iter()
                .map(|r| text(r.error.as_ref().map(|e| e.message.as_str()))),
        ),
        Transition::Answer.from().as_str().into(),
        sorted_unique(responses.iter().map(|r| r.chat_id).collect()).into(),
    ];
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            APPLY,
            values,
        ))
        .await?;
    Ok(result.rows_affected())
}

/// [`Transition::GiveUp`]: fails the reply if it is still pending at that generation.
pub(crate) async fn give_up(db: &impl ConnectionTrait, g: &GiveUp) -> Result<u64, DbErr> {
    let result = db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE messages SET status = $7, content = '', error_kind = $1, \
             error_message = $2, attempts = GREATEST(attempts, $3), completed_at = now() \
             WHERE id = $4 AND chat_id = $5 AND role = 'assistant' AND status = $8 \
             AND generation = $6",
            [
                g.kind.clone().into(),
                g.message.clone().into(),
                g.attempts.into(),
                g.request_id.into(),
                g.chat_id.into(),
                g.generation.into(),
                Status::Failed.as_str().into(),
                Transition::GiveUp.from().as_str().into(),
            ],
        ))
        .await?;
    Ok(result.rows_affected())
}

impl Store {
    /// Applies answers in one statement.
    pub async fn apply_responses(&self, responses: &[ResponseEnvelope]) -> Result<u64, StoreError> {
        if responses.is_empty() {
            return Ok(0);
        }
        let updated = apply_answers(&self.db, responses).await?;
        // After the answers: both are idempotent, so a batch retried after a failure here
        // changes no answer twice and records no call twice.
        super::usage::record(&self.db, responses, &self.prices).await?;
        // Stale and duplicate answers are told too: a watcher reads the row and sees nothing new.
        self.notices
            .changed_all(responses.iter().map(|r| (r.chat_id, r.request_id)));
        Ok(updated)
    }

    /// Applies `responses` in one transaction; if the database refuses it, one at a time, and
    /// a response still refused fails its reply (`reply_unstorable`) instead of leaving it
    /// pending. One outcome per response, in order; `None` on shutdown (nothing is lost:
    /// applying again changes nothing twice). Outages are waited out.
    pub async fn store_responses(
        &self,
        responses: &[ResponseEnvelope],
        cancel: &CancellationToken,
    ) -> Option<Vec<Stored>> {
        let whole = with_db_retry(cancel, "store responses", || {
            self.apply_responses(responses)
        })
        .await?;
        let refused = match whole {
            Ok(updated) => {
                tracing::debug!(received = responses.len(), updated, "responses stored");
                return Some(responses.iter().map(|_| Stored::Applied).collect());
            }
            Err(e) => e,
        };
        tracing::warn!(error = %refused, count = responses.len(), "the database refused a batch of responses; storing them one by one");
        let mut outcomes = Vec::with_capacity(responses.len());
        for response in responses {
            let alone = if responses.len() == 1 {
                Err(refused.clone())
            } else {
                with_db_retry(cancel, "store a response", || {
                    self.apply_responses(std::slice::from_ref(response))
                })
                .await?
            };
            let Err(e) = alone else {
                outcomes.push(Stored::Applied);
                continue;
            };
            tracing::error!(
                error = %e,
                request = %response.request_id,
                generation = response.generation,
                "the database refused a reply; storing it as failed (reply_unstorable)"
            );
            // Nothing is taken from the response but its attempts: any other field may be
            // what was refused.
            let unstorable = GiveUp {
                request_id: response.request_id,
                chat_id: response.chat_id,
                generation: response.generation,
                kind: kind::REPLY_UNSTORABLE.into(),
                message: UNSTORABLE_MESSAGE.into(),
                attempts: clamp(response.attempts),
            };
            let outcome = match with_db_retry(cancel, "fail an unstorable reply", || {
                self.give_up(&unstorable)
            })
            .await?
            {
                Ok(_) => {
                    metrics::counter!("sluice_replies_unstorable_total").increment(1);
                    Stored::Unstorable
                }
                Err(e) => Stored::Unsettled(e),
            };
            outcomes.push(outcome);
        }
        Some(outcomes)
    }

    /// [`Transition::GiveUp`] in a transaction of its own.
    pub async fn give_up(&self, g: &GiveUp) -> Result<u64, StoreError> {
        let txn = self.db.begin().await?;
        touch(&txn, &[g.chat_id]).await?;
        let n = give_up(&txn, g).await?;
        txn.commit().await?;
        if n > 0 {
            self.notices.changed(g.chat_id, vec![g.request_id]);
        }
        Ok(n)
    }

    /// [`Transition::Reap`]: fails up to `max` replies pending for longer than `horizon` (by
    /// the database's clock, which also set `pending_since`), kind `timed_out`. Replicas
    /// share the work through `SKIP LOCKED`.
    pub async fn reap(&self, horizon: Duration, max: i64) -> Result<u64, StoreError> {
        debug_assert_eq!(Transition::Reap.from(), Status::Pending);
        let horizon_ms = i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX);
        let txn = self.db.begin().await?;
        let overdue = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT chat_id FROM messages \
                 WHERE status = 'pending' \
                 AND pending_since < now() - $1 * interval '1 millisecond' \
                 ORDER BY pending_since LIMIT $2",
                [horizon_ms.into(), max.into()],
            ))
            .await?;
        if overdue.is_empty() {
            txn.commit().await?;
            return Ok(0);
        }
        let mut chats = Vec::with_capacity(overdue.len());
        for row in &overdue {
            chats.push(row.try_get::<Uuid>("", "chat_id")?);
        }
        let chats = sorted_unique(chats);
        touch(&txn, &chats).await?;
        // `'pending'` is written out, not bound: only then can PostgreSQL use the partial index
        // on pending replies in a prepared (generic) plan. Only replies of the chats just
        // touched are reaped, so every change bumps its chat's version.
        let reaped = txn
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH overdue AS ( \
                     SELECT id FROM messages \
                     WHERE status = 'pending' AND chat_id = ANY($6::uuid[]) \
                     AND pending_since < now() - $1 * interval '1 millisecond' \
                     ORDER BY pending_since LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE messages AS m SET status = $4, content = '', error_kind = $5, \
                 error_message = $3, completed_at = now() \
                 FROM overdue WHERE m.id = overdue.id AND m.role = 'assistant' \
                 AND m.status = 'pending' RETURNING m.id, m.chat_id",
                [
                    horizon_ms.into(),
                    max.into(),
                    TIMED_OUT_MESSAGE.into(),
                    Status::Failed.as_str().into(),
                    kind::TIMED_OUT.into(),
                    chats.into(),
                ],
            ))
            .await?;
        let mut changes = Vec::with_capacity(reaped.len());
        for row in &reaped {
            changes.push((
                row.try_get::<Uuid>("", "chat_id")?,
                row.try_get::<Uuid>("", "id")?,
            ));
        }
        txn.commit().await?;
        self.notices.changed_all(changes.iter().copied());
        Ok(changes.len() as u64)
    }

    /// [`Transition::Cancel`]: fails the chat's reply if it is still pending, kind
    /// `cancelled`; a late answer then changes nothing. Skipped when no such pending reply.
    pub async fn cancel_reply(&self, chat_id: Uuid, reply_id: Uuid) -> Result<Cancel, StoreError> {
        let txn = self.db.begin().await?;
        touch(&txn, &[chat_id]).await?;
        let row = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE messages SET status = $3, content = '', error_kind = $4, \
                 error_message = $5, completed_at = now() \
                 WHERE id = $1 AND chat_id = $2 AND role = 'assistant' AND status = $6 \
                 RETURNING *",
                [
                    reply_id.into(),
                    chat_id.into(),
                    Status::Failed.as_str().into(),
                    kind::CANCELLED.into(),
                    CANCELLED_MESSAGE.into(),
                    Transition::Cancel.from().as_str().into(),
                ],
            ))
            .await?;
        let message = row.map(|r| message_from_row(&r)).transpose()?;
        txn.commit().await?;
        let Some(message) = message else {
            return Ok(Cancel::Skipped(SkipReason::MessageNotPending));
        };
        self.notices.changed(chat_id, vec![reply_id]);
        Ok(Cancel::Done(Box::new(message)))
    }

    /// [`Transition::Restart`]: puts a failed reply back to `pending` at the next generation,
    /// rebuilds its request with `build` (from the database, never from what the broker sent
    /// back) and writes it to the outbox — all in one transaction, undone if `build` or any
    /// check says no.
    pub async fn restart(
        &self,
        of: RestartOf,
        history_limit: i64,
        build: impl FnOnce(Restarted) -> Result<OutboxRow, SkipReason>,
    ) -> Result<Restart, StoreError> {
        self.restart_remembered(of, history_limit, build, None)
            .await
    }

    /// [`Store::restart`], storing an idempotency key in the same transaction: `remember`
    /// makes its record from the reopened reply (a key already taken is a unique violation,
    /// and nothing is restarted).
    pub async fn restart_remembered(
        &self,
        of: RestartOf,
        history_limit: i64,
        build: impl FnOnce(Restarted) -> Result<OutboxRow, SkipReason>,
        remember: Option<&(dyn Fn(&Message) -> IdempotencyRecord + Sync)>,
    ) -> Result<Restart, StoreError> {
        let txn = self.db.begin().await?;
        let attempt = async {
            let (reply_id, letter) = restart_target(&txn, of).await?;
            let reply = reopen(&txn, of, reply_id).await?;
            let request = build(restart_inputs(&txn, &reply, history_limit).await?)?;
            record_restart(&txn, &request, letter).await?;
            if let Some(remember) = remember {
                idempotency::remember(&txn, &remember(&reply)).await?;
            }
            Ok((reply, request))
        };
        // Dropping `txn` without a commit (any skip) undoes what the attempt changed.
        let (reply, request) = match attempt.await {
            Ok(done) => done,
            Err(Halt::Skip(reason)) => return Ok(Restart::Skipped(reason)),
            Err(Halt::Db(e)) => return Err(e.into()),
        };
        txn.commit().await?;
        self.notices.changed(reply.chat_id, vec![reply.id]);
        Ok(Restart::Done {
            reply: Box::new(reply),
            request,
        })
    }
}

/// Why a restart stops before its commit.
enum Halt {
    Skip(SkipReason),
    Db(DbErr),
}

impl From<SkipReason> for Halt {
    fn from(reason: SkipReason) -> Self {
        Self::Skip(reason)
    }
}

impl From<DbErr> for Halt {
    fn from(e: DbErr) -> Self {
        Self::Db(e)
    }
}

/// The reply `of` names, and for a replay the dead letter to mark (locked, and checked to be
/// neither replayed already nor poison).
async fn restart_target(
    txn: &DatabaseTransaction,
    of: RestartOf,
) -> Result<(Uuid, Option<Uuid>), Halt> {
    match of {
        RestartOf::Reply { reply_id, .. } => Ok((reply_id, None)),
        RestartOf::DeadLetter(id) => {
            let letter = dead_letters::Entity::find_by_id(id)
                .lock_exclusive()
                .one(txn)
                .await?
                .ok_or(SkipReason::NotFound)?;
            if letter.replayed_at.is_some() {
                return Err(SkipReason::AlreadyReplayed.into());
            }
            let request_id = letter
                .request_id
                .ok_or(SkipReason::PoisonCannotBeReplayed)?;
            Ok((request_id, Some(id)))
        }
    }
}

/// The state change of a restart: locks the reply's chat (lock order: the chat first), then
/// puts the reply, if `failed`, back to `pending` at the next generation with a clean slate.
async fn reopen(txn: &DatabaseTransaction, of: RestartOf, reply_id: Uuid) -> Result<Message, Halt> {
    let chat = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT chat_id FROM messages WHERE id = $1",
            [reply_id.into()],
        ))
        .await?
        .ok_or(SkipReason::MessageNotFailed)?;
    let chat_id: Uuid = chat.try_get("", "chat_id")?;
    if let RestartOf::Reply { chat_id: asked, .. } = of
        && asked != chat_id
    {
        return Err(SkipReason::MessageNotFound.into());
    }
    touch(txn, &[chat_id]).await?;
    let bumped = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE messages SET status = $2, generation = generation + 1, content = '', \
             error_kind = NULL, error_message = NULL, attempts = 0, prompt_tokens = NULL, \
             completion_tokens = NULL, key_alias = NULL, completed_at = NULL, \
             pending_since = now() \
             WHERE id = $1 AND role = 'assistant' AND status = $3 \
             RETURNING *",
            [
                reply_id.into(),
                Status::Pending.as_str().into(),
                Transition::Restart.from().as_str().into(),
            ],
        ))
        .await?
        .ok_or(SkipReason::MessageNotFailed)?;
    Ok(message_from_row(&bumped)?)
}

/// What the reopened `reply`'s request is rebuilt from, read in the restart's transaction: its
/// template's current body (a deleted template means none) and the history before it.
async fn restart_inputs(
    txn: &DatabaseTransaction,
    reply: &Message,
    history_limit: i64,
) -> Result<Restarted, Halt> {
    let system = match reply.template_id {
        Some(template) => prompt_templates::Entity::find_by_id(template)
            .one(txn)
            .await?
            .map(|t| t.body),
        None => None,
    };
    let end = HistoryEnd::Above(reply.id);
    let history = history(txn, reply.chat_id, None, end, history_limit)
        .await?
        .ok_or(SkipReason::ChatNotFound)?;
    Ok(Restarted {
        reply_id: reply.id,
        chat_id: reply.chat_id,
        generation: reply.generation,
        // The model asked for, not the one a fallback ended on.
        model: reply
            .requested_model
            .clone()
            .or_else(|| reply.model.clone()),
        system,
        history,
    })
}

/// The rebuilt request into the outbox and, for a replay, its dead letter marked replayed.
async fn record_restart(
    txn: &DatabaseTransaction,
    request: &OutboxRow,
    letter: Option<Uuid>,
) -> Result<(), DbErr> {
    outbox::insert(txn, std::slice::from_ref(request)).await?;
    if let Some(letter) = letter {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE dead_letters SET replayed_at = now() WHERE id = $1",
            [letter.into()],
        ))
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::posts::write_posts;
    use crate::store::testing::{TempDatabase, chats, post};
    use sluice_shared::envelope::Usage;
    use std::future::Future;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    async fn with_store<F, Fut>(test: F) -> TestResult
    where
        F: FnOnce(Store) -> Fut,
        Fut: Future<Output = TestResult>,
    {
        let database = TempDatabase::create().await?;
        let store = Store::connect(&database.url, 2).await?;
        let outcome = test(store.clone()).await;
        store.close().await?;
        database.drop().await?;
        outcome
    }

    fn answer(reply: &Message, generation: i32, text: &str) -> ResponseEnvelope {
        ResponseEnvelope {
            v: sluice_shared::envelope::VERSION,
            request_id: reply.id,
            generation,
            chat_id: reply.chat_id,
            status: ResponseStatus::Completed,
            text: Some(text.into()),
            finish_reason: None,
            usage: Usage::default(),
            key_alias: None,
            model: "m".into(),
            attempts: 1,
            upstream_ms: 0,
            error: None,
            trace_id: None,
            user_id: None,
            calls: Vec::new(),
        }
    }

    async fn reply_of(store: &Store, reply: &Message) -> Result<Message, StoreError> {
        store
            .message(reply.chat_id, reply.id)
            .await?
            .ok_or_else(|| StoreError::refused("reply vanished"))
    }

    async fn version(store: &Store, chat: Uuid) -> Result<i64, StoreError> {
        store
            .count_for_test(&format!("SELECT version FROM chats WHERE id = '{chat}'"))
            .await
    }

    #[tokio::test]
    async fn an_answer_applies_once_and_only_to_its_generation() -> TestResult {
        with_store(|store| async move {
            let chat = chats(&store, 1).await?[0];
            let p = post(chat, "q");
            write_posts(&store, &[&p]).await?;
            let before = version(&store, chat).await?;
            assert_eq!(
                store
                    .apply_responses(&[answer(&p.reply, 1, "stale")])
                    .await?,
                0
            );
            assert_eq!(
                store.apply_responses(&[answer(&p.reply, 0, "yes")]).await?,
                1
            );
            assert_eq!(
                store
                    .apply_responses(&[answer(&p.reply, 0, "again")])
                    .await?,
                0
            );
            let stored = reply_of(&store, &p.reply).await?;
            assert_eq!(
                (stored.status, stored.content.as_str()),
                (Status::Completed, "yes")
            );
            assert!(
                version(&store, chat).await? > before,
                "the chat's version moved"
            );
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn a_cancelled_reply_ignores_its_late_answer() -> TestResult {
        with_store(|store| async move {
            let chat = chats(&store, 1).await?[0];
            let p = post(chat, "q");
            write_posts(&store, &[&p]).await?;
            let Cancel::Done(cancelled) = store.cancel_reply(chat, p.reply.id).await? else {
                return Err("the pending reply was not cancelled".into());
            };
            assert_eq!(cancelled.status, Status::Failed);
            assert_eq!(cancelled.error_kind.as_deref(), Some(kind::CANCELLED));
            assert!(matches!(
                store.cancel_reply(chat, p.reply.id).await?,
                Cancel::Skipped(SkipReason::MessageNotPending)
            ));
            assert_eq!(
                store
                    .apply_responses(&[answer(&p.reply, 0, "late")])
                    .await?,
                0
            );
            assert_eq!(reply_of(&store, &p.reply).await?.status, Status::Failed);
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn only_a_failed_reply_restarts_and_a_refused_rebuild_changes_nothing() -> TestResult {
        with_store(|store| async move {
            let chat = chats(&store, 1).await?[0];
            let p = post(chat, "q");
            write_posts(&store, &[&p]).await?;
            let of = RestartOf::Reply {
                chat_id: chat,
                reply_id: p.reply.id,
            };
            let row = |id| OutboxRow {
                id,
                request_id: p.reply.id,
                payload: "{}".into(),
            };
            let pending = store.restart(of, 10, |_| Ok(row(Uuid::now_v7()))).await?;
            assert!(
                matches!(pending, Restart::Skipped(SkipReason::MessageNotFailed)),
                "{pending:?}"
            );

            store.cancel_reply(chat, p.reply.id).await?;
            let refused = store
                .restart(of, 10, |_| Err(SkipReason::UnknownModel))
                .await?;
            assert!(matches!(
                refused,
                Restart::Skipped(SkipReason::UnknownModel)
            ));
            let still = reply_of(&store, &p.reply).await?;
            assert_eq!((still.status, still.generation), (Status::Failed, 0));

            let outbox_before = store.count_for_test("SELECT count(*) FROM outbox").await?;
            let done = store
                .restart(of, 10, |r| {
                    // The history ends with the question, read inside the transaction.
                    assert_eq!(
                        r.history.newest_first.first().map(|t| t.text.as_str()),
                        Some("q")
                    );
                    Ok(row(Uuid::now_v7()))
                })
                .await?;
            let Restart::Done { reply, .. } = done else {
                return Err(format!("expected a restart, got {done:?}").into());
            };
            assert_eq!((reply.status, reply.generation), (Status::Pending, 1));
            assert_eq!(
                store.count_for_test("SELECT count(*) FROM outbox").await?,
                outbox_before + 1
            );
            // The old generation's answer is stale now; the new one's applies.
            assert_eq!(
                store.apply_responses(&[answer(&p.reply, 0, "old")]).await?,
                0
            );
            assert_eq!(
                store.apply_responses(&[answer(&p.reply, 1, "new")]).await?,
                1
            );
            Ok(())
        })
        .await
    }

    #[test]
    fn skip_reasons_keep_the_codes_the_replay_report_names() {
        // Operators' scripts match on these (`skipped[].reason`): they must not drift.
        let codes = [
            (SkipReason::NotFound, "not_found"),
            (SkipReason::AlreadyReplayed, "already_replayed"),
            (
                SkipReason::PoisonCannotBeReplayed,
                "poison_cannot_be_replayed",
            ),
            (SkipReason::MessageNotFailed, "message_not_failed"),
            (SkipReason::MessageNotPending, "message_not_pending"),
            (SkipReason::MessageNotFound, "message_not_found"),
            (SkipReason::ChatNotFound, "chat_not_found"),
            (SkipReason::UnknownModel, "unknown_model"),
            (SkipReason::QuestionNotFound, "question_not_found"),
            (SkipReason::MessageTooLarge, "message_too_large"),
            (SkipReason::CannotEncode, "cannot_encode"),
        ];
        for (reason, code) in codes {
            assert_eq!(reason.as_str(), code);
        }
    }

    #[tokio::test]
    async fn the_reaper_fails_only_what_is_overdue() -> TestResult {
        with_store(|store| async move {
            let chat = chats(&store, 1).await?[0];
            let (old, fresh) = (post(chat, "old"), post(chat, "fresh"));
            write_posts(&store, &[&old, &fresh]).await?;
            store
                .execute_for_test(&format!(
                    "UPDATE messages SET pending_since = now() - interval '1 hour' \
                     WHERE id = '{}'",
                    old.reply.id
                ))
                .await?;
            assert_eq!(store.reap(Duration::from_secs(60), 100).await?, 1);
            assert_eq!(store.reap(Duration::from_secs(60), 100).await?, 0);
            let reaped = reply_of(&store, &old.reply).await?;
            assert_eq!(reaped.error_kind.as_deref(), Some(kind::TIMED_OUT));
            assert_eq!(
                reply_of(&store, &fresh.reply).await?.status,
                Status::Pending
            );
            Ok(())
        })
        .await
    }

    #[tokio::test]
    async fn answers_apply_by_reply_and_generation_on_any_branch() -> TestResult {
        use crate::store::branches::{Branched, NewBranch};
        use crate::store::paging::PageRequest;
        use crate::store::posts::another_answer;
        with_store(|store| async move {
            let chat = chats(&store, 1).await?[0];
            let p = post(chat, "q");
            write_posts(&store, &[&p]).await?;
            assert_eq!(
                store.apply_responses(&[answer(&p.reply, 0, "one")]).await?,
                1
            );
            let again = another_answer(&p.question, "m".into(), None);
            let branch = NewBranch {
                beside: p.reply.id,
                messages: vec![again.clone()],
                request: OutboxRow {
                    id: Uuid::now_v7(),
                    request_id: again.id,
                    payload: "{}".into(),
                },
                idempotency: None,
            };
            assert_eq!(store.branch_off(&branch).await?, Branched::Done);
            // While it is pending nothing else may branch.
            let late = NewBranch {
                beside: p.reply.id,
                messages: vec![another_answer(&p.question, "m".into(), None)],
                request: OutboxRow {
                    id: Uuid::now_v7(),
                    request_id: Uuid::now_v7(),
                    payload: "{}".into(),
                },
                idempotency: None,
            };
            assert_eq!(store.branch_off(&late).await?, Branched::ReplyInFlight);
            // Shown or not, the new reply takes its own answer once; the old one takes none.
            assert_eq!(
                store.switch_branch(chat, p.reply.id).await?,
                Some(p.reply.id)
            );
            assert_eq!(
                store.apply_responses(&[answer(&again, 1, "stale")]).await?,
                0
            );
            assert_eq!(store.apply_responses(&[answer(&again, 0, "two")]).await?, 1);
            assert_eq!(
                store.apply_responses(&[answer(&again, 0, "twice")]).await?,
                0
            );
            assert_eq!(
                store
                    .apply_responses(&[answer(&p.reply, 0, "late")])
                    .await?,
                0
            );
            assert_eq!(reply_of(&store, &again).await?.content, "two");
            let page = PageRequest {
                after: None,
                limit: 10,
            };
            let shown = store.messages_page(chat, page, usize::MAX).await?;
            let texts: Vec<&str> = shown
                .items
                .iter()
                .map(|m| m.message.content.as_str())
                .collect();
            assert_eq!(texts, ["q", "one"], "the branch shown");
            assert_eq!(shown.items[1].siblings, [p.reply.id, again.id]);
            Ok(())
        })
        .await
    }
}
