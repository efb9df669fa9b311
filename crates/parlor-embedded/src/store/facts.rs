//! [`gather`]: what the rules need to know of a conversation before a change, read in SQL
//! inside the caller's transaction (the writer's, for an append; a reader's, for
//! `refusal`), so that both ask [`rules::check`](parlor_core::rules::check) the same thing.

use parlor_core::events::{Change, Role};
use parlor_core::ids::{Seq, UserId};
use parlor_core::ports::NewEvent;
use parlor_core::protocol::{ConversationKind, User};
use parlor_core::rules::{Facts, Target};
use parlor_core::storage::seq_param;
use rusqlite::{Connection, OptionalExtension, params};

use super::codec::{Id, KindColumn, RoleColumn, SeqColumn};
use super::failure::Failure;

/// The [`Facts`] of one change, and what storing it then needs of the same reads.
pub(super) struct Gathered {
    pub(super) facts: Facts,
    /// The conversation's newest seq and members seq (0 if it does not exist).
    pub(super) last_seq: Seq,
    pub(super) members_seq: Seq,
    /// The user a member change acts upon, if they exist (`member_added` names them).
    pub(super) subject: Option<User>,
}

/// Reads the facts `new.change` depends on, at most five point or range lookups: the
/// conversation with the sender's role, the target message (and for reactions, its emoji),
/// the subject of a member change, and for member changes the member and admin counts.
pub(super) fn gather(tx: &Connection, new: &NewEvent) -> Result<Gathered, Failure> {
    let conversation = Id(new.conversation_id.0);
    let sender = Id(new.sender_id.0);
    // Two plain lookups, not a join: this runs for every entry, and SQLite re-prepared the
    // joined forms (from either table) on every call: its parser took a tenth of an append.
    let conversation_row = tx
        .prepare_cached("SELECT kind, last_seq, members_seq FROM conversations WHERE id = ?1")?
        .query_row(params![conversation], |row| {
            Ok((
                row.get::<_, KindColumn>(0)?.0,
                row.get::<_, SeqColumn>(1)?.0,
                row.get::<_, SeqColumn>(2)?.0,
            ))
        })
        .optional()?;
    let found = match conversation_row {
        None => None,
        Some((kind, last_seq, members_seq)) => {
            let role = tx
                .prepare_cached(
                    "SELECT role FROM members WHERE conversation_id = ?1 AND user_id = ?2",
                )?
                .query_row(params![conversation, sender], |row| {
                    row.get::<_, RoleColumn>(0)
                })
                .optional()?
                .map(|RoleColumn(role)| role);
            Some((kind, last_seq, members_seq, role))
        }
    };
    // No such conversation: the same answer as not being a member of it.
    let (kind, last_seq, members_seq, sender_role) =
        found.unwrap_or((ConversationKind::Group, 0, 0, None));

    let target = match target_of(&new.change) {
        Some((seq, emoji)) => target(tx, new, seq, emoji)?,
        None => None,
    };

    let (subject, subject_role) = match &new.change {
        Change::MemberAdded { user_id }
        | Change::MemberRemoved { user_id }
        | Change::RoleChanged { user_id, .. } => subject(tx, new, *user_id)?,
        // Who leaves is the sender.
        Change::MemberLeft {} => (None, sender_role),
        _ => (None, None),
    };

    // Only member changes depend on the counts; a message to a large group does not pay
    // for counting its members.
    let (members, admins) = if new.change.changes_members() {
        tx.prepare_cached(
            "SELECT count(*), coalesce(sum(role = 'admin'), 0)
             FROM members WHERE conversation_id = ?1",
        )?
        .query_row(params![conversation], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
        })?
    } else {
        (0, 0)
    };

    let files = match &new.change {
        Change::Message { files, .. } if !files.is_empty() => super::files::facts(tx, files)?,
        _ => Vec::new(),
    };

    Ok(Gathered {
        facts: Facts {
            kind,
            sender_role,
            target,
            subject_role,
            subject_exists: subject.is_some(),
            admins: usize::try_from(admins).unwrap_or(0),
            members: usize::try_from(members).unwrap_or(0),
            files,
        },
        last_seq,
        members_seq,
        subject,
    })
}

/// The seq a change points at, and for reactions the emoji.
fn target_of(change: &Change) -> Option<(Seq, Option<&str>)> {
    match change {
        Change::Message { reply_to_seq, .. } => reply_to_seq.map(|seq| (seq, None)),
        Change::Edit { target_seq, .. } | Change::Delete { target_seq } => {
            Some((*target_seq, None))
        }
        Change::ReactionAdded { target_seq, emoji }
        | Change::ReactionRemoved { target_seq, emoji } => Some((*target_seq, Some(emoji))),
        _ => None,
    }
}

/// The event at `seq`, if any; with `emoji`, what the reactions on it say of that emoji.
fn target(
    tx: &Connection,
    new: &NewEvent,
    seq: Seq,
    emoji: Option<&str>,
) -> Result<Option<Target>, Failure> {
    let conversation = Id(new.conversation_id.0);
    let row = tx
        .prepare_cached(
            "SELECT kind, sender_id, deleted FROM events WHERE conversation_id = ?1 AND seq = ?2",
        )?
        .query_row(params![conversation, seq_param(seq)], |row| {
            Ok((
                row.get::<_, String>(0)?,
                UserId(row.get::<_, Id>(1)?.0),
                row.get::<_, i64>(2)? != 0,
            ))
        })
        .optional()?;
    let Some((kind, sender, deleted)) = row else {
        return Ok(None);
    };
    let (emoji_distinct, emoji_reacted, sender_reacted) = match emoji {
        None => (0, false, false),
        Some(emoji) => tx
            .prepare_cached(
                "SELECT count(DISTINCT emoji), coalesce(max(emoji = ?3), 0),
                        coalesce(max(emoji = ?3 AND user_id = ?4), 0)
                 FROM reactions WHERE conversation_id = ?1 AND seq = ?2",
            )?
            .query_row(
                params![conversation, seq_param(seq), emoji, Id(new.sender_id.0)],
                |row| {
                    Ok((
                        usize::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                        row.get::<_, i64>(1)? != 0,
                        row.get::<_, i64>(2)? != 0,
                    ))
                },
            )?,
    };
    Ok(Some(Target {
        is_message: kind == "message",
        sender,
        deleted,
        emoji_distinct,
        emoji_reacted,
        sender_reacted,
    }))
}

/// The user a member change acts upon (`None` if no such user) and their role in the
/// conversation (`None` if not a member).
fn subject(
    tx: &Connection,
    new: &NewEvent,
    user: UserId,
) -> Result<(Option<User>, Option<Role>), Failure> {
    let found = tx
        .prepare_cached(
            "SELECT u.username, m.role FROM users u
             LEFT JOIN members m ON m.conversation_id = ?1 AND m.user_id = u.id
             WHERE u.id = ?2",
        )?
        .query_row(params![Id(new.conversation_id.0), Id(user.0)], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<RoleColumn>>(1)?
                    .map(|RoleColumn(role)| role),
            ))
        })
        .optional()?;
    Ok(match found {
        Some((username, role)) => (Some(User { id: user, username }), role),
        None => (None, None),
    })
}
