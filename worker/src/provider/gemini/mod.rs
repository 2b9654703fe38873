//! The Gemini REST client: `POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse`
//! (or `:generateContent` with `provider.stream = false`) with the key in `x-goog-api-key`,
//! through the key's egress route. `wire` holds the JSON bodies, `reply` gathers answers
//! into a [`Generation`] (a stream's events as they come), and `classify` maps error answers
//! to [`ProviderError`]s.

mod classify;
mod reply;
mod wire;

pub use classify::{classify_error, parse_duration};

use super::http::{self, Routes};
use super::sse::{self, Rejected};
use super::{Call, Generation, ProviderError, elapsed_ms, stream_end, whole_answer};
use reply::{Reply, parse_success};
use sluice_shared::envelope::RequestEnvelope;
use sluice_shared::keypool::KeySpec;
use sluice_shared::settings::ProviderSettings;
use std::time::Instant;
use wire::{GenerateRequest, GenerateResponse};

/// A client of Gemini's REST API: the configured base URL, the reply cap, whether calls
/// stream, and the model keys are probed on. Calls go through the [`Routes`] they are given.
pub struct Gemini {
    base_url: String,
    max_reply_bytes: u64,
    /// `provider.stream`: stream calls and hand each piece of text over as it comes.
    stream: bool,
    probe_model: String,
}

impl Gemini {
    pub fn new(settings: &ProviderSettings, probe_model: &str) -> Self {
        Self {
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            max_reply_bytes: settings.max_reply_bytes,
            stream: settings.stream,
            probe_model: probe_model.to_owned(),
        }
    }

    /// Calls the model. With `provider.stream`, every piece of text (through the text rules,
    /// in order, never empty) goes to `on_text` as it arrives; the returned [`Generation`]
    /// holds them all. Without it, `on_text` is never called.
    pub(super) async fn generate(
        &self,
        call: Call<'_>,
        request: &RequestEnvelope,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Generation, ProviderError> {
        let Call { routes, key, model } = call;
        let method = if self.stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        let url = format!(
            "{}/v1beta/models/{model}:{method}",
            call.base_url(&self.base_url)
        );
        let started = Instant::now();
        let response = routes
            .client(key)?
            .post(url)
            .header("x-goog-api-key", key.secret.expose().as_str())
            .json(&GenerateRequest::from_envelope(request))
            .send()
            .await
            .map_err(|e| routes.transport_error(key, &e))?;
        let status = response.status().as_u16();
        if status == 200 && self.stream {
            let reply = self.read_stream(routes, key, response, on_text).await?;
            return reply.conclude(elapsed_ms(started));
        }
        whole_answer(
            call,
            status,
            response,
            self.max_reply_bytes,
            started,
            parse_success,
            |body| classify_error(status, body),
        )
        .await
    }

    /// Gathers the events of a streamed 200 into a [`Reply`], handing each new piece of text
    /// to `on_text` at once. Every event is a whole GenerateContentResponse (no `[DONE]`): a
    /// stream that ends before one of them finishes the reply was cut.
    async fn read_stream(
        &self,
        routes: &Routes,
        key: &KeySpec,
        response: reqwest::Response,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Reply, ProviderError> {
        let mut reply = Reply::default();
        let mut on_data = |data: String| -> Result<(), Rejected> {
            let answer: GenerateResponse = serde_json::from_str(&data).map_err(|_| Rejected)?;
            let piece = reply.absorb(answer);
            if !piece.is_empty() {
                on_text(&piece);
            }
            Ok(())
        };
        let read = sse::read(response, self.max_reply_bytes, &mut on_data).await;
        stream_end(read, reply.finished(), routes, key, self.max_reply_bytes)?;
        Ok(reply)
    }

    /// A cheap call that tells whether a key works: `GET {base}/v1beta/models/{model}`.
    pub(super) async fn probe(&self, routes: &Routes, key: &KeySpec) -> Result<(), ProviderError> {
        let base = key.base_url.as_deref().unwrap_or(&self.base_url);
        let url = format!("{base}/v1beta/models/{}", self.probe_model);
        let response = routes
            .client(key)?
            .get(url)
            .header("x-goog-api-key", key.secret.expose().as_str())
            .send()
            .await
            .map_err(|e| routes.transport_error(key, &e))?;
        let status = response.status().as_u16();
        if status == 200 {
            return Ok(());
        }
        Err(classify_error(
            status,
            &http::error_body(response, self.max_reply_bytes).await,
        ))
    }
}

/// Inputs the property tests of [`classify`] and [`reply`] share.
#[cfg(test)]
mod strategies {
    use proptest::prelude::*;

    pub fn bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..512)
    }

    /// Text where NUL and JSON-ish characters are common.
    pub fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just('\0'), Just('"'), Just('\\'), any::<char>()],
            0..24,
        )
        .prop_map(String::from_iter)
    }
}

#[cfg(test)]
mod tests;
