//! sea-orm entities of the tables the store reads through sea-orm. The outbox has none: it is
//! written and drained by fixed statements (`outbox.rs`).

pub mod chats;
pub mod dead_letters;
pub mod messages;
pub mod prompt_templates;
pub mod users;
