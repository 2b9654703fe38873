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

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Strings where NUL is common, among any other character.
        fn nul_heavy() -> impl Strategy<Value = String> {
            proptest::collection::vec(prop_oneof![Just(NUL), any::<char>()], 0..64)
                .prop_map(String::from_iter)
        }

        proptest! {
            #[test]
            fn stripped_text_never_holds_nul(text in nul_heavy()) {
                let stripped = strip_nul(&text);
                prop_assert!(!stripped.contains(NUL));
                prop_assert!(is_storable(&stripped));
                prop_assert_eq!(stripped.as_ref(), strip_nul_owned(text.clone()));
            }

            #[test]
            fn exactly_the_nuls_are_removed(text in nul_heavy()) {
                let kept: String = text.chars().filter(|&c| c != NUL).collect();
                let stripped = strip_nul(&text);
                prop_assert_eq!(stripped.as_ref(), kept.as_str());
                let removed = text.chars().count() - strip_nul(&text).chars().count();
                prop_assert_eq!(removed, text.matches(NUL).count());
            }

            #[test]
            fn nul_free_text_is_left_alone(text in any::<String>().prop_filter("no NUL", |t| !t.contains(NUL))) {
                prop_assert!(matches!(strip_nul(&text), Cow::Borrowed(t) if t == text));
                prop_assert_eq!(strip_nul_owned(text.clone()), text);
            }
        }
    }
}
