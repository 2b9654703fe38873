//! Accounts: created at registration, found by email at login.

use super::entities::users;
use super::{Store, StoreError, User};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

impl Store {
    /// Fails with a unique violation ([`StoreError::is_unique_violation`]) when the email is
    /// taken.
    pub async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        users::Entity::insert(users::ActiveModel {
            id: Set(user.id),
            email: Set(user.email.clone()),
            password_hash: Set(user.password_hash.clone()),
            created_at: Set(user.created_at),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// `email` as stored: lower-cased.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        Ok(users::Entity::find()
            .filter(users::Column::Email.eq(email))
            .one(&self.db)
            .await?)
    }
}
