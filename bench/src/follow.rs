//! A chat's event stream as a client sees it: [`listen`] forwards its server-sent events, and
//! [`follow`] reads one reply from them — its latencies from mock-gemini's `[t=MICROS]` stamps,
//! the live text rebuilt from its deltas, and how many pieces reached the client.

use crate::api::{Api, User};
use crate::report;
use anyhow::Context;
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use uuid::Uuid;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Every `[t=MICROS]` stamp in `text`, in order.
pub fn stamps(text: &str) -> Vec<u64> {
    text.split("[t=")
        .skip(1)
        .filter_map(|rest| rest.split(']').next()?.parse().ok())
        .collect()
}

/// How long ago the mock stamped a chunk (client and mock share the machine's clock).
pub fn since(stamp: u64) -> Duration {
    Duration::from_micros(now_micros().saturating_sub(stamp))
}

/// One server-sent event: its type and its JSON data.
pub struct Event {
    pub kind: String,
    pub data: Value,
}

/// Opens the chat's event stream on `api`, says so on `opened`, and forwards each event as it
/// is parsed. Returns when the stream ends (the receiver then sees the channel close).
pub async fn listen(
    api: &Api,
    user: &User,
    chat: Uuid,
    opened: tokio::sync::oneshot::Sender<()>,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<()> {
    let token: Value = api
        .raw_post(user, &format!("api/chats/{chat}/events/token"))
        .await?;
    let token = token["token"].as_str().context("no events token")?;
    let mut response = api
        .raw_get(&format!("api/chats/{chat}/events?token={token}"))
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::OK,
        "events: {}",
        response.status()
    );
    // The API binds the chat before it answers the headers: from here on nothing is missed.
    let _ = opened.send(());
    let mut buffer = String::new();
    while let Some(bytes) = response.chunk().await? {
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut kind = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if kind.is_empty() {
                continue; // a heartbeat comment
            }
            let data = serde_json::from_str(&data).unwrap_or(Value::Null);
            if events.send(Event { kind, data }).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// The text a client shows while a reply streams: `message.snapshot` replaces it,
/// `message.delta` appends to it in the order received, `message.reset` clears it.
#[derive(Debug, Default)]
struct LiveText {
    text: String,
    /// Any delta or snapshot at all, so "nothing came live" is told apart from a wrong text.
    any: bool,
}

impl LiveText {
    fn apply(&mut self, kind: &str, text: &str) {
        match kind {
            "message.delta" => {
                self.text.push_str(text);
                self.any = true;
            }
            "message.snapshot" => {
                self.text.clear();
                self.text.push_str(text);
                self.any = true;
            }
            "message.reset" => self.text.clear(),
            _ => {}
        }
    }
}

/// What one listener saw of one completed reply.
#[derive(Debug)]
pub struct Followed {
    /// The provider's first chunk → the first `message.delta` (its first stamp).
    pub first_delta: Option<Duration>,
    /// The provider's last chunk → `message.completed` (the stored text's last stamp).
    pub completed: Option<Duration>,
    /// The live text before `message.completed` spelled the stored text exactly.
    pub whole: bool,
    /// Not whole: nothing came live before `message.completed` (no delta, no snapshot).
    pub nothing_live: bool,
    /// Not whole: the live text was the start of the stored text, only its end was missing.
    pub ends_short: bool,
    /// `message.delta` + `message.snapshot` events for the reply.
    pub delivered: u64,
    /// Chunks the provider streamed for the stored text: its stamps.
    pub pieces: u64,
}

/// Why a followed reply did not end in `message.completed`: an error bucket and an example.
pub type NotFollowed = (&'static str, String);

/// Reads `rx` until `message.completed` or `message.failed` of `reply` (events of other
/// messages are skipped), or the deadline.
pub async fn follow(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    reply: &str,
    deadline: tokio::time::Instant,
) -> Result<Followed, NotFollowed> {
    let mut first_delta = None;
    let mut live = LiveText::default();
    let mut delivered = 0;
    loop {
        let event = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => return Err(("event stream ended", reply.to_owned())),
            Err(_) => return Err(("no completion on the stream", reply.to_owned())),
        };
        let about = event.data["message_id"]
            .as_str()
            .or(event.data["id"].as_str());
        if about != Some(reply) {
            continue;
        }
        let text = event.data["text"]
            .as_str()
            .or(event.data["content"].as_str())
            .unwrap_or_default();
        match event.kind.as_str() {
            "message.completed" => {
                let stamped = stamps(text);
                let whole = live.text == text;
                return Ok(Followed {
                    first_delta,
                    completed: stamped.last().map(|t| since(*t)),
                    whole,
                    nothing_live: !whole && !live.any,
                    ends_short: live.any && !whole && text.starts_with(&live.text),
                    delivered,
                    pieces: stamped.len() as u64,
                });
            }
            "message.failed" => return Err(("reply failed", event.data.to_string())),
            kind => {
                if kind == "message.delta" && first_delta.is_none() {
                    first_delta = stamps(text).first().map(|t| since(*t));
                }
                if matches!(kind, "message.delta" | "message.snapshot") {
                    delivered += 1;
                }
                live.apply(kind, text);
            }
        }
    }
}

/// The figures of many followed replies.
pub struct Tallied {
    pub first_delta: Histogram<u64>,
    pub completed: Histogram<u64>,
    pub replies: u64,
    pub whole: u64,
    pub nothing_live: u64,
    pub ends_short: u64,
    pub delivered: u64,
    pub pieces: u64,
}

impl Tallied {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            first_delta: report::histogram()?,
            completed: report::histogram()?,
            replies: 0,
            whole: 0,
            nothing_live: 0,
            ends_short: 0,
            delivered: 0,
            pieces: 0,
        })
    }

    pub fn add(&mut self, f: &Followed) {
        if let Some(d) = f.first_delta {
            report::record(&mut self.first_delta, d);
        }
        if let Some(d) = f.completed {
            report::record(&mut self.completed, d);
        }
        self.replies += 1;
        self.whole += u64::from(f.whole);
        self.nothing_live += u64::from(f.nothing_live);
        self.ends_short += u64::from(f.ends_short);
        self.delivered += f.delivered;
        self.pieces += f.pieces;
    }

    pub fn merge(&mut self, o: Tallied) -> anyhow::Result<()> {
        self.first_delta.add(o.first_delta)?;
        self.completed.add(o.completed)?;
        self.replies += o.replies;
        self.whole += o.whole;
        self.nothing_live += o.nothing_live;
        self.ends_short += o.ends_short;
        self.delivered += o.delivered;
        self.pieces += o.pieces;
        Ok(())
    }

    /// Not whole, though something came live and it was not just the end that was missing.
    fn holes(&self) -> u64 {
        self.replies
            .saturating_sub(self.whole + self.nothing_live + self.ends_short)
    }

    fn whole_share(&self) -> Option<f64> {
        (self.replies > 0).then(|| self.whole as f64 / self.replies as f64)
    }

    fn pieces_ratio(&self) -> Option<f64> {
        (self.pieces > 0).then(|| self.delivered as f64 / self.pieces as f64)
    }

    /// `{"replies", "whole", "not_whole", "nothing_live", "ends_short", "holes",
    /// "whole_share"}`: of the replies followed to `message.completed`, those whose live text
    /// spelled the stored one; those that did not, by what went wrong: nothing came live, only
    /// the end was missing, or a piece inside was missing (or the text differed).
    pub fn live_text_json(&self) -> Value {
        json!({
            "replies": self.replies,
            "whole": self.whole,
            "not_whole": self.replies - self.whole,
            "nothing_live": self.nothing_live,
            "ends_short": self.ends_short,
            "holes": self.holes(),
            "whole_share": self.whole_share().map(|s| (s * 10_000.0).round() / 10_000.0),
        })
    }

    /// `{"received", "delivered", "ratio"}`: the provider's chunks of the followed replies and
    /// the deltas and snapshots their listener got.
    pub fn pieces_json(&self) -> Value {
        json!({
            "received": self.pieces,
            "delivered": self.delivered,
            "ratio": self.pieces_ratio().map(|r| (r * 10_000.0).round() / 10_000.0),
        })
    }

    pub fn live_text_line(&self) -> String {
        match self.whole_share() {
            None => "no replies followed".into(),
            Some(share) => format!(
                "{:.2} % whole ({} of {}; not whole {}: nothing live {}, end missing {}, \
                 holes {})",
                100.0 * share,
                self.whole,
                self.replies,
                self.replies - self.whole,
                self.nothing_live,
                self.ends_short,
                self.holes()
            ),
        }
    }

    pub fn pieces_line(&self) -> String {
        format!(
            "{} delivered / {} from the provider = {}",
            self.delivered,
            self.pieces,
            self.pieces_ratio()
                .map_or("n/a".into(), |r| format!("{r:.3}"))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: Value) -> Event {
        Event {
            kind: kind.into(),
            data,
        }
    }

    #[test]
    fn stamps_are_read_in_order() {
        assert_eq!(stamps("[t=5]a [t=7]b [[mock:stamp]] [t=x]"), [5, 7]);
        assert!(stamps("none").is_empty());
    }

    #[tokio::test]
    async fn the_live_text_is_rebuilt_and_compared() -> anyhow::Result<()> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = "r1";
        let delta = |t: &str| event("message.delta", json!({"message_id": id, "text": t}));
        for e in [
            delta("[t=1]a "),
            event("message.created", json!({"id": "other", "content": "x"})),
            delta("[t=2]lost "),
            event("message.reset", json!({"message_id": id})),
            event(
                "message.snapshot",
                json!({"message_id": id, "text": "[t=1]a "}),
            ),
            delta("[t=2]b"),
            event(
                "message.completed",
                json!({"id": id, "content": "[t=1]a [t=2]b"}),
            ),
            // A second reply whose deltas fell short of the stored text.
            delta("[t=3]c"),
            event("message.completed", json!({"id": id, "content": "[t=3]cd"})),
            event("message.completed", json!({"id": id, "content": "[t=4]e"})),
            // A hole: the middle piece never came.
            delta("[t=5]f"),
            delta("[t=7]h"),
            event(
                "message.completed",
                json!({"id": id, "content": "[t=5]f[t=6]g[t=7]h"}),
            ),
        ] {
            tx.send(e)?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let first = follow(&mut rx, id, deadline).await;
        let first = first.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert!(first.whole, "{first:?}");
        assert_eq!((first.delivered, first.pieces), (4, 2));
        assert!(first.first_delta.is_some() && !first.nothing_live);
        let second = follow(&mut rx, id, deadline).await;
        let second = second.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert!(!second.whole && !second.nothing_live, "{second:?}");
        assert!(second.ends_short, "{second:?}");
        let third = follow(&mut rx, id, deadline).await;
        let third = third.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert!(
            !third.whole && third.nothing_live && !third.ends_short,
            "{third:?}"
        );
        assert_eq!((third.delivered, third.pieces), (0, 1));

        let fourth = follow(&mut rx, id, deadline).await;
        let fourth = fourth.map_err(|e| anyhow::anyhow!("{e:?}"))?;
        assert!(!fourth.whole && !fourth.nothing_live && !fourth.ends_short);

        let mut t = Tallied::new()?;
        for f in [&first, &second, &third, &fourth] {
            t.add(f);
        }
        let live = t.live_text_json();
        assert_eq!(live["whole"], 1);
        assert_eq!(live["not_whole"], 3);
        assert_eq!(live["nothing_live"], 1);
        assert_eq!(live["ends_short"], 1);
        assert_eq!(live["holes"], 1);
        assert_eq!(live["whole_share"], 0.25);
        assert_eq!(t.pieces_json()["received"], 7);
        assert_eq!(t.pieces_json()["delivered"], 7);

        drop(tx);
        assert!(matches!(
            follow(&mut rx, id, deadline).await,
            Err(("event stream ended", _))
        ));
        Ok(())
    }
}
