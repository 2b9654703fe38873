//! A message the dead-letter queue delivered, kept for operators to inspect and replay.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "dead_letters")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub request_id: Option<Uuid>,
    pub generation: Option<i32>,
    pub chat_id: Option<Uuid>,
    /// Whose request it was, when known: kept after the chat is gone.
    pub user_id: Option<Uuid>,
    pub reason: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub headers: Json,
    pub body: String,
    pub created_at: DateTimeUtc,
    pub replayed_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
