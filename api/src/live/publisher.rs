//! Publishes the store's `Changed` notices (see [`crate::store::notices`]) on the stream
//! exchange, keyed by chat: transient, not mandatory, unconfirmed. A notice that finds the
//! broker away is dropped; watchers catch up on the next one, and the REST API is the record.

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use sluice_shared::broker::{self, BrokerError};
use sluice_shared::stream::{Changed, StreamEvent};
use sluice_shared::{Secret, Topology};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// Notices waiting for the publisher; past this the store drops them.
pub const QUEUE: usize = 4096;

pub struct NoticePublisher {
    pub amqp_url: Secret<String>,
    pub topology: Topology,
    pub notices: Mutex<mpsc::Receiver<Changed>>,
}

impl NoticePublisher {
    pub async fn run(self, cancel: CancellationToken) {
        broker::reconnect_forever("stream notices", &cancel, || self.session(&cancel)).await;
    }

    async fn session(&self, cancel: &CancellationToken) -> Result<(), BrokerError> {
        let connection = broker::connect(self.amqp_url.expose(), "sluice-api notices").await?;
        let channel = connection.create_channel().await?;
        self.topology.declare(&channel).await?;
        let exchange = self.topology.stream_exchange();
        let mut notices = self.notices.lock().await;
        let properties = BasicProperties::default()
            .with_delivery_mode(1)
            .with_content_type("application/json".into());
        let result = loop {
            let notice = tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                notice = notices.recv() => notice,
            };
            let Some(notice) = notice else { break Ok(()) };
            let event = StreamEvent::Changed(notice);
            // Not confirmed: the publish is done once written to the channel.
            if let Err(e) = channel
                .basic_publish(
                    exchange.as_str().into(),
                    event.routing_key().as_str().into(),
                    BasicPublishOptions::default(),
                    &event.to_bytes(),
                    properties.clone(),
                )
                .await
            {
                break Err(e.into());
            }
        };
        let _ = connection.close(200, "notices stopping".into()).await;
        result
    }
}
