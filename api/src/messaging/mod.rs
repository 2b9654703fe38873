//! The API's side of RabbitMQ: the relay that publishes requests, the consumers of
//! `responses` and of the dead-letter queue on their shared loop, and the building of request
//! envelopes.

pub mod consume;
pub mod dead_letters;
pub mod relay;
pub mod request;
pub mod responses;
