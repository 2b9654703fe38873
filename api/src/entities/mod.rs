//! sea-orm entities of the tables the API reads and writes through sea-orm. The outbox has
//! none: it is written in the POST's single statement and drained by the relay's SQL.

pub mod chats;
pub mod dead_letters;
pub mod messages;
pub mod prompt_templates;
pub mod users;
