//! Gemini's JSON bodies: the request built from an envelope, the answer (a whole body, or one
//! event of a stream), and Google's error body. Only the fields the worker reads are declared.

use serde::{Deserialize, Serialize};
use sluice_shared::envelope::{RequestEnvelope, Role};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<Content<'a>>,
    contents: Vec<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Serialize)]
struct Content<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    parts: [Part<'a>; 1],
}

#[derive(Serialize)]
struct Part<'a> {
    text: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u32>,
}

impl<'a> GenerateRequest<'a> {
    pub(super) fn from_envelope(request: &'a RequestEnvelope) -> Self {
        let contents = request
            .history
            .iter()
            .map(|turn| Content {
                role: Some(match turn.role {
                    Role::User => "user",
                    Role::Assistant => "model",
                }),
                parts: [Part { text: &turn.text }],
            })
            .collect();
        let params = &request.params;
        Self {
            system_instruction: request.system.as_deref().map(|text| Content {
                role: None,
                parts: [Part { text }],
            }),
            contents,
            generation_config: (params.temperature.is_some() || params.max_output_tokens.is_some())
                .then_some(GenerationConfig {
                    temperature: params.temperature,
                    max_output_tokens: params.max_output_tokens,
                }),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GenerateResponse {
    #[serde(default)]
    pub(super) candidates: Vec<Candidate>,
    pub(super) prompt_feedback: Option<PromptFeedback>,
    pub(super) usage_metadata: Option<UsageMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Candidate {
    pub(super) content: Option<CandidateContent>,
    pub(super) finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct CandidateContent {
    #[serde(default)]
    pub(super) parts: Vec<ResponsePart>,
}

#[derive(Deserialize)]
pub(super) struct ResponsePart {
    pub(super) text: Option<String>,
    /// Thinking models return their reasoning as parts marked `thought`; not part of the answer.
    #[serde(default)]
    pub(super) thought: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback {
    pub(super) block_reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct UsageMetadata {
    #[serde(default)]
    pub(super) prompt_token_count: u32,
    #[serde(default)]
    pub(super) candidates_token_count: u32,
    #[serde(default)]
    pub(super) thoughts_token_count: u32,
}

/// Google's error body: `{"error": {"message", "details": [...]}}`.
#[derive(Deserialize)]
pub(super) struct GoogleErrorBody {
    pub(super) error: GoogleError,
}

#[derive(Deserialize)]
pub(super) struct GoogleError {
    #[serde(default)]
    pub(super) message: String,
    #[serde(default)]
    pub(super) details: Vec<serde_json::Value>,
}
