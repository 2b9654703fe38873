//! Full-text search of one user's chats by title and message text (`GET /api/chats?q=`), with
//! PostgreSQL's `websearch_to_tsquery` over the `simple` configuration, and its opaque cursor.
//!
//! A chat matches when its title or one of its messages does. While the user has at most
//! [`RANKED_HITS`] matching messages, chats come best first: a chat's rank is the best
//! `ts_rank` of its title (weight A) and its messages (weight D), ties newest first. A query
//! matching more than that (a word in most messages) lists its chats newest first instead,
//! unranked: ranking every match would take longer than the search may (docs/BENCHMARKS.md,
//! "Chat search"), and the order is close to meaningless then anyway.

use super::paging::Cursor;
use super::{Store, StoreError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, TransactionTrait, Value};
use uuid::Uuid;

/// Matching messages ranked at most; one more and the chats are listed newest first.
pub const RANKED_HITS: u64 = 2_000;

/// Past this a search is cancelled (a phrase of two very common words can take long to
/// recheck) and answered as too broad rather than holding a connection.
const STATEMENT_TIMEOUT: &str = "2s";

/// The query as PostgreSQL reads it: quotes, `or` and `-word` work; no input is a syntax error.
const TSQUERY: &str = "websearch_to_tsquery('simple', $2)";

/// Plain text around the best match: no markup, so nothing in a message can become HTML.
const HEADLINE: &str =
    "'StartSel=\"\", StopSel=\"\", MaxWords=30, MinWords=12, ShortWord=2, MaxFragments=1'";

/// How a page of results is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrder {
    /// Best rank first, then newest.
    Rank,
    /// Newest first, unranked (the query matched more than [`RANKED_HITS`] messages).
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
        self.search_capped(user, query, page, RANKED_HITS)
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
        ranked_hits: u64,
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
                    ranked(&txn, user, query, page.limit, after, ranked_hits).await?;
                // A cursor's ordering holds to the end, even if more has matched since.
                (hits <= ranked_hits || after.is_some()).then_some(page)
            }
        };
        let found = match ranked {
            Some(page) => page,
            None => {
                let after = match page.after {
                    Some(SearchCursor::Newest(c)) => Some(c),
                    _ => None,
                };
                newest(&txn, user, query, page.limit, after).await?
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

/// The ranked page, and how many of the user's messages matched (counted up to
/// `ranked_hits + 1`). Only the page's chats get a headline: it reparses a whole message.
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
    let sql = format!(
        "WITH hits AS MATERIALIZED ( \
             SELECT m.chat_id, m.id, ts_rank(m.content_tsv, {TSQUERY}) AS rank \
             FROM messages m JOIN chats c ON c.id = m.chat_id \
             WHERE c.user_id = $1 AND m.content <> '' AND m.content_tsv @@ {TSQUERY} \
             LIMIT $3), \
         best AS ( \
             SELECT DISTINCT ON (chat_id) chat_id, id AS message_id, rank FROM hits \
             ORDER BY chat_id, rank DESC, id DESC), \
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
                ts_headline('simple', m.content, {TSQUERY}, {HEADLINE}) AS snippet, \
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
/// for a match until the page is full, which is quick exactly when most chats match.
async fn newest(
    db: &impl ConnectionTrait,
    user: Uuid,
    query: &str,
    limit: u64,
    after: Option<Cursor>,
) -> Result<SearchPage, StoreError> {
    let mut values: Vec<Value> = vec![
        user.into(),
        query.into(),
        i64::try_from(limit.saturating_add(1))
            .unwrap_or(i64::MAX)
            .into(),
    ];
    let after_clause = match after {
        Some(c) => {
            values.extend([c.created_at.into(), c.id.into()]);
            "AND (c.created_at, c.id) < ($4::timestamptz, $5::uuid)"
        }
        None => "",
    };
    let sql = format!(
        "WITH page AS ( \
             SELECT c.id, c.title, c.created_at FROM chats c \
             WHERE c.user_id = $1 {after_clause} \
               AND (to_tsvector('simple', c.title) @@ {TSQUERY} OR EXISTS ( \
                   SELECT 1 FROM messages m WHERE m.chat_id = c.id AND m.content <> '' \
                   AND m.content_tsv @@ {TSQUERY})) \
             ORDER BY c.created_at DESC, c.id DESC LIMIT $3) \
         SELECT p.id, p.title, p.created_at, NULL::real AS rank, ( \
                    SELECT ts_headline('simple', m.content, {TSQUERY}, {HEADLINE}) \
                    FROM messages m WHERE m.chat_id = p.id AND m.content <> '' \
                    AND m.content_tsv @@ {TSQUERY} \
                    ORDER BY m.created_at DESC, m.id DESC LIMIT 1) AS snippet \
         FROM page p ORDER BY p.created_at DESC, p.id DESC"
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
            let page = store.search_capped(owner, "heron", first, 4).await?;
            assert_eq!(page.order, SearchOrder::Rank);
            assert_eq!(
                page.items.iter().map(|h| h.id).collect::<Vec<_>>(),
                [ids[0]]
            );
            // Past a cap of 3: newest first, unranked, on every page.
            let page = store.search_capped(owner, "heron", first, 3).await?;
            assert_eq!(page.order, SearchOrder::Newest);
            assert_eq!(page.items[0].id, ids[2]);
            assert_eq!(page.items[0].rank, None);
            let next = SearchRequest {
                after: page.next,
                limit: 5,
            };
            let page = store.search_capped(owner, "heron", next, 3).await?;
            assert_eq!(page.order, SearchOrder::Newest);
            assert_eq!(
                page.items.iter().map(|h| h.id).collect::<Vec<_>>(),
                [ids[0]]
            );
            assert_eq!(page.next, None);
            // Punctuation alone looks for nothing.
            let page = store.search_capped(owner, "?!", first, 3).await?;
            assert!(page.items.is_empty() && page.next.is_none());
            TestResult::Ok(())
        }
        .await;
        store.close().await?;
        db.drop().await?;
        outcome
    }
}
