//! Key rotation without restarts: the keys file is re-read on a [`ReloadTrigger`] (SIGHUP) and
//! polled by contents every `keys.reload_interval_ms` (robust to ConfigMap symlink swaps); a
//! change is applied or refused whole, and `GEMINI_API_KEYS` stays as it was at start.

use super::{KeySpec, keys_with_file_text};
use crate::Settings;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A handle that asks every watcher subscribed to it to re-read the keys file now. `main`
/// fires it on SIGHUP; tests fire it directly (a real signal would hit the whole process).
#[derive(Debug, Clone)]
pub struct ReloadTrigger {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for ReloadTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl ReloadTrigger {
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(0)),
        }
    }

    pub fn fire(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

/// What a look at the file found; compared with the last look so that an unchanged file, or
/// the same broken one, is not reloaded (or refused, or logged) again.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Text(String),
    Unreadable(String),
}

/// How one look at the keys file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file is what was last seen (or, on a trigger, what runs now).
    Unchanged,
    /// The new keys run now.
    Applied { keys: usize },
    /// The file was refused; the keys running before still run.
    Refused { problem: String },
}

/// The keys file as last applied and last seen, and the settings its keys are built with.
pub struct KeyFileWatch {
    settings: Arc<Settings>,
    applied: Seen,
    seen: Seen,
    aliases: Vec<String>,
}

impl KeyFileWatch {
    /// Watches the file `keys` were loaded from at start, whose text was `text` then.
    pub fn new(settings: Arc<Settings>, keys: &[KeySpec], text: Option<String>) -> Self {
        let seen = Seen::Text(text.unwrap_or_default());
        Self {
            settings,
            applied: seen.clone(),
            seen,
            aliases: keys.iter().map(|k| k.alias.clone()).collect(),
        }
    }

    fn path(&self) -> &str {
        &self.settings.keys.file
    }

    async fn read(&self) -> Seen {
        // The path is opened anew each time: a ConfigMap swaps a symlink under it, which an
        // inotify watch on the old target would never see.
        match tokio::fs::read_to_string(self.path()).await {
            Ok(text) => Seen::Text(text),
            Err(e) => Seen::Unreadable(format!("cannot read keys file {}: {e}", self.path())),
        }
    }

    /// Re-reads the file. A poll (`forced: false`) acts only on contents it has not seen
    /// yet; a trigger acts on anything other than what runs now. New keys go to `apply`,
    /// which may refuse them too (it builds what they need).
    pub async fn check(
        &mut self,
        forced: bool,
        apply: impl FnOnce(Vec<KeySpec>) -> Result<(), String>,
    ) -> Reload {
        let seen = self.read().await;
        let unchanged = if forced {
            seen == self.applied
        } else {
            seen == self.seen
        };
        self.seen = seen.clone();
        if unchanged {
            if forced {
                tracing::info!(file = %self.path(), "keys file unchanged; nothing to reload");
            }
            return Reload::Unchanged;
        }
        let outcome = match &seen {
            Seen::Unreadable(problem) => Err(problem.clone()),
            Seen::Text(text) => self.build(text).and_then(|keys| {
                let aliases: Vec<String> = keys.iter().map(|k| k.alias.clone()).collect();
                apply(keys)?;
                Ok(aliases)
            }),
        };
        match outcome {
            Ok(aliases) => {
                let joined: Vec<&str> = aliases
                    .iter()
                    .filter(|a| !self.aliases.contains(a))
                    .map(String::as_str)
                    .collect();
                let removed: Vec<&str> = self
                    .aliases
                    .iter()
                    .filter(|a| !aliases.contains(a))
                    .map(String::as_str)
                    .collect();
                tracing::info!(
                    file = %self.path(),
                    keys = aliases.len(),
                    joined = %joined.join(","),
                    removed = %removed.join(","),
                    "keys file reloaded"
                );
                metrics::counter!("sluice_keys_reloads_total", "outcome" => "applied").increment(1);
                let keys = aliases.len();
                self.aliases = aliases;
                self.applied = seen;
                Reload::Applied { keys }
            }
            Err(problem) => {
                tracing::error!(
                    file = %self.path(),
                    %problem,
                    "keys file refused; the keys loaded before stay in use"
                );
                metrics::counter!("sluice_keys_reloads_total", "outcome" => "refused").increment(1);
                Reload::Refused { problem }
            }
        }
    }

    fn build(&self, text: &str) -> Result<Vec<KeySpec>, String> {
        let keys = keys_with_file_text(&self.settings, Some(text)).map_err(|e| e.to_string())?;
        if keys.is_empty() {
            return Err(format!("keys file {} holds no key", self.path()));
        }
        Ok(keys)
    }
}

/// Runs until `cancel`: re-reads the keys file whenever `trigger` fires, and polls it every
/// `keys.reload_interval_ms`; applies changes through `apply`. Without a keys file there is
/// nothing to reload (`GEMINI_API_KEYS` is fixed at start), and a trigger says so.
pub async fn watch_keys(
    mut watch: KeyFileWatch,
    trigger: ReloadTrigger,
    cancel: CancellationToken,
    mut apply: impl FnMut(Vec<KeySpec>) -> Result<(), String>,
) {
    let mut triggered = trigger.subscribe();
    let has_file = !watch.path().is_empty();
    let interval = watch
        .settings
        .keys
        .reload_interval
        .max(Duration::from_millis(100));
    loop {
        let forced = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = triggered.changed() => true,
            _ = tokio::time::sleep(interval), if has_file => false,
        };
        if !has_file {
            tracing::info!(
                "reload asked for, but no keys file is set (GEMINI_API_KEYS is fixed at start)"
            );
            continue;
        }
        watch.check(forced, &mut apply).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use crate::settings::ApiKey;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn settings(path: &std::path::Path) -> Result<Arc<Settings>, Box<dyn std::error::Error>> {
        let mut settings = Settings::defaults()?;
        settings.keys.file = path.display().to_string();
        settings.keys.api_keys = vec![ApiKey {
            alias: "env".into(),
            secret: Secret::from("e"),
        }];
        Ok(Arc::new(settings))
    }

    #[tokio::test]
    async fn changes_apply_once_and_bad_files_are_refused() -> TestResult {
        let dir = std::env::temp_dir().join(format!("sluice-reload-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("keys.toml");
        let first = "[[keys]]\nalias = \"a\"\nsecret = \"x\"\n";
        std::fs::write(&path, first)?;
        let settings = settings(&path)?;
        let keys = keys_with_file_text(&settings, Some(first))?;
        let mut watch = KeyFileWatch::new(settings, &keys, Some(first.into()));
        let mut applied: Vec<Vec<String>> = Vec::new();
        let mut apply = |keys: Vec<KeySpec>| {
            applied.push(keys.into_iter().map(|k| k.alias).collect());
            Ok(())
        };
        assert_eq!(watch.check(false, &mut apply).await, Reload::Unchanged);
        assert_eq!(watch.check(true, &mut apply).await, Reload::Unchanged);

        std::fs::write(&path, "[[keys]]\nalias = \"b\"\nsecret = \"y\"\n")?;
        assert_eq!(
            watch.check(false, &mut apply).await,
            Reload::Applied { keys: 2 }
        );
        assert_eq!(watch.check(false, &mut apply).await, Reload::Unchanged);

        for bad in [
            "not [ toml",
            "[[keys]]\nalias = \"env\"\nsecret = \"y\"\n",
            "[[keys]]\nalias = \"b\"\nsecret = \"\"\n",
        ] {
            std::fs::write(&path, bad)?;
            let outcome = watch.check(false, &mut apply).await;
            assert!(
                matches!(outcome, Reload::Refused { .. }),
                "{bad}: {outcome:?}"
            );
            assert_eq!(
                watch.check(false, &mut apply).await,
                Reload::Unchanged,
                "refused once"
            );
        }
        std::fs::remove_file(&path)?;
        let outcome = watch.check(true, &mut apply).await;
        let Reload::Refused { problem } = outcome else {
            panic!("a missing file is refused: {outcome:?}")
        };
        assert!(problem.contains("keys.toml"), "{problem}");
        // Nothing but the one good change reached `apply`.
        assert_eq!(applied, [vec!["env".to_owned(), "b".to_owned()]]);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[tokio::test]
    async fn a_refusal_by_the_applier_keeps_the_old_keys() -> TestResult {
        let dir = std::env::temp_dir().join(format!("sluice-reload-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("keys.toml");
        std::fs::write(&path, "[[keys]]\nalias = \"b\"\nsecret = \"y\"\n")?;
        let settings = settings(&path)?;
        let mut watch = KeyFileWatch::new(settings, &[], Some(String::new()));
        let outcome = watch
            .check(false, |_| Err("cannot build a client".to_owned()))
            .await;
        assert_eq!(
            outcome,
            Reload::Refused {
                problem: "cannot build a client".into()
            }
        );
        // A trigger tries again: what runs is still the old file.
        let outcome = watch.check(true, |_| Ok(())).await;
        assert_eq!(outcome, Reload::Applied { keys: 2 });
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
