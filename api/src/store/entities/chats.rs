//! A conversation, owned by one user.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "chats")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub title: String,
    pub created_at: DateTimeUtc,
    /// Bumped by every statement that changes one of the chat's messages: the `ETag` of its
    /// message lists.
    pub version: i64,
    /// The newest message of the branch the chat shows; `None` while it has no messages.
    pub current_leaf: Option<Uuid>,
    /// Whether a message of the chat ever had a sibling (an edit, another answer); until then
    /// its branch is all its messages.
    pub forked: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
