//! The RabbitMQ topology, declared in this one place. Every name is `{prefix}` + a suffix.
//! [`Topology::declare`] creates it idempotently; [`Topology::definitions`] renders the same
//! list in the management plugin's definitions format, which `rabbitmq/definitions.json` mirrors.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};
use serde_json::{Value, json};

/// Routing key of new work on the `work` exchange.
pub const ROUTE_REQUEST: &str = "request";
/// Routing key of results going back to the API.
pub const ROUTE_RESPONSE: &str = "response";
/// Routing key of the dead-letter queue.
pub const ROUTE_DEAD: &str = "dead";
/// Routing key of the parking queue: dead letters the database refused, kept for an operator.
/// `requests.dlq` dead-letters to it, so it cannot change (a queue's arguments are fixed).
pub const ROUTE_PARKED: &str = "parked";
/// `queues.parked_ttl_ms`'s default, for this module's tests.
#[cfg(test)]
const DEFAULT_PARKED_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

/// Redeliveries (crashes, requeues) before RabbitMQ dead-letters a message. Explicit because
/// RabbitMQ 4 defaults quorum queues to 20 and 3.10 to unlimited; never -1, which 3.10 treats
/// as "drop at the first requeue".
pub const DELIVERY_LIMIT: i64 = 20;

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(String),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueSpec {
    pub name: String,
    pub routing_key: String,
    pub arguments: Vec<(&'static str, Arg)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    retry_delays_ms: Vec<u64>,
    /// `x-max-length` of `requests`; past it the broker refuses publishes (reject-publish),
    /// so a runaway backlog stays in the API's outbox.
    requests_max_length: Option<u64>,
    /// `x-message-ttl` of the parked queue, also in its name.
    parked_ttl_ms: u64,
}

impl Topology {
    /// Without the settings' length cap, with the default parked TTL: only for this module's
    /// tests; processes use [`Topology::from_settings`].
    #[cfg(test)]
    fn new(prefix: impl Into<String>, retry_delays_ms: &[u64]) -> Self {
        Self::with(prefix.into(), retry_delays_ms, None, DEFAULT_PARKED_TTL_MS)
    }

    fn with(
        prefix: String,
        retry_delays_ms: &[u64],
        requests_max_length: Option<u64>,
        parked_ttl_ms: u64,
    ) -> Self {
        let mut retry_delays_ms = retry_delays_ms.to_vec();
        retry_delays_ms.dedup();
        Self {
            prefix,
            retry_delays_ms,
            requests_max_length,
            parked_ttl_ms,
        }
    }

    /// The topology every process declares: prefix, delays and the `requests` length cap from
    /// the settings. Every declarer must use this, or RabbitMQ refuses the second declaration
    /// (PRECONDITION_FAILED on an inequivalent argument).
    pub fn from_settings(settings: &crate::Settings) -> Self {
        Self::with(
            settings.queues.prefix.clone(),
            &settings.retry.delays_ms,
            Some(settings.queues.requests_max_length),
            crate::settings::millis_of(settings.queues.parked_ttl),
        )
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The direct exchange that routes requests, retries, dead letters and responses.
    pub fn exchange(&self) -> String {
        format!("{}work", self.prefix)
    }

    /// The topic exchange for streamed chunks, keyed by chat id.
    pub fn stream_exchange(&self) -> String {
        format!("{}stream", self.prefix)
    }

    pub fn requests(&self) -> String {
        format!("{}requests", self.prefix)
    }

    pub fn responses(&self) -> String {
        format!("{}responses", self.prefix)
    }

    pub fn dead_letters(&self) -> String {
        format!("{}requests.dlq", self.prefix)
    }

    /// Where dead letters go that could not be recorded; nothing consumes it, and each message
    /// expires after the TTL its name carries. A new TTL is a new queue: RabbitMQ refuses to
    /// change the arguments of one declared before.
    pub fn parked(&self) -> String {
        format!("{}requests.parked.{}", self.prefix, self.parked_ttl_ms)
    }

    /// The parked queue of installs before the TTL, which kept messages for ever; see
    /// [`Topology::retire_legacy_parked`].
    pub fn legacy_parked(&self) -> String {
        format!("{}requests.parked", self.prefix)
    }

    pub fn retry_delays_ms(&self) -> &[u64] {
        &self.retry_delays_ms
    }

    /// Routing key (and queue suffix) of the delay queue for one retry level.
    pub fn retry_route(delay_ms: u64) -> String {
        format!("retry.{delay_ms}")
    }

    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}{}", self.prefix, Self::retry_route(delay_ms))
    }

    /// Every queue with its binding key and arguments, in declaration order.
    pub fn queues(&self) -> Vec<QueueSpec> {
        let exchange = self.exchange();
        let quorum = || ("x-queue-type", Arg::Str("quorum".into()));
        // At-least-once dead-lettering needs reject-publish overflow on the source queue.
        let safe_dead_lettering = |target: &str| {
            vec![
                ("x-dead-letter-exchange", Arg::Str(exchange.clone())),
                ("x-dead-letter-routing-key", Arg::Str(target.into())),
                ("x-dead-letter-strategy", Arg::Str("at-least-once".into())),
                ("x-overflow", Arg::Str("reject-publish".into())),
            ]
        };
        let limited = |target: &str| {
            let mut args = vec![quorum(), ("x-delivery-limit", Arg::Int(DELIVERY_LIMIT))];
            args.extend(safe_dead_lettering(target));
            args
        };

        let mut requests = limited(ROUTE_DEAD);
        if let Some(max) = self.requests_max_length {
            // reject-publish overflow is already set (at-least-once dead-lettering needs it).
            requests.push((
                "x-max-length",
                Arg::Int(i64::try_from(max).unwrap_or(i64::MAX)),
            ));
        }
        let mut queues = vec![
            QueueSpec {
                name: self.requests(),
                routing_key: ROUTE_REQUEST.into(),
                arguments: requests,
            },
            QueueSpec {
                name: self.responses(),
                routing_key: ROUTE_RESPONSE.into(),
                arguments: limited(ROUTE_DEAD),
            },
            // Its consumer parks what it cannot record; the delivery limit ends a crash loop
            // in the same place.
            QueueSpec {
                name: self.dead_letters(),
                routing_key: ROUTE_DEAD.into(),
                arguments: limited(ROUTE_PARKED),
            },
            QueueSpec {
                name: self.parked(),
                routing_key: ROUTE_PARKED.into(),
                arguments: vec![
                    quorum(),
                    (
                        "x-message-ttl",
                        Arg::Int(i64::try_from(self.parked_ttl_ms).unwrap_or(i64::MAX)),
                    ),
                ],
            },
        ];
        for &delay in &self.retry_delays_ms {
            let mut arguments = vec![
                quorum(),
                (
                    "x-message-ttl",
                    Arg::Int(i64::try_from(delay).unwrap_or(i64::MAX)),
                ),
            ];
            arguments.extend(safe_dead_lettering(ROUTE_REQUEST));
            queues.push(QueueSpec {
                name: self.retry_queue(delay),
                routing_key: Self::retry_route(delay),
                arguments,
            });
        }
        queues
    }

    /// Declares exchanges, queues and bindings; safe to call from every process at start.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.stream_exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        for queue in self.queues() {
            channel
                .queue_declare(
                    queue.name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    field_table(&queue.arguments),
                )
                .await?;
            channel
                .queue_bind(
                    queue.name.as_str().into(),
                    self.exchange().into(),
                    queue.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Unbinds the parked queue of an earlier install (no TTL, [`Topology::legacy_parked`]) from
    /// the `parked` route, so new parked letters go only to the queue with a TTL; the old queue
    /// and what it holds stay for an operator to read and delete. `false` when there is none.
    /// On a channel of its own: asking for a queue that does not exist closes the channel.
    pub async fn retire_legacy_parked(
        &self,
        connection: &Connection,
    ) -> Result<bool, lapin::Error> {
        let channel = connection.create_channel().await?;
        let legacy = self.legacy_parked();
        let exists = channel
            .queue_declare(
                legacy.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match exists {
            Ok(_) => {}
            // The broker closed the channel with its 404.
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
        // Unbinding what is not bound is no error, so every replica may do it at every start.
        channel
            .queue_unbind(
                legacy.as_str().into(),
                self.exchange().into(),
                ROUTE_PARKED.into(),
                FieldTable::default(),
            )
            .await?;
        channel
            .close(200, "legacy parked queue unbound".into())
            .await?;
        tracing::info!(
            queue = %legacy,
            now = %self.parked(),
            "the parked queue of an earlier version gets no new letters; read what it holds and \
             delete it (docs/OPERATIONS.md)"
        );
        Ok(true)
    }

    /// Deletes everything [`Topology::declare`] made. Quorum queues cannot be auto-delete, so
    /// tests call this to leave nothing behind.
    pub async fn delete(&self, channel: &Channel) -> Result<(), lapin::Error> {
        for queue in self.queues() {
            channel
                .queue_delete(queue.name.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [self.exchange(), self.stream_exchange()] {
            channel
                .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    /// The topology in RabbitMQ's definitions format (exchanges, queues, bindings of vhost `/`).
    pub fn definitions(&self) -> Value {
        let exchange = |name: String, kind: &str| {
            json!({"name": name, "vhost": "/", "type": kind, "durable": true,
                   "auto_delete": false, "internal": false, "arguments": {}})
        };
        let queues: Vec<Value> = self
            .queues()
            .into_iter()
            .map(|q| {
                let arguments: serde_json::Map<String, Value> = q
                    .arguments
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Arg::Str(s) => json!(s),
                            Arg::Int(i) => json!(i),
                        };
                        ((*k).to_owned(), v)
                    })
                    .collect();
                json!({"name": q.name, "vhost": "/", "durable": true, "auto_delete": false,
                       "arguments": arguments})
            })
            .collect();
        let bindings: Vec<Value> = self
            .queues()
            .into_iter()
            .map(|q| {
                json!({"source": self.exchange(), "vhost": "/", "destination": q.name,
                       "destination_type": "queue", "routing_key": q.routing_key,
                       "arguments": {}})
            })
            .collect();
        json!({
            "exchanges": [exchange(self.exchange(), "direct"), exchange(self.stream_exchange(), "topic")],
            "queues": queues,
            "bindings": bindings,
        })
    }
}

/// The broker's 404: the queue (or exchange) does not exist.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(e)
            if matches!(e.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

fn field_table(arguments: &[(&'static str, Arg)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            Arg::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
        };
        table.insert((*key).into(), value);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_use_the_prefix_verbatim() {
        let t = Topology::new("t3f9a.", &[50, 100]);
        assert_eq!(t.exchange(), "t3f9a.work");
        assert_eq!(t.requests(), "t3f9a.requests");
        assert_eq!(t.dead_letters(), "t3f9a.requests.dlq");
        assert_eq!(t.parked(), "t3f9a.requests.parked.604800000");
        assert_eq!(t.legacy_parked(), "t3f9a.requests.parked");
        assert_eq!(t.retry_queue(100), "t3f9a.retry.100");
        assert_eq!(t.queues().len(), 6);
    }

    #[test]
    fn parked_letters_expire_after_the_ttl_their_queue_is_named_for()
    -> Result<(), crate::settings::SettingsError> {
        let mut settings = crate::Settings::defaults()?;
        settings.queues.parked_ttl = std::time::Duration::from_millis(1500);
        let topology = Topology::from_settings(&settings);
        let parked = topology
            .queues()
            .into_iter()
            .find(|q| q.routing_key == ROUTE_PARKED);
        let Some(parked) = parked else {
            panic!("no parked queue");
        };
        assert_eq!(parked.name, "sluice.requests.parked.1500");
        assert!(
            parked
                .arguments
                .contains(&("x-message-ttl", Arg::Int(1500)))
        );
        Ok(())
    }

    #[test]
    fn retry_queues_dead_letter_back_to_requests_at_least_once() {
        let t = Topology::new("p.", &[60000]);
        let retry = t.queues().into_iter().find(|q| q.name == "p.retry.60000");
        let Some(retry) = retry else {
            panic!("no retry queue");
        };
        assert!(
            retry
                .arguments
                .contains(&("x-message-ttl", Arg::Int(60000)))
        );
        assert!(
            retry
                .arguments
                .contains(&("x-dead-letter-routing-key", Arg::Str(ROUTE_REQUEST.into())))
        );
        assert!(
            retry
                .arguments
                .contains(&("x-dead-letter-strategy", Arg::Str("at-least-once".into())))
        );
    }

    #[test]
    fn requests_are_capped_with_reject_publish() -> Result<(), crate::settings::SettingsError> {
        let mut settings = crate::Settings::defaults()?;
        settings.queues.requests_max_length = 7;
        let queues = Topology::from_settings(&settings).queues();
        let requests = &queues[0];
        assert_eq!(requests.name, "sluice.requests");
        assert!(requests.arguments.contains(&("x-max-length", Arg::Int(7))));
        assert!(
            requests
                .arguments
                .contains(&("x-overflow", Arg::Str("reject-publish".into())))
        );
        assert!(
            queues[1..]
                .iter()
                .all(|q| q.arguments.iter().all(|(k, _)| *k != "x-max-length")),
            "only requests is capped"
        );
        Ok(())
    }

    /// `rabbitmq/definitions.json` must say exactly what the code declares for the default
    /// prefix and delays.
    #[test]
    fn definitions_file_mirrors_the_code() -> Result<(), Box<dyn std::error::Error>> {
        let settings = crate::Settings::defaults()?;
        let topology = Topology::from_settings(&settings);
        let expected = topology.definitions();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../rabbitmq/definitions.json");
        let file: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        for section in ["exchanges", "queues", "bindings"] {
            assert_eq!(
                file[section],
                expected[section],
                "{section} differ; the code declares:\n{}",
                serde_json::to_string_pretty(&expected[section])?
            );
        }
        Ok(())
    }
}
