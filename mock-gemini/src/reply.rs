//! What a successful call answers, in neither API's words: the reply text,
//! why it stopped and its token counts, and the pieces a streamed reply is
//! split into. `gemini_reply` and `openai_reply` put it on the wire, so
//! both APIs answer the same conversation with the same text and numbers.
//!
//! Tokens are counted as Gemini roughly does for English: one per four
//! characters, rounded up.

use crate::request::Prompt;

/// At most this many chunks per streamed reply, unless the prompt asks for a number.
const MAX_CHUNKS: usize = 6;

/// Why a reply stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    /// Cut at the request's output-token limit.
    MaxTokens,
    /// Stopped for safety before any text.
    Safety,
    /// The prompt itself was refused: no reply at all (a 200 from Gemini,
    /// an error from OpenAI).
    Blocked,
}

/// A reply before it is put in an API's words.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    /// `None` when stopped for safety or blocked.
    pub text: Option<String>,
    pub finish: Finish,
    pub prompt_tokens: usize,
    /// Zero without text.
    pub reply_tokens: usize,
}

fn tokens(chars: usize) -> usize {
    chars.div_ceil(4)
}

/// `mock reply to: {last user text} (turns: {n})`, cut to
/// `max_output_tokens * 4` characters with [`Finish::MaxTokens`] when it
/// would use more tokens than allowed.
pub(crate) fn success(prompt: &Prompt) -> Reply {
    let mut text = format!(
        "mock reply to: {} (turns: {})",
        prompt.last_user_text, prompt.turns
    );
    let mut chars = text.chars().count();
    let mut finish = Finish::Stop;
    if let Some(max) = prompt.max_output_tokens
        && tokens(chars) > max as usize
    {
        let keep = (max as usize).saturating_mul(4);
        if let Some((cut, _)) = text.char_indices().nth(keep) {
            text.truncate(cut);
        }
        chars = keep.min(chars);
        finish = Finish::MaxTokens;
    }
    Reply {
        text: Some(text),
        finish,
        prompt_tokens: tokens(prompt.chars),
        reply_tokens: tokens(chars),
    }
}

/// [`success`] with U+0000 inside the text (after `mock`), as a broken model may send.
pub(crate) fn with_nul(prompt: &Prompt) -> Reply {
    let mut reply = success(prompt);
    reply.text = reply.text.map(|text| text.replacen("mock", "mock\0", 1));
    reply
}

/// [`success`] with its text padded by `bytes` bytes, so any body carrying
/// it is larger than `bytes`; the token counts stay those of [`success`].
pub(crate) fn oversize(prompt: &Prompt, bytes: usize) -> Reply {
    let mut reply = success(prompt);
    reply.text = reply
        .text
        .map(|text| format!("{text} {}", "x".repeat(bytes)));
    reply
}

/// The answer was stopped for safety: no text.
pub(crate) fn safety(prompt: &Prompt) -> Reply {
    without_text(prompt, Finish::Safety)
}

/// The prompt was refused: no reply.
pub(crate) fn blocked(prompt: &Prompt) -> Reply {
    without_text(prompt, Finish::Blocked)
}

fn without_text(prompt: &Prompt, finish: Finish) -> Reply {
    Reply {
        text: None,
        finish,
        prompt_tokens: tokens(prompt.chars),
        reply_tokens: 0,
    }
}

impl Reply {
    /// The pieces a streamed reply's text comes in (none without text):
    /// without `chunks`, split at word boundaries into up to [`MAX_CHUNKS`];
    /// with `chunks` (`[[mock:chunks=N]]`) into N, see [`split_exactly`].
    /// They concatenate back to the text.
    pub fn pieces(&self, chunks: Option<usize>) -> Vec<String> {
        let Some(text) = &self.text else {
            return Vec::new();
        };
        let pieces = match chunks {
            Some(n) => split_exactly(text, n),
            None => split_words(text, MAX_CHUNKS),
        };
        pieces.into_iter().map(str::to_owned).collect()
    }
}

/// Word starts of `text`: the byte offsets after each run of whitespace
/// that is followed by more text.
fn word_starts(text: &str) -> Vec<usize> {
    text.char_indices()
        .zip(text.chars().skip(1))
        .filter(|((_, c), next)| c.is_whitespace() && !next.is_whitespace())
        .map(|((i, c), _)| i + c.len_utf8())
        .collect()
}

/// Splits `text` into at most `n` non-empty pieces at word starts (the
/// spaces stay with the word before), so the pieces concatenate back to it.
fn split_words(text: &str, n: usize) -> Vec<&str> {
    let starts = word_starts(text);
    let words = starts.len() + 1;
    let n = n.clamp(1, words);
    let cuts: Vec<usize> = (1..n).map(|k| starts[k * words / n - 1]).collect();
    split_at(text, cuts)
}

/// Splits `text` into exactly `n` non-empty pieces that concatenate back to
/// it: at word starts when it has at least `n` words, else at evenly spaced
/// characters, inside words (a bench asking for many pieces of a short echo).
/// A text of fewer than `n` characters gives one piece per character (and
/// the empty text one empty piece).
fn split_exactly(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    if word_starts(text).len() + 1 >= n {
        return split_words(text, n);
    }
    let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let chars = bounds.len();
    let n = n.min(chars.max(1));
    let cuts = (1..n).map(|k| bounds[k * chars / n]).collect();
    split_at(text, cuts)
}

/// `text` cut at the byte offsets `cuts` (ascending char boundaries).
fn split_at(text: &str, mut cuts: Vec<usize>) -> Vec<&str> {
    cuts.dedup();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for cut in cuts {
        pieces.push(&text[from..cut]);
        from = cut;
    }
    pieces.push(&text[from..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str, max_output_tokens: Option<u32>) -> Prompt {
        Prompt {
            last_user_text: text.into(),
            turns: 1,
            chars: 9,
            max_output_tokens,
        }
    }

    #[test]
    fn success_echoes_the_prompt_and_counts_tokens() {
        assert_eq!(
            success(&prompt("hello", None)),
            Reply {
                text: Some("mock reply to: hello (turns: 1)".into()),
                finish: Finish::Stop,
                prompt_tokens: 3,
                reply_tokens: 8,
            }
        );
    }

    #[test]
    fn max_output_tokens_truncates() {
        let reply = success(&prompt("hello", Some(2)));
        assert_eq!(reply.text.as_deref(), Some("mock rep"));
        assert_eq!(reply.finish, Finish::MaxTokens);
        assert_eq!(reply.reply_tokens, 2);
        // A limit the reply fits in changes nothing.
        assert_eq!(success(&prompt("hello", Some(8))).finish, Finish::Stop);
    }

    #[test]
    fn nul_and_oversize_replies() {
        let reply = with_nul(&prompt("hello", None));
        assert_eq!(
            reply.text.as_deref(),
            Some("mock\0 reply to: hello (turns: 1)")
        );
        let reply = oversize(&prompt("hello", None), 1000);
        assert!(reply.text.unwrap_or_default().len() > 1000);
        assert_eq!(reply.finish, Finish::Stop);
        assert_eq!(reply.reply_tokens, 8);
    }

    #[test]
    fn safety_and_blocked_have_no_text() {
        for (reply, finish) in [
            (safety(&prompt("x", None)), Finish::Safety),
            (blocked(&prompt("x", None)), Finish::Blocked),
        ] {
            assert_eq!(reply.text, None);
            assert_eq!(reply.finish, finish);
            assert_eq!((reply.prompt_tokens, reply.reply_tokens), (3, 0));
            assert!(reply.pieces(Some(5)).is_empty());
        }
    }

    #[test]
    fn pieces_split_the_text_at_words_or_exactly() {
        let reply = success(&prompt("one two three four five six seven eight", None));
        let text = reply.text.clone().unwrap_or_default();
        let pieces = reply.pieces(None);
        assert_eq!(pieces.len(), MAX_CHUNKS);
        assert_eq!(pieces.concat(), text);
        for n in [1, 2, 6, 9, 13, 40] {
            let pieces = reply.pieces(Some(n));
            assert_eq!(pieces.len(), n, "{n} chunks");
            assert_eq!(pieces.concat(), text, "{n} chunks");
            assert!(pieces.iter().all(|p| !p.is_empty()), "{pieces:?}");
        }
    }

    #[test]
    fn split_words_keeps_every_byte() {
        assert_eq!(split_words("a", 6), ["a"]);
        assert_eq!(split_words("a b", 6), ["a ", "b"]);
        assert_eq!(split_words("", 6), [""]);
        assert_eq!(split_words("  é  ü x ", 2), ["  é  ", "ü x "]);
        let text = "w ".repeat(100);
        let pieces = split_words(&text, 6);
        assert_eq!(pieces.len(), 6);
        assert_eq!(pieces.concat(), text);
    }

    #[test]
    fn split_exactly_cuts_inside_words_only_when_it_must() {
        // Enough words: at word starts, as without a number.
        assert_eq!(split_exactly("a b c d", 2), ["a b ", "c d"]);
        assert_eq!(split_exactly("a b c d", 4), ["a ", "b ", "c ", "d"]);
        // Too few words: evenly by characters, multi-byte ones kept whole.
        assert_eq!(split_exactly("abcdef", 3), ["ab", "cd", "ef"]);
        assert_eq!(split_exactly("éüx y", 4), ["é", "ü", "x", " y"]);
        // Fewer characters than pieces: one each; nothing: one empty piece.
        assert_eq!(split_exactly("ab", 5), ["a", "b"]);
        assert_eq!(split_exactly("", 5), [""]);
        assert_eq!(split_exactly("abc", 0), ["abc"]);
        let text = "a longer text with ünïcödé in it";
        for n in 1..=text.chars().count() {
            let pieces = split_exactly(text, n);
            assert_eq!(pieces.len(), n);
            assert_eq!(pieces.concat(), text);
        }
    }
}
