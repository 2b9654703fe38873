//! The key pool's shared vocabulary: which keys exist (from `GEMINI_API_KEYS` and
//! `SLUICE__KEYS__FILE`), their projects and limits, and where their fleet-wide state lives in
//! Redis. Workers reserve budget against it; the API reads it for `GET /api/admin/keys`.

use crate::Secret;
use crate::settings::{Settings, is_model_name};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use chrono_tz::America::Los_Angeles;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Limits {
    pub rpm: u32,
    pub tpm: u32,
    pub rpd: u32,
}

/// One provider key. Budgets belong to its `project` (Gemini limits are per Google Cloud
/// project); a key without one is its own project.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub alias: String,
    pub secret: Secret<String>,
    pub project: String,
    pub default_limits: Limits,
    pub model_limits: BTreeMap<String, Limits>,
    pub window_ms: u64,
    pub proxy: Option<Secret<String>>,
    pub weight: u32,
}

impl KeySpec {
    pub fn limits(&self, model: &str) -> Limits {
        self.model_limits
            .get(model)
            .copied()
            .unwrap_or(self.default_limits)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read keys file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("keys file {path} is not valid: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("keys: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    alias: Option<String>,
    secret: String,
    project: Option<String>,
    rpm: Option<u32>,
    tpm: Option<u32>,
    rpd: Option<u32>,
    window_ms: Option<u64>,
    proxy: Option<String>,
    weight: Option<u32>,
    #[serde(default)]
    models: BTreeMap<String, ModelLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelLimits {
    rpm: Option<u32>,
    tpm: Option<u32>,
    rpd: Option<u32>,
}

/// Every configured key: `GEMINI_API_KEYS` first, then the keys file; aliases are unique.
pub fn load_keys(settings: &Settings) -> Result<Vec<KeySpec>, KeyFileError> {
    let defaults = Limits {
        rpm: settings.limits.rpm,
        tpm: settings.limits.tpm,
        rpd: settings.limits.rpd,
    };
    let mut keys: Vec<KeySpec> = settings
        .keys
        .api_keys
        .iter()
        .map(|k| KeySpec {
            alias: k.alias.clone(),
            secret: k.secret.clone(),
            project: k.alias.clone(),
            default_limits: defaults,
            model_limits: BTreeMap::new(),
            window_ms: settings.limits.window_ms,
            proxy: None,
            weight: 1,
        })
        .collect();
    if let Some(path) = settings.keys_file() {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| KeyFileError::Read {
            path: display.clone(),
            source,
        })?;
        let file: KeyFile = toml::from_str(&text).map_err(|source| KeyFileError::Parse {
            path: display,
            source,
        })?;
        let offset = keys.len();
        for (i, entry) in file.keys.into_iter().enumerate() {
            keys.push(key_from_entry(
                entry,
                offset + i,
                defaults,
                settings.limits.window_ms,
            )?);
        }
    }
    for (i, key) in keys.iter().enumerate() {
        if keys[..i].iter().any(|k| k.alias == key.alias) {
            return Err(KeyFileError::Invalid(format!(
                "alias {} is used twice",
                key.alias
            )));
        }
    }
    Ok(keys)
}

fn key_from_entry(
    entry: KeyEntry,
    index: usize,
    defaults: Limits,
    window_ms: u64,
) -> Result<KeySpec, KeyFileError> {
    let alias = entry.alias.unwrap_or_else(|| format!("key-{}", index + 1));
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    if !valid_name(&alias) {
        return Err(KeyFileError::Invalid(format!(
            "alias {alias:?} must be letters, digits, '.', '-' or '_'"
        )));
    }
    let project = entry.project.unwrap_or_else(|| alias.clone());
    if !valid_name(&project) {
        return Err(KeyFileError::Invalid(format!(
            "project {project:?} of {alias} must be letters, digits, '.', '-' or '_'"
        )));
    }
    if entry.secret.trim().is_empty() {
        return Err(KeyFileError::Invalid(format!(
            "{alias} has an empty secret"
        )));
    }
    let base = Limits {
        rpm: entry.rpm.unwrap_or(defaults.rpm),
        tpm: entry.tpm.unwrap_or(defaults.tpm),
        rpd: entry.rpd.unwrap_or(defaults.rpd),
    };
    let mut model_limits = BTreeMap::new();
    for (model, l) in entry.models {
        if !is_model_name(&model) {
            return Err(KeyFileError::Invalid(format!(
                "model name {model:?} of {alias}"
            )));
        }
        model_limits.insert(
            model,
            Limits {
                rpm: l.rpm.unwrap_or(base.rpm),
                tpm: l.tpm.unwrap_or(base.tpm),
                rpd: l.rpd.unwrap_or(base.rpd),
            },
        );
    }
    if let Some(proxy) = &entry.proxy
        && !["http://", "https://", "socks5://", "socks5h://"]
            .iter()
            .any(|s| proxy.starts_with(s))
    {
        return Err(KeyFileError::Invalid(format!(
            "proxy of {alias} must start with http://, https:// or socks5h://"
        )));
    }
    Ok(KeySpec {
        alias,
        secret: Secret::new(entry.secret.trim().to_owned()),
        project,
        default_limits: base,
        model_limits,
        window_ms: entry.window_ms.filter(|w| *w > 0).unwrap_or(window_ms),
        proxy: entry.proxy.map(Secret::new),
        weight: entry.weight.unwrap_or(1).max(1),
    })
}

/// Where the pool's fleet-wide state lives in Redis, all under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisLayout {
    prefix: String,
}

impl RedisLayout {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// Sorted set of calls in the window: member `id:tokens`, score = when its slot frees
    /// (completion time; a far score while the call is in flight).
    pub fn calls(&self, project: &str, model: &str) -> String {
        format!("{}calls:{project}:{model}", self.prefix)
    }

    /// Tokens held by the calls in `calls` (kept beside it so no script has to scan).
    pub fn tokens(&self, project: &str, model: &str) -> String {
        format!("{}tokens:{project}:{model}", self.prefix)
    }

    /// Calls counted today (Pacific), for rpd.
    pub fn day(&self, project: &str, model: &str, day: &str) -> String {
        format!("{}day:{project}:{model}:{day}", self.prefix)
    }

    /// Hash `{until, reason}`: the (project, model) is cooling down or parked until `until` ms.
    pub fn cooldown(&self, project: &str, model: &str) -> String {
        format!("{}cool:{project}:{model}", self.prefix)
    }

    /// Hash alias → reason of every disabled key.
    pub fn disabled(&self) -> String {
        format!("{}disabled", self.prefix)
    }

    /// Hash alias → ambiguous failures in a row.
    pub fn strikes(&self) -> String {
        format!("{}strikes", self.prefix)
    }

    /// Hash route label → until (ms) it looked throttled: 429s on every key behind it.
    pub fn egress(&self) -> String {
        format!("{}egress", self.prefix)
    }

    /// Lock so that one worker probes a disabled key per interval.
    pub fn probe_lock(&self, alias: &str) -> String {
        format!("{}probe:{alias}", self.prefix)
    }

    /// Every key under the prefix (tests delete them).
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }
}

/// A proxy's name for logs and the admin view: scheme and host:port, never credentials.
/// `""` (no proxy) is `direct`.
pub fn route_label(proxy: &str) -> String {
    if proxy.is_empty() {
        return "direct".into();
    }
    let (scheme, rest) = proxy.split_once("://").unwrap_or(("proxy", proxy));
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}

/// The Pacific calendar day of `now` (Gemini's daily quotas reset at midnight Pacific).
pub fn pacific_day(now: DateTime<Utc>) -> String {
    let local = now.with_timezone(&Los_Angeles);
    format!(
        "{:04}-{:02}-{:02}",
        local.year(),
        local.month(),
        local.day()
    )
}

/// The next midnight in America/Los_Angeles after `now`.
pub fn next_pacific_midnight(now: DateTime<Utc>) -> DateTime<Utc> {
    let local = now.with_timezone(&Los_Angeles).date_naive();
    let tomorrow = local.succ_opt().unwrap_or(local);
    tomorrow
        .and_hms_opt(0, 0, 0)
        .and_then(|t| Los_Angeles.from_local_datetime(&t).earliest())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(now + chrono::Duration::hours(24))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ApiKey;

    #[test]
    fn keys_from_env_and_file_merge_with_defaults() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("sluice-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("keys.toml");
        std::fs::write(
            &path,
            r#"
[[keys]]
alias = "a"
secret = "AIzaA"
project = "shared"
rpm = 5
proxy = "socks5h://127.0.0.1:1080"
weight = 3
[keys.models."gemini-2.5-pro"]
rpm = 2

[[keys]]
secret = "AIzaB"
project = "shared"
"#,
        )?;
        let mut settings = Settings::defaults()?;
        settings.keys.api_keys = vec![ApiKey {
            alias: "env".into(),
            secret: Secret::from("AIzaE"),
        }];
        settings.keys.file = path.display().to_string();
        let keys = load_keys(&settings)?;
        std::fs::remove_dir_all(&dir)?;
        let aliases: Vec<_> = keys.iter().map(|k| k.alias.as_str()).collect();
        assert_eq!(aliases, ["env", "a", "key-3"]);
        assert_eq!(
            keys[0].project, "env",
            "a key without a project is its own project"
        );
        assert_eq!(keys[1].limits("gemini-2.5-pro").rpm, 2);
        assert_eq!(keys[1].limits("gemini-2.5-flash").rpm, 5);
        assert_eq!(keys[1].limits("gemini-2.5-flash").rpd, settings.limits.rpd);
        assert_eq!(keys[1].weight, 3);
        assert_eq!(keys[2].project, "shared");
        assert!(!format!("{keys:?}").contains("AIza"), "secrets never print");
        Ok(())
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() -> Result<(), Box<dyn std::error::Error>> {
        let entry = |toml_text: &str| -> Result<KeySpec, KeyFileError> {
            let file: KeyFile =
                toml::from_str(toml_text).map_err(|source| KeyFileError::Parse {
                    path: "t".into(),
                    source,
                })?;
            let entry = file
                .keys
                .into_iter()
                .next()
                .ok_or(KeyFileError::Invalid("none".into()))?;
            key_from_entry(
                entry,
                0,
                Limits {
                    rpm: 1,
                    tpm: 1,
                    rpd: 1,
                },
                1000,
            )
        };
        assert!(entry("[[keys]]\nsecret = \"\"").is_err());
        assert!(entry("[[keys]]\nsecret = \"x\"\nalias = \"a b\"").is_err());
        assert!(entry("[[keys]]\nsecret = \"x\"\nproxy = \"ftp://x\"").is_err());
        assert!(entry("[[keys]]\nsecret = \"x\"\nsurprise = 1").is_err());
        Ok(())
    }

    #[test]
    fn route_labels_hide_credentials() {
        assert_eq!(route_label(""), "direct");
        assert_eq!(
            route_label("socks5h://user:pw@10.0.0.1:1080"),
            "socks5h://10.0.0.1:1080"
        );
        assert_eq!(
            route_label("http://proxy.local:3128/"),
            "http://proxy.local:3128"
        );
    }

    #[test]
    fn pacific_days_follow_los_angeles() {
        let t = Utc.with_ymd_and_hms(2026, 11, 24, 7, 59, 0).single();
        let Some(t) = t else { panic!("valid time") };
        assert_eq!(pacific_day(t), "2026-11-23", "23:59 PST is still the 23rd");
        assert_eq!(
            next_pacific_midnight(t),
            Utc.with_ymd_and_hms(2026, 11, 24, 8, 0, 0)
                .single()
                .unwrap_or(t)
        );
    }
}
