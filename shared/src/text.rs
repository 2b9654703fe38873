//! Text rules, written once. PostgreSQL's `text` cannot hold U+0000, so the worker strips it
//! from model output (history, stored replies and streamed text then agree) and the API
//! refuses it, with a 422, in any text a user sends.

use std::borrow::Cow;

/// The one character a stored text may not hold.
pub const NUL: char = '\0';

/// Whether `text` can be stored as it is.
pub fn is_storable(text: &str) -> bool {
    !text.contains(NUL)
}

/// `text` without U+0000; borrowed (no copy) when there was none.
pub fn strip_nul(text: &str) -> Cow<'_, str> {
    if is_storable(text) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.replace(NUL, ""))
    }
}

/// [`strip_nul`] for an owned string, reusing it when there is nothing to strip.
pub fn strip_nul_owned(text: String) -> String {
    if is_storable(&text) {
        text
    } else {
        text.replace(NUL, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_removed_and_nothing_else_changes() {
        assert_eq!(strip_nul("a\0b\0"), "ab");
        assert!(matches!(strip_nul("héllo"), Cow::Borrowed("héllo")));
        assert_eq!(strip_nul_owned("\0".into()), "");
        assert!(is_storable("plain"));
        assert!(!is_storable("x\0"));
    }
}
