//! What a change depends on, read in SQL for `parlor_core::rules::check`: [`gather`] reads
//! the [`Facts`] of one change in one statement (one snapshot, one round trip), for
//! [`refusal`] (the gateway's check) and for `append_events` inside its write transaction;
//! and [`Mentioned`], the members a batch of bodies names with `@`, resolved by one
//! statement. The rules themselves live only in `parlor_core::rules`.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use futures::future::try_join3;
use parlor_core::error::ApiError;
use parlor_core::events::{Change, Role};
use parlor_core::ids::{ConversationId, Seq, UserId};
use parlor_core::ports::NewEvent;
use parlor_core::protocol::ConversationKind;
use parlor_core::rules::{self, Facts, Target};
use parlor_core::storage::seq_param;
use uuid::Uuid;

use super::PgStore;
use super::append::has_nul;
use super::codec::{KindColumn, RoleColumn};
use super::failure::Failure;
use super::files::{self, Lock};

/// The facts of one change, and what storing it needs besides.
pub(super) struct Gathered {
    pub(super) facts: Facts,
    /// The subject's username, if the user exists (a `member_added` event names them).
    pub(super) subject_name: Option<String>,
    /// For a departure: the longest-standing member who stays, promoted if the last admin
    /// goes.
    pub(super) successor: Option<UserId>,
    /// The body of the event at the target seq, if there is one: a reply's excerpt.
    pub(super) target_body: Option<String>,
}

/// The facts of a conversation that does not exist: nobody is a member of it, and with no
/// sender role no other fact is looked at (the kind is any).
pub(super) fn no_conversation() -> Facts {
    Facts {
        kind: ConversationKind::Group,
        sender_role: None,
        target: None,
        subject_role: None,
        subject_exists: false,
        admins: 0,
        members: 0,
        files: Vec::new(),
    }
}

/// The message a change points at (`target_seq`, `reply_to_seq`).
pub(super) fn target_seq(change: &Change) -> Option<Seq> {
    match change {
        Change::Message { reply_to_seq, .. } => *reply_to_seq,
        Change::Edit { target_seq, .. }
        | Change::Delete { target_seq }
        | Change::ReactionAdded { target_seq, .. }
        | Change::ReactionRemoved { target_seq, .. } => Some(*target_seq),
        _ => None,
    }
}

/// The user a member change acts upon; for `member_left`, the sender.
pub(super) fn subject(sender: UserId, change: &Change) -> Option<UserId> {
    match change {
        Change::MemberAdded { user_id }
        | Change::MemberRemoved { user_id }
        | Change::RoleChanged { user_id, .. } => Some(*user_id),
        Change::MemberLeft {} => Some(sender),
        _ => None,
    }
}

/// The member who goes, if the change is a departure.
pub(super) fn departing(sender: UserId, change: &Change) -> Option<UserId> {
    match change {
        Change::MemberRemoved { user_id } => Some(*user_id),
        Change::MemberLeft {} => Some(sender),
        _ => None,
    }
}

/// The facts `new` depends on, as the database has them now (inside a transaction: as it
/// has them, with this transaction's own changes), but for the files a message attaches:
/// those are read by [`files::attachable`] (locked inside the append's transaction).
///
/// The counts of admins and members are read for member changes only (the only ones whose
/// rules look at them): counting a large group's members for every message would cost the
/// hot path a scan of its member list. The emoji facts are read for reactions only.
pub(super) async fn gather(
    client: &impl GenericClient,
    new: &NewEvent,
) -> Result<Gathered, Failure> {
    let statement = client
        .prepare_cached(
            "SELECT c.kind,
                    (SELECT role FROM members
                     WHERE conversation_id = c.id AND user_id = $2),
                    t.kind, t.sender_id, t.deleted,
                    CASE WHEN $4::text IS NULL OR t.seq IS NULL THEN 0 ELSE
                        (SELECT count(DISTINCT x.emoji) FROM reactions x
                         WHERE x.conversation_id = c.id AND x.seq = t.seq) END,
                    CASE WHEN $4::text IS NULL OR t.seq IS NULL THEN false ELSE
                        EXISTS (SELECT 1 FROM reactions x
                                WHERE x.conversation_id = c.id AND x.seq = t.seq
                                  AND x.emoji = $4) END,
                    CASE WHEN $4::text IS NULL OR t.seq IS NULL THEN false ELSE
                        EXISTS (SELECT 1 FROM reactions x
                                WHERE x.conversation_id = c.id AND x.seq = t.seq
                                  AND x.emoji = $4 AND x.user_id = $2) END,
                    (SELECT role FROM members
                     WHERE conversation_id = c.id AND user_id = $5),
                    (SELECT username FROM users WHERE id = $5),
                    n.admins, n.members,
                    (SELECT user_id FROM members
                     WHERE conversation_id = c.id AND user_id <> $7
                     ORDER BY joined_at_ns, user_id LIMIT 1),
                    t.body
             FROM conversations c
             LEFT JOIN events t ON t.conversation_id = c.id AND t.seq = $3
             CROSS JOIN LATERAL (
                 SELECT count(*) FILTER (WHERE role = 'admin') AS admins, count(*) AS members
                 FROM members WHERE conversation_id = c.id AND $6
             ) n
             WHERE c.id = $1",
        )
        .await?;
    let change = &new.change;
    let target = target_seq(change).map(seq_param);
    let emoji = match change {
        Change::ReactionAdded { emoji, .. } | Change::ReactionRemoved { emoji, .. } => {
            Some(emoji.as_str())
        }
        _ => None,
    };
    let subject = subject(new.sender_id, change).map(|user| user.0);
    let departing = departing(new.sender_id, change).map(|user| user.0);
    let counts = change.changes_members();
    let row = client
        .query_opt(
            &statement,
            &[
                &new.conversation_id.0,
                &new.sender_id.0,
                &target,
                &emoji,
                &subject,
                &counts,
                &departing,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Gathered {
            facts: no_conversation(),
            subject_name: None,
            successor: None,
            target_body: None,
        });
    };
    let target = match row.try_get::<_, Option<&str>>(2)? {
        None => None,
        Some(kind) => Some(Target {
            is_message: kind == "message",
            sender: UserId(row.try_get(3)?),
            deleted: row.try_get(4)?,
            emoji_distinct: count(row.try_get(5)?),
            emoji_reacted: row.try_get(6)?,
            sender_reacted: row.try_get(7)?,
        }),
    };
    let subject_name: Option<String> = row.try_get(9)?;
    let facts = Facts {
        kind: row.try_get::<_, KindColumn>(0)?.0,
        sender_role: role(row.try_get(1)?),
        target,
        subject_role: role(row.try_get(8)?),
        subject_exists: subject_name.is_some(),
        admins: count(row.try_get(10)?),
        members: count(row.try_get(11)?),
        files: Vec::new(),
    };
    Ok(Gathered {
        facts,
        subject_name,
        successor: row.try_get::<_, Option<Uuid>>(12)?.map(UserId),
        target_body: row.try_get(13)?,
    })
}

fn role(column: Option<RoleColumn>) -> Option<Role> {
    column.map(|role| role.0)
}

/// A `count(*)`, never negative.
fn count(value: i64) -> usize {
    usize::try_from(value).unwrap_or(0)
}

/// Members named by `@name` in some bodies, by conversation and folded name: what
/// `parlor_core::validate::mention_names` found, resolved against the members as they are
/// when the bodies are stored.
#[derive(Default)]
pub(super) struct Mentioned(HashMap<(ConversationId, String), UserId>);

impl Mentioned {
    /// Looks up every `(conversation, folded name)` of `names` in one statement; names that
    /// are no member's are absent.
    pub(super) async fn lookup(
        client: &impl GenericClient,
        names: &[(ConversationId, String)],
    ) -> Result<Mentioned, Failure> {
        if names.is_empty() {
            return Ok(Mentioned::default());
        }
        let statement = client
            .prepare_cached(
                r#"SELECT m.conversation_id, lower(u.username COLLATE "C"), u.id
                   FROM members m JOIN users u ON u.id = m.user_id
                   WHERE (m.conversation_id, lower(u.username COLLATE "C")) IN
                       (SELECT * FROM unnest($1::uuid[], $2::text[]))"#,
            )
            .await?;
        let (conversations, folded): (Vec<Uuid>, Vec<&str>) = names
            .iter()
            .map(|(conversation, name)| (conversation.0, name.as_str()))
            .unzip();
        let rows = client.query(&statement, &[&conversations, &folded]).await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in rows {
            found.insert(
                (ConversationId(row.try_get(0)?), row.try_get(1)?),
                UserId(row.try_get(2)?),
            );
        }
        Ok(Mentioned(found))
    }

    /// The members `names` (folded, in the order they appear) mention in `conversation`.
    pub(super) fn resolve(&self, conversation: ConversationId, names: &[String]) -> Vec<UserId> {
        names
            .iter()
            .filter_map(|name| self.0.get(&(conversation, name.clone())).copied())
            .collect()
    }
}

/// The error `append_events` would answer for `new` now, if any: none for a change stored
/// before (a duplicate) or text it would reject whatever the rules say (NUL, which
/// validation keeps out before this).
pub(super) async fn refusal(store: &PgStore, new: &NewEvent) -> Result<Option<ApiError>, Failure> {
    if has_nul(new) {
        return Ok(None);
    }
    let client = store.client().await?;
    let stored = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM events WHERE sender_id = $1 AND client_msg_id = $2)",
        )
        .await?;
    let file_ids = match &new.change {
        Change::Message { files, .. } => files.as_slice(),
        _ => &[],
    };
    // Statements sent together, each on its own snapshot: a change stored between them is
    // stored, and answers as a duplicate whatever the facts say.
    let (stored, mut gathered, found) = try_join3(
        async {
            Ok(client
                .query_one(&stored, &[&new.sender_id.0, &new.client_msg_id])
                .await?)
        },
        gather(&client, new),
        files::attachable(&client, file_ids, Lock::None),
    )
    .await?;
    if stored.try_get::<_, bool>(0)? {
        return Ok(None);
    }
    gathered.facts.files = files::facts(file_ids, &found);
    Ok(rules::check(new.sender_id, &new.change, &gathered.facts).err())
}
