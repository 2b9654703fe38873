//! Prompt templates: a user's reusable system instructions.

use super::entities::prompt_templates;
use super::{Store, StoreError, Template};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

impl Store {
    pub async fn create_template(&self, template: &Template) -> Result<(), StoreError> {
        prompt_templates::Entity::insert(prompt_templates::ActiveModel {
            id: Set(template.id),
            user_id: Set(template.user_id),
            name: Set(template.name.clone()),
            body: Set(template.body.clone()),
            created_at: Set(template.created_at),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// The user's templates, oldest first, at most `max`.
    pub async fn templates(&self, user: Uuid, max: u64) -> Result<Vec<Template>, StoreError> {
        Ok(prompt_templates::Entity::find()
            .filter(prompt_templates::Column::UserId.eq(user))
            .order_by_asc(prompt_templates::Column::CreatedAt)
            .order_by_asc(prompt_templates::Column::Id)
            .limit(max)
            .all(&self.db)
            .await?)
    }

    /// The template if it exists and belongs to `user`.
    pub async fn owned_template(
        &self,
        user: Uuid,
        id: Uuid,
    ) -> Result<Option<Template>, StoreError> {
        Ok(prompt_templates::Entity::find_by_id(id)
            .filter(prompt_templates::Column::UserId.eq(user))
            .one(&self.db)
            .await?)
    }
}
