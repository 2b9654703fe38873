//! The RabbitMQ connection and confirmed publishing. A publish counts only when the broker
//! confirms it and did not return it as unroutable (`mandatory`).

use crate::retry::Retry;
use backon::ExponentialBuilder;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use lapin::{Confirmation, PublisherConfirm};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a publish may wait for its confirm before the channel is presumed broken.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("broker returned the message as unroutable (is the topology declared?)")]
    Returned,
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("channel is not in confirm mode")]
    NotConfirmed,
    #[error("the broker ended the consumer")]
    ConsumerEnded,
    #[error("the channel closed")]
    ChannelClosed,
}

/// Runs `session` — connect, work, and return when the link breaks (`Err`) or on shutdown
/// (`Ok`) — again and again until `cancel` fires, waiting between attempts with a backoff
/// that starts over once a session has lasted a while. Every long-lived broker user (the
/// relay, the consumers) reconnects through this one loop.
pub async fn reconnect_forever<F, Fut>(what: &str, cancel: &CancellationToken, session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);
    const STABLE: Duration = Duration::from_secs(10);
    let schedule = ExponentialBuilder::default()
        .with_min_delay(FIRST)
        .with_max_delay(MAX)
        .without_max_times();
    // Only shutdown ends it: every broker error is worth reconnecting for.
    let _ = Retry::new("broker_reconnect", schedule)
        .fresh_after(STABLE)
        .notify(|error, wait| {
            tracing::warn!(%what, %error, retry_in = ?wait, "lost the broker; reconnecting");
        })
        .run_until(cancel, |_| true, session)
        .await;
}

/// Opens a named connection (the name shows in the management UI).
pub async fn connect(url: &str, name: &str) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Ok(Connection::connect(url, properties).await?)
}

/// A channel in confirm mode.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Persistent JSON message properties, with our headers.
pub fn json_properties(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message_id.into())
        .with_headers(headers)
}

/// Starts a persistent, mandatory publish; await the result with [`confirmed`].
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, BrokerError> {
    Ok(channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await?)
}

/// Waits for the broker's verdict on one publish.
pub async fn confirmed(confirm: PublisherConfirm) -> Result<(), BrokerError> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Err(_) => Err(BrokerError::Timeout(CONFIRM_TIMEOUT)),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(BrokerError::Returned),
        Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::Nacked),
        Ok(Ok(Confirmation::NotRequested)) => Err(BrokerError::NotConfirmed),
    }
}

/// Publishes and waits for the confirm.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), BrokerError> {
    confirmed(publish(channel, exchange, routing_key, body, properties).await?).await
}

pub fn string_value(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes()))
}

/// Reads an integer header whatever integer width the sender used.
pub fn header_u32(properties: &BasicProperties, name: &str) -> Option<u32> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    let n: i64 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// Reads a string header.
pub fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
