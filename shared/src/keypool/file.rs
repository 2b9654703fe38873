//! Which keys exist: `GEMINI_API_KEYS` and the keys file (`SLUICE__KEYS__FILE`), parsed and
//! checked into [`KeySpec`]s. A reload parses the file's new text the same way.

use super::{KeySpec, Limits};
use crate::Secret;
use crate::catalogue::ProviderKind;
use crate::settings::{Settings, is_http_url, millis_of};
use serde::Deserialize;
use std::collections::BTreeMap;

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
    /// The API the key speaks; Gemini when left out.
    #[serde(default)]
    provider: ProviderKind,
    /// Where its calls go; the kind's configured base URL when left out.
    base_url: Option<String>,
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

fn default_limits(settings: &Settings) -> Limits {
    Limits {
        rpm: settings.limits.rpm,
        tpm: settings.limits.tpm,
        rpd: settings.limits.rpd,
    }
}

/// Every configured key: `GEMINI_API_KEYS` first, then `keys.aliases` (alias only, no
/// secret), then the keys file; aliases are unique.
pub fn load_keys(settings: &Settings) -> Result<Vec<KeySpec>, KeyFileError> {
    keys_with_file_text(settings, read_key_file(settings)?.as_deref())
}

/// The keys file's text (`None` when no file is set).
pub fn read_key_file(settings: &Settings) -> Result<Option<String>, KeyFileError> {
    let Some(path) = settings.keys_file() else {
        return Ok(None);
    };
    std::fs::read_to_string(&path)
        .map(Some)
        .map_err(|source| KeyFileError::Read {
            path: path.display().to_string(),
            source,
        })
}

/// Every configured key, with `file_text` standing for the keys file's contents (`None`: no
/// keys file). A reload reads the file itself and hands its text here.
pub fn keys_with_file_text(
    settings: &Settings,
    file_text: Option<&str>,
) -> Result<Vec<KeySpec>, KeyFileError> {
    let defaults = default_limits(settings);
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
            window_ms: millis_of(settings.limits.window),
            proxy: None,
            weight: 1,
            provider: ProviderKind::Gemini,
            base_url: None,
        })
        .collect();
    // Alias-only keys (the API's view): no secret, the default limits.
    keys.extend(settings.keys.aliases.iter().map(|alias| KeySpec {
        alias: alias.clone(),
        secret: Secret::new(String::new()),
        project: alias.clone(),
        default_limits: defaults,
        model_limits: BTreeMap::new(),
        window_ms: millis_of(settings.limits.window),
        proxy: None,
        weight: 1,
        provider: ProviderKind::Gemini,
        base_url: None,
    }));
    if let Some(text) = file_text {
        let file: KeyFile = toml::from_str(text).map_err(|source| KeyFileError::Parse {
            path: settings.keys.file.clone(),
            source,
        })?;
        let offset = keys.len();
        for (i, entry) in file.keys.into_iter().enumerate() {
            keys.push(key_from_entry(
                entry,
                offset + i,
                defaults,
                millis_of(settings.limits.window),
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
        if !entry.provider.accepts_model_name(&model) {
            return Err(KeyFileError::Invalid(format!(
                "model name {model:?} of {alias} is not a {} model name",
                entry.provider
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
    if let Some(url) = &entry.base_url
        && !is_http_url(url)
    {
        return Err(KeyFileError::Invalid(format!(
            "base_url of {alias} must start with http:// or https://"
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
        provider: entry.provider,
        base_url: entry
            .base_url
            .map(|url| url.trim_end_matches('/').to_owned()),
    })
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
    fn aliases_are_keys_without_secrets_at_the_default_limits()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut settings = Settings::defaults()?;
        settings.keys.aliases = vec!["main".into(), "spare".into()];
        settings.limits.rpm = 7;
        let keys = keys_with_file_text(&settings, None)?;
        let aliases: Vec<_> = keys.iter().map(|k| k.alias.as_str()).collect();
        assert_eq!(aliases, ["main", "spare"]);
        assert!(keys.iter().all(|k| k.secret.expose().is_empty()));
        assert_eq!(keys[1].limits("gemini-2.5-flash").rpm, 7);
        // An alias is as unique as any other key's.
        settings.keys.api_keys = vec![ApiKey {
            alias: "main".into(),
            secret: Secret::from("x"),
        }];
        assert!(keys_with_file_text(&settings, None).is_err());
        Ok(())
    }

    #[test]
    fn file_text_is_checked_like_the_file() -> Result<(), Box<dyn std::error::Error>> {
        let mut settings = Settings::defaults()?;
        settings.keys.api_keys = vec![ApiKey {
            alias: "env".into(),
            secret: Secret::from("x"),
        }];
        settings.keys.file = "/etc/keys.toml".into();
        let keys = keys_with_file_text(&settings, Some("[[keys]]\nalias = \"b\"\nsecret = \"y\""))?;
        assert_eq!(keys.len(), 2);
        let twice =
            keys_with_file_text(&settings, Some("[[keys]]\nalias = \"env\"\nsecret = \"y\""));
        assert!(matches!(twice, Err(KeyFileError::Invalid(_))), "{twice:?}");
        let garbage = keys_with_file_text(&settings, Some("not [ toml"));
        let Err(error) = garbage else {
            panic!("garbage is refused")
        };
        assert!(error.to_string().contains("/etc/keys.toml"), "{error}");
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
}
