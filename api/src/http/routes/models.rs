//! `GET /api/models`: the catalogue's models a user may ask for, with their provider kind,
//! context size and prices. Upstream names, keys and fallbacks stay the operator's.

use crate::http::AppState;
use crate::http::error::ErrorBody;
use crate::http::extract::SignedIn;
use axum::Json;
use axum::extract::State;
use serde::Serialize;
use sluice_shared::catalogue::Model;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Serialize, ToSchema)]
struct ModelsView {
    /// The model of a message that names none.
    default: String,
    /// By name.
    items: Vec<ModelView>,
}

#[derive(Serialize, ToSchema)]
struct ModelView {
    name: String,
    /// `gemini` or `openai` (any OpenAI-compatible server).
    provider: String,
    /// The context window in tokens, when the operator gave it.
    context_tokens: Option<u32>,
    /// USD per million prompt tokens.
    input_price_per_mtok: f64,
    /// USD per million reply tokens.
    output_price_per_mtok: f64,
}

impl From<&Model> for ModelView {
    fn from(model: &Model) -> Self {
        Self {
            name: model.name.clone(),
            provider: model.provider.as_str().to_owned(),
            context_tokens: (model.context_tokens > 0).then_some(model.context_tokens),
            input_price_per_mtok: model.input_price_per_mtok.usd_per_mtok(),
            output_price_per_mtok: model.output_price_per_mtok.usd_per_mtok(),
        }
    }
}

/// The models a message may name.
#[utoipa::path(get,
    path = "/api/models",
    operation_id = "list_models", tag = "models", security(("bearer" = [])),
    responses(
        (status = 200, description = "The models on offer", body = ModelsView),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
async fn list(State(state): State<AppState>, _: SignedIn) -> Json<ModelsView> {
    let catalogue = &state.catalogue;
    Json(ModelsView {
        default: catalogue.default_model().to_owned(),
        items: catalogue.models().map(ModelView::from).collect(),
    })
}
