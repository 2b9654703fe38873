//! Full-text search of one user's chats by title and message text (`GET /api/chats?q=`), with
//! PostgreSQL's `websearch_to_tsquery` over the `simple` configuration, and its opaque cursor.
//!
//! A chat matches when its title or one of its messages does. While at most [`RANKED_HITS`]
//! of the user's messages are candidates (match the query, its phrases loosened to "all these
//! words"), chats come best first: a chat's rank is the best `ts_rank` of its title (weight A)
//! and its messages (weight D), ties newest first. A broader query lists its chats newest
//! first instead, unranked, each request walking at most [`WALKED_CHATS`] of them, so a page
//! may end short. Ranking thousands of matches would take longer than a search may (see
//! docs/BENCHMARKS.md, "Chat search"), and such an order says little anyway.

use super::paging::Cursor;
use super::{Store, StoreError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, TransactionTrait, Value};
use uuid::Uuid;

/// Candidate messages ranked at most; with one more the chats are listed newest first. (The
/// API's documentation, in `views.rs` and `routes/chats.rs`, quotes this and the next.)
pub const RANKED_HITS: u64 = 500;

/// Chats one request examines at most when listing newest first.
pub const WALKED_CHATS: u64 = 100;

/// How much one search may do: the constants above, smaller in tests.
#[derive(Debug, Clone, Copy)]
struct Caps {
    ranked_hits: u64,
    walked_chats: u64,
}

/// A safety net: the caps above bound the rows a search reads, but should a plan go wrong, the
/// search is cancelled and answered as too broad rather than holding a connection.
const STATEMENT_TIMEOUT: &str = "2s";

/// The query as PostgreSQL reads it: quotes, `or` and `-word` work; no input is a syntax error.
const TSQUERY: &str = "websearch_to_tsquery('simple', $2)";

/// The query with its phrases loosened to "all these words" (`'a' <-> 'b'` to `'a' & 'b'`),
/// which the index answers without reading the rows back. Lexemes never hold a space, so the
/// pattern meets only operators.
const LOOSE: &str = "regexp_replace(websearch_to_tsquery('simple', $2)::text, \
                     ' <(-|[0-9]+)> ', ' & ', 'g')::tsquery";

/// Plain text around the best match: no markup, so nothing in a message can become HTML.
const HEADLINE: &str =
    "'StartSel=\"\", StopSel=\"\", MaxWords=30, MinWords=12, ShortWord=2, MaxFragments=1'";

/// How a page of results is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrder {
    /// Best rank first, then newest.
    Rank,
    /// Newest first, unranked (more than [`RANKED_HITS`] candidate messages); a page may end
    /// short, even empty, and still have a next one.
    Newest,
}

/// A position in a search's ordering; it carries the ordering, so every page of one search is
/// ordered alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SearchCursor {
    Ranked {
        rank: f32,
        created_at: DateTime<Utc>,
        id: Uuid,
    },
    Newest(Cursor),
}

impl SearchCursor {
    pub fn encode(&self) -> String {
        let text = match self {
            // The rank's bits, so the next page compares against exactly the same value.
            Self::Ranked {
                rank,
                created_at,
                id,
            } => format!(
                "r:{:08x}:{}:{id}",
                rank.to_bits(),
                created_at.timestamp_micros()
            ),
            Self::Newest(c) => format!("n:{}:{}", c.created_at.timestamp_micros(), c.id),
        };
        URL_SAFE_NO_PAD.encode(text)
    }

    /// `None` for anything this API did not give out (a list's cursor included).
    pub fn decode(raw: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
        let mut parts = text.split(':');
        let cursor = match parts.next()? {
            "r" => {
                let rank = f32::from_bits(u32::from_str_radix(parts.next()?, 16).ok()?);
                if !rank.is_finite() {
                    return None;
                }
                Self::Ranked {
                    rank,
                    created_at: DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?,
                    id: Uuid::parse_str(parts.next()?).ok()?,
                }
            }
            "n" => Self::Newest(Cursor {
                created_at: DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?,
                id: Uuid::parse_str(parts.next()?).ok()?,
            }),
            _ => return None,
        };
        parts.next().is_none().then_some(cursor)
    }
}

/// Which page of a search to read.
#[derive(Debug, Clone, Copy)]
pub struct SearchRequest {
    pub after: Option<SearchCursor>,
    pub limit: u64,
}

/// One chat found.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    /// `None` when the page is ordered newest first.
    pub rank: Option<f32>,
    /// Words around the match in the chat's best (ranked) or newest (unranked) matching
    /// message; `None` when only the title matched.
    pub snippet: Option<String>,
}

/// One page of a search.
#[derive(Debug)]
pub struct SearchPage {
    pub items: Vec<SearchHit>,
    pub next: Option<SearchCursor>,
    pub order: SearchOrder,
}

/// What a search may answer besides a page.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The search ran past its time (see [`STATEMENT_TIMEOUT`]).
    #[error("the search took too long")]
    TooBroad,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// The user's chats matching `query` (the caller has checked it is not blank). A query
    /// without a word to look for (only punctuation) finds nothing.
    pub async fn search_chats(
        &self,
        user: Uuid,
        query: &str,
        page: SearchRequest,
    ) -> Result<SearchPage, SearchError> {
        let caps = Caps {
            ranked_hits: RANKED_HITS,
            walked_chats: WALKED_CHATS,
        };
        self.search_capped(user, query, page, caps)
            .await
            .map_err(|e| {
                if e.is_query_canceled() {
                    SearchError::TooBroad
                } else {
                    SearchError::Store(e)
                }
            })
    }

    async fn search_capped(
        &self,
        user: Uuid,
        query: &str,
        page: SearchRequest,
        caps: Caps,
    ) -> Result<SearchPage, StoreError> {
        // Read-only; a transaction only so the settings below last for this search alone.
        let txn = self.db.begin().await?;
        // Custom plans: how many rows a query's words match decides the plan, and a generic
        // plan of a cached statement would not know them.
        let shape = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), \
                         set_config('statement_timeout', '{STATEMENT_TIMEOUT}', true), \
                         numnode(q) AS nodes, querytree(q) = 'T' AS negated_only \
                     FROM websearch_to_tsquery('simple', $1) AS q"
                ),
                [query.into()],
            ))
            .await?;
        let (nodes, negated_only) = match shape {
            Some(row) => (
                row.try_get::<i32>("", "nodes")?,
                row.try_get::<bool>("", "negated_only")?,
            ),
            None => (0, false),
        };
        if nodes == 0 {
            txn.commit().await?;
            return Ok(SearchPage {
                items: Vec::new(),
                next: None,
                order: SearchOrder::Rank,
            });
        }
        let ranked = match page.after {
            Some(SearchCursor::Newest(_)) => None,
            // Only negations ("-word"): the index cannot narrow anything down.
            None if negated_only => None,
            after => {
                let (page, hits) =
                    ranked(&txn, user, query, page.limit, after, caps.ranked_hits).await?;
                // A cursor's ordering holds to the end, even if more has matched since.
                (hits <= caps.ranked_hits || after.is_some()).then_some(page)
            }
        };
        let found = match ranked {
            Some(page) => page,
            None => {
                let after = match page.after {
                    Some(SearchCursor::Newest(c)) => Some(c),
                    _ => None,
                };
                newest(&txn, user, query, page.limit, after, caps.walked_chats).await?
            }
        };
        txn.commit().await?;
        Ok(found)
    }
}

fn hit(row: &QueryResult) -> Result<SearchHit, StoreError> {
    Ok(SearchHit {
        id: row.try_get("", "id")?,
        title: row.try_get("", "title")?,
        created_at: row.try_get("", "created_at")?,
        rank: row.try_get("", "rank")?,
        snippet: row.try_get("", "snippet")?,
    })
}

/// One more row than `limit` is read to know whether another page follows.
fn split<T>(
    mut items: Vec<T>,
    limit: u64,
    key: impl Fn(&T) -> SearchCursor,
) -> (Vec<T>, Option<SearchCursor>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() > limit {
        items.truncate(limit);
        let next = items.last().map(key);
        (items, next)
    } else {
        (items, None)
    }
}

/// The ranked page, and how many of the user's messages are candidates (match the query with
/// its phrases loosened; counted up to `ranked_hits + 1`). Only the page's chats get a
/// headline, as it reparses a whole message, and none when the page will be dropped for
/// having too many candidates.
async fn ranked(
    db: &impl ConnectionTrait,
    user: Uuid,
    query: &str,
    limit: u64,
    after: Option<SearchCursor>,
    ranked_hits: u64,
) -> Result<(SearchPage, u64), StoreError> {
    let mut values: Vec<Value> = vec![
        user.into(),
        query.into(),
        i64::try_from(ranked_hits.saturating_add(1))
            .unwrap_or(i64::MAX)
            .into(),
        i64::try_from(limit.saturating_add(1))
            .unwrap_or(i64::MAX)
            .into(),
    ];
    let after_clause = match after {
        Some(SearchCursor::Ranked {
            rank,
            created_at,
            id,
        }) => {
            values.extend([rank.into(), created_at.into(), id.into()]);
            "WHERE (greatest(b.rank, t.rank), c.created_at, c.id) \
                 < ($5::real, $6::timestamptz, $7::uuid)"
        }
        _ => "",
    };
    // Candidates match the loosened query, so a phrase of common words counts as broad at
    // once rather than after every message with both words was read back to find it. The
    // user's chats come as an array so that the plan intersects two bitmaps, the user's
    // messages (by chat) and the index's matches, before reading any row: joined to `chats`,
    // the planner would probe the index once per chat of a small user (milliseconds each), or
    // read every user's matches for a big one.
    let sql = format!(
        "WITH hits AS MATERIALIZED ( \
             SELECT m.chat_id, m.id, CASE WHEN m.content_tsv @@ {TSQUERY} \
                                          THEN ts_rank(m.content_tsv, {TSQUERY}) END AS rank \
             FROM messages m \
             WHERE m.chat_id = ANY (ARRAY(SELECT id FROM chats WHERE user_id = $1)) \
               AND m.content <> '' AND m.content_tsv @@ {LOOSE} \
             LIMIT $3), \
         best AS ( \
             SELECT DISTINCT ON (chat_id) chat_id, id AS message_id, rank FROM hits \
             WHERE rank IS NOT NULL ORDER BY chat_id, rank DESC, id DESC), \
         titled AS ( \
             SELECT id AS chat_id, \
                    ts_rank(setweight(to_tsvector('simple', title), 'A'), {TSQUERY}) AS rank \
             FROM chats WHERE user_id = $1 AND to_tsvector('simple', title) @@ {TSQUERY}), \
         page AS ( \
             SELECT c.id, c.title, c.created_at, greatest(b.rank, t.rank) AS rank, b.message_id \
             FROM best b FULL JOIN titled t ON t.chat_id = b.chat_id \
             JOIN chats c ON c.id = coalesce(b.chat_id, t.chat_id) \
             {after_clause} \
             ORDER BY 4 DESC, c.created_at DESC, c.id DESC LIMIT $4) \
         SELECT p.id, p.title, p.created_at, p.rank, \
                CASE WHEN (SELECT count(*) FROM hits) < $3 \
                     THEN ts_headline('simple', m.content, {TSQUERY}, {HEADLINE}) END AS snippet, \
                (SELECT count(*) FROM hits) AS hits \
         FROM page p LEFT JOIN messages m ON m.id = p.message_id \
         ORDER BY p.rank DESC, p.created_at DESC, p.id DESC"
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    let hits = match rows.first() {
        Some(row) => u64::try_from(row.try_get::<i64>("", "hits")?).unwrap_or(0),
        None => 0,
    };
    let items = rows.iter().map(hit).collect::<Result<Vec<_>, _>>()?;
    let (items, next) = split(items, limit, |h| SearchCursor::Ranked {
        rank: h.rank.unwrap_or_default(),
        created_at: h.created_at,
        id: h.id,
    });
    Ok((
        SearchPage {
            items,
            next,
            order: SearchOrder::Rank,
        },
        hits,
    ))
}

/// The matching chats newest first: the user's chats are walked newest first, each checked
/// for a match until the page is full, which is quick exactly when most chats match. One
/// request walks at most `walked` chats: when they hold fewer matches than the page, it ends
/// short (even empty), and `next` resumes the walk after the last chat examined.
///
/// Each check reads the chat's messages newest first and stops at the first match, which is
/// also the one the snippet comes from. It leaves out `content <> ''` so that the partial index
/// over everyone's messages is no candidate: per chat, the planner would intersect it with the
/// chat's rows, milliseconds each. (An empty message's vector is empty and matches nothing.)
async fn newest(
    db: &impl ConnectionTrait,
    user: Uuid,
    query: &str,
    limit: u64,
    after: Option<Cursor>,
    walked: u64,
) -> Result<SearchPage, StoreError> {
    let after_clause = |first: usize| {
        format!(
            "AND (c.created_at, c.id) < (${first}::timestamptz, ${}::uuid)",
            first + 1
        )
    };
    let position = |c: Cursor| -> [Value; 2] { [c.created_at.into(), c.id.into()] };

    // Where this request's walk ends: the `walked`th chat after the cursor, if there is one,
    // and whether another chat follows it.
    let mut values: Vec<Value> = vec![
        user.into(),
        i64::try_from(walked.saturating_sub(1))
            .unwrap_or(i64::MAX)
            .into(),
    ];
    let mut clause = String::new();
    if let Some(c) = after {
        values.extend(position(c));
        clause = after_clause(3);
    }
    let bounds = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!(
                "SELECT c.created_at, c.id FROM chats c WHERE c.user_id = $1 {clause} \
                 ORDER BY c.created_at DESC, c.id DESC OFFSET $2 LIMIT 2"
            ),
            values,
        ))
        .await?;
    let last = match bounds.first() {
        Some(row) => Some(Cursor {
            created_at: row.try_get("", "created_at")?,
            id: row.try_get("", "id")?,
        }),
        None => None,
    };
    let more = bounds.len() > 1;

    let mut values: Vec<Value> = vec![
        user.into(),
        query.into(),
        i64::try_from(limit.saturating_add(1))
            .unwrap_or(i64::MAX)
            .into(),
    ];
    let mut clauses = String::new();
    if let Some(c) = after {
        values.extend(position(c));
        clauses.push_str(&after_clause(4));
    }
    if let Some(c) = last {
        let first = values.len() + 1;
        values.extend(position(c));
        clauses.push_str(&format!(
            " AND (c.created_at, c.id) >= (${first}::timestamptz, ${}::uuid)",
            first + 1
        ));
    }
    let sql = format!(
        "WITH page AS ( \
             SELECT c.id, c.title, c.created_at, hit.id AS message_id FROM chats c \
             LEFT JOIN LATERAL ( \
                 SELECT m.id FROM messages m WHERE m.chat_id = c.id \
                 AND m.content_tsv @@ {TSQUERY} \
                 ORDER BY m.created_at DESC, m.id DESC LIMIT 1) AS hit ON true \
             WHERE c.user_id = $1 {clauses} \
               AND (hit.id IS NOT NULL OR to_tsvector('simple', c.title) @@ {TSQUERY}) \
             ORDER BY c.created_at DESC, c.id DESC LIMIT $3) \
         SELECT p.id, p.title, p.created_at, NULL::real AS rank, \
                ts_headline('simple', m.content, {TSQUERY}, {HEADLINE}) AS snippet \
         FROM page p LEFT JOIN messages m ON m.id = p.message_id \
         ORDER BY p.created_at DESC, p.id DESC"
    );
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    let items = rows.iter().map(hit).collect::<Result<Vec<_>, _>>()?;
    let (items, next) = split(items, limit, |h| {
        SearchCursor::Newest(Cursor {
            created_at: h.created_at,
            id: h.id,
        })
    });
    // A short page with chats left unwalked: the next request walks on from the last one.
    let next = next.or(last.filter(|_| more).map(SearchCursor::Newest));
    Ok(SearchPage {
        items,
        next,
        order: SearchOrder::Newest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::paging::now_micros;
    use crate::store::testing::{TempDatabase, chats};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn caps(ranked_hits: u64, walked_chats: u64) -> Caps {
        Caps {
            ranked_hits,
            walked_chats,
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let ranked = SearchCursor::Ranked {
            rank: 0.060_793_7,
            created_at: now_micros(),
            id: Uuid::now_v7(),
        };
        let newest = SearchCursor::Newest(Cursor {
            created_at: now_micros(),
            id: Uuid::now_v7(),
        });
        assert_eq!(SearchCursor::decode(&ranked.encode()), Some(ranked));
        assert_eq!(SearchCursor::decode(&newest.encode()), Some(newest));
        let list = Cursor {
            created_at: now_micros(),
            id: Uuid::now_v7(),
        };
        for junk in [
            list.encode(),
            "junk!".into(),
            URL_SAFE_NO_PAD.encode(format!("r:7fc00000:1:{}", Uuid::nil())),
            URL_SAFE_NO_PAD.encode(format!("n:1:{}:extra", Uuid::nil())),
            URL_SAFE_NO_PAD.encode("x:1:2"),
        ] {
            assert_eq!(SearchCursor::decode(&junk), None, "{junk}");
        }
    }

    #[tokio::test]
    async fn a_statement_past_its_timeout_reads_as_cancelled() -> TestResult {
        let db = TempDatabase::create().await?;
        let store = Store::connect(&db.url, 1).await?;
        let txn = store.db.begin().await?;
        let outcome = txn
            .execute_unprepared("SET LOCAL statement_timeout = '10ms'; SELECT pg_sleep(1)")
            .await
            .map_err(StoreError::from);
        drop(txn);
        store.close().await?;
        db.drop().await?;
        let error = outcome.err().ok_or("the sleep was not cancelled")?;
        assert!(error.is_query_canceled(), "{error}");
        assert!(!StoreError::refused("x").is_query_canceled());
        Ok(())
    }

    #[tokio::test]
    async fn past_the_cap_a_search_lists_newest_first_and_keeps_its_order() -> TestResult {
        let db = TempDatabase::create().await?;
        let store = Store::connect(&db.url, 2).await?;
        let outcome = async {
            let ids = chats(&store, 3).await?;
            // Three matching messages in the oldest chat, one in the newest, and a pending
            // (empty) reply that matches nothing.
            for (chat, text) in [
                (ids[0], "heron heron"),
                (ids[0], "a heron"),
                (ids[0], "heron again"),
                (ids[2], "one heron"),
                (ids[1], ""),
            ] {
                store
                    .execute_for_test(&format!(
                        "INSERT INTO messages (id, chat_id, role, content, status) VALUES \
                         (gen_random_uuid(), '{chat}', 'user', '{text}', 'completed')"
                    ))
                    .await?;
            }
            let owner: Uuid = store
                .db
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    format!("SELECT user_id FROM chats WHERE id = '{}'", ids[0]),
                ))
                .await?
                .ok_or("no chat")?
                .try_get("", "user_id")?;
            let first = SearchRequest {
                after: None,
                limit: 1,
            };
            // Four hits are within a cap of 4: ranked, the chat with "heron heron" first.
            let page = store
                .search_capped(owner, "heron", first, caps(4, 10))
                .await?;
            assert_eq!(page.order, SearchOrder::Rank);
            assert_eq!(
                page.items.iter().map(|h| h.id).collect::<Vec<_>>(),
                [ids[0]]
            );
            // Past a cap of 3: newest first, unranked, on every page.
            let page = store
                .search_capped(owner, "heron", first, caps(3, 10))
                .await?;
            assert_eq!(page.order, SearchOrder::Newest);
            assert_eq!(page.items[0].id, ids[2]);
            assert_eq!(page.items[0].rank, None);
            let next = SearchRequest {
                after: page.next,
                limit: 5,
            };
            let page = store
                .search_capped(owner, "heron", next, caps(3, 10))
                .await?;
            assert_eq!(page.order, SearchOrder::Newest);
            assert_eq!(
                page.items.iter().map(|h| h.id).collect::<Vec<_>>(),
                [ids[0]]
            );
            assert_eq!(page.next, None);
            // Walking one chat a request: a page per chat, short or empty, until the last.
            let mut pages = Vec::new();
            let mut after = None;
            loop {
                let request = SearchRequest { after, limit: 5 };
                let page = store
                    .search_capped(owner, "heron", request, caps(3, 1))
                    .await?;
                assert_eq!(page.order, SearchOrder::Newest);
                pages.push(page.items.iter().map(|h| h.id).collect::<Vec<_>>());
                after = page.next;
                if after.is_none() || pages.len() > 5 {
                    break;
                }
            }
            assert_eq!(pages, [vec![ids[2]], vec![], vec![ids[0]]]);
            // Punctuation alone looks for nothing.
            let page = store.search_capped(owner, "?!", first, caps(3, 10)).await?;
            assert!(page.items.is_empty() && page.next.is_none());
            TestResult::Ok(())
        }
        .await;
        store.close().await?;
        db.drop().await?;
        outcome
    }
}
