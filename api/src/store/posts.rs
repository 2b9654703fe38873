//! Group commit of posts. Each post is a user message, its pending reply and an outbox row;
//! handlers submit them to one writer task, which takes whatever is queued (bounded by rows
//! and bytes), writes it all in one statement — its chats touched in id order, every message
//! and outbox row inserted — commits once, and answers each waiting request. A 202 still means committed. Under light load a post waits for no one: the writer
//! starts on the first post at once and later ones gather while it commits.
//!
//! A batch the database refuses is written again one post at a time, so a refused post fails
//! alone. After the commit the outbox rows go to the publisher ([`Handoff`]).

use super::chats::DEFAULT_TITLE;
use super::idempotency::IdempotencyRecord;
use super::outbox::{Handoff, OutboxRow, ints, texts};
use super::paging::now_micros;
use super::{Message, Role, Status, Store, StoreError};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use std::collections::BTreeMap;
#[cfg(test)]
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Bounds of one transaction.
#[derive(Debug, Clone, Copy)]
pub struct BatchBounds {
    pub max_posts: usize,
    /// Bytes of message text and payload; the first post always goes.
    pub max_bytes: usize,
}

impl Default for BatchBounds {
    fn default() -> Self {
        Self {
            max_posts: 256,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

/// One post: the user's message, the pending reply and the request for the broker.
#[derive(Debug, Clone)]
pub struct NewPost {
    pub question: Message,
    pub reply: Message,
    pub request: OutboxRow,
    /// The post's `Idempotency-Key` and first answer, committed with it.
    pub idempotency: Option<IdempotencyRecord>,
}

/// A user message of `content` and its pending reply, stamped now. Both ids come from one
/// process-monotonic UUIDv7 source and share a timestamp, so ordering by `(created_at, id)`
/// always puts the question before its answer.
pub fn exchange(
    chat_id: Uuid,
    content: String,
    model: String,
    template_id: Option<Uuid>,
) -> (Message, Message) {
    let now = now_micros();
    let question = Message {
        id: Uuid::now_v7(),
        chat_id,
        role: Role::User,
        content,
        status: Status::Completed,
        generation: 0,
        model: None,
        requested_model: None,
        prompt_tokens: None,
        completion_tokens: None,
        key_alias: None,
        attempts: 0,
        error_kind: None,
        error_message: None,
        created_at: now,
        completed_at: Some(now),
        template_id: None,
        pending_since: now,
        parent_id: None,
    };
    let reply = Message {
        id: Uuid::now_v7(),
        parent_id: Some(question.id),
        ..pending_reply(&question, model, template_id)
    };
    (question, reply)
}

/// A pending reply of `model` hung on `question` (already stored), stamped now: another
/// answer to it, beside the ones it has.
pub fn another_answer(question: &Message, model: String, template_id: Option<Uuid>) -> Message {
    let now = now_micros();
    Message {
        id: Uuid::now_v7(),
        parent_id: Some(question.id),
        created_at: now,
        completed_at: None,
        pending_since: now,
        ..pending_reply(question, model, template_id)
    }
}

/// The fields of a pending reply to `question`, its id and times still the question's.
fn pending_reply(question: &Message, model: String, template_id: Option<Uuid>) -> Message {
    Message {
        role: Role::Assistant,
        content: String::new(),
        status: Status::Pending,
        requested_model: Some(model.clone()),
        model: Some(model),
        completed_at: None,
        template_id,
        ..question.clone()
    }
}

impl NewPost {
    fn bytes(&self) -> usize {
        self.question.content.len() + self.request.payload.len()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the post writer has stopped")]
    Stopped,
}

struct Job {
    post: NewPost,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The handlers' side of the writer; cheap to clone. The writer task ends when every clone is
/// gone, after answering what was queued.
#[derive(Clone, Debug)]
pub struct PostWriter {
    queue: mpsc::Sender<Job>,
    batches: Arc<AtomicU64>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("post", &self.post.reply.id)
            .finish()
    }
}

impl PostWriter {
    /// The handlers' side and the writer task, for the caller to run (the API supervises it).
    pub fn new(
        store: Store,
        bounds: BatchBounds,
        handoff: Handoff,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        // Enough to hold several full batches; a full queue makes handlers wait their turn.
        let (queue, jobs) = mpsc::channel(bounds.max_posts.max(1) * 4);
        let batches = Arc::new(AtomicU64::new(0));
        let task = run(store, bounds, handoff, jobs, batches.clone());
        (Self { queue, batches }, task)
    }

    /// [`PostWriter::new`] with the writer task spawned on the current runtime.
    #[cfg(test)]
    pub fn start(
        store: Store,
        bounds: BatchBounds,
        handoff: Handoff,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (writer, task) = Self::new(store, bounds, handoff);
        (writer, sluice_shared::metrics::spawn(task))
    }

    /// Posts waiting for the writer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Transactions the writer has run so far (each batch, and each post written alone).
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Writes the post; returns once it is committed (or refused).
    pub async fn write(&self, post: NewPost) -> Result<(), PostError> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Job { post, done })
            .await
            .map_err(|_| PostError::Stopped)?;
        answer
            .await
            .map_err(|_| PostError::Stopped)?
            .map_err(Into::into)
    }
}

async fn run(
    store: Store,
    bounds: BatchBounds,
    handoff: Handoff,
    mut jobs: mpsc::Receiver<Job>,
    batches: Arc<AtomicU64>,
) {
    while let Some(first) = jobs.recv().await {
        let mut bytes = first.post.bytes();
        let mut batch = vec![first];
        while batch.len() < bounds.max_posts && bytes < bounds.max_bytes {
            let Ok(job) = jobs.try_recv() else { break };
            bytes += job.post.bytes();
            batch.push(job);
        }
        metrics::histogram!("sluice_post_batch_size").record(batch.len() as f64);
        commit(&store, batch, &handoff, &batches).await;
    }
}

/// Writes a batch and answers every post in it exactly once.
async fn commit(store: &Store, batch: Vec<Job>, handoff: &Handoff, batches: &AtomicU64) {
    let posts: Vec<&NewPost> = batch.iter().map(|j| &j.post).collect();
    batches.fetch_add(1, Ordering::Relaxed);
    let result = write_posts(store, &posts).await;
    match result {
        Ok(()) => {
            handoff.hand_over(batch.iter().map(|j| j.post.request.clone()).collect());
            store
                .notices
                .changed_all(batch.iter().flat_map(|j| changes(&j.post)));
            for job in batch {
                let _ = job.done.send(Ok(()));
            }
        }
        Err(e) if batch.len() == 1 => {
            for job in batch {
                let _ = job.done.send(Err(e.clone()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, posts = batch.len(), "a batch of posts was refused; writing them one by one");
            for job in batch {
                batches.fetch_add(1, Ordering::Relaxed);
                let alone = write_posts(store, &[&job.post]).await;
                if alone.is_ok() {
                    handoff.hand_over(vec![job.post.request.clone()]);
                    store.notices.changed_all(changes(&job.post));
                }
                let _ = job.done.send(alone);
            }
        }
    }
}

/// The messages a committed post created, as `(chat, message)`.
fn changes(post: &NewPost) -> [(Uuid, Uuid); 2] {
    [
        (post.question.chat_id, post.question.id),
        (post.reply.chat_id, post.reply.id),
    ]
}

/// One statement, so one round trip and one commit: the chats are locked in id order and
/// their versions bumped (see `store`), and every message, outbox row and idempotency key is
/// inserted (a key already taken refuses the batch, and then that post alone).
pub(crate) async fn write_posts(store: &Store, posts: &[&NewPost]) -> Result<(), StoreError> {
    Ok(insert(&store.db, &Rows::of_posts(posts)).await?)
}

/// Where a new message hangs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hang {
    /// After the chat's current leaf, as the statement finds it once the chat is locked.
    Leaf,
    /// On this message (`None`: it starts a branch of its own).
    On(Option<Uuid>),
}

/// What one insert writes: messages and where they hang, each chat's new leaf (and the title
/// a chat still called [`DEFAULT_TITLE`] takes from its first message; empty: none), the
/// requests for the outbox and the idempotency keys.
#[derive(Debug, Default)]
pub(crate) struct Rows<'a> {
    pub messages: Vec<(&'a Message, Hang)>,
    /// By chat id, so the chats are locked in id order.
    pub leaves: BTreeMap<Uuid, (Uuid, String)>,
    pub requests: Vec<&'a OutboxRow>,
    pub keys: Vec<&'a IdempotencyRecord>,
}

impl<'a> Rows<'a> {
    /// The posts of a batch in the order they came: each question follows the chat's leaf,
    /// or the reply of the batch's previous post to the same chat, so concurrent posts to one
    /// chat line up on its branch as they do in time.
    fn of_posts(posts: &[&'a NewPost]) -> Self {
        let mut rows = Self::default();
        for post in posts {
            let chat = post.question.chat_id;
            let hang = match rows.leaves.get(&chat) {
                Some((previous, _)) => Hang::On(Some(*previous)),
                None => Hang::Leaf,
            };
            rows.messages.push((&post.question, hang));
            rows.messages
                .push((&post.reply, Hang::On(Some(post.question.id))));
            let title = match rows.leaves.remove(&chat) {
                Some((_, title)) => title,
                None => auto_title(&post.question.content),
            };
            rows.leaves.insert(chat, (post.reply.id, title));
            rows.requests.push(&post.request);
            rows.keys.extend(post.idempotency.as_ref());
        }
        rows
    }
}

/// The title a chat created without one takes from its first message: the first line that is
/// not blank, trimmed, cut to [`AUTO_TITLE_CHARS`] characters (an ellipsis marks a cut).
pub fn auto_title(content: &str) -> String {
    let line = content
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if line.chars().count() <= AUTO_TITLE_CHARS {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(AUTO_TITLE_CHARS - 1).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

/// The longest title taken from a first message.
pub const AUTO_TITLE_CHARS: usize = 60;

/// The absent template id travels as the nil UUID (NULL cannot be an array element here); so
/// does an absent parent.
const NO_ID: Uuid = Uuid::nil();

/// The messages (with their parents: the leaf found under the chat's lock, or the one given),
/// the outbox rows and the idempotency keys; each chat's version bumped and its leaf moved,
/// and a chat never titled named after its first message. The leaf comes from `locked`, which
/// reads the chat's row as it is once locked (a plain read would see the statement's older
/// snapshot); the new leaf and title are set by `touched`, whose update the insert does not
/// see (one statement, one snapshot).
pub(crate) async fn insert(db: &impl ConnectionTrait, rows: &Rows<'_>) -> Result<(), DbErr> {
    let messages = &rows.messages;
    let chats: Vec<Uuid> = rows.leaves.keys().copied().collect();
    let leaves: Vec<Uuid> = rows.leaves.values().map(|(leaf, _)| *leaf).collect();
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "WITH locked AS ( \
             SELECT id, current_leaf FROM chats WHERE id = ANY($11::uuid[]) ORDER BY id \
             FOR NO KEY UPDATE), \
         touched AS ( \
             UPDATE chats AS c SET version = c.version + 1, updated_at = now(), \
                 current_leaf = n.leaf, \
                 title = CASE WHEN n.title <> '' AND c.version = 0 AND c.current_leaf IS NULL \
                     AND c.title = $20 THEN n.title ELSE c.title END \
             FROM locked, UNNEST($11::uuid[], $18::uuid[], $19::text[]) AS n(id, leaf, title) \
             WHERE c.id = locked.id AND n.id = locked.id), \
         requests AS ( \
             INSERT INTO outbox (id, payload, created_at) \
             SELECT id, payload::jsonb, now() \
             FROM UNNEST($12::uuid[], $13::text[]) AS o(id, payload)), \
         keys AS ( \
             INSERT INTO idempotency_keys (user_id, key, request_hash, response) \
             SELECT * FROM UNNEST($14::uuid[], $15::text[], $16::text[], $17::text[])) \
         INSERT INTO messages (id, chat_id, role, content, status, generation, model, \
             requested_model, attempts, created_at, completed_at, template_id, pending_since, \
             parent_id) \
         SELECT m.id, m.chat_id, m.role, m.content, m.status, m.generation, \
             NULLIF(m.model, ''), NULLIF(m.model, ''), 0, \
             m.created_at, CASE WHEN m.status = $10 THEN m.created_at END, \
             NULLIF(m.template_id, '00000000-0000-0000-0000-000000000000'::uuid), m.created_at, \
             CASE WHEN m.after_leaf THEN locked.current_leaf \
                 ELSE NULLIF(m.parent, '00000000-0000-0000-0000-000000000000'::uuid) END \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int4[], \
             $7::text[], $8::timestamptz[], $9::uuid[], $21::uuid[], $22::bool[]) \
             AS m(id, chat_id, role, content, status, generation, model, created_at, \
                 template_id, parent, after_leaf) \
         LEFT JOIN locked ON locked.id = m.chat_id",
        [
            messages
                .iter()
                .map(|(m, _)| m.id)
                .collect::<Vec<_>>()
                .into(),
            messages
                .iter()
                .map(|(m, _)| m.chat_id)
                .collect::<Vec<_>>()
                .into(),
            texts(messages.iter().map(|(m, _)| m.role.as_str().to_owned())),
            texts(messages.iter().map(|(m, _)| m.content.clone())),
            texts(messages.iter().map(|(m, _)| m.status.as_str().to_owned())),
            ints(messages.iter().map(|(m, _)| m.generation)),
            texts(
                messages
                    .iter()
                    .map(|(m, _)| m.model.clone().unwrap_or_default()),
            ),
            messages
                .iter()
                .map(|(m, _)| m.created_at)
                .collect::<Vec<_>>()
                .into(),
            messages
                .iter()
                .map(|(m, _)| m.template_id.unwrap_or(NO_ID))
                .collect::<Vec<_>>()
                .into(),
            Status::Completed.as_str().into(),
            chats.into(),
            rows.requests
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
                .into(),
            texts(rows.requests.iter().map(|r| r.payload.clone())),
            rows.keys
                .iter()
                .map(|k| k.user_id)
                .collect::<Vec<_>>()
                .into(),
            texts(rows.keys.iter().map(|k| k.key.clone())),
            texts(rows.keys.iter().map(|k| k.request_hash.clone())),
            texts(rows.keys.iter().map(|k| k.response.clone())),
            leaves.into(),
            texts(rows.leaves.values().map(|(_, title)| title.clone())),
            DEFAULT_TITLE.into(),
            messages
                .iter()
                .map(|(_, hang)| match hang {
                    Hang::On(parent) => parent.unwrap_or(NO_ID),
                    Hang::Leaf => NO_ID,
                })
                .collect::<Vec<_>>()
                .into(),
            messages
                .iter()
                .map(|(_, hang)| matches!(hang, Hang::Leaf))
                .collect::<Vec<_>>()
                .into(),
        ],
    ))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{TempDatabase, chats, post};
    use sea_orm::TransactionTrait;

    type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    /// Runs `test` against a writer on a database of its own; the handoff's receiver is
    /// returned too, to see what would be published.
    async fn with_writer<F, Fut>(test: F) -> TestResult
    where
        F: FnOnce(Store, PostWriter, mpsc::Receiver<Vec<OutboxRow>>) -> Fut,
        Fut: Future<Output = TestResult>,
    {
        let database = TempDatabase::create().await?;
        let store = Store::connect(&database.url, 4).await?;
        let (tx, rx) = mpsc::channel(1024);
        let (writer, task) =
            PostWriter::start(store.clone(), BatchBounds::default(), Handoff::new(tx));
        // A hang is a failure, not a stuck CI run.
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(120),
            test(store.clone(), writer, rx),
        )
        .await
        .unwrap_or_else(|_| Err("the test did not finish in 120 s".into()));
        task.await?;
        store.close().await?;
        database.drop().await?;
        outcome
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_posts_share_commits_and_each_is_answered_once() -> TestResult {
        with_writer(|store, writer, mut handed| async move {
            let chats = chats(&store, 8).await?;
            let posts: Vec<NewPost> = (0..400)
                .map(|i| post(chats[i % 8], &format!("q{i}")))
                .collect();
            let ids: Vec<Uuid> = posts.iter().map(|p| p.reply.id).collect();
            let results = futures_util::future::join_all(posts.into_iter().map(|p| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.write(p).await })
            }))
            .await;
            for result in results {
                result??;
            }
            let batches = writer.batches();
            assert!(batches < 400, "400 concurrent posts took {batches} commits");
            drop(writer);
            assert_eq!(
                store
                    .count_for_test("SELECT count(*) FROM messages")
                    .await?,
                800
            );
            assert_eq!(
                store.count_for_test("SELECT count(*) FROM outbox").await?,
                400
            );
            // Every committed request was handed over once, and the versions moved.
            let mut published = Vec::new();
            while let Some(rows) = handed.recv().await {
                published.extend(rows.into_iter().map(|r| r.request_id));
            }
            published.sort_unstable();
            let mut expected = ids;
            expected.sort_unstable();
            assert_eq!(published, expected);
            assert!(
                store
                    .count_for_test("SELECT min(version) FROM chats")
                    .await?
                    >= 1
            );
            // Each chat's posts line up on one branch, in the order they committed, however
            // they were batched: one first message per chat, no fork, and the walk up from the
            // leaf meets every message of the chat.
            assert_eq!(
                store
                    .count_for_test("SELECT count(*) FROM messages WHERE parent_id IS NULL")
                    .await?,
                8
            );
            assert_eq!(
                store
                    .count_for_test(
                        "SELECT count(*) FROM (SELECT parent_id FROM messages \
                         WHERE parent_id IS NOT NULL GROUP BY parent_id HAVING count(*) > 1) f"
                    )
                    .await?,
                0
            );
            assert_eq!(
                store
                    .count_for_test(
                        "SELECT count(*) FROM chats c WHERE (WITH RECURSIVE up AS ( \
                             SELECT id, parent_id FROM messages WHERE id = c.current_leaf \
                             UNION ALL SELECT m.id, m.parent_id FROM messages m \
                             JOIN up ON m.id = up.parent_id) SELECT count(*) FROM up) \
                         = (SELECT count(*) FROM messages m WHERE m.chat_id = c.id)"
                    )
                    .await?,
                8
            );
            Ok(())
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_post_fails_alone() -> TestResult {
        with_writer(|store, writer, mut handed| async move {
            store
                .execute_for_test(
                    "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
                     BEGIN RAISE EXCEPTION 'test trigger refuses this post'; END $$; \
                     CREATE TRIGGER refuse_poison BEFORE INSERT ON messages FOR EACH ROW \
                     WHEN (NEW.content = 'POISON') EXECUTE FUNCTION refuse_poison();",
                )
                .await?;
            let chats = chats(&store, 2).await?;
            // A transaction holding both chats stalls the writer on the first post, so the
            // other 49, the poisoned one among them, queue up and meet in one batch.
            let blocker = store.db.begin().await?;
            blocker
                .execute_unprepared("SELECT 1 FROM chats FOR UPDATE")
                .await?;
            let mut posts: Vec<NewPost> = (0..50)
                .map(|i| post(chats[i % 2], if i == 17 { "POISON" } else { "fine" }))
                .collect();
            let first = posts.remove(0);
            let spawn = |p: NewPost| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.write(p).await })
            };
            let mut tasks = vec![spawn(first)];
            while writer.queued() > 0 || writer.batches() == 0 {
                tokio::task::yield_now().await;
            }
            tasks.extend(posts.into_iter().map(spawn));
            while writer.queued() < 49 {
                tokio::task::yield_now().await;
            }
            blocker.commit().await?;
            let results = futures_util::future::join_all(tasks).await;
            // The first alone, then one batch of 49 refused, then each of them alone.
            assert_eq!(writer.batches(), 1 + 1 + 49);
            let mut refused = 0;
            for result in results {
                match result? {
                    Ok(()) => {}
                    Err(PostError::Store(e)) => {
                        assert!(!e.is_transient(), "{e}");
                        refused += 1;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            assert_eq!(refused, 1, "only the poisoned post fails");
            drop(writer);
            assert_eq!(
                store
                    .count_for_test("SELECT count(*) FROM messages")
                    .await?,
                98
            );
            assert_eq!(
                store.count_for_test("SELECT count(*) FROM outbox").await?,
                49
            );
            let mut handed_over = 0;
            while let Some(rows) = handed.recv().await {
                handed_over += rows.len();
            }
            assert_eq!(handed_over, 49, "only committed posts are published");
            Ok(())
        })
        .await
    }

    #[test]
    fn a_title_is_the_first_line_that_is_not_blank_cut_to_sixty_characters() {
        assert_eq!(auto_title("  \n  Hello there  \nmore"), "Hello there");
        assert_eq!(auto_title("short"), "short");
        let long = "word ".repeat(30);
        let title = auto_title(&long);
        assert_eq!(title.chars().count(), AUTO_TITLE_CHARS, "{title}");
        assert!(title.ends_with("word…"), "{title}");
        // A cut that lands after a space does not keep it before the ellipsis.
        let spaced = format!("{}  tail", "a".repeat(57));
        assert_eq!(auto_title(&spaced), format!("{}…", "a".repeat(57)));
        let wide = "é".repeat(100);
        assert_eq!(auto_title(&wide).chars().count(), AUTO_TITLE_CHARS);
    }

    #[tokio::test]
    async fn a_post_to_a_missing_chat_is_a_foreign_key_violation() -> TestResult {
        with_writer(|_store, writer, _handed| async move {
            match writer.write(post(Uuid::now_v7(), "q")).await {
                Err(PostError::Store(e)) => assert!(e.is_foreign_key_violation(), "{e}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
            Ok(())
        })
        .await
    }
}
