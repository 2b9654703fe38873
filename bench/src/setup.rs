//! Before any timing: one registered user per client, each with its own chats.

use crate::api::{Api, User};
use anyhow::Context;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Client {
    pub user: User,
    pub chats: Vec<Uuid>,
}

/// Registers `clients` users and creates `chats` chats for each. Registration hashes a
/// password with argon2 on the API (slow and memory-hungry by design), so only
/// `concurrency` run at once. Any failure aborts the run: nothing has been measured yet.
pub async fn setup(
    api: &Api,
    clients: usize,
    chats: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Client>> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..clients {
        let (api, gate) = (api.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire().await?;
            let user = api
                .register()
                .await
                .context("POST /api/auth/register (expected 201)")?;
            let mut ids = Vec::with_capacity(chats);
            for c in 0..chats {
                let id = api
                    .create_chat(&user, &format!("bench client {i} chat {c}"))
                    .await
                    .context("POST /api/chats (expected 201)")?;
                ids.push(id);
            }
            anyhow::Ok((i, Client { user, chats: ids }))
        });
    }
    let mut out: Vec<Option<Client>> = vec![None; clients];
    while let Some(res) = tasks.join_next().await {
        let (i, client) = res??;
        out[i] = Some(client);
    }
    out.into_iter()
        .map(|c| c.context("a client was not set up"))
        .collect()
}
