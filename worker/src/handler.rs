//! The job handler: turns one request into an [`Outcome`]. It reserves budget for a key,
//! calls the provider, and feeds what happened back into the pool — a 429 cools the key's
//! project down and hands the call to another key at once, an invalid key is disabled — all
//! without counting an attempt. Keys behind a cooling egress route are skipped before
//! reserving, so a message waits for them as it waits for budget. Each reservation is made
//! on the keys running at that moment ([`Live`]), so a reload of the keys file reaches waiting
//! deliveries too. Streamed pieces of text go to the [`ChunkSink`] as they come. It knows
//! nothing of the broker.

use crate::bounds::instant_after;
use crate::budget::{Budgets, Cooldown, FirstEvent, NoBudget, Reservation};
use crate::chunks::{ChunkSink, ReplyId};
use crate::fallback::{Breakers, Chain, fell_back};
use crate::holding::{Held, Holding, SHORT_HOLD};
use crate::provider::{Generation, Provider, ProviderError};
use crate::stops::{Stops, Watch};
use sluice_shared::catalogue::{Catalogue, Model};
use sluice_shared::envelope::{CallUsage, ErrorInfo, RequestEnvelope, Usage};
use sluice_shared::keypool::KeySpec;
use sluice_shared::marks::StopReason;
use sluice_shared::settings::millis_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A 429 without `retryDelay` cools down this long.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// A waiting worker looks again at least this often (other workers finish calls meanwhile).
const BUDGET_POLL: Duration = Duration::from_millis(250);

/// The context running now; a reload of the keys file swaps in a new one. A delivery that
/// holds a reservation settles it on the context it came from (removed keys drain), and
/// makes its next reservation on the current one.
pub type Live = arc_swap::ArcSwap<Context>;

/// What handling a request needs, for one set of keys: the provider client and the budgets of
/// those keys, how long to wait for budget, and where streamed pieces go. A reload of the keys
/// file builds a new one (see [`Live`]).
pub struct Context {
    pub provider: Provider,
    /// Which models exist, and the kind and upstream name of each.
    pub catalogue: Arc<Catalogue>,
    /// The models' breakers (shared by every context of the worker).
    pub breakers: Arc<Breakers>,
    /// Deliveries waiting for budget, by model and user (shared likewise).
    pub holding: Arc<Holding>,
    /// `routing.fallback_after_ms`: how long a request waits for a key of its model before it
    /// goes to the next one.
    pub fallback_after: Duration,
    pub budgets: Budgets,
    /// `worker.budget_wait_ms`: how long a request waits for a key before it is requeued.
    pub budget_wait: Duration,
    /// `keys.disable_after`: ambiguous key failures in a row before the key is disabled.
    pub disable_after: u32,
    /// Where streamed pieces of text go.
    pub chunks: ChunkSink,
    /// Stop marks of the requests in hand (shared by every context of the worker).
    pub stops: Arc<Stops>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed {
        generation: Generation,
        key_alias: String,
    },
    /// A counted call that may succeed later.
    Retryable { error: ErrorInfo, key_alias: String },
    /// A counted call that will never succeed; answer `failed` at once.
    Permanent { error: ErrorInfo, key_alias: String },
    /// No key had budget within the wait (some were busy, cooling, parked, or behind a cooling
    /// egress route): no counted call was made.
    NoBudget,
    /// At the end of the wait every key was disabled: no counted call was made, and none will
    /// be until an operator or the probe re-enables a key.
    NoUsableKey,
    /// Nobody wants the reply any more (see [`Stops`]): no call was made, or the call in
    /// progress was cut short (`called`; it counts as an attempt and spent its budget).
    Stopped { reason: StopReason, called: bool },
    /// The catalogue has no such model (it was removed while the request waited): no call
    /// was made, and none ever will be.
    UnknownModel,
}

/// Tokens a request is expected to use, reserved against tpm until the real usage is known.
pub fn estimate_tokens(request: &RequestEnvelope) -> u32 {
    estimate_prompt_tokens(request).saturating_add(request.params.max_output_tokens.unwrap_or(0))
}

/// The prompt's tokens, guessed at four characters a token.
fn estimate_prompt_tokens(request: &RequestEnvelope) -> u32 {
    let chars: usize = request
        .history
        .iter()
        .map(|t| t.text.chars().count())
        .sum::<usize>()
        + request.system.as_ref().map_or(0, |s| s.chars().count());
    tokens_of_chars(chars)
}

fn tokens_of_chars(chars: usize) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

/// What one counted call spent, as it becomes known: the provider's report, or an estimate
/// from the prompt and the text received when the call got that far.
struct Spend<'a> {
    attempt: u32,
    model: &'a str,
    key_alias: &'a str,
    prompt_estimate: u32,
    /// Characters of model text received so far.
    received: AtomicUsize,
}

impl Spend<'_> {
    /// The call's usage; `answered`: the provider began answering (an event, or text came).
    fn usage(&self, reported: Option<Usage>, answered: bool, outcome: &str) -> CallUsage {
        let received = self.received.load(Ordering::Relaxed);
        let (prompt_tokens, completion_tokens, estimated) = match reported {
            Some(u) => (u.prompt_tokens, u.completion_tokens, false),
            None if answered || received > 0 => {
                (self.prompt_estimate, tokens_of_chars(received), true)
            }
            None => (0, 0, false),
        };
        CallUsage {
            attempt: self.attempt,
            model: self.model.to_owned(),
            key_alias: self.key_alias.to_owned(),
            prompt_tokens,
            completion_tokens,
            estimated,
            outcome: outcome.to_owned(),
        }
    }
}

/// Reserves a slot on a key of `model`'s kind whose egress route is usable. Keys of another
/// kind are never looked at; keys behind a cooling route are left out of the reservation, and
/// when they are all that is left, the wait is for the route.
async fn reserve(
    ctx: &Context,
    model: &Model,
    estimate: u32,
    user: &str,
) -> Result<Reservation, NoBudget> {
    let keys = ctx.budgets.keys();
    let (cooling, route_opens_in) = ctx.provider.cooling_keys(keys);
    let mut skip: Vec<usize> = (0..keys.len())
        .filter(|&i| keys[i].provider != model.provider)
        .collect();
    let serving = keys.len() - skip.len();
    let cooling: Vec<usize> = cooling
        .into_iter()
        .filter(|&i| keys[i].provider == model.provider)
        .collect();
    let egress_wait = NoBudget::RetryIn(route_opens_in.unwrap_or(BUDGET_POLL));
    if !cooling.is_empty() && cooling.len() == serving {
        return Err(egress_wait);
    }
    let cooling_any = !cooling.is_empty();
    skip.extend(cooling);
    match ctx
        .budgets
        .reserve(&model.upstream, estimate, &skip, user)
        .await
    {
        // The other keys are disabled, but these are only waiting for their route.
        Err(NoBudget::NoKeys) if cooling_any => Err(egress_wait),
        other => other,
    }
}

/// Records how long a request waited for budget, and how the wait ended.
fn waited(since: Instant, outcome: &'static str) {
    metrics::histogram!("sluice_budget_wait_seconds", "outcome" => outcome)
        .record(since.elapsed().as_secs_f64());
}

/// Counts one provider call of `key` and how it ended.
fn called(key: &KeySpec, outcome: &'static str) {
    metrics::counter!(
        "sluice_provider_calls_total",
        "key" => key.alias.clone(),
        "project" => key.project.clone(),
        "outcome" => outcome,
    )
    .increment(1);
}

/// Where a delivery stands in its model chain, from its headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Position {
    /// The model of the chain it is on (`None`: the one it asked for).
    pub model: Option<String>,
    /// Since when (ms since the epoch) it has waited for a usable key of that model.
    pub waiting_since_ms: Option<u64>,
}

impl Position {
    /// The wait the delivery carries, if it was for `on` (the model the chain is on now; the
    /// header names the model only when it is not the `requested` one).
    fn carried_wait(&self, requested: &str, on: &str) -> Option<u64> {
        let was_on = self.model.as_deref().unwrap_or(requested);
        self.waiting_since_ms.filter(|_| was_on == on)
    }
}

/// A request's [`Outcome`] and where it ended in its chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub outcome: Outcome,
    /// The model it ended on: the one that answered, or the last it tried.
    pub model: String,
    /// The model after it in the chain, if any.
    pub next_model: Option<String>,
    /// For a request that waited in vain: since when it has waited on `model`.
    pub waiting_since_ms: Option<u64>,
    /// What the counted call this delivery made spent, if it made one.
    pub call: Option<CallUsage>,
}

/// The wall clock in ms since the epoch (the clock of the headers, which travel between
/// workers).
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or_default()
}

/// Handles one request. `attempt` is the counted provider call this delivery makes (counted
/// calls before it + 1): every piece it streams carries it.
pub async fn handle(
    request: &RequestEnvelope,
    live: &Live,
    attempt: u32,
    position: Position,
) -> Served {
    let started = Instant::now();
    let (deadline, mut watch, catalogue) = {
        let ctx = live.load();
        (
            instant_after(started, ctx.budget_wait),
            ctx.stops.watch(request.into()),
            ctx.catalogue.clone(),
        )
    };
    let Some(chain) = Chain::of(&catalogue, &request.model, position.model.as_deref()) else {
        tracing::warn!(model = %request.model, "a request for a model the catalogue does not have: failing it");
        return Served {
            outcome: Outcome::UnknownModel,
            model: request.model.clone(),
            next_model: None,
            waiting_since_ms: None,
            call: None,
        };
    };
    let waiting_since_ms = position
        .carried_wait(&request.model, &chain.model().name)
        .unwrap_or_else(now_ms);
    let mut journey = Journey {
        chain,
        call: None,
        waiting_since_ms,
    };
    if let Some(reason) = watch.begin().await {
        return journey.served(stopped(reason, false));
    }
    let outcome = serve(
        request,
        live,
        attempt,
        &watch,
        deadline,
        started,
        &mut journey,
    )
    .await;
    watch.end().await;
    journey.served(outcome)
}

/// A request's way along its chain within one delivery.
struct Journey<'c> {
    chain: Chain<'c>,
    /// The counted call this delivery made, if it made one.
    call: Option<CallUsage>,
    /// Since when (wall ms) it has waited for a usable key of the chain's current model.
    waiting_since_ms: u64,
}

impl Journey<'_> {
    /// Skips the models whose breaker is open, as long as there is one after them.
    fn skip_broken(&mut self, breakers: &Breakers) {
        while let Some(next) = self.chain.next() {
            let model = self.chain.model();
            if breakers.admits(&model.name, Instant::now()) {
                return;
            }
            fell_back(&model.name, &next.name, "breaker");
            self.move_on();
        }
    }

    /// When the wait for a key of this model has lasted `bound`, with a model after it.
    fn fallback_due(&self, bound: Duration) -> bool {
        self.chain.next().is_some()
            && now_ms().saturating_sub(self.waiting_since_ms) >= millis_of(bound)
    }

    fn move_on(&mut self) {
        self.chain.advance();
        self.waiting_since_ms = now_ms();
    }

    fn served(&mut self, outcome: Outcome) -> Served {
        let waited = matches!(outcome, Outcome::NoBudget | Outcome::NoUsableKey);
        Served {
            call: self.call.take(),
            outcome,
            model: self.chain.model().name.clone(),
            next_model: self.chain.next().map(|m| m.name.clone()),
            waiting_since_ms: waited.then_some(self.waiting_since_ms),
        }
    }
}

/// Reserves, calls and settles until the request has its [`Outcome`], moving along its chain
/// when a model's breaker is open or its keys stay unusable past `routing.fallback_after_ms`.
async fn serve(
    request: &RequestEnvelope,
    live: &Live,
    attempt: u32,
    watch: &Watch,
    deadline: Instant,
    started: Instant,
    journey: &mut Journey<'_>,
) -> Outcome {
    journey.skip_broken(&live.load().breakers);
    let estimate = estimate_tokens(request);
    let prompt_estimate = estimate_prompt_tokens(request);
    // Only the wait before a request's first call counts as budget wait; after a 429 or an
    // invalid key the next reservation is part of the same wait, timed from the start.
    let mut waiting = Some(started);
    let user = request.user_id.to_string();
    // This delivery's place among its user's deliveries waiting for the model's budget.
    let mut held: Option<Held> = None;
    loop {
        // Found stopped by the once-a-second check while it waited for budget.
        if let Some(reason) = watch.reason() {
            return stopped(reason, false);
        }
        let model = journey.chain.model();
        // Every reservation below is settled before the loop comes round again, so taking
        // the current keys here never strands one: removed keys get no new reservation.
        let current = live.load_full();
        let ctx: &Context = &current;
        let reservation = match reserve(ctx, model, estimate, &user).await {
            Ok(reservation) => reservation,
            Err(_) if journey.fallback_due(ctx.fallback_after) => {
                if let Some(next) = journey.chain.next() {
                    fell_back(&model.name, &next.name, "no_key");
                }
                journey.move_on();
                held = None;
                continue;
            }
            Err(no_budget) => {
                let place =
                    held.get_or_insert_with(|| ctx.holding.enter(&model.upstream, request.user_id));
                // Past its user's few, a waiting delivery goes back to the queue soon, so the
                // requests queued behind one user's backlog reach a worker (see `holding`).
                let deadline = if Holding::is_extra(place) {
                    deadline.min(instant_after(started, SHORT_HOLD))
                } else {
                    deadline
                };
                match wait_or_give_up(no_budget, deadline, &mut waiting).await {
                    Some(outcome) => return outcome,
                    None => continue,
                }
            }
        };
        held = None;
        if let Some(since) = waiting.take() {
            waited(since, "reserved");
        }
        let upstream = model.upstream.as_str();
        let key = &ctx.budgets.keys()[reservation.key];
        if let Some(left) = reservation.remaining_today {
            metrics::gauge!(
                "sluice_key_budget_remaining_today",
                "key" => key.alias.clone(),
                "project" => key.project.clone(),
            )
            .set(f64::from(left));
        }
        // The slot counts from the call's first event: dated mid-call for a long call (beside
        // it, so the stream is never left waiting on Redis), or at its settling.
        let first_event = FirstEvent::default();
        let spend = Spend {
            attempt,
            model: &model.name,
            key_alias: &key.alias,
            prompt_estimate,
            received: AtomicUsize::new(0),
        };
        let result = tokio::select! {
            result = call(ctx, key, upstream, request, watch.watched(), &first_event, &spend) => result,
            never = ctx.budgets.date_from_first_event(upstream, &reservation, &first_event) => {
                match never {}
            }
            reason = watch.stopped() => {
                // Cut short: the call was sent, so its slot and estimated tokens stay spent.
                complete(ctx, upstream, &reservation, estimate, first_event.ago(), watch).await;
                called(key, "stopped");
                journey.call = Some(spend.usage(None, first_event.ago().is_some(), reason.as_str()));
                return stopped(reason, true);
            }
        };
        let first_event_ago = first_event.ago();
        let spent = match &result {
            Ok(generation) => {
                // A whole (not streamed) reply came at once: its text is what was received.
                spend
                    .received
                    .fetch_max(generation.text.chars().count(), Ordering::Relaxed);
                Some(spend.usage(generation.usage, true, "ok"))
            }
            Err(ProviderError::Transient { kind, .. } | ProviderError::Permanent { kind, .. }) => {
                Some(spend.usage(None, first_event_ago.is_some(), kind))
            }
            // Not counted: the provider turned the call away, or it was never sent.
            Err(_) => None,
        };
        // A reply's slot keeps what it used; a failed call's, what was reserved for it.
        let used = match (&result, &spent) {
            (Ok(_), Some(s)) => s.prompt_tokens.saturating_add(s.completion_tokens),
            _ => estimate,
        };
        if let Some(outcome) = settle(
            ctx,
            model,
            used,
            &reservation,
            first_event_ago,
            watch,
            result,
        )
        .await
        {
            journey.call = spent;
            return outcome;
        }
    }
}

/// A request found stopped, counted by reason and by whether a call was cut short.
fn stopped(reason: StopReason, called: bool) -> Outcome {
    let when = if called { "during_call" } else { "before_call" };
    tracing::info!(
        reason = reason.as_str(),
        when,
        "request stopped: nobody wants its reply any more"
    );
    metrics::counter!("sluice_requests_stopped_total", "reason" => reason.as_str(), "when" => when)
        .increment(1);
    Outcome::Stopped { reason, called }
}

/// No key had budget: past the `deadline` the wait ends with its [`Outcome`] (recorded once
/// per request, see `waiting`); before it, sleeps a little for the next try and returns `None`.
async fn wait_or_give_up(
    no_budget: NoBudget,
    deadline: Instant,
    waiting: &mut Option<Instant>,
) -> Option<Outcome> {
    let now = Instant::now();
    if now >= deadline {
        let (outcome, label) = match no_budget {
            NoBudget::NoKeys => (Outcome::NoUsableKey, "no_usable_key"),
            NoBudget::RetryIn(_) => (Outcome::NoBudget, "no_budget"),
        };
        // A request that already had a reservation (then a 429 or an invalid key) was
        // counted then: one observation per request.
        if let Some(since) = waiting.take() {
            waited(since, label);
        }
        return Some(outcome);
    }
    let wait = match no_budget {
        NoBudget::RetryIn(wait) => wait.min(BUDGET_POLL),
        NoBudget::NoKeys => BUDGET_POLL,
    };
    tokio::time::sleep(wait.min(deadline.saturating_duration_since(now))).await;
    None
}

/// Makes one provider call with `key`, streaming its pieces to the chunk sink (which publishes
/// them while somebody watches the chat), and records how long it took and how it ended.
async fn call(
    ctx: &Context,
    key: &KeySpec,
    model: &str,
    request: &RequestEnvelope,
    watched: Arc<AtomicBool>,
    first_event: &FirstEvent,
    spend: &Spend<'_>,
) -> Result<Generation, ProviderError> {
    let call_started = Instant::now();
    let live = ctx.chunks.open(
        ReplyId {
            chat_id: request.chat_id,
            message_id: request.request_id,
            generation: request.generation,
            attempt: spend.attempt,
        },
        watched,
    );
    let mut on_text = |text: &str| {
        // The provider took the call by now: its budget slot counts from the first piece.
        first_event.mark();
        spend
            .received
            .fetch_add(text.chars().count(), Ordering::Relaxed);
        live.push(text);
    };
    let result = ctx
        .provider
        .generate(key, model, request, &mut on_text)
        .await;
    // The call is over: what the sink gathered and did not publish yet goes out now, before
    // the stored reply.
    live.finish().await;
    // A cooling egress route sends nothing: no duration, no log line. A call made gets
    // one info line, which under the delivery's span names the trace.
    if !matches!(result, Err(ProviderError::EgressCooling)) {
        let elapsed = call_started.elapsed();
        metrics::histogram!("sluice_provider_duration_seconds", "project" => key.project.clone())
            .record(elapsed.as_secs_f64());
        tracing::info!(
            key = %key.alias,
            outcome = call_outcome(&result),
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "provider call"
        );
    }
    called(key, call_outcome(&result));
    result
}

/// Completes a counted call's reservation; the request's record among its user's calls in
/// flight goes in the same round trip when the budgets are in Redis.
async fn complete(
    ctx: &Context,
    model: &str,
    reservation: &Reservation,
    tokens: u32,
    first_event_ago: Option<Duration>,
    watch: &Watch,
) {
    let in_flight = watch.in_flight();
    if ctx
        .budgets
        .complete(
            model,
            reservation,
            tokens,
            first_event_ago,
            in_flight.as_ref(),
        )
        .await
    {
        watch.ended_with_budget();
    }
}

/// Feeds the call's `result` back into the pool — settles the reservation of `model`, cools
/// down, disables or strikes the key, tells the model's breaker — and returns the request's
/// [`Outcome`], or `None` when the call was not counted and another key should be tried.
async fn settle(
    ctx: &Context,
    catalogued: &Model,
    used: u32,
    reservation: &Reservation,
    first_event_ago: Option<Duration>,
    watch: &Watch,
    result: Result<Generation, ProviderError>,
) -> Option<Outcome> {
    let model = catalogued.upstream.as_str();
    match &result {
        Ok(_) => ctx.breakers.record(&catalogued.name, false, Instant::now()),
        Err(ProviderError::Transient { .. }) => {
            ctx.breakers.record(&catalogued.name, true, Instant::now());
        }
        Err(_) => {}
    }
    let key = &ctx.budgets.keys()[reservation.key];
    let key_alias = key.alias.clone();
    match result {
        Ok(generation) => {
            complete(ctx, model, reservation, used, first_event_ago, watch).await;
            ctx.budgets.clear_strikes(reservation.key).await;
            Some(Outcome::Completed {
                generation,
                key_alias,
            })
        }
        Err(ProviderError::RateLimited {
            retry_after,
            per_day,
        }) => {
            ctx.budgets.release(model, reservation).await;
            let cooldown = if per_day {
                Cooldown::PerDay
            } else {
                Cooldown::RateLimited(retry_after.unwrap_or(DEFAULT_COOLDOWN))
            };
            metrics::counter!(
                "sluice_key_cooldowns_total",
                "project" => key.project.clone(),
                "reason" => cooldown.reason().as_str(),
            )
            .increment(1);
            ctx.budgets
                .cool_down(reservation.key, model, cooldown)
                .await;
            if let Some(route) = ctx.provider.note_rate_limited(key, ctx.budgets.keys()) {
                tracing::warn!(%route, "every key behind this egress route got a 429: egress throttling suspected");
                ctx.budgets.mark_egress_throttled(&route).await;
            }
            None
        }
        Err(ProviderError::InvalidKey { reason, definitive }) => {
            ctx.budgets.release(model, reservation).await;
            if definitive {
                ctx.budgets.disable(reservation.key, &reason).await;
            } else {
                ctx.budgets
                    .strike(reservation.key, &reason, ctx.disable_after)
                    .await;
            }
            None
        }
        Err(ProviderError::EgressCooling) => {
            // Nothing was sent: give the slot back and wait for the route like for budget.
            ctx.budgets.release(model, reservation).await;
            None
        }
        Err(ProviderError::Transient { kind, message }) => {
            complete(ctx, model, reservation, used, first_event_ago, watch).await;
            Some(Outcome::Retryable {
                error: ErrorInfo {
                    kind: kind.into(),
                    message,
                },
                key_alias,
            })
        }
        Err(ProviderError::Permanent { kind, message }) => {
            complete(ctx, model, reservation, used, first_event_ago, watch).await;
            Some(Outcome::Permanent {
                error: ErrorInfo {
                    kind: kind.into(),
                    message,
                },
                key_alias,
            })
        }
    }
}

/// How a call ended, as a metric label.
fn call_outcome(result: &Result<Generation, ProviderError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ProviderError::RateLimited { .. }) => "rate_limited",
        Err(ProviderError::InvalidKey { .. }) => "invalid_key",
        Err(ProviderError::EgressCooling) => "egress_cooling",
        Err(ProviderError::Transient { .. }) => "transient",
        Err(ProviderError::Permanent { .. }) => "permanent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_shared::keypool::KeySpec;
    use sluice_shared::{Secret, Settings};
    use std::sync::Arc;

    use crate::fixtures::{keys, request};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Local budgets, and every call through `proxy`.
    async fn context(
        keys: Arc<Vec<KeySpec>>,
        proxy: &str,
    ) -> Result<Live, Box<dyn std::error::Error>> {
        let mut settings = Settings::defaults()?.provider;
        settings.proxy = Secret::new(proxy.to_owned());
        settings.connect_timeout = Duration::from_millis(2_000);
        Ok(Live::from_pointee(Context {
            provider: Provider::new(&settings, &keys, Arc::default(), "m")?,
            catalogue: Arc::new(Catalogue::new(&Default::default(), "m", &[])),
            breakers: Arc::default(),
            holding: Arc::default(),
            fallback_after: Duration::from_secs(20),
            budgets: Budgets::new(keys, None, 1),
            budget_wait: Duration::from_millis(100),
            disable_after: 3,
            chunks: ChunkSink::discard(),
            stops: Stops::off(),
        }))
    }

    /// A local address nobody listens on: connections to it are refused.
    async fn refusing_address() -> Result<String, std::io::Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        drop(listener);
        Ok(format!("http://{addr}"))
    }

    #[tokio::test]
    async fn a_refused_proxy_costs_one_attempt_then_messages_wait_without_spending() -> TestResult {
        // Two calls per window on the only key.
        let ctx = context(keys(1, 2), &refusing_address().await?).await?;
        match handle(&request(), &ctx, 1, Position::default())
            .await
            .outcome
        {
            Outcome::Retryable { error, .. } => assert_eq!(error.kind, "proxy_unreachable"),
            other => panic!("the call that met the refusal counts: {other:?}"),
        }
        assert_eq!(
            handle(&request(), &ctx, 1, Position::default())
                .await
                .outcome,
            Outcome::NoBudget,
            "during the route's cooldown a message waits, it does not fail"
        );
        // The wait reserved nothing: the second slot of the window is still there.
        let budgets = &ctx.load().budgets;
        assert!(budgets.reserve("m", 1, &[], "").await.is_ok());
        assert!(budgets.reserve("m", 1, &[], "").await.is_err());
        Ok(())
    }

    #[test]
    fn a_wait_carries_over_only_for_the_model_it_was_for() {
        let on_requested = Position {
            model: None,
            waiting_since_ms: Some(7),
        };
        assert_eq!(
            on_requested.carried_wait("m", "m"),
            Some(7),
            "a requeue on the first model"
        );
        assert_eq!(on_requested.carried_wait("m", "n"), None);
        let on_next = Position {
            model: Some("n".into()),
            waiting_since_ms: Some(9),
        };
        assert_eq!(on_next.carried_wait("m", "n"), Some(9));
        assert_eq!(
            on_next.carried_wait("m", "m"),
            None,
            "the chain started over"
        );
        assert_eq!(Position::default().carried_wait("m", "m"), None);
    }

    #[tokio::test]
    async fn every_key_disabled_is_no_usable_key_but_cooling_is_not() -> TestResult {
        let ctx = context(keys(2, 100), "").await?;
        let budgets = &ctx.load().budgets;
        budgets
            .cool_down(0, "m", Cooldown::RateLimited(Duration::from_secs(60)))
            .await;
        budgets.disable(1, "test").await;
        assert_eq!(
            handle(&request(), &ctx, 1, Position::default())
                .await
                .outcome,
            Outcome::NoBudget
        );
        budgets.disable(0, "test").await;
        assert_eq!(
            handle(&request(), &ctx, 1, Position::default())
                .await
                .outcome,
            Outcome::NoUsableKey
        );
        Ok(())
    }
}
