//! Prompt templates: a user's reusable system instructions.

use super::entities::prompt_templates;
use super::users::{Capped, Owned, capped_insert};
use super::{Store, StoreError, Template};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

impl Store {
    /// Saves the template unless its user already has `max` templates (0: no cap).
    pub async fn create_template(
        &self,
        template: &Template,
        max: u32,
    ) -> Result<Capped, StoreError> {
        let model = prompt_templates::ActiveModel {
            id: Set(template.id),
            user_id: Set(template.user_id),
            name: Set(template.name.clone()),
            body: Set(template.body.clone()),
            created_at: Set(template.created_at),
        };
        capped_insert(
            self,
            template.user_id,
            Owned::Templates,
            max,
            async move |txn| {
                prompt_templates::Entity::insert(model)
                    .exec_without_returning(txn)
                    .await
                    .map(|_| ())
            },
        )
        .await
    }

    /// Replaces the name and body of the user's template; `None` when there is no such
    /// template of the user's.
    pub async fn update_template(
        &self,
        user: Uuid,
        id: Uuid,
        name: &str,
        body: &str,
    ) -> Result<Option<Template>, StoreError> {
        let updated = prompt_templates::Entity::update_many()
            .col_expr(prompt_templates::Column::Name, Expr::value(name))
            .col_expr(prompt_templates::Column::Body, Expr::value(body))
            .filter(prompt_templates::Column::Id.eq(id))
            .filter(prompt_templates::Column::UserId.eq(user))
            .exec_with_returning(&self.db)
            .await?;
        Ok(updated.into_iter().next())
    }

    /// Deletes the user's template; `false` when there was no such template of the user's.
    /// Messages that named it keep their id; a retry then goes without a system instruction.
    pub async fn delete_template(&self, user: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let deleted = prompt_templates::Entity::delete_many()
            .filter(prompt_templates::Column::Id.eq(id))
            .filter(prompt_templates::Column::UserId.eq(user))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected > 0)
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
