//! The model catalogue: the models users may ask for, the provider kind and upstream name that
//! serve each, its prices and context size, and where it falls back. Built once from
//! `[models."NAME"]` in the settings, or, when that is empty, from `provider.model` and
//! `provider.models` (every model Gemini under its own name, as before the catalogue existed).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Which API a provider speaks.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Deserialize, Serialize,
)]
pub enum ProviderKind {
    /// Google's Gemini REST API (`generateContent`, key in `x-goog-api-key`).
    #[default]
    #[serde(rename = "gemini")]
    Gemini,
    /// OpenAI's Chat Completions (`/v1/chat/completions`, key as a bearer token), which OpenAI
    /// and many others speak: vLLM, Ollama, OpenRouter, DeepSeek, …
    #[serde(rename = "openai")]
    OpenAi,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gemini => "gemini",
            Self::OpenAi => "openai",
        }
    }

    /// Whether `name` may be sent to this kind as a model name. Gemini's goes into the URL
    /// path, so it keeps to a safe alphabet; OpenAI-compatible servers take names such as
    /// `meta-llama/Llama-3.1-8B` or `llama3:8b` in the body.
    pub fn accepts_model_name(self, name: &str) -> bool {
        match self {
            Self::Gemini => is_model_name(name),
            Self::OpenAi => {
                !name.is_empty() && name.len() <= 200 && name.chars().all(|c| c.is_ascii_graphic())
            }
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name users may ask for (and that Gemini may see in a URL path): letters, digits, `.`,
/// `-` and `_`, at most 100 characters.
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// A price in USD per million tokens, held exactly as whole micro-dollars per million tokens
/// (0.15 is 150 000): costs computed from it are exact integers, never floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Price(u64);

/// The highest price accepted: a million dollars per million tokens.
const MAX_PRICE_MICRO_USD: u64 = 1_000_000 * 1_000_000;

impl Price {
    pub const ZERO: Price = Price(0);

    pub fn from_micro_usd_per_mtok(micro: u64) -> Option<Self> {
        (micro <= MAX_PRICE_MICRO_USD).then_some(Self(micro))
    }

    pub fn micro_usd_per_mtok(self) -> u64 {
        self.0
    }

    /// What `tokens` cost at this price, in nano-dollars, rounded up: a spent token never
    /// costs nothing at a price above zero.
    pub fn cost_nano_usd(self, tokens: u64) -> u64 {
        // µUSD per 10⁶ tokens is 10⁻¹² USD per token: a thousandth of a nano-dollar.
        let pico = u128::from(tokens) * u128::from(self.0);
        u64::try_from(pico.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// USD per million tokens as a number, for display (the value is exact to 6 decimals).
    pub fn usd_per_mtok(self) -> f64 {
        // Exact below 2^53 micro-dollars, which the cap keeps it under.
        #[expect(clippy::cast_precision_loss, reason = "capped far below 2^53")]
        let micro = self.0 as f64;
        micro / 1e6
    }

    /// Parses a decimal such as `0.15` or `2` (at most 6 decimals).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() && fraction.is_empty()
            || fraction.len() > 6
            || !whole
                .chars()
                .chain(fraction.chars())
                .all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let fraction: u64 = if fraction.is_empty() {
            0
        } else {
            format!("{fraction:0<6}").parse().ok()?
        };
        Self::from_micro_usd_per_mtok(whole.checked_mul(1_000_000)?.checked_add(fraction)?)
    }

    fn from_f64(value: f64) -> Option<Self> {
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        let micro = (value * 1e6).round();
        // The cap is far below 2^53, so the comparison and the cast are exact.
        #[expect(clippy::cast_precision_loss, reason = "the cap is below 2^53")]
        let within = micro <= MAX_PRICE_MICRO_USD as f64;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "finite, non-negative and within the cap"
        )]
        let micro = micro as u64;
        within.then_some(Self(micro))
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, micro) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if micro == 0 {
            write!(f, "{whole}")
        } else {
            let fraction = format!("{micro:06}");
            write!(f, "{whole}.{}", fraction.trim_end_matches('0'))
        }
    }
}

/// A decimal amount of dollars as written in the settings: a number or a string, at most
/// 6 decimals, from 0 to `max` whole dollars; in micro-dollars.
fn micro_dollars<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    what: &'static str,
) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Integer(u64),
        Float(f64),
        Text(String),
    }
    let price = match Raw::deserialize(deserializer)? {
        Raw::Integer(whole) => whole
            .checked_mul(1_000_000)
            .and_then(Price::from_micro_usd_per_mtok),
        Raw::Float(value) => Price::from_f64(value),
        Raw::Text(text) => Price::parse(&text),
    };
    price.map(Price::micro_usd_per_mtok).ok_or_else(|| {
        serde::de::Error::custom(format!("{what}: from 0 to 1000000, at most 6 decimals"))
    })
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        micro_dollars(deserializer, "a price in USD per million tokens").map(Price)
    }
}

/// An amount of US dollars, held exactly as micro-dollars (a spending cap, for instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dollars(u64);

impl Dollars {
    pub fn micro_usd(self) -> u64 {
        self.0
    }

    /// The amount in nano-dollars, the unit costs are recorded in.
    pub fn nano_usd(self) -> u64 {
        self.0.saturating_mul(1000)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl<'de> Deserialize<'de> for Dollars {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        micro_dollars(deserializer, "an amount in USD").map(Dollars)
    }
}

impl Serialize for Price {
    /// As a JSON number of USD per million tokens (a display value; costs are computed from
    /// the exact micro-dollars).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.usd_per_mtok())
    }
}

/// One `[models."NAME"]` entry of the settings.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    #[serde(default)]
    pub provider: ProviderKind,
    /// The provider's name for the model; the catalogue name when left out.
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub input_price_per_mtok: Price,
    #[serde(default)]
    pub output_price_per_mtok: Price,
    /// The model's context window in tokens; 0 when unknown.
    #[serde(default)]
    pub context_tokens: u32,
    /// The models to try next, in order, when this one cannot be served.
    #[serde(default)]
    pub fallback: Vec<String>,
}

/// A model users may ask for, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    pub name: String,
    pub provider: ProviderKind,
    /// The provider's name for it: what calls, budgets and cooldowns use.
    pub upstream: String,
    pub input_price_per_mtok: Price,
    pub output_price_per_mtok: Price,
    pub context_tokens: u32,
    pub fallback: Vec<String>,
}

/// Every model users may ask for, by name, and the default one.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    models: BTreeMap<String, Model>,
    default: String,
}

impl Catalogue {
    /// The catalogue of `entries`; with none, `default` and `extra` as Gemini models under
    /// their own names. [`Catalogue::problems`] says what is wrong with the same inputs.
    pub fn new(entries: &BTreeMap<String, ModelEntry>, default: &str, extra: &[String]) -> Self {
        let models = if entries.is_empty() {
            std::iter::once(default)
                .chain(extra.iter().map(String::as_str))
                .map(|name| {
                    let model = Model {
                        name: name.to_owned(),
                        provider: ProviderKind::Gemini,
                        upstream: name.to_owned(),
                        input_price_per_mtok: Price::ZERO,
                        output_price_per_mtok: Price::ZERO,
                        context_tokens: 0,
                        fallback: Vec::new(),
                    };
                    (name.to_owned(), model)
                })
                .collect()
        } else {
            entries
                .iter()
                .map(|(name, entry)| {
                    let model = Model {
                        name: name.clone(),
                        provider: entry.provider,
                        upstream: entry.upstream.clone().unwrap_or_else(|| name.clone()),
                        input_price_per_mtok: entry.input_price_per_mtok,
                        output_price_per_mtok: entry.output_price_per_mtok,
                        context_tokens: entry.context_tokens,
                        fallback: entry.fallback.clone(),
                    };
                    (name.clone(), model)
                })
                .collect()
        };
        Self {
            models,
            default: default.to_owned(),
        }
    }

    /// What is wrong with a catalogue of these inputs, each problem in words.
    pub fn problems(
        entries: &BTreeMap<String, ModelEntry>,
        default: &str,
        extra: &[String],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        if entries.is_empty() {
            if let Some(bad) = std::iter::once(default)
                .chain(extra.iter().map(String::as_str))
                .find(|m| !is_model_name(m))
            {
                problems.push(format!(
                    "model {bad:?}: letters, digits, '.', '-' and '_' only"
                ));
            }
            return problems;
        }
        if !entries.contains_key(default) {
            problems.push(format!(
                "the default model provider.model = {default:?} is not in [models]: add it, or set provider.model to one of them"
            ));
        }
        for (name, entry) in entries {
            if !is_model_name(name) {
                problems.push(format!(
                    "models.{name:?}: a name of letters, digits, '.', '-' and '_' only"
                ));
            }
            let upstream = entry.upstream.as_deref().unwrap_or(name);
            if !entry.provider.accepts_model_name(upstream) {
                problems.push(format!(
                    "models.{name:?}.upstream {upstream:?} is not a {} model name",
                    entry.provider
                ));
            }
            for (i, next) in entry.fallback.iter().enumerate() {
                if next == name {
                    problems.push(format!("models.{name:?} falls back to itself"));
                } else if !entries.contains_key(next) {
                    problems.push(format!(
                        "models.{name:?}.fallback names {next:?}, which is not in [models]"
                    ));
                } else if entry.fallback[..i].contains(next) {
                    problems.push(format!("models.{name:?}.fallback names {next:?} twice"));
                }
            }
        }
        problems
    }

    pub fn get(&self, name: &str) -> Option<&Model> {
        self.models.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.models.contains_key(name)
    }

    /// The model of a message that names none (`provider.model`).
    pub fn default_model(&self) -> &str {
        &self.default
    }

    /// Every model, by name.
    pub fn models(&self) -> impl Iterator<Item = &Model> {
        self.models.values()
    }

    /// The upstream name keys of `kind` are probed on: the default model's when it is of that
    /// kind, else the first of that kind by name.
    pub fn probe_model(&self, kind: ProviderKind) -> Option<&str> {
        self.models
            .get(&self.default)
            .filter(|m| m.provider == kind)
            .or_else(|| self.models.values().find(|m| m.provider == kind))
            .map(|m| m.upstream.as_str())
    }

    /// The upstream names served by `kind`, each once, in name order.
    pub fn upstreams(&self, kind: ProviderKind) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .models
            .values()
            .filter(|m| m.provider == kind)
            .map(|m| m.upstream.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(provider: ProviderKind, upstream: Option<&str>, fallback: &[&str]) -> ModelEntry {
        ModelEntry {
            provider,
            upstream: upstream.map(str::to_owned),
            input_price_per_mtok: Price::ZERO,
            output_price_per_mtok: Price::ZERO,
            context_tokens: 0,
            fallback: fallback.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn prices_are_exact_micro_dollars() {
        assert_eq!(
            Price::parse("0.15").map(Price::micro_usd_per_mtok),
            Some(150_000)
        );
        assert_eq!(
            Price::parse("2").map(Price::micro_usd_per_mtok),
            Some(2_000_000)
        );
        assert_eq!(
            Price::parse(".0375").map(Price::micro_usd_per_mtok),
            Some(37_500)
        );
        for bad in ["", ".", "-1", "1e3", "0.1234567", "abc", "1.2.3", "2000000"] {
            assert_eq!(Price::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Price::from_f64(0.15).map(Price::micro_usd_per_mtok),
            Some(150_000)
        );
        assert_eq!(Price::from_f64(f64::NAN), None);
        assert_eq!(Price::from_f64(-0.5), None);
        let price = Price(37_500);
        assert_eq!(price.to_string(), "0.0375");
        assert_eq!(Price(2_000_000).to_string(), "2");
        assert_eq!(
            serde_json::to_string(&price).ok().as_deref(),
            Some("0.0375")
        );
    }

    #[test]
    fn costs_round_up_and_never_overflow() {
        // 1 000 tokens at $0.15 per million: 150 000 nano-dollars.
        assert_eq!(Price(150_000).cost_nano_usd(1_000), 150_000);
        // One token at $0.0375 per million is 37.5 nano-dollars: 38.
        assert_eq!(Price(37_500).cost_nano_usd(1), 38);
        assert_eq!(Price::ZERO.cost_nano_usd(1_000_000), 0);
        assert_eq!(Price(MAX_PRICE_MICRO_USD).cost_nano_usd(u64::MAX), u64::MAX);
    }

    #[test]
    fn prices_deserialise_from_numbers_and_strings() -> Result<(), toml::de::Error> {
        #[derive(Deserialize)]
        struct Holder {
            a: Price,
            b: Price,
            c: Price,
        }
        let holder: Holder = toml::from_str("a = 0.15\nb = 3\nc = \"1.25\"")?;
        assert_eq!(
            (holder.a.0, holder.b.0, holder.c.0),
            (150_000, 3_000_000, 1_250_000)
        );
        assert!(toml::from_str::<Holder>("a = -1.0\nb = 3\nc = \"1\"").is_err());
        Ok(())
    }

    #[test]
    fn an_empty_catalogue_is_the_configured_gemini_models() {
        let catalogue = Catalogue::new(&BTreeMap::new(), "g-1", &["g-2".into(), "g-1".into()]);
        assert_eq!(catalogue.default_model(), "g-1");
        let names: Vec<_> = catalogue.models().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["g-1", "g-2"]);
        assert!(
            catalogue
                .models()
                .all(|m| m.provider == ProviderKind::Gemini && m.upstream == m.name)
        );
        assert!(Catalogue::problems(&BTreeMap::new(), "g-1", &["bad name".into()]).len() == 1);
    }

    #[test]
    fn entries_resolve_and_their_problems_are_named() {
        let mut entries = BTreeMap::new();
        entries.insert(
            "fast".to_owned(),
            entry(
                ProviderKind::OpenAi,
                Some("meta-llama/Llama-3.1-8B"),
                &["flash"],
            ),
        );
        entries.insert(
            "flash".to_owned(),
            entry(ProviderKind::Gemini, Some("gemini-2.5-flash"), &[]),
        );
        assert!(Catalogue::problems(&entries, "flash", &[]).is_empty());
        let catalogue = Catalogue::new(&entries, "flash", &[]);
        assert_eq!(
            catalogue.get("fast").map(|m| m.upstream.as_str()),
            Some("meta-llama/Llama-3.1-8B")
        );
        assert_eq!(
            catalogue.upstreams(ProviderKind::Gemini),
            ["gemini-2.5-flash"]
        );

        entries.insert(
            "loop".to_owned(),
            entry(
                ProviderKind::Gemini,
                Some("bad/name"),
                &["loop", "nowhere", "flash", "flash"],
            ),
        );
        let problems = Catalogue::problems(&entries, "missing", &[]).join("\n");
        for expected in [
            "provider.model",
            "not a gemini model name",
            "itself",
            "\"nowhere\"",
            "twice",
        ] {
            assert!(problems.contains(expected), "{expected} in {problems}");
        }
    }
}
