//! Just enough of a Dockerfile to follow a stage back to its base image and find its user.

use std::collections::HashMap;

/// One `FROM … [AS name]` stage: its base (an image or an earlier stage) and its `USER`.
#[derive(Debug, Default)]
pub struct Stage {
    pub base: String,
    pub user: Option<String>,
    pub lines: Vec<String>,
}

/// The stages of a Dockerfile by name (unnamed stages are left out). Continuation lines are
/// joined; comments and parser directives skipped.
pub fn stages(text: &str) -> HashMap<String, Stage> {
    let mut stages = HashMap::new();
    let mut current: Option<(String, Stage)> = None;
    let mut logical = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || (logical.is_empty() && line.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            logical.push_str(part);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let instruction = std::mem::take(&mut logical);
        let words: Vec<&str> = instruction.split_whitespace().collect();
        match words.first().map(|w| w.to_ascii_uppercase()).as_deref() {
            Some("FROM") => {
                if let Some((name, stage)) = current.take() {
                    stages.insert(name, stage);
                }
                let base = words.get(1).copied().unwrap_or("").to_owned();
                let name = match words.get(2) {
                    Some(w) if w.eq_ignore_ascii_case("as") => words.get(3).copied().unwrap_or(""),
                    _ => "",
                };
                current = Some((
                    name.to_owned(),
                    Stage {
                        base,
                        ..Stage::default()
                    },
                ));
            }
            Some("USER") => {
                if let Some((_, stage)) = current.as_mut() {
                    stage.user = words.get(1).map(|w| (*w).to_owned());
                }
            }
            _ => {}
        }
        if let Some((_, stage)) = current.as_mut() {
            stage.lines.push(instruction);
        }
    }
    if let Some((name, stage)) = current.take() {
        stages.insert(name, stage);
    }
    stages.remove("");
    stages
}

/// The user `target` runs as (its own `USER` or its nearest ancestor stage's) and the image
/// its chain of stages starts from.
pub fn effective(stages: &HashMap<String, Stage>, target: &str) -> (Option<String>, String) {
    let mut user = None;
    let mut name = target.to_owned();
    for _ in 0..stages.len() + 1 {
        let Some(stage) = stages.get(&name) else {
            return (user, name);
        };
        if user.is_none() {
            user.clone_from(&stage.user);
        }
        name.clone_from(&stage.base);
    }
    (user, name)
}

/// Whether a `USER` value names root (by name or by uid 0, with or without a group).
pub fn is_root(user: &str) -> bool {
    let who = user.split(':').next().unwrap_or(user);
    who == "root" || who == "0"
}
