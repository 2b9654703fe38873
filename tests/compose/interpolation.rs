//! The `${VAR}` references of a Compose file, read the way Compose interpolates: `$$` is a
//! literal dollar, `${NAME}`, `${NAME:-default}`, `${NAME:?error}` and `$NAME` are references.

/// One reference to a variable, and its default when it has one (`:-` or `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub default: Option<String>,
}

/// Every variable reference in `text`, in order.
pub fn references(text: &str) -> Vec<Reference> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            // `$$` escapes a dollar for the container (shell variables in commands).
            Some(b'$') => i += 2,
            Some(b'{') => {
                let start = i + 2;
                let name_end = start
                    + text[start..]
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(text.len() - start);
                let close = text[name_end..].find('}').map(|at| name_end + at);
                let modifier = close.map(|close| &text[name_end..close]).unwrap_or("");
                let default = modifier
                    .strip_prefix(":-")
                    .or_else(|| modifier.strip_prefix('-'))
                    .map(str::to_owned);
                found.push(Reference {
                    name: text[start..name_end].to_owned(),
                    default,
                });
                i = close.map_or(bytes.len(), |close| close + 1);
            }
            Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                let start = i + 1;
                let end = start
                    + text[start..]
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(text.len() - start);
                found.push(Reference {
                    name: text[start..end].to_owned(),
                    default: None,
                });
                i = end;
            }
            _ => i += 1,
        }
    }
    found
}

/// `text` with each `${NAME:-default}` replaced by its default (and `${NAME}` by nothing):
/// what Compose would use with an empty environment.
pub fn with_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let Some(close) = rest[at..].find('}') else {
            out.push_str(&rest[at..]);
            return out;
        };
        let inner = &rest[at + 2..at + close];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[at + close + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn reads_references_like_compose() {
    let refs = references("a ${ONE} $$NOT ${TWO:-x y} ${THREE:?why} $FOUR $$ ${FIVE-z}");
    let names: Vec<_> = refs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["ONE", "TWO", "THREE", "FOUR", "FIVE"]);
    assert_eq!(refs[1].default.as_deref(), Some("x y"));
    assert_eq!(refs[2].default, None);
    assert_eq!(refs[4].default.as_deref(), Some("z"));
    assert_eq!(with_defaults("${P:-443}:8443"), "443:8443");
}
