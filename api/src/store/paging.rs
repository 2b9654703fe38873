//! Keyset paging over `(created_at, id)`, and the opaque cursor clients carry between pages.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Select,
};
use uuid::Uuid;

/// A position in a `(created_at, id)` ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}:{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    /// `None` for anything this API did not give out.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (micros, id) = text.split_once(':')?;
        Some(Self {
            created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: Uuid::parse_str(id).ok()?,
        })
    }
}

/// Which way a listing runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    OldestFirst,
    NewestFirst,
}

/// One page of rows and where the next one starts (`None` on the last).
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// Which page to read.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub after: Option<Cursor>,
    pub limit: u64,
}

/// `select` in `(created_at, id)` order, from just after `after`.
pub(crate) fn keyset<E: EntityTrait>(
    mut select: Select<E>,
    (created_at, id): (E::Column, E::Column),
    direction: Direction,
    after: Option<Cursor>,
) -> Select<E> {
    if let Some(c) = after {
        let (later, later_id) = match direction {
            Direction::NewestFirst => (created_at.lt(c.created_at), id.lt(c.id)),
            Direction::OldestFirst => (created_at.gt(c.created_at), id.gt(c.id)),
        };
        select = select.filter(
            Condition::any().add(later).add(
                Condition::all()
                    .add(created_at.eq(c.created_at))
                    .add(later_id),
            ),
        );
    }
    let order = match direction {
        Direction::NewestFirst => sea_orm::Order::Desc,
        Direction::OldestFirst => sea_orm::Order::Asc,
    };
    select
        .order_by(created_at, order.clone())
        .order_by(id, order)
}

/// One page of `select` in `(created_at, id)` order after the cursor. One row more than the
/// limit is fetched to know whether another page follows.
pub(crate) async fn paged<E: EntityTrait>(
    db: &DatabaseConnection,
    select: Select<E>,
    columns: (E::Column, E::Column),
    direction: Direction,
    page: PageRequest,
    key: impl Fn(&E::Model) -> Cursor,
) -> Result<Page<E::Model>, DbErr> {
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let mut items = keyset(select, columns, direction, page.after)
        .limit(page.limit.saturating_add(1))
        .all(db)
        .await?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(key)
    } else {
        None
    };
    Ok(Page { items, next })
}

/// The current time at the database's precision (microseconds), so cursors round-trip.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let c = Cursor {
            created_at: now_micros(),
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("junk!"), None);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode("12:not-a-uuid")),
            None
        );
    }
}
