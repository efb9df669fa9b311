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
use crate::events::{EventData, Reaction, Role};
use crate::ids::{ConversationId, Seq, UserId};
use crate::ports::{ConversationView, MemberView};
use crate::protocol::ConversationKind;
#[cfg(test)]
use crate::protocol::User;

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

/// A time as a bound on `*_ns` columns: times past what nanoseconds in an `i64` hold
/// (before 1677, after 2262) are clamped, which bounds the same rows.
pub fn nanos_bound(at: OffsetDateTime) -> i64 {
    let nanos = at.unix_timestamp_nanos();
    i64::try_from(nanos).unwrap_or(if nanos < 0 { i64::MIN } else { i64::MAX })
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
    members: impl IntoIterator<Item = (ConversationId, MemberView)>,
) {
    let mut by_conversation: HashMap<ConversationId, Vec<MemberView>> = HashMap::new();
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

/// How the SQL stores keep an event that is not a message: its `kind` and `target_seq` as
/// columns (to find a message's edits and reactions), an edit's body in the `body` column
/// (so that a delete can erase it), and the rest as JSON of the [`EventData`] in `data`.
pub struct EventColumns {
    pub kind: &'static str,
    pub target_seq: Option<Seq>,
    pub body: String,
    pub data: String,
}

/// `data`'s columns; `None` for a message, which has columns of its own.
pub fn event_columns(data: &EventData) -> Option<EventColumns> {
    let (target_seq, body, stored) = match data {
        EventData::Message { .. } => return None,
        EventData::Edit {
            target_seq,
            body,
            mentions,
        } => (
            Some(*target_seq),
            body.clone(),
            EventData::Edit {
                target_seq: *target_seq,
                body: String::new(),
                mentions: mentions.clone(),
            },
        ),
        EventData::Delete { target_seq }
        | EventData::ReactionAdded { target_seq, .. }
        | EventData::ReactionRemoved { target_seq, .. } => {
            (Some(*target_seq), String::new(), data.clone())
        }
        _ => (None, String::new(), data.clone()),
    };
    Some(EventColumns {
        kind: data.kind(),
        target_seq,
        body,
        data: serde_json::to_string(&stored).expect("event data always serializes"),
    })
}

/// The [`EventData`] that [`event_columns`] stored as `data` and `body`.
pub fn event_of_columns(data: &str, body: String) -> Result<EventData, serde_json::Error> {
    let mut event: EventData = serde_json::from_str(data)?;
    if let EventData::Edit { body: edited, .. } = &mut event {
        *edited = body;
    }
    Ok(event)
}

/// Mentioned user ids as the SQL stores keep them in one text column: hyphenated ids
/// separated by spaces (so `instr` finds one), empty for none.
pub fn mentions_text(mentions: &[UserId]) -> String {
    mentions
        .iter()
        .map(UserId::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The ids [`mentions_text`] stored; ids that do not parse are skipped.
pub fn mentions_of_text(text: &str) -> Vec<UserId> {
    text.split_ascii_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect()
}

/// Reactions grouped by emoji from `(emoji, user)` rows in the order they were made: the
/// emoji in the order of their first reaction, each user once.
pub fn group_reactions(rows: impl IntoIterator<Item = (String, UserId)>) -> Vec<Reaction> {
    let mut reactions: Vec<Reaction> = Vec::new();
    for (emoji, user) in rows {
        match reactions
            .iter_mut()
            .find(|reaction| reaction.emoji == emoji)
        {
            Some(reaction) => {
                if !reaction.user_ids.contains(&user) {
                    reaction.user_ids.push(user);
                }
            }
            None => reactions.push(Reaction {
                emoji,
                user_ids: vec![user],
            }),
        }
    }
    reactions
}

/// A role as stored.
pub fn role_text(role: Role) -> &'static str {
    role.as_str()
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
            unread_count: 0,
            unread_mentions: 0,
            muted: false,
        };
        let (one, two, none) = (
            ConversationId::new(),
            ConversationId::new(),
            ConversationId::new(),
        );
        let user = |name: &str| MemberView {
            user: User {
                id: UserId::new(),
                username: name.to_owned(),
            },
            role: Role::Member,
            last_delivered_seq: 0,
            last_read_seq: 0,
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
    fn events_round_trip_through_their_columns() {
        let user = UserId::new();
        for data in [
            EventData::Edit {
                target_seq: 3,
                body: "new".into(),
                mentions: vec![user],
            },
            EventData::ReactionAdded {
                target_seq: 2,
                emoji: "👍".into(),
            },
            EventData::MemberAdded {
                user: User {
                    id: user,
                    username: "ann".into(),
                },
                role: Role::Member,
            },
            EventData::MemberLeft {
                user_id: user,
                promoted_user_id: Some(UserId::new()),
            },
            EventData::TitleChanged {
                title: "Team".into(),
            },
        ] {
            let columns = event_columns(&data).unwrap();
            assert_eq!(columns.kind, data.kind());
            assert!(
                !columns.data.contains("\"new\""),
                "the body is in its own column"
            );
            assert_eq!(event_of_columns(&columns.data, columns.body).unwrap(), data);
        }
    }

    #[test]
    fn mentions_and_reactions_are_kept_in_order() {
        let (ann, bob) = (UserId::new(), UserId::new());
        assert_eq!(mentions_of_text(&mentions_text(&[ann, bob])), [ann, bob]);
        assert!(mentions_of_text("").is_empty());
        let grouped = group_reactions([
            ("👍".to_owned(), ann),
            ("🎉".to_owned(), bob),
            ("👍".to_owned(), bob),
        ]);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].emoji, "👍");
        assert_eq!(grouped[0].user_ids, [ann, bob]);
        assert_eq!(grouped[1].user_ids, [bob]);
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
