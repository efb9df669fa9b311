//! Conversations: creating direct and group ones, the views of a member's conversations
//! (members with their roles and markers, the last message in its current state, unread
//! counts), membership, contacts, read and delivered markers and muting; the bodies of
//! those [`Store`](parlor_core::ports::Store) methods.

use std::collections::HashSet;

use deadpool_postgres::{Object, Transaction};
use futures::future::try_join;
use parlor_core::events::Role;
use parlor_core::ids::{ConversationId, Seq, UserId};
use parlor_core::ports::{ConversationView, MemberView};
use parlor_core::protocol::{ConversationKind, User};
use parlor_core::storage::{attach_members, direct_key, kind_text, role_text, seq_param};
use tokio_postgres::{IsolationLevel, Row};
use uuid::Uuid;

use super::PgStore;
use super::codec::{
    EVENT_FIELDS, KindColumn, RoleColumn, SeqColumn, event_fields, files_of_events, message_row,
    now_nanos,
};
use super::failure::Failure;

/// The start of a query for conversation views; callers add the `WHERE` clause on the
/// viewer's membership `m`. The last message `e` (with the one it replies to, `r`, and its
/// files, `fs`) comes first, in the columns of [`event_fields`], then the view's own from `EVENT_FIELDS` on.
/// The unread counts read the viewer's messages after their marker: with the primary key
/// (conversation_id, seq), only those rows.
macro_rules! select_views {
    () => {
        concat!(
            "SELECT ",
            event_fields!(),
            ", c.id, c.kind, c.title, c.last_seq, m.last_read_seq, m.muted,
               unread.messages, unread.mentions
             FROM members m
             JOIN conversations c ON c.id = m.conversation_id
             LEFT JOIN events e ON e.conversation_id = c.id AND e.seq = c.last_message_seq
             LEFT JOIN events r ON r.conversation_id = e.conversation_id
                 AND r.seq = e.target_seq",
            files_of_events!(),
            "
             CROSS JOIN LATERAL (
                 SELECT count(*) AS messages,
                        count(*) FILTER (WHERE strpos(u.mentions, m.user_id::text) > 0)
                            AS mentions
                 FROM events u
                 WHERE u.conversation_id = c.id AND u.seq > m.last_read_seq
                   AND u.kind = 'message' AND NOT u.deleted AND u.sender_id <> m.user_id
             ) unread"
        )
    };
}

/// The columns of a member in a view, after the conversation id.
macro_rules! member_fields {
    () => {
        "u.id, u.username, other.role, other.last_delivered_seq, other.last_read_seq"
    };
}

/// The direct conversation of `a` and `b` (two different users), and whether this call
/// created it.
pub(super) async fn create_direct(
    store: &PgStore,
    a: UserId,
    b: UserId,
) -> Result<(ConversationId, bool), Failure> {
    let key = direct_key(a, b);
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let (existing, known) = try_join(
        tx.prepare_cached("SELECT id FROM conversations WHERE direct_key = $1"),
        tx.prepare_cached("SELECT count(*) FROM users WHERE id = ANY($1::uuid[])"),
    )
    .await?;
    if let Some(row) = tx.query_opt(&existing, &[&key]).await? {
        return Ok((ConversationId(row.try_get(0)?), false));
    }
    let count: i64 = tx.query_one(&known, &[&vec![a.0, b.0]]).await?.try_get(0)?;
    if count != 2 {
        return Err(Failure::Rejected(format!("no user {a} or no user {b}")));
    }
    let id = ConversationId::new();
    let kind = ConversationKind::Direct;
    // Nobody is an admin of a direct conversation: it always has exactly its two members.
    let members = [(a, Role::Member), (b, Role::Member)];
    if !insert_conversation(&tx, id, kind, None, Some(&key), &members).await? {
        // Another call created the pair's conversation and committed after the
        // lookup above; this statement sees it.
        let row = tx.query_one(&existing, &[&key]).await?;
        return Ok((ConversationId(row.try_get(0)?), false));
    }
    tx.commit().await?;
    Ok((id, true))
}

/// A new group of `members` (distinct, the creator first), all of whom must exist: the
/// creator is its admin, everyone else a member.
pub(super) async fn create_group(
    store: &PgStore,
    title: &str,
    members: &[UserId],
) -> Result<ConversationId, Failure> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let known = tx
        .prepare_cached("SELECT id FROM users WHERE id = ANY($1::uuid[])")
        .await?;
    let wanted: Vec<Uuid> = members.iter().map(|m| m.0).collect();
    let mut found = HashSet::with_capacity(members.len());
    for row in tx.query(&known, &[&wanted]).await? {
        found.insert(UserId(row.try_get(0)?));
    }
    if let Some(missing) = members.iter().find(|m| !found.contains(m)) {
        return Err(Failure::Rejected(format!("no user {missing}")));
    }
    let id = ConversationId::new();
    let kind = ConversationKind::Group;
    let members: Vec<(UserId, Role)> = members
        .iter()
        .enumerate()
        .map(|(index, &user)| {
            (
                user,
                if index == 0 {
                    Role::Admin
                } else {
                    Role::Member
                },
            )
        })
        .collect();
    let inserted = insert_conversation(&tx, id, kind, Some(title), None, &members).await?;
    debug_assert!(inserted, "a group has no direct key to clash on");
    tx.commit().await?;
    Ok(id)
}

/// A read-only transaction on one snapshot: a view and its members agree even while
/// members come and go.
async fn snapshot(client: &mut Object) -> Result<Transaction<'_>, Failure> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

pub(super) async fn conversations_of(
    store: &PgStore,
    user: UserId,
) -> Result<Vec<ConversationView>, Failure> {
    let mut client = store.client().await?;
    let tx = snapshot(&mut client).await?;
    let (views, members) = try_join(
        tx.prepare_cached(concat!(
            select_views!(),
            " WHERE m.user_id = $1
             ORDER BY c.last_activity_at_ns DESC, c.created_at_ns DESC, c.id DESC"
        )),
        tx.prepare_cached(concat!(
            "SELECT other.conversation_id, ",
            member_fields!(),
            r#" FROM members m
               JOIN members other ON other.conversation_id = m.conversation_id
               JOIN users u ON u.id = other.user_id
               WHERE m.user_id = $1
               ORDER BY lower(u.username COLLATE "C")"#
        )),
    )
    .await?;
    let (view_rows, member_rows) =
        try_join(tx.query(&views, &[&user.0]), tx.query(&members, &[&user.0])).await?;
    tx.commit().await?;
    let mut views = view_rows
        .iter()
        .map(view_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_member_rows(&mut views, &member_rows)?;
    Ok(views)
}

pub(super) async fn conversation_of(
    store: &PgStore,
    user: UserId,
    conversation: ConversationId,
) -> Result<Option<ConversationView>, Failure> {
    let mut client = store.client().await?;
    let tx = snapshot(&mut client).await?;
    let (views, members) = try_join(
        tx.prepare_cached(concat!(
            select_views!(),
            " WHERE m.user_id = $1 AND m.conversation_id = $2"
        )),
        tx.prepare_cached(concat!(
            "SELECT other.conversation_id, ",
            member_fields!(),
            r#" FROM members other JOIN users u ON u.id = other.user_id
               WHERE other.conversation_id = $1
               ORDER BY lower(u.username COLLATE "C")"#
        )),
    )
    .await?;
    // Members are fetched whether or not `user` is one, to save a round trip;
    // a non-member gets `None` and never sees them.
    let (view_rows, member_rows) = try_join(
        tx.query(&views, &[&user.0, &conversation.0]),
        tx.query(&members, &[&conversation.0]),
    )
    .await?;
    tx.commit().await?;
    let mut views = view_rows
        .iter()
        .map(view_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_member_rows(&mut views, &member_rows)?;
    Ok(views.pop())
}

pub(super) async fn is_member(
    store: &PgStore,
    conversation: ConversationId,
    user: UserId,
) -> Result<bool, Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT EXISTS (
                 SELECT 1 FROM members WHERE conversation_id = $1 AND user_id = $2
             )",
        )
        .await?;
    let row = client
        .query_one(&statement, &[&conversation.0, &user.0])
        .await?;
    Ok(row.try_get(0)?)
}

/// By id.
pub(super) async fn members(
    store: &PgStore,
    conversation: ConversationId,
) -> Result<Vec<UserId>, Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached("SELECT user_id FROM members WHERE conversation_id = $1 ORDER BY user_id")
        .await?;
    let rows = client.query(&statement, &[&conversation.0]).await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0).map(UserId))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Everyone sharing a conversation of at most `members_max` members with `user`, by id.
pub(super) async fn contacts(
    store: &PgStore,
    user: UserId,
    members_max: i64,
) -> Result<Vec<UserId>, Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT DISTINCT other.user_id
             FROM members m
             JOIN members other ON other.conversation_id = m.conversation_id
             WHERE m.user_id = $1 AND other.user_id <> $1
               AND (SELECT count(*) FROM members c
                    WHERE c.conversation_id = m.conversation_id) <= $2
             ORDER BY other.user_id",
        )
        .await?;
    let rows = client.query(&statement, &[&user.0, &members_max]).await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0).map(UserId))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Moves `user`'s read marker forward to `seq`, clamped to the last seq, and their
/// delivered marker to at least as far; the new read marker if it moved. `Rejected` if
/// `user` is not a member of `conversation`.
pub(super) async fn mark_read(
    store: &PgStore,
    conversation: ConversationId,
    user: UserId,
    seq: Seq,
) -> Result<Option<Seq>, Failure> {
    let client = store.client().await?;
    // One statement that locks only the member row (the CTE's FOR UPDATE, which
    // reads the newest marker should an append move it meanwhile): still never
    // backwards, never past the last seq it read.
    let statement = client
        .prepare_cached(
            "WITH marker AS (
                 SELECT m.last_read_seq AS old,
                        greatest(m.last_read_seq, least($3, c.last_seq)) AS new
                 FROM members m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.conversation_id = $1 AND m.user_id = $2
                 FOR UPDATE OF m
             )
             UPDATE members m
             SET last_read_seq = marker.new,
                 last_delivered_seq = greatest(m.last_delivered_seq, marker.new)
             FROM marker
             WHERE m.conversation_id = $1 AND m.user_id = $2
             RETURNING marker.old, marker.new",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&conversation.0, &user.0, &seq_param(seq)])
        .await?;
    moved(row, conversation, user)
}

/// Moves `user`'s delivered marker forward to `seq`, clamped to the last seq; the new
/// marker if it moved. `Rejected` if `user` is not a member of `conversation`.
pub(super) async fn mark_delivered(
    store: &PgStore,
    conversation: ConversationId,
    user: UserId,
    seq: Seq,
) -> Result<Option<Seq>, Failure> {
    let client = store.client().await?;
    // As `mark_read`, on the delivered marker alone.
    let statement = client
        .prepare_cached(
            "WITH marker AS (
                 SELECT m.last_delivered_seq AS old,
                        greatest(m.last_delivered_seq, least($3, c.last_seq)) AS new
                 FROM members m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.conversation_id = $1 AND m.user_id = $2
                 FOR UPDATE OF m
             )
             UPDATE members m SET last_delivered_seq = marker.new
             FROM marker
             WHERE m.conversation_id = $1 AND m.user_id = $2
             RETURNING marker.old, marker.new",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&conversation.0, &user.0, &seq_param(seq)])
        .await?;
    moved(row, conversation, user)
}

/// A marker update's `(old, new)` row: the new marker if it moved; no row means `user` is
/// not a member.
fn moved(
    row: Option<Row>,
    conversation: ConversationId,
    user: UserId,
) -> Result<Option<Seq>, Failure> {
    let Some(row) = row else {
        return Err(Failure::Rejected(format!(
            "user {user} is not a member of conversation {conversation}"
        )));
    };
    let (old, new) = (
        row.try_get::<_, SeqColumn>(0)?.0,
        row.try_get::<_, SeqColumn>(1)?.0,
    );
    Ok((new != old).then_some(new))
}

/// `false` if `user` is not a member of `conversation`.
pub(super) async fn set_muted(
    store: &PgStore,
    conversation: ConversationId,
    user: UserId,
    muted: bool,
) -> Result<bool, Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached("UPDATE members SET muted = $3 WHERE conversation_id = $1 AND user_id = $2")
        .await?;
    let updated = client
        .execute(&statement, &[&conversation.0, &user.0, &muted])
        .await?;
    Ok(updated == 1)
}

fn view_row(row: &Row) -> Result<ConversationView, Failure> {
    let at = EVENT_FIELDS;
    let last_message = match row.try_get::<_, Option<Uuid>>(0)? {
        None => None,
        Some(_) => Some(message_row(row)?),
    };
    let count = |index: usize| -> Result<u64, tokio_postgres::Error> {
        Ok(u64::try_from(row.try_get::<_, i64>(index)?).unwrap_or(0))
    };
    Ok(ConversationView {
        id: ConversationId(row.try_get(at)?),
        kind: row.try_get::<_, KindColumn>(at + 1)?.0,
        title: row.try_get(at + 2)?,
        members: Vec::new(),
        last_message,
        last_seq: row.try_get::<_, SeqColumn>(at + 3)?.0,
        last_read_seq: row.try_get::<_, SeqColumn>(at + 4)?.0,
        muted: row.try_get(at + 5)?,
        unread_count: count(at + 6)?,
        unread_mentions: count(at + 7)?,
    })
}

/// Fills each view's members from rows of the conversation id and [`member_fields`],
/// which come ordered by name.
fn attach_member_rows(
    views: &mut [ConversationView],
    member_rows: &[Row],
) -> Result<(), tokio_postgres::Error> {
    let members = member_rows
        .iter()
        .map(|row| {
            let member = MemberView {
                user: User {
                    id: UserId(row.try_get(1)?),
                    username: row.try_get(2)?,
                },
                role: row.try_get::<_, RoleColumn>(3)?.0,
                last_delivered_seq: row.try_get::<_, SeqColumn>(4)?.0,
                last_read_seq: row.try_get::<_, SeqColumn>(5)?.0,
            };
            Ok((ConversationId(row.try_get(0)?), member))
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    attach_members(views, members);
    Ok(())
}

/// Inserts a conversation and its members with their roles (all joining now) unless it is
/// a direct one whose pair already has one (committed by a concurrent call); `false` then,
/// and nothing is inserted.
async fn insert_conversation(
    tx: &Transaction<'_>,
    id: ConversationId,
    kind: ConversationKind,
    title: Option<&str>,
    direct_key: Option<&str>,
    members: &[(UserId, Role)],
) -> Result<bool, Failure> {
    let now = now_nanos()?;
    let (conversation, member) = try_join(
        tx.prepare_cached(
            "INSERT INTO conversations
                 (id, kind, title, direct_key, last_activity_at_ns, created_at_ns)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (direct_key) DO NOTHING",
        ),
        tx.prepare_cached(
            "INSERT INTO members (conversation_id, user_id, role, joined_at_ns)
             SELECT $1, v.user_id, v.role, $4
             FROM unnest($2::uuid[], $3::text[]) AS v (user_id, role)",
        ),
    )
    .await?;
    let inserted = tx
        .execute(
            &conversation,
            &[&id.0, &kind_text(kind), &title, &direct_key, &now],
        )
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    let (member_ids, roles): (Vec<Uuid>, Vec<&str>) = members
        .iter()
        .map(|(user, role)| (user.0, role_text(*role)))
        .unzip();
    tx.execute(&member, &[&id.0, &member_ids, &roles, &now])
        .await?;
    Ok(true)
}
