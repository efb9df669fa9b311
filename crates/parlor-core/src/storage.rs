//! What the SQL stores (`parlor-embedded`'s SQLite, `parlor-postgres`) write the same way:
//! times as unix nanoseconds, seqs as signed 64-bit integers, a conversation's kind as text,
//! a direct conversation's pair key, an escaped name prefix, members grouped into views,
//! which schema migrations still need to run, and the checks of a new conversation's
//! members that come before any SQL.
//!
//! Pure functions only: no IO and no driver types; each backend binds the values these
//! return with its own client.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;

use time::OffsetDateTime;

use crate::error::BackendError;
use crate::ids::{ConversationId, Seq, UserId};
use crate::ports::ConversationView;
use crate::protocol::{ConversationKind, User};

/// A time a store cannot hold: outside 1677–2262, where unix nanoseconds overflow an `i64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOutOfRange(pub OffsetDateTime);

impl fmt::Display for TimeOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "time {} is outside the storable range", self.0)
    }
}

impl std::error::Error for TimeOutOfRange {}

/// `at` as stored: unix nanoseconds, exact for every time between 1677 and 2262 and ordered
/// as numbers. Outside that range it does not fit, and never will.
pub fn nanos(at: OffsetDateTime) -> Result<i64, TimeOutOfRange> {
    i64::try_from(at.unix_timestamp_nanos()).map_err(|_| TimeOutOfRange(at))
}

/// A seq to bind: seqs past `i64::MAX` cannot exist, so larger bounds mean "all of them".
pub fn seq_param(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A conversation kind as stored.
pub fn kind_text(kind: ConversationKind) -> &'static str {
    match kind {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

/// The kind [`kind_text`] stored as `text`; `None` for anything else.
pub fn kind_of_text(text: &str) -> Option<ConversationKind> {
    match text {
        "direct" => Some(ConversationKind::Direct),
        "group" => Some(ConversationKind::Group),
        _ => None,
    }
}

/// The key of the direct conversation of `a` and `b`: the two ids, sorted and joined by
/// `:`, so a pair has one direct conversation whatever the order it was asked for in.
pub fn direct_key(a: UserId, b: UserId) -> String {
    let (low, high) = if a <= b { (a, b) } else { (b, a) };
    format!("{low}:{high}")
}

/// Refuses a direct conversation of a user with themselves (`Rejected`), before any lookup.
pub fn check_direct_pair(a: UserId, b: UserId) -> Result<(), BackendError> {
    if a == b {
        return Err(BackendError::rejected(
            "create direct conversation: a direct conversation needs two different users",
        ));
    }
    Ok(())
}

/// A new group's members, each once and in order; `Rejected` if there are none.
pub fn group_members(members: &[UserId]) -> Result<Vec<UserId>, BackendError> {
    let members = distinct(members);
    if members.is_empty() {
        return Err(BackendError::rejected(
            "create group: a group needs at least one member",
        ));
    }
    Ok(members)
}

/// The first occurrence of each id, in order.
pub fn distinct<T: Copy + Eq + Hash>(ids: &[T]) -> Vec<T> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// A LIKE pattern matching names that start with `prefix`, with `\` as the escape
/// character: usernames may contain `_`, which LIKE would otherwise take as a wildcard.
pub fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 2);
    for c in prefix.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Fills each view's members from `(conversation, member)` pairs, keeping their order (the
/// stores read them ordered by name).
pub fn attach_members(
    views: &mut [ConversationView],
    members: impl IntoIterator<Item = (ConversationId, User)>,
) {
    let mut by_conversation: HashMap<ConversationId, Vec<User>> = HashMap::new();
    for (conversation, member) in members {
        by_conversation
            .entry(conversation)
            .or_default()
            .push(member);
    }
    for view in views {
        view.members = by_conversation.remove(&view.id).unwrap_or_default();
    }
}

/// How many of a build's `known` migrations a schema at version `applied` has already run,
/// or why this build must not touch it (a newer schema, or a nonsense version).
pub fn migrations_applied(applied: i64, known: usize) -> Result<usize, String> {
    usize::try_from(applied)
        .ok()
        .filter(|&count| count <= known)
        .ok_or_else(|| {
            format!(
                "the database schema is version {applied}, this build knows versions 0 to {known}"
            )
        })
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn nanos_are_exact_and_refuse_what_does_not_fit() {
        let at = datetime!(2031-12-31 23:59:59.999999999 +05:30);
        let stored = nanos(at).unwrap();
        let back = OffsetDateTime::from_unix_timestamp_nanos(i128::from(stored)).unwrap();
        assert_eq!(back, at);
        let far = datetime!(2300-01-01 0:00 UTC);
        let error = nanos(far).unwrap_err();
        assert_eq!(error, TimeOutOfRange(far));
        assert!(error.to_string().contains("outside the storable range"));
    }

    #[test]
    fn seq_params_past_i64_mean_all_of_them() {
        assert_eq!(seq_param(0), 0);
        assert_eq!(seq_param(7), 7);
        assert_eq!(seq_param(Seq::MAX), i64::MAX);
    }

    #[test]
    fn kinds_round_trip_through_their_text() {
        for kind in [ConversationKind::Direct, ConversationKind::Group] {
            assert_eq!(kind_of_text(kind_text(kind)), Some(kind));
        }
        assert_eq!(kind_of_text("Direct"), None);
    }

    #[test]
    fn direct_key_is_the_same_in_either_order() {
        let (a, b) = (UserId::new(), UserId::new());
        assert_eq!(direct_key(a, b), direct_key(b, a));
        assert_ne!(direct_key(a, b), direct_key(a, UserId::new()));
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        assert_eq!(direct_key(a, b), format!("{low}:{high}"));
    }

    #[test]
    fn a_direct_pair_needs_two_users_and_a_group_one() {
        let (ann, bob) = (UserId::new(), UserId::new());
        assert!(check_direct_pair(ann, bob).is_ok());
        let alone = check_direct_pair(ann, ann).unwrap_err();
        assert_eq!(alone.kind, crate::BackendErrorKind::Rejected);
        assert_eq!(group_members(&[bob, ann, bob]).unwrap(), [bob, ann]);
        let empty = group_members(&[]).unwrap_err();
        assert_eq!(empty.kind, crate::BackendErrorKind::Rejected);
    }

    #[test]
    fn distinct_keeps_first_occurrences_in_order() {
        assert_eq!(distinct(&[3, 1, 3, 2, 1]), [3, 1, 2]);
        assert!(distinct::<u8>(&[]).is_empty());
    }

    #[test]
    fn like_prefix_escapes_wildcards_and_the_escape() {
        assert_eq!(like_prefix("ann"), "ann%");
        assert_eq!(like_prefix("a_b%c\\d"), "a\\_b\\%c\\\\d%");
        assert_eq!(like_prefix(""), "%");
    }

    #[test]
    fn members_are_attached_to_their_views_in_order() {
        let view = |id| ConversationView {
            id,
            kind: ConversationKind::Group,
            title: None,
            members: Vec::new(),
            last_message: None,
            last_seq: 0,
            last_read_seq: 0,
        };
        let (one, two, none) = (
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
        );
        let user = |name: &str| User {
            id: UserId::new(),
            username: name.to_owned(),
        };
        let (ann, bob, cid) = (user("ann"), user("bob"), user("cid"));
        let mut views = [view(one), view(two), view(none)];
        attach_members(
            &mut views,
            [
                (one, ann.clone()),
                (two, bob.clone()),
                (one, cid.clone()),
                (ConversationId::new(), ann.clone()),
            ],
        );
        assert_eq!(views[0].members, [ann, cid]);
        assert_eq!(views[1].members, [bob]);
        assert!(views[2].members.is_empty());
    }

    #[test]
    fn migrations_applied_refuses_a_newer_or_negative_version() {
        assert_eq!(migrations_applied(0, 2), Ok(0));
        assert_eq!(migrations_applied(2, 2), Ok(2));
        let newer = migrations_applied(3, 2).unwrap_err();
        assert_eq!(
            newer,
            "the database schema is version 3, this build knows versions 0 to 2"
        );
        assert!(migrations_applied(-1, 2).is_err());
    }
}
