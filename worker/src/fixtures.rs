//! Test fixtures the worker's unit tests share: a pool of keys and a one-turn request.

use sluice_shared::Secret;
use sluice_shared::envelope::{Params, RequestEnvelope, Role, Turn, VERSION};
use sluice_shared::keypool::{KeySpec, Limits};
use std::sync::Arc;

/// `n` keys, each its own project, with `rpm` calls per minute and room for the rest.
pub fn keys(n: usize, rpm: u32) -> Arc<Vec<KeySpec>> {
    Arc::new(
        (0..n)
            .map(|i| KeySpec {
                alias: format!("k{i}"),
                secret: Secret::from("s"),
                project: format!("p{i}"),
                default_limits: Limits {
                    rpm,
                    tpm: 1_000_000,
                    rpd: 1000,
                },
                model_limits: Default::default(),
                window_ms: 60_000,
                proxy: None,
                weight: 1,
                provider: Default::default(),
                base_url: None,
            })
            .collect(),
    )
}

/// A request for model `m` whose history is one user turn, "hi".
pub fn request() -> RequestEnvelope {
    RequestEnvelope {
        v: VERSION,
        request_id: uuid::Uuid::now_v7(),
        generation: 0,
        chat_id: uuid::Uuid::now_v7(),
        user_id: uuid::Uuid::now_v7(),
        model: "m".into(),
        system: None,
        history: vec![Turn {
            role: Role::User,
            text: "hi".into(),
        }],
        params: Params::default(),
        enqueued_at: chrono::Utc::now(),
        trace_id: "t".into(),
    }
}
