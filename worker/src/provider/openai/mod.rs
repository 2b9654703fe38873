//! The OpenAI-compatible Chat Completions client: `POST {base}/v1/chat/completions` with the
//! key as a bearer token, through the key's egress route; streamed (`stream: true`, usage in a
//! last chunk, `data: [DONE]` at the end) unless `provider.stream = false`. OpenAI and the
//! servers that speak its API (vLLM, Ollama, OpenRouter, DeepSeek, …) are all this kind.
//! `wire` holds the JSON bodies, `reply` gathers answers into a [`Generation`], and
//! `classify` maps error answers to [`ProviderError`]s.

mod classify;
mod reply;
mod wire;

pub use classify::{RateHeaders, classify_error, parse_reset};

use super::http::{self, Routes};
use super::sse::{self, Rejected};
use super::{Call, Generation, ProviderError, elapsed_ms, stream_end, whole_answer};
use reply::{Reply, parse_success};
use sluice_shared::envelope::RequestEnvelope;
use sluice_shared::keypool::KeySpec;
use sluice_shared::settings::ProviderSettings;
use std::time::Instant;
use wire::{ChatRequest, ChatResponse};

/// The data of the event that ends a stream.
const DONE: &str = "[DONE]";

/// A client of the Chat Completions API: the configured base URL, the reply cap, and whether
/// calls stream. Calls go through the [`Routes`] they are given.
pub struct OpenAi {
    base_url: String,
    max_reply_bytes: u64,
    stream: bool,
}

impl OpenAi {
    pub fn new(settings: &ProviderSettings) -> Self {
        Self {
            base_url: settings.openai_base_url.trim_end_matches('/').to_owned(),
            max_reply_bytes: settings.max_reply_bytes,
            stream: settings.stream,
        }
    }

    /// Calls the model; pieces of a streamed answer go to `on_text` as they arrive (see
    /// [`super::Provider::generate`]).
    pub(super) async fn generate(
        &self,
        call: Call<'_>,
        request: &RequestEnvelope,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Generation, ProviderError> {
        let Call { routes, key, model } = call;
        let url = format!("{}/v1/chat/completions", call.base_url(&self.base_url));
        let started = Instant::now();
        let response = routes
            .client(key)?
            .post(url)
            .bearer_auth(key.secret.expose())
            .json(&ChatRequest::from_envelope(model, request, self.stream))
            .send()
            .await
            .map_err(|e| routes.transport_error(key, &e))?;
        let status = response.status().as_u16();
        if status == 200 && self.stream {
            let reply = self.read_stream(routes, key, response, on_text).await?;
            return reply.conclude(elapsed_ms(started));
        }
        let rate = RateHeaders::read(response.headers());
        whole_answer(
            call,
            status,
            response,
            self.max_reply_bytes,
            started,
            parse_success,
            |body| classify_error(status, &rate, body),
        )
        .await
    }

    /// Gathers the chunks of a streamed 200 into a [`Reply`], handing each new piece of text
    /// to `on_text` at once. A stream that ends before a chunk finished the reply was cut.
    async fn read_stream(
        &self,
        routes: &Routes,
        key: &KeySpec,
        response: reqwest::Response,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Reply, ProviderError> {
        let mut reply = Reply::default();
        let mut on_data = |data: String| -> Result<(), Rejected> {
            if data.trim() == DONE {
                return Ok(());
            }
            let chunk: ChatResponse = serde_json::from_str(&data).map_err(|_| Rejected)?;
            let piece = reply.absorb(chunk);
            if !piece.is_empty() {
                on_text(&piece);
            }
            Ok(())
        };
        let read = sse::read(response, self.max_reply_bytes, &mut on_data).await;
        stream_end(read, reply.finished(), routes, key, self.max_reply_bytes)?;
        Ok(reply)
    }

    /// A cheap call that tells whether a key works: `GET {base}/v1/models`, the list every
    /// compatible server answers (not all of them answer for one model).
    pub(super) async fn probe(&self, routes: &Routes, key: &KeySpec) -> Result<(), ProviderError> {
        let base = key.base_url.as_deref().unwrap_or(&self.base_url);
        let response = routes
            .client(key)?
            .get(format!("{base}/v1/models"))
            .bearer_auth(key.secret.expose())
            .send()
            .await
            .map_err(|e| routes.transport_error(key, &e))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        let rate = RateHeaders::read(response.headers());
        let body = http::error_body(response, self.max_reply_bytes).await;
        Err(classify_error(status, &rate, &body))
    }
}
