//! Fair shares of a scarce budget: with every per-user limit off and one key allowing one call
//! per window, a user who posts a burst does not hold another user's few messages behind it.

use serde_json::json;
use sluice_tests::{TestOptions, run};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_one_user_does_not_hold_back_another_users_few() {
    let options = TestOptions {
        keys: vec![("only".into(), "secret-one".into())],
        rpm: 1,
        window_ms: 400,
        budget_wait_ms: 20_000,
        ..TestOptions::default()
    };
    run(options, |app| async move {
        let (a, a_chat) = app.user_with_chat().await?;
        let (b, b_chat) = app.user_with_chat().await?;
        let mut a_ids = Vec::new();
        for i in 0..12 {
            a_ids.push(
                app.post_message(&a, &a_chat, json!({"content": format!("a{i}")}))
                    .await?,
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut b_ids = Vec::new();
        for i in 0..3 {
            b_ids.push(
                app.post_message(&b, &b_chat, json!({"content": format!("b{i}")}))
                    .await?,
            );
        }
        let mut finished = Vec::new();
        for (who, token, chat, ids) in [("a", &a, &a_chat, &a_ids), ("b", &b, &b_chat, &b_ids)] {
            for id in ids {
                let reply = app
                    .wait_reply(token, chat, id, Duration::from_secs(60))
                    .await?;
                assert_eq!(reply["status"], "completed", "{reply}");
                finished.push((reply["completed_at"].as_str().unwrap().to_owned(), who));
            }
        }
        finished.sort();
        let order: String = finished.iter().map(|(_, who)| *who).collect();
        // In arrival order b's three would come after a's twelve; served fairly they are done
        // before a's eighth.
        let a_before_last_b = order[..=order.rfind('b').unwrap()].matches('a').count();
        assert!(a_before_last_b <= 7, "order of completion: {order}");
        Ok(())
    })
    .await;
}
