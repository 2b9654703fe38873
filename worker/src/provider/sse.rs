//! Reading a server-sent event stream as it arrives, for any provider kind: `\r\n` or `\n`
//! line ends, events split anywhere across reads, comments and fields other than `data`
//! ignored, and an unended last event still counted at the end of the body. The size cap counts
//! every byte read; a stall is cut by the HTTP client's timeout, which covers the whole body.
//!
//! Hand-written rather than `eventsource-stream` or `sse-stream`: both drop an event left
//! unended at the end of the body (a finished reply would read as cut), neither counts bytes
//! (the cap would stay a layer of ours), and `eventsource-stream` has had no release in years.

/// How reading a stream can fail (the caller maps each to a [`super::ProviderError`]).
#[derive(Debug)]
pub(super) enum ReadError {
    /// The connection broke, or stalled past the client's timeout.
    Transport(reqwest::Error),
    /// Over `provider.max_reply_bytes`; reading stopped there.
    TooLarge,
    /// An event that is not UTF-8, or whose data the caller rejected.
    Garbage,
}

/// The caller could not use an event's data: reading stops with [`ReadError::Garbage`].
#[derive(Debug)]
pub(super) struct Rejected;

/// Reads the events of `response`, handing the data of each to `on_data` as soon as the event
/// is complete; stops at `max` bytes. Whether the stream said all it had to is the caller's to
/// judge.
pub(super) async fn read(
    mut response: reqwest::Response,
    max: u64,
    on_data: &mut (dyn FnMut(String) -> Result<(), Rejected> + Send),
) -> Result<(), ReadError> {
    if response.content_length().is_some_and(|n| n > max) {
        return Err(ReadError::TooLarge);
    }
    let mut events = Events::default();
    let mut total: u64 = 0;
    let mut take = |data: String| on_data(data).map_err(|Rejected| ReadError::Garbage);
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        total = total.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        if total > max {
            return Err(ReadError::TooLarge);
        }
        for data in events.push(&chunk)? {
            take(data)?;
        }
    }
    for data in events.finish()? {
        take(data)?;
    }
    Ok(())
}

/// Splits bytes into lines and lines into events, across chunk boundaries.
#[derive(Debug, Default)]
struct Events {
    /// Bytes of a line not ended yet.
    line: Vec<u8>,
    /// How much of `line` is known to hold no `\n` (so a long line is scanned once).
    scanned: usize,
    /// The `data` of the event being read, if any line of it had one.
    data: Option<String>,
}

impl Events {
    /// Takes in `bytes`; returns the data of every event they completed.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, ReadError> {
        self.line.extend_from_slice(bytes);
        let mut done = Vec::new();
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(at) = self.line[from..].iter().position(|&b| b == b'\n') {
            let end = from + at;
            let line = self.line[start..end]
                .strip_suffix(b"\r")
                .unwrap_or(&self.line[start..end]);
            let line = std::str::from_utf8(line).map_err(|_| ReadError::Garbage)?;
            if let Some(data) = Self::field(&mut self.data, line) {
                done.push(data);
            }
            start = end + 1;
            from = start;
        }
        self.line.drain(..start);
        self.scanned = self.line.len();
        Ok(done)
    }

    /// The end of the body: a last line without its line end still counts, and so does an
    /// event without its blank line.
    fn finish(&mut self) -> Result<Vec<String>, ReadError> {
        let mut done = Vec::new();
        if !self.line.is_empty() {
            let rest = std::mem::take(&mut self.line);
            let line = rest.strip_suffix(b"\r").unwrap_or(&rest);
            let line = std::str::from_utf8(line).map_err(|_| ReadError::Garbage)?;
            if let Some(data) = Self::field(&mut self.data, line) {
                done.push(data);
            }
        }
        done.extend(self.data.take());
        Ok(done)
    }

    /// Applies one line to the event being read; a blank line ends it (returning its data).
    /// Comments (`:`) and fields other than `data` are ignored.
    fn field(data: &mut Option<String>, line: &str) -> Option<String> {
        if line.is_empty() {
            return data.take();
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        if name == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => *data = Some(value.to_owned()),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[&[u8]]) -> Result<Vec<String>, ReadError> {
        let mut events = Events::default();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(events.push(chunk)?);
        }
        out.extend(events.finish()?);
        Ok(out)
    }

    #[test]
    fn events_split_anywhere_and_either_line_end() -> Result<(), String> {
        let body = b"data: {\"a\":1}\r\n\r\n: a comment\r\nevent: x\ndata: {\"b\":\r\ndata: 2}\n\ndata:{}\r\n\r\n";
        let whole = feed(&[body]).map_err(|e| format!("{e:?}"))?;
        assert_eq!(whole, ["{\"a\":1}", "{\"b\":\n2}", "{}"]);
        // Every split point gives the same events.
        for cut in 0..body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(feed(&[a, b]).map_err(|e| format!("{e:?}"))?, whole, "{cut}");
        }
        Ok(())
    }

    #[test]
    fn an_unended_last_event_still_counts_and_bad_utf8_is_garbage() {
        assert_eq!(
            feed(&[b"data: {}"]).map_err(|e| format!("{e:?}")),
            Ok(vec!["{}".to_owned()])
        );
        assert!(matches!(
            feed(&[b"data: \xff\xfe\n\n"]),
            Err(ReadError::Garbage)
        ));
        assert_eq!(
            feed(&[b": only comments\n\n"]).map_err(|e| format!("{e:?}")),
            Ok(vec![])
        );
    }
}
