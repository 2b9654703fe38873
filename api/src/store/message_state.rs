//! The message state machine. A user message is born `completed`. An assistant message (a
//! reply) is born `pending` at generation 0 and then moves only like this:
//!
//! ```text
//!            answer / give up / reap / cancel
//!   pending ─────────────────────────────────▶ completed | failed
//!      ▲                                                    │
//!      └──────────── restart (replay, retry): generation + 1 ┘
//! ```
//!
//! Every [`Transition`] is applied by one statement whose `WHERE` names its source state (and,
//! for an answer from the pipeline, the generation it answers), so a duplicate, stale or late
//! event matches no row and changes nothing.

use sea_orm::entity::prelude::*;
use serde::Serialize;

/// Who wrote a message. Stored as text (`CHECK (role IN ('user', 'assistant'))`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[sea_orm(string_value = "user")]
    User,
    #[sea_orm(string_value = "assistant")]
    Assistant,
}

impl Role {
    /// The text stored in `messages.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

/// Where a message is in its life. Stored as text (`CHECK (status IN (…))`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize, utoipa::ToSchema,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "completed")]
    Completed,
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl Status {
    /// The text stored in `messages.status` (what the statements bind).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// Why a reply failed, as `error_kind` stores it, for the failures the store itself decides.
pub mod kind {
    /// The database refused the answer itself (the reply would otherwise stay pending).
    pub const REPLY_UNSTORABLE: &str = "reply_unstorable";
    /// Still pending past the retry horizon.
    pub const TIMED_OUT: &str = "timed_out";
    /// Its user stopped it.
    pub const CANCELLED: &str = "cancelled";
}

/// Every change a reply can go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter)]
pub enum Transition {
    /// The pipeline's answer for the current generation: completed or failed as it says.
    Answer,
    /// A failure decided outside the provider's answer: a dead letter, an unstorable reply.
    GiveUp,
    /// Pending past the retry horizon (the reaper).
    Reap,
    /// Stopped by its user.
    Cancel,
    /// Asked again: replay by an operator or retry by its user; the generation goes up by one.
    Restart,
}

impl Transition {
    /// The only state the transition applies to.
    pub fn from(self) -> Status {
        match self {
            Self::Restart => Status::Failed,
            _ => Status::Pending,
        }
    }

    /// The states it may leave the reply in.
    pub fn to(self) -> &'static [Status] {
        match self {
            Self::Answer => &[Status::Completed, Status::Failed],
            Self::GiveUp | Self::Reap | Self::Cancel => &[Status::Failed],
            Self::Restart => &[Status::Pending],
        }
    }

    /// Whether it must name the generation it is about (events from the pipeline do; a
    /// decision on the reply as it stands now does not).
    pub fn checks_generation(self) -> bool {
        matches!(self, Self::Answer | Self::GiveUp)
    }

    /// Whether it starts a new generation.
    pub fn bumps_generation(self) -> bool {
        self == Self::Restart
    }
}

/// The state a reply in `status` at `generation` is in after `transition` about
/// `event_generation`, ending in `outcome`; `None` when the transition does not apply (the
/// statement matches no row). The model the statements of `replies.rs` implement: the tests
/// below pin the model down, the store's tests check the statements against it.
pub fn next(
    status: Status,
    generation: i32,
    transition: Transition,
    event_generation: i32,
    outcome: Status,
) -> Option<(Status, i32)> {
    if status != transition.from() || !transition.to().contains(&outcome) {
        return None;
    }
    if transition.checks_generation() && event_generation != generation {
        return None;
    }
    let generation = if transition.bumps_generation() {
        generation.checked_add(1)?
    } else {
        generation
    };
    Some((outcome, generation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::{Completed, Failed, Pending};
    use Transition::{Answer, Cancel, GiveUp, Reap, Restart};

    #[test]
    fn a_pending_reply_ends_once() {
        assert_eq!(next(Pending, 0, Answer, 0, Completed), Some((Completed, 0)));
        assert_eq!(next(Pending, 0, Answer, 0, Failed), Some((Failed, 0)));
        assert_eq!(next(Pending, 2, GiveUp, 2, Failed), Some((Failed, 2)));
        assert_eq!(next(Pending, 1, Reap, 0, Failed), Some((Failed, 1)));
        assert_eq!(next(Pending, 1, Cancel, 0, Failed), Some((Failed, 1)));
        // A duplicate answer meets a reply that is no longer pending.
        for ended in [Completed, Failed] {
            for t in [Answer, GiveUp, Reap, Cancel] {
                assert_eq!(next(ended, 0, t, 0, Failed), None, "{t:?} on {ended:?}");
            }
        }
    }

    #[test]
    fn answers_of_another_generation_change_nothing() {
        assert_eq!(next(Pending, 1, Answer, 0, Completed), None, "stale");
        assert_eq!(next(Pending, 1, GiveUp, 0, Failed), None, "stale");
        assert_eq!(next(Pending, 1, Answer, 1, Completed), Some((Completed, 1)));
    }

    #[test]
    fn only_a_failed_reply_restarts_and_its_generation_goes_up() {
        assert_eq!(next(Failed, 3, Restart, 0, Pending), Some((Pending, 4)));
        assert_eq!(next(Completed, 3, Restart, 0, Pending), None);
        assert_eq!(next(Pending, 3, Restart, 0, Pending), None);
        assert_eq!(next(Failed, i32::MAX, Restart, 0, Pending), None);
    }

    #[test]
    fn no_transition_ends_where_it_may_not() {
        assert_eq!(next(Pending, 0, Cancel, 0, Completed), None);
        assert_eq!(next(Pending, 0, Reap, 0, Pending), None);
        assert_eq!(next(Failed, 0, Restart, 0, Completed), None);
        for t in <Transition as sea_orm::Iterable>::iter() {
            assert!(!t.to().is_empty(), "{t:?} leads somewhere");
            assert!(
                !t.to().contains(&t.from()) || t == Restart,
                "{t:?} changes the state"
            );
        }
    }

    #[test]
    fn statuses_are_stored_as_their_names() {
        for status in <Status as sea_orm::Iterable>::iter() {
            assert_eq!(status.to_value(), status.as_str());
        }
        assert_eq!(Role::Assistant.to_value(), "assistant");
    }
}
