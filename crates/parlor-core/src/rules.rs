//! Who may change what: the one place the rules of a conversation live. A store gathers the
//! [`Facts`] a change depends on (inside the transaction that would store it, and in a read
//! for the gateway's check before `accepted`) and asks [`check`]; both answers come from the
//! same function, so the gateway's error and the store's refusal never disagree.
//!
//! Input that is wrong whatever the state (a blank body, a malformed emoji) is refused
//! before, by [`crate::validate::change`].

use crate::error::{ApiError, ErrorCode};
use crate::events::{Change, Role};
use crate::files::FileFacts;
use crate::ids::UserId;
use crate::protocol::ConversationKind;

/// Distinct emoji on one message, at most.
pub const REACTIONS_DISTINCT_MAX: usize = 20;
/// Members of one group, creator included, at most: a message to a group costs one delivery
/// per member.
pub const GROUP_MEMBERS_MAX: usize = 10_000;

/// What the store knows of a conversation that a change depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub kind: ConversationKind,
    /// The sender's role; `None` if they are not a member (or the conversation does not
    /// exist: both are the same `not_found`).
    pub sender_role: Option<Role>,
    /// The event the change points at (`target_seq`, `reply_to_seq`), if there is one at
    /// that seq.
    pub target: Option<Target>,
    /// For member changes: the role of the user acted upon, `None` if not a member.
    pub subject_role: Option<Role>,
    /// For `member_added`: whether the user exists.
    pub subject_exists: bool,
    /// Admins of the conversation, the sender included.
    pub admins: usize,
    /// Members of the conversation.
    pub members: usize,
    /// For a message: each file it attaches, in order.
    pub files: Vec<FileFacts>,
}

/// The event at a change's target seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Only messages can be edited, deleted, reacted to or replied to.
    pub is_message: bool,
    pub sender: UserId,
    pub deleted: bool,
    /// For reactions: the distinct emoji on it now, whether anyone already reacted with this
    /// change's emoji (one more of those adds no distinct emoji), and whether the sender did.
    pub emoji_distinct: usize,
    pub emoji_reacted: bool,
    pub sender_reacted: bool,
}

fn refused(code: ErrorCode, message: &str) -> ApiError {
    ApiError::new(code, message)
}

fn no_conversation() -> ApiError {
    refused(ErrorCode::NotFound, "no such conversation")
}

fn no_message() -> ApiError {
    refused(ErrorCode::NotFound, "no such message")
}

fn group_only(change: &Change) -> ApiError {
    let what = match change {
        Change::TitleChanged { .. } => "a direct conversation has no title",
        Change::RoleChanged { .. } => "a direct conversation has no roles",
        _ => "a direct conversation always has exactly its two members",
    };
    refused(ErrorCode::Forbidden, what)
}

fn admins_only() -> ApiError {
    refused(ErrorCode::Forbidden, "only a group admin may do that")
}

/// Whether `sender` may make `change` now; the error says why not. Nothing is changed by a
/// refused change.
pub fn check(sender: UserId, change: &Change, facts: &Facts) -> Result<(), ApiError> {
    let Some(role) = facts.sender_role else {
        return Err(no_conversation());
    };
    let is_admin = role == Role::Admin;
    let is_group = facts.kind == ConversationKind::Group;
    // A message that exists and is not deleted.
    let live_message = || match &facts.target {
        Some(target) if target.is_message && !target.deleted => Ok(target),
        _ => Err(no_message()),
    };
    match change {
        Change::Message {
            reply_to_seq,
            files,
            ..
        } => {
            if reply_to_seq.is_some() {
                live_message()?;
            }
            for id in files {
                let file = facts.files.iter().find(|file| file.id == *id);
                match file {
                    // Someone else's upload is as unknown as one that does not exist.
                    Some(file) if file.owner == Some(sender) => {
                        if file.attached {
                            return Err(refused(
                                ErrorCode::Conflict,
                                "a file is attached to one message only",
                            ));
                        }
                    }
                    _ => return Err(refused(ErrorCode::NotFound, "no such file")),
                }
            }
            Ok(())
        }
        Change::Edit { .. } => {
            let target = live_message()?;
            if target.sender != sender {
                return Err(refused(
                    ErrorCode::Forbidden,
                    "only the author may edit a message",
                ));
            }
            Ok(())
        }
        Change::Delete { .. } => {
            let target = live_message()?;
            if target.sender != sender && !(is_group && is_admin) {
                return Err(refused(
                    ErrorCode::Forbidden,
                    "only the author or a group admin may delete a message",
                ));
            }
            Ok(())
        }
        Change::ReactionAdded { .. } => {
            let target = live_message()?;
            if target.sender_reacted {
                return Err(refused(
                    ErrorCode::Conflict,
                    "you already reacted with this emoji",
                ));
            }
            if !target.emoji_reacted && target.emoji_distinct >= REACTIONS_DISTINCT_MAX {
                return Err(refused(
                    ErrorCode::Conflict,
                    "this message has as many different reactions as it can hold",
                ));
            }
            Ok(())
        }
        Change::ReactionRemoved { .. } => {
            let target = live_message()?;
            if !target.sender_reacted {
                return Err(refused(
                    ErrorCode::NotFound,
                    "you have not reacted with this emoji",
                ));
            }
            Ok(())
        }
        Change::MemberAdded { .. } => {
            if !is_group {
                return Err(group_only(change));
            }
            if !is_admin {
                return Err(admins_only());
            }
            if !facts.subject_exists {
                return Err(refused(ErrorCode::NotFound, "no such user"));
            }
            if facts.subject_role.is_some() {
                return Err(refused(ErrorCode::Conflict, "already a member"));
            }
            if facts.members >= GROUP_MEMBERS_MAX {
                return Err(refused(
                    ErrorCode::Conflict,
                    "this group has as many members as it can hold",
                ));
            }
            Ok(())
        }
        Change::MemberRemoved { user_id } => {
            if !is_group {
                return Err(group_only(change));
            }
            if *user_id == sender {
                return Err(refused(
                    ErrorCode::InvalidInput,
                    "to leave a group, send member_left",
                ));
            }
            if !is_admin {
                return Err(admins_only());
            }
            if facts.subject_role.is_none() {
                return Err(refused(ErrorCode::NotFound, "not a member"));
            }
            Ok(())
        }
        Change::MemberLeft {} => {
            if !is_group {
                return Err(group_only(change));
            }
            Ok(())
        }
        Change::TitleChanged { .. } => {
            if !is_group {
                return Err(group_only(change));
            }
            if !is_admin {
                return Err(admins_only());
            }
            Ok(())
        }
        Change::RoleChanged { role: new_role, .. } => {
            if !is_group {
                return Err(group_only(change));
            }
            if !is_admin {
                return Err(admins_only());
            }
            let Some(current) = facts.subject_role else {
                return Err(refused(ErrorCode::NotFound, "not a member"));
            };
            if current == *new_role {
                return Err(refused(
                    ErrorCode::Conflict,
                    "the member has that role already",
                ));
            }
            if current == Role::Admin && facts.admins <= 1 {
                return Err(refused(
                    ErrorCode::Conflict,
                    "a group needs an admin: make someone else admin first",
                ));
            }
            Ok(())
        }
    }
}

/// Whether the member who goes (leaves or is removed) takes the group's last admin with
/// them, so that the longest-standing remaining member must become one.
pub fn promotes_on_departure(departing_role: Option<Role>, admins: usize, members: usize) -> bool {
    departing_role == Some(Role::Admin) && admins <= 1 && members > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(role: Option<Role>) -> Facts {
        Facts {
            kind: ConversationKind::Group,
            sender_role: role,
            target: None,
            subject_role: None,
            subject_exists: true,
            admins: 1,
            members: 3,
            files: Vec::new(),
        }
    }

    fn message_by(sender: UserId) -> Target {
        Target {
            is_message: true,
            sender,
            deleted: false,
            emoji_distinct: 0,
            emoji_reacted: false,
            sender_reacted: false,
        }
    }

    fn code(sender: UserId, change: &Change, facts: &Facts) -> Option<ErrorCode> {
        check(sender, change, facts).err().map(|error| error.code)
    }

    /// Every action × member / admin / non-member, on a group's message by `author`.
    #[test]
    fn authorisation_table() {
        let author = UserId::new();
        let other = UserId::new();
        let subject = UserId::new();
        let edit = Change::Edit {
            target_seq: 1,
            body: "x".into(),
        };
        let delete = Change::Delete { target_seq: 1 };
        let react = Change::ReactionAdded {
            target_seq: 1,
            emoji: "👍".into(),
        };
        let add = Change::MemberAdded { user_id: subject };
        let remove = Change::MemberRemoved { user_id: subject };
        let rename = Change::TitleChanged { title: "t".into() };
        let promote = Change::RoleChanged {
            user_id: subject,
            role: Role::Admin,
        };
        use ErrorCode::{Conflict, Forbidden, NotFound};
        // (change, who, their role, the subject's role, expected)
        type Row<'a> = (
            &'a Change,
            UserId,
            Option<Role>,
            Option<Role>,
            Option<ErrorCode>,
        );
        let table: Vec<Row> = vec![
            (&edit, author, Some(Role::Member), None, None),
            (&edit, other, Some(Role::Member), None, Some(Forbidden)),
            (&edit, other, Some(Role::Admin), None, Some(Forbidden)),
            (&edit, author, None, None, Some(NotFound)),
            (&delete, author, Some(Role::Member), None, None),
            (&delete, other, Some(Role::Member), None, Some(Forbidden)),
            (&delete, other, Some(Role::Admin), None, None),
            (&delete, other, None, None, Some(NotFound)),
            (&react, other, Some(Role::Member), None, None),
            (&react, other, None, None, Some(NotFound)),
            (&add, other, Some(Role::Admin), None, None),
            (
                &add,
                other,
                Some(Role::Admin),
                Some(Role::Member),
                Some(Conflict),
            ),
            (&add, other, Some(Role::Member), None, Some(Forbidden)),
            (&add, other, None, None, Some(NotFound)),
            (&remove, other, Some(Role::Admin), Some(Role::Member), None),
            (&remove, other, Some(Role::Admin), None, Some(NotFound)),
            (
                &remove,
                other,
                Some(Role::Member),
                Some(Role::Member),
                Some(Forbidden),
            ),
            (&remove, other, None, Some(Role::Member), Some(NotFound)),
            (&rename, other, Some(Role::Admin), None, None),
            (&rename, other, Some(Role::Member), None, Some(Forbidden)),
            (&rename, other, None, None, Some(NotFound)),
            (&promote, other, Some(Role::Admin), Some(Role::Member), None),
            (
                &promote,
                other,
                Some(Role::Admin),
                Some(Role::Admin),
                Some(Conflict),
            ),
            (
                &promote,
                other,
                Some(Role::Member),
                Some(Role::Member),
                Some(Forbidden),
            ),
            (&promote, other, None, Some(Role::Member), Some(NotFound)),
            (
                &Change::MemberLeft {},
                other,
                Some(Role::Member),
                None,
                None,
            ),
            (&Change::MemberLeft {}, other, None, None, Some(NotFound)),
        ];
        for (change, who, role, subject_role, expected) in table {
            let facts = Facts {
                target: Some(message_by(author)),
                subject_role,
                ..group(role)
            };
            assert_eq!(
                code(who, change, &facts),
                expected,
                "{change:?} by {:?} with role {role:?}, subject {subject_role:?}",
                if who == author { "author" } else { "other" }
            );
        }
    }

    #[test]
    fn direct_conversations_have_fixed_members_and_no_title() {
        let me = UserId::new();
        let facts = Facts {
            kind: ConversationKind::Direct,
            ..group(Some(Role::Member))
        };
        for change in [
            Change::MemberAdded {
                user_id: UserId::new(),
            },
            Change::MemberRemoved {
                user_id: UserId::new(),
            },
            Change::MemberLeft {},
            Change::TitleChanged { title: "t".into() },
        ] {
            assert_eq!(code(me, &change, &facts), Some(ErrorCode::Forbidden));
        }
        // Nobody is a group admin in a direct conversation: the other member's message stays.
        let facts = Facts {
            target: Some(message_by(UserId::new())),
            ..facts
        };
        assert_eq!(
            code(me, &Change::Delete { target_seq: 1 }, &facts),
            Some(ErrorCode::Forbidden)
        );
    }

    #[test]
    fn only_live_messages_are_targets() {
        let me = UserId::new();
        let edit = Change::Edit {
            target_seq: 1,
            body: "x".into(),
        };
        let reply = Change::Message {
            body: "x".into(),
            reply_to_seq: Some(1),
            files: Vec::new(),
        };
        let mut target = message_by(me);
        target.deleted = true;
        for target in [
            None,
            Some(target),
            Some(Target {
                is_message: false,
                ..message_by(me)
            }),
        ] {
            let facts = Facts {
                target,
                ..group(Some(Role::Member))
            };
            assert_eq!(code(me, &edit, &facts), Some(ErrorCode::NotFound));
            assert_eq!(code(me, &reply, &facts), Some(ErrorCode::NotFound));
        }
    }

    #[test]
    fn reactions_are_one_per_emoji_per_user_and_bounded() {
        let me = UserId::new();
        let react = Change::ReactionAdded {
            target_seq: 1,
            emoji: "👍".into(),
        };
        let unreact = Change::ReactionRemoved {
            target_seq: 1,
            emoji: "👍".into(),
        };
        let with = |target: Target| Facts {
            target: Some(target),
            ..group(Some(Role::Member))
        };
        let reacted = Target {
            emoji_reacted: true,
            sender_reacted: true,
            ..message_by(me)
        };
        let full = Target {
            emoji_distinct: REACTIONS_DISTINCT_MAX,
            ..message_by(me)
        };
        assert_eq!(
            code(me, &react, &with(reacted.clone())),
            Some(ErrorCode::Conflict)
        );
        assert_eq!(code(me, &unreact, &with(reacted)), None);
        assert_eq!(
            code(me, &react, &with(full.clone())),
            Some(ErrorCode::Conflict)
        );
        // A full message still takes more of the emoji it has.
        let full_of_this_one = Target {
            emoji_reacted: true,
            ..full
        };
        assert_eq!(code(me, &react, &with(full_of_this_one)), None);
        assert_eq!(
            code(me, &unreact, &with(message_by(me))),
            Some(ErrorCode::NotFound)
        );
    }

    #[test]
    fn the_last_admin_cannot_step_down_and_their_departure_promotes() {
        let me = UserId::new();
        let step_down = Change::RoleChanged {
            user_id: me,
            role: Role::Member,
        };
        let facts = Facts {
            subject_role: Some(Role::Admin),
            ..group(Some(Role::Admin))
        };
        assert_eq!(code(me, &step_down, &facts), Some(ErrorCode::Conflict));
        let two_admins = Facts { admins: 2, ..facts };
        assert_eq!(code(me, &step_down, &two_admins), None);
        assert!(promotes_on_departure(Some(Role::Admin), 1, 3));
        assert!(!promotes_on_departure(Some(Role::Admin), 2, 3));
        assert!(!promotes_on_departure(Some(Role::Member), 1, 3));
        assert!(!promotes_on_departure(Some(Role::Admin), 1, 1));
    }
}
