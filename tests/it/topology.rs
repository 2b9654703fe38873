//! The topology on the real broker: declaring it again is harmless.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use sluice_tests::{TestOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_again_is_idempotent() {
    run(
        TestOptions {
            workers: 0,
            ..Default::default()
        },
        |app| async move {
            let (conn, channel) = app.broker_channel().await?;
            app.topology.declare(&channel).await?;
            app.topology.declare(&channel).await?;
            for queue in app.topology.queues() {
                let declared = channel
                    .queue_declare(
                        queue.name.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                assert_eq!(declared.name().as_str(), queue.name);
            }
            conn.close(200, "done".into()).await?;
            Ok(())
        },
    )
    .await;
}
