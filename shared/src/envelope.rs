//! The versioned JSON envelopes that travel over RabbitMQ, and the headers beside them.
//! An envelope with an unknown `v` is poison: it is dead-lettered, never guessed at.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version this build writes and accepts.
pub const VERSION: u32 = 1;

/// Counted provider calls so far (our own header, not RabbitMQ's `x-death`).
pub const HEADER_ATTEMPT: &str = "sluice-attempt";
/// A short history of the errors met so far, newest last (`attempt:kind, …`).
pub const HEADER_ERRORS: &str = "sluice-errors";
/// Why a message was dead-lettered (`retries_exhausted`, `poison`, `no_usable_key`).
pub const HEADER_REASON: &str = "sluice-reason";
/// The last error of a dead-lettered message, in readable words.
pub const HEADER_LAST_ERROR: &str = "sluice-last-error";
/// When (ms since the Unix epoch) a worker first found every key disabled for this message;
/// set on its first republish, cleared once a key is usable again.
pub const HEADER_NO_KEY_SINCE: &str = "sluice-no-key-since";
/// The model of the chain (the envelope's model, then its `fallback` list) the request is on
/// now; absent: the envelope's own.
pub const HEADER_MODEL: &str = "sluice-model";
/// Retryable failures of the request on that model so far.
pub const HEADER_MODEL_FAILURES: &str = "sluice-model-failures";
/// Since when (ms since the Unix epoch) the request has waited for a usable key of that
/// model; cleared by a call, and by moving to the next model.
pub const HEADER_WAITING_SINCE: &str = "sluice-waiting-since";
/// The counted calls made for the request so far, each a [`CallUsage`], as a JSON array:
/// carried through retries and fallbacks until the response holds them all.
pub const HEADER_USAGE: &str = "sluice-usage";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

/// Work for a worker: everything it needs, so workers never touch the database.
/// `history` ends with the user message being answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub v: u32,
    pub request_id: Uuid,
    pub generation: i32,
    pub chat_id: Uuid,
    pub user_id: Uuid,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub history: Vec<Turn>,
    #[serde(default)]
    pub params: Params,
    pub enqueued_at: DateTime<Utc>,
    pub trace_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponseStatus {
    Completed,
    Failed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What one counted provider call spent: the tokens the provider reported, or, where it
/// reported none (a stream cut or stopped before its usage came), an estimate from the prompt
/// and the text received (`estimated`). A call that failed before anything came back spent
/// nothing we can know of: zero, not estimated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallUsage {
    /// Which counted call of the request it was (1, 2, …).
    pub attempt: u32,
    /// The catalogue model it was made for.
    pub model: String,
    pub key_alias: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    #[serde(default)]
    pub estimated: bool,
    /// `ok`, or the kind of error it ended with.
    pub outcome: String,
}

/// Why a request failed, in words a user may read (never the provider's raw body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub kind: String,
    pub message: String,
}

/// A result travelling back to the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub v: u32,
    pub request_id: Uuid,
    pub generation: i32,
    pub chat_id: Uuid,
    pub status: ResponseStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub usage: Usage,
    #[serde(default)]
    pub key_alias: Option<String>,
    pub model: String,
    pub attempts: u32,
    pub upstream_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// The request's `trace_id`, so the API can log the stored reply under it. Optional:
    /// responses published before it existed still decode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The request's user, for the usage rows (the reply may be gone by the time it comes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// Every counted call made for the request, across its retries and fallbacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallUsage>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a JSON envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("unknown envelope version {0} (this build reads {VERSION})")]
    UnknownVersion(u64),
    #[error("envelope has no version field")]
    MissingVersion,
}

#[derive(Deserialize)]
struct VersionProbe {
    v: Option<u64>,
}

/// Decodes an envelope of this build's version; anything else is an [`EnvelopeError`].
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    let probe: VersionProbe = serde_json::from_slice(bytes).map_err(EnvelopeError::Malformed)?;
    match probe.v {
        None => Err(EnvelopeError::MissingVersion),
        Some(v) if v != u64::from(VERSION) => Err(EnvelopeError::UnknownVersion(v)),
        Some(_) => serde_json::from_slice(bytes).map_err(EnvelopeError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RequestEnvelope {
        RequestEnvelope {
            v: VERSION,
            request_id: Uuid::now_v7(),
            generation: 0,
            chat_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            model: "gemini-2.5-flash".into(),
            system: Some("be brief".into()),
            history: vec![Turn {
                role: Role::User,
                text: "hi".into(),
            }],
            params: Params::default(),
            enqueued_at: Utc::now(),
            trace_id: "t".into(),
        }
    }

    #[test]
    fn round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let req = request();
        let bytes = serde_json::to_vec(&req)?;
        let back: RequestEnvelope = decode(&bytes)?;
        assert_eq!(back, req);
        Ok(())
    }

    fn response() -> ResponseEnvelope {
        ResponseEnvelope {
            v: VERSION,
            request_id: Uuid::now_v7(),
            generation: 2,
            chat_id: Uuid::now_v7(),
            status: ResponseStatus::Completed,
            text: Some("hello".into()),
            finish_reason: Some("STOP".into()),
            usage: Usage::default(),
            key_alias: Some("key-1".into()),
            model: "gemini-2.5-flash".into(),
            attempts: 1,
            upstream_ms: 12,
            error: None,
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
            user_id: Some(Uuid::now_v7()),
            calls: vec![CallUsage {
                attempt: 1,
                model: "gemini-2.5-flash".into(),
                key_alias: "key-1".into(),
                prompt_tokens: 3,
                completion_tokens: 5,
                estimated: false,
                outcome: "ok".into(),
            }],
        }
    }

    #[test]
    fn a_response_round_trips_its_trace_id() -> Result<(), Box<dyn std::error::Error>> {
        let resp = response();
        let back: ResponseEnvelope = decode(&serde_json::to_vec(&resp)?)?;
        assert_eq!(
            back.trace_id.as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(back, resp);
        Ok(())
    }

    #[test]
    fn a_response_without_trace_id_still_decodes() -> Result<(), Box<dyn std::error::Error>> {
        // What a worker built before `trace_id` existed publishes.
        let original = response();
        let mut value = serde_json::to_value(&original)?;
        value
            .as_object_mut()
            .and_then(|o| o.remove("trace_id"))
            .ok_or("the encoding should carry trace_id")?;
        for older in ["user_id", "calls"] {
            value.as_object_mut().and_then(|o| o.remove(older));
        }
        let back: ResponseEnvelope = decode(&serde_json::to_vec(&value)?)?;
        assert_eq!(
            back,
            ResponseEnvelope {
                trace_id: None,
                user_id: None,
                calls: Vec::new(),
                ..original
            }
        );
        Ok(())
    }

    #[test]
    fn unknown_version_and_garbage_are_poison() -> Result<(), Box<dyn std::error::Error>> {
        let mut value = serde_json::to_value(request())?;
        value["v"] = 99.into();
        let bytes = serde_json::to_vec(&value)?;
        assert!(matches!(
            decode::<RequestEnvelope>(&bytes),
            Err(EnvelopeError::UnknownVersion(99))
        ));
        assert!(matches!(
            decode::<RequestEnvelope>(b"{\"request_id\":1}"),
            Err(EnvelopeError::MissingVersion)
        ));
        assert!(matches!(
            decode::<RequestEnvelope>(b"not json"),
            Err(EnvelopeError::Malformed(_))
        ));
        Ok(())
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;
        use serde_json::Value;

        fn fail(e: impl std::fmt::Display) -> TestCaseError {
            TestCaseError::fail(e.to_string())
        }

        /// Decodes `bytes` as both envelopes: whatever happens is an `Ok` or a typed error.
        fn decode_both(bytes: &[u8]) -> Result<(), TestCaseError> {
            for error in [
                decode::<RequestEnvelope>(bytes).err(),
                decode::<ResponseEnvelope>(bytes).err(),
            ]
            .into_iter()
            .flatten()
            {
                prop_assert!(matches!(
                    error,
                    EnvelopeError::Malformed(_)
                        | EnvelopeError::UnknownVersion(_)
                        | EnvelopeError::MissingVersion
                ));
                prop_assert!(!error.to_string().is_empty());
            }
            Ok(())
        }

        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    proptest::collection::btree_map(any::<String>(), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        const FIELDS: &[&str] = &[
            "v",
            "request_id",
            "generation",
            "chat_id",
            "user_id",
            "model",
            "system",
            "history",
            "params",
            "enqueued_at",
            "trace_id",
            "status",
            "text",
            "usage",
            "attempts",
        ];

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                decode_both(&bytes)?;
            }

            #[test]
            fn byte_mutations_of_a_valid_envelope_never_panic(
                edits in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..8),
                cut in proptest::option::of(any::<Index>()),
            ) {
                let mut bytes = serde_json::to_vec(&request()).map_err(fail)?;
                for (at, byte) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len()));
                }
                decode_both(&bytes)?;
            }

            #[test]
            fn any_value_in_any_field_is_decoded_or_refused(
                field in proptest::sample::select(FIELDS),
                value in any_json(),
            ) {
                let mut envelope = serde_json::to_value(request()).map_err(fail)?;
                envelope[field] = value.clone();
                let bytes = serde_json::to_vec(&envelope).map_err(fail)?;
                decode_both(&bytes)?;
                if field == "v" && value != VERSION {
                    prop_assert!(decode::<RequestEnvelope>(&bytes).is_err());
                }
            }

            #[test]
            fn every_other_version_is_unknown(v in any::<u64>().prop_filter("not ours", |v| *v != u64::from(VERSION))) {
                let mut envelope = serde_json::to_value(request()).map_err(fail)?;
                envelope["v"] = v.into();
                let bytes = serde_json::to_vec(&envelope).map_err(fail)?;
                prop_assert!(matches!(
                    decode::<RequestEnvelope>(&bytes),
                    Err(EnvelopeError::UnknownVersion(got)) if got == v
                ));
            }

            #[test]
            fn any_text_round_trips(texts in proptest::collection::vec(any::<String>(), 1..4), system in proptest::option::of(any::<String>())) {
                let mut req = request();
                req.system = system;
                req.history = texts
                    .into_iter()
                    .map(|text| Turn { role: Role::User, text })
                    .collect();
                let bytes = serde_json::to_vec(&req).map_err(fail)?;
                let back: RequestEnvelope = decode(&bytes).map_err(fail)?;
                prop_assert_eq!(back, req);
            }
        }
    }
}
