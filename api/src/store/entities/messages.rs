//! One message of a chat; an assistant message is `pending` until its response arrives.
use crate::store::message_state::{Role, Status};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub chat_id: Uuid,
    pub role: Role,
    pub content: String,
    pub status: Status,
    pub generation: i32,
    /// The model that answered (or was tried last); `requested_model` is the one asked for.
    pub model: Option<String>,
    pub requested_model: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub key_alias: Option<String>,
    pub attempts: i32,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub created_at: DateTimeUtc,
    pub completed_at: Option<DateTimeUtc>,
    /// The prompt template the reply was asked with, if any.
    pub template_id: Option<Uuid>,
    /// When the reply last became pending (post, replay or retry): the reaper's clock.
    pub pending_since: DateTimeUtc,
    /// The message this one follows on its branch; `None` for the first of a branch.
    pub parent_id: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
