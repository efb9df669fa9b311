//! Conversations: creating direct and group ones, the views of a member's conversations,
//! membership, contacts and read markers; the bodies of those
//! [`Store`](parlor_core::ports::Store) methods.

use std::collections::HashSet;

use futures::future::try_join;
use parlor_core::ids::{ConversationId, MessageId, Seq, UserId};
use parlor_core::ports::ConversationView;
use parlor_core::protocol::{ConversationKind, Message, User};
use parlor_core::storage::{attach_members, direct_key, kind_text, seq_param};
use tokio_postgres::Row;
use uuid::Uuid;

use super::PgStore;
use super::codec::{KindColumn, Nanos, SeqColumn, now_nanos};
use super::failure::Failure;

/// The start of a query for conversation views; callers add the `WHERE` clause.
macro_rules! select_views {
    () => {
        "SELECT c.id, c.kind, c.title, c.last_seq, m.last_read_seq,
           msg.id, msg.sender_id, msg.client_msg_id, msg.body, msg.created_at_ns
    FROM members m
    JOIN conversations c ON c.id = m.conversation_id
    LEFT JOIN messages msg ON msg.conversation_id = c.id AND msg.seq = c.last_seq"
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
    if !insert_conversation(&tx, id, kind, None, Some(&key), &[a, b]).await? {
        // Another call created the pair's conversation and committed after the
        // lookup above; this statement sees it.
        let row = tx.query_one(&existing, &[&key]).await?;
        return Ok((ConversationId(row.try_get(0)?), false));
    }
    tx.commit().await?;
    Ok((id, true))
}

/// A new group of `members` (distinct, at least one), all of whom must exist.
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
    let inserted = insert_conversation(&tx, id, kind, Some(title), None, members).await?;
    debug_assert!(inserted, "a group has no direct key to clash on");
    tx.commit().await?;
    Ok(id)
}

pub(super) async fn conversations_of(
    store: &PgStore,
    user: UserId,
) -> Result<Vec<ConversationView>, Failure> {
    let client = store.client().await?;
    let (views, members) = try_join(
        client.prepare_cached(concat!(
            select_views!(),
            " WHERE m.user_id = $1
             ORDER BY c.last_activity_at_ns DESC, c.created_at_ns DESC, c.id DESC"
        )),
        client.prepare_cached(
            r#"SELECT other.conversation_id, u.id, u.username
               FROM members m
               JOIN members other ON other.conversation_id = m.conversation_id
               JOIN users u ON u.id = other.user_id
               WHERE m.user_id = $1
               ORDER BY lower(u.username COLLATE "C")"#,
        ),
    )
    .await?;
    // Two statements, run one after the other: every conversation the first one
    // sees was committed with all its members, which never change, so the second
    // one sees them too.
    let (view_rows, member_rows) = try_join(
        client.query(&views, &[&user.0]),
        client.query(&members, &[&user.0]),
    )
    .await?;
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
    let client = store.client().await?;
    let (views, members) = try_join(
        client.prepare_cached(concat!(
            select_views!(),
            " WHERE m.user_id = $1 AND m.conversation_id = $2"
        )),
        client.prepare_cached(
            r#"SELECT m.conversation_id, u.id, u.username
               FROM members m JOIN users u ON u.id = m.user_id
               WHERE m.conversation_id = $1
               ORDER BY lower(u.username COLLATE "C")"#,
        ),
    )
    .await?;
    // Members are fetched whether or not `user` is one, to save a round trip;
    // a non-member gets `None` and never sees them.
    let (view_rows, member_rows) = try_join(
        client.query(&views, &[&user.0, &conversation.0]),
        client.query(&members, &[&conversation.0]),
    )
    .await?;
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

/// Moves `user`'s read marker forward to `seq`, clamped to the last seq; the new marker if
/// it moved. `Rejected` if `user` is not a member of `conversation`.
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
             UPDATE members m SET last_read_seq = marker.new
             FROM marker
             WHERE m.conversation_id = $1 AND m.user_id = $2
             RETURNING marker.old, marker.new",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&conversation.0, &user.0, &seq_param(seq)])
        .await?;
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

fn view_row(row: &Row) -> Result<ConversationView, tokio_postgres::Error> {
    let id = ConversationId(row.try_get(0)?);
    let last_seq = row.try_get::<_, SeqColumn>(3)?.0;
    let last_message = match row.try_get::<_, Option<Uuid>>(5)? {
        None => None,
        Some(message_id) => Some(Message {
            id: MessageId(message_id),
            conversation_id: id,
            seq: last_seq,
            sender_id: UserId(row.try_get(6)?),
            client_msg_id: row.try_get(7)?,
            body: row.try_get(8)?,
            created_at: row.try_get::<_, Nanos>(9)?.0,
        }),
    };
    Ok(ConversationView {
        id,
        kind: row.try_get::<_, KindColumn>(1)?.0,
        title: row.try_get(2)?,
        members: Vec::new(),
        last_message,
        last_seq,
        last_read_seq: row.try_get::<_, SeqColumn>(4)?.0,
    })
}

/// Fills each view's members from `(conversation id, user id, username)` rows, which come
/// ordered by name.
fn attach_member_rows(
    views: &mut [ConversationView],
    member_rows: &[Row],
) -> Result<(), tokio_postgres::Error> {
    let members = member_rows
        .iter()
        .map(|row| {
            let member = User {
                id: UserId(row.try_get(1)?),
                username: row.try_get(2)?,
            };
            Ok((ConversationId(row.try_get(0)?), member))
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    attach_members(views, members);
    Ok(())
}

/// Inserts a conversation and its members unless it is a direct one whose pair already has
/// one (committed by a concurrent call); `false` then, and nothing is inserted.
async fn insert_conversation(
    tx: &deadpool_postgres::Transaction<'_>,
    id: ConversationId,
    kind: ConversationKind,
    title: Option<&str>,
    direct_key: Option<&str>,
    members: &[UserId],
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
            "INSERT INTO members (conversation_id, user_id) SELECT $1, unnest($2::uuid[])",
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
    let member_ids: Vec<Uuid> = members.iter().map(|m| m.0).collect();
    tx.execute(&member, &[&id.0, &member_ids]).await?;
    Ok(true)
}
