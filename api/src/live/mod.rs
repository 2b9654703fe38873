//! Live replies for browsers: the [`hub`] (one per API process) binds a queue of its own to the
//! chats its clients watch and fans the stream exchange's events out to them; a [`watcher`]
//! turns them into one client's server-sent events, in `seq` order ([`reorder`]), resumed from
//! the [`partials`] in Redis; the [`publisher`] sends the store's `Changed` notices.

pub mod hub;
pub mod partials;
pub mod publisher;
pub mod reorder;
pub mod watcher;

pub use hub::{Hub, Watch};
