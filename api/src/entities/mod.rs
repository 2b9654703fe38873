//! sea-orm entities, one per table of the initial migration.

pub mod chats;
pub mod dead_letters;
pub mod messages;
pub mod outbox;
pub mod prompt_templates;
pub mod users;
