//! What the API tells the workers through Redis about a user's work: stop marks for requests
//! nobody wants any more (a cancelled or superseded generation, a deleted chat, a closed or
//! suspended account), and the provider calls each user has in flight. Best effort by design:
//! with Redis away a stopped request may still be sent once, and the API's generation check
//! discards its answer.

use crate::envelope::RequestEnvelope;
use crate::redis_link::RedisLink;
use crate::settings::Settings;
use redis::{RedisError, Script};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Raises a message's lowest wanted generation; never lowers it (two replicas may race).
const RAISE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '-2147483648')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1";

/// A request is about to be worked on. Returns its three stop marks ('' where unset),
/// whether an older generation of the same message still has a call in flight, and whether
/// its chat is watched; when no older call is in flight, records this one (a member scored
/// by when it stops counting, on Redis's clock).
/// KEYS: generation mark, chat mark, user mark, the user's calls in flight, the chat's watch
/// mark.
/// ARGV: message id, generation, how long the call may count.
const BEGIN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
local prefix = ARGV[1] .. ':'
local older = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix
      and tonumber(string.sub(member, #prefix + 1)) < tonumber(ARGV[2]) then
    older = 1
  end
end
if older == 0 then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), prefix .. ARGV[2])
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
local marks = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3], KEYS[5])
return {marks[1] or '', marks[2] or '', marks[3] or '', tostring(older), marks[4] and '1' or '0'}";

/// The calls still in flight: members whose time is up are dropped first.
const CALLS_IN_FLIGHT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])";

/// Why a request is not to be sent (or is cut short). The wire string is the error kind of
/// the failed response a worker publishes instead of calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The reply was stopped, or a newer generation replaced this one.
    Cancelled,
    /// The chat was deleted.
    ChatDeleted,
    /// The account was deleted.
    AccountClosed,
    /// An operator suspended the account.
    AccountSuspended,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Cancelled => "cancelled",
            StopReason::ChatDeleted => "chat_deleted",
            StopReason::AccountClosed => "account_closed",
            StopReason::AccountSuspended => "account_suspended",
        }
    }

    /// What a worker tells the user in the failed response.
    pub fn message(self) -> &'static str {
        match self {
            StopReason::Cancelled => "the reply was stopped before the provider answered",
            StopReason::ChatDeleted => "the chat was deleted",
            StopReason::AccountClosed => "the account was deleted",
            StopReason::AccountSuspended => "the account is suspended",
        }
    }

    fn of_user_mark(value: &str) -> Option<Self> {
        match value {
            "account_closed" => Some(StopReason::AccountClosed),
            "account_suspended" => Some(StopReason::AccountSuspended),
            _ => None,
        }
    }
}

/// What [`Marks::begin`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Go ahead; the call is recorded as in flight. `watched`: somebody watches its chat.
    Go { watched: bool },
    /// Not wanted any more.
    Stopped(StopReason),
    /// An older generation of the message is still in flight: ask again shortly.
    Wait,
}

/// A request's record among its user's calls in flight: the sorted set and the member, for a
/// script that removes it along with other work (the budget's completion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub key: String,
    pub member: String,
}

/// What one check of a request in hand found: whether it is stopped, and whether somebody
/// watches its chat (see [`crate::stream::watched_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub stopped: Option<StopReason>,
    pub watched: bool,
}

/// The ids a stop mark may name, as a request envelope carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkId {
    pub message: Uuid,
    pub generation: i32,
    pub chat: Uuid,
    pub user: Uuid,
}

impl From<&RequestEnvelope> for WorkId {
    fn from(request: &RequestEnvelope) -> Self {
        Self {
            message: request.request_id,
            generation: request.generation,
            chat: request.chat_id,
            user: request.user_id,
        }
    }
}

/// How long a stop mark lives: the whole retry ladder plus an hour, so a request coming back
/// from the longest delay queue still finds it.
pub fn stop_ttl(settings: &Settings) -> Duration {
    let ladder: u64 = settings.retry.delays_ms.iter().copied().sum();
    Duration::from_millis(ladder).saturating_add(Duration::from_secs(3_600))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Reads and writes the marks under one Redis prefix.
#[derive(Clone)]
pub struct Marks {
    link: Arc<RedisLink>,
    prefix: String,
    raise: Arc<Script>,
    begin: Arc<Script>,
    calls_in_flight: Arc<Script>,
}

impl Marks {
    pub fn new(link: Arc<RedisLink>, prefix: impl Into<String>) -> Self {
        Self {
            link,
            prefix: prefix.into(),
            raise: Arc::new(Script::new(RAISE)),
            begin: Arc::new(Script::new(BEGIN)),
            calls_in_flight: Arc::new(Script::new(CALLS_IN_FLIGHT)),
        }
    }

    fn generation_key(&self, message: Uuid) -> String {
        format!("{}stop:gen:{message}", self.prefix)
    }

    fn chat_key(&self, chat: Uuid) -> String {
        format!("{}stop:chat:{chat}", self.prefix)
    }

    fn user_key(&self, user: Uuid) -> String {
        format!("{}stop:user:{user}", self.prefix)
    }

    /// The link the marks go through, for other keys of the same user's work.
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// The sorted set of `user`'s calls in flight.
    pub fn in_flight_key(&self, user: Uuid) -> String {
        format!("{}inflight:{user}", self.prefix)
    }

    /// Every generation of `message` below `lowest_wanted` is stopped: a cancel of generation
    /// g marks g + 1, a restart to generation g marks g.
    pub async fn stop_below(
        &self,
        message: Uuid,
        lowest_wanted: i32,
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let key = self.generation_key(message);
        let script = self.raise.clone();
        self.link
            .run(|mut c| async move {
                script
                    .key(key)
                    .arg(lowest_wanted)
                    .arg(millis(ttl))
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(drop)
    }

    /// Every request of these chats is stopped (the chats were deleted).
    pub async fn stop_chats(&self, chats: &[Uuid], ttl: Duration) -> Result<(), RedisError> {
        if chats.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for chat in chats {
            pipe.cmd("SET")
                .arg(self.chat_key(*chat))
                .arg(1)
                .arg("PX")
                .arg(millis(ttl))
                .ignore();
        }
        self.link
            .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
    }

    /// Every request of `user` is stopped, for `ttl` (a closed account) or until
    /// [`Marks::resume_user`] (a suspension, `ttl` `None`).
    pub async fn stop_user(
        &self,
        user: Uuid,
        reason: StopReason,
        ttl: Option<Duration>,
    ) -> Result<(), RedisError> {
        let key = self.user_key(user);
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(reason.as_str());
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(millis(ttl));
        }
        self.link
            .run(|mut c| async move { cmd.query_async::<()>(&mut c).await })
            .await
    }

    /// Lifts a suspension's mark.
    pub async fn resume_user(&self, user: Uuid) -> Result<(), RedisError> {
        let key = self.user_key(user);
        self.link
            .run(|mut c| async move { redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await })
            .await
    }

    fn watched_key(&self, chat: Uuid) -> String {
        crate::stream::watched_key(&self.prefix, chat)
    }

    /// Which of `work` is stopped and which is watched, in one round trip (`MGET` of four
    /// keys each).
    pub async fn check(&self, work: &[WorkId]) -> Result<Vec<Check>, RedisError> {
        if work.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = work
            .iter()
            .flat_map(|w| {
                [
                    self.generation_key(w.message),
                    self.chat_key(w.chat),
                    self.user_key(w.user),
                    self.watched_key(w.chat),
                ]
            })
            .collect();
        let values: Vec<Option<String>> = self
            .link
            .run(|mut c| async move {
                redis::cmd("MGET")
                    .arg(keys)
                    .query_async::<Vec<Option<String>>>(&mut c)
                    .await
            })
            .await?;
        Ok(work
            .iter()
            .zip(values.chunks(4))
            .map(|(w, marks)| Check {
                stopped: judge(w.generation, marks.get(..3).unwrap_or_default()),
                watched: marks.get(3).is_some_and(Option::is_some),
            })
            .collect())
    }

    /// Whether `work` may go ahead: checks its stop marks and, in the same round trip,
    /// records it among its user's calls in flight for up to `longest` — unless an older
    /// generation of the same message is still in flight (a cancelled call is cut short
    /// within a second), which is [`Begin::Wait`]. A stopped request is not left recorded.
    pub async fn begin(&self, work: &WorkId, longest: Duration) -> Result<Begin, RedisError> {
        let script = self.begin.clone();
        let keys = [
            self.generation_key(work.message),
            self.chat_key(work.chat),
            self.user_key(work.user),
            self.in_flight_key(work.user),
            self.watched_key(work.chat),
        ];
        let (message, generation) = (work.message, work.generation);
        let answer: Vec<String> = self
            .link
            .run(|mut c| async move {
                script
                    .key(&keys[..])
                    .arg(message.to_string())
                    .arg(generation)
                    .arg(millis(longest))
                    .invoke_async::<Vec<String>>(&mut c)
                    .await
            })
            .await?;
        let marks: Vec<Option<String>> = answer
            .iter()
            .take(3)
            .map(|v| (!v.is_empty()).then(|| v.clone()))
            .collect();
        let older_in_flight = answer.get(3).is_some_and(|v| v == "1");
        let watched = answer.get(4).is_some_and(|v| v == "1");
        match judge(work.generation, &marks) {
            Some(reason) => {
                if !older_in_flight {
                    self.call_ended(work).await?;
                }
                Ok(Begin::Stopped(reason))
            }
            None if older_in_flight => Ok(Begin::Wait),
            None => Ok(Begin::Go { watched }),
        }
    }

    /// Where `work` is recorded among its user's calls in flight.
    pub fn in_flight(&self, work: &WorkId) -> InFlight {
        InFlight {
            key: self.in_flight_key(work.user),
            member: format!("{}:{}", work.message, work.generation),
        }
    }

    pub async fn call_ended(&self, work: &WorkId) -> Result<(), RedisError> {
        let InFlight { key, member } = self.in_flight(work);
        self.link
            .run(|mut c| async move {
                redis::cmd("ZREM")
                    .arg(key)
                    .arg(member)
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// How many provider calls `user` has in flight across the fleet.
    pub async fn calls_in_flight(&self, user: Uuid) -> Result<u64, RedisError> {
        let key = self.in_flight_key(user);
        let script = self.calls_in_flight.clone();
        self.link
            .run(|mut c| async move { script.key(key).invoke_async::<u64>(&mut c).await })
            .await
    }
}

/// The stop reason the three marks of one request give, if any: the account first, then the
/// chat, then the generation.
fn judge(generation: i32, marks: &[Option<String>]) -> Option<StopReason> {
    let [by_generation, by_chat, by_user] = marks else {
        return None;
    };
    if let Some(reason) = by_user.as_deref().and_then(StopReason::of_user_mark) {
        return Some(reason);
    }
    if by_chat.is_some() {
        return Some(StopReason::ChatDeleted);
    }
    let lowest_wanted = by_generation
        .as_deref()
        .and_then(|v| v.parse::<i32>().ok())?;
    (generation < lowest_wanted).then_some(StopReason::Cancelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(generation: Option<&str>, chat: bool, user: Option<&str>) -> Vec<Option<String>> {
        vec![
            generation.map(str::to_owned),
            chat.then(|| "1".to_owned()),
            user.map(str::to_owned),
        ]
    }

    #[test]
    fn a_generation_below_the_mark_is_stopped_and_the_mark_itself_is_not() {
        assert_eq!(
            judge(2, &marks(Some("3"), false, None)),
            Some(StopReason::Cancelled)
        );
        assert_eq!(judge(3, &marks(Some("3"), false, None)), None);
        assert_eq!(judge(3, &marks(None, false, None)), None);
        // A mark that is not a number stops nothing: fail open.
        assert_eq!(judge(0, &marks(Some("x"), false, None)), None);
    }

    #[test]
    fn the_account_comes_before_the_chat_and_the_chat_before_the_generation() {
        assert_eq!(
            judge(9, &marks(Some("3"), true, Some("account_suspended"))),
            Some(StopReason::AccountSuspended)
        );
        assert_eq!(
            judge(9, &marks(None, true, Some("account_closed"))),
            Some(StopReason::AccountClosed)
        );
        assert_eq!(
            judge(9, &marks(Some("3"), true, None)),
            Some(StopReason::ChatDeleted)
        );
        assert_eq!(judge(9, &marks(None, false, Some("??"))), None);
    }
}
