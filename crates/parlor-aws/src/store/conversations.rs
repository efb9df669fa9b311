//! Conversations: creating direct and group ones, the views of a member's conversations
//! (members with their roles and markers, the last message in its current state, unread
//! counts), membership and contacts.
//!
//! A user's conversations come from the `by_user` index, which lags the table: each one
//! it lists is read again (strongly consistent) before it is shown, so a conversation the
//! user has left never is, and one just joined may be missing for a moment.

use std::collections::{HashMap, HashSet};

use futures::future::{try_join, try_join3};
use futures::{StreamExt, TryStreamExt};
use parlor_core::error::BackendError;
use parlor_core::events::Role;
use parlor_core::ids::{ConversationId, UserId};
use parlor_core::ports::{ConversationView, MemberView};
use parlor_core::protocol::{ConversationKind, Message, User};
use parlor_core::storage::{direct_key, nanos};
use time::OffsetDateTime;

use super::DynamoStore;
use super::calls::{self, Query, Transacted};
use super::codec::{ConversationDoc, EventDoc, Item, MemberDoc, Reader, item, n, s};
use super::error::sdk;
use super::history::{event_docs, message_of, previews};
use super::tables::MEMBERS_BY_USER;
use super::users;

/// Conversations read at once for a user's list (views, contacts).
const VIEWS_CONCURRENCY: usize = 8;
/// Member items written per BatchWriteItem call.
const BATCH_WRITE_ITEMS_MAX: usize = 25;

fn now_nanos() -> Result<i64, BackendError> {
    nanos(OffsetDateTime::now_utc()).map_err(|error| BackendError::unavailable(error.to_string()))
}

pub(super) fn conversation_key(conversation: ConversationId) -> Item {
    item([("id", s(conversation.to_string()))])
}

pub(super) fn member_key(conversation: ConversationId, user: UserId) -> Item {
    item([
        ("conversation_id", s(conversation.to_string())),
        ("user_id", s(user.to_string())),
    ])
}

/// A fresh conversation with `members` (user, role), all joining now.
fn new_conversation(
    kind: ConversationKind,
    title: Option<&str>,
    members: &[(User, Role)],
) -> Result<(ConversationDoc, Vec<MemberDoc>), BackendError> {
    let now = now_nanos()?;
    let id = ConversationId::new();
    let conversation = ConversationDoc {
        id,
        kind,
        title: title.map(str::to_owned),
        last_seq: 0,
        members_seq: 0,
        last_message_seq: 0,
        last_activity_ns: now,
        created_at_ns: now,
        member_count: members.len() as u64,
        admin_count: members
            .iter()
            .filter(|(_, role)| *role == Role::Admin)
            .count() as u64,
    };
    let members = members
        .iter()
        .map(|(user, role)| MemberDoc {
            conversation_id: id,
            user: user.clone(),
            role: *role,
            joined_at_ns: now,
            joined_seq: 0,
            last_read_seq: 0,
            last_delivered_seq: 0,
            muted: false,
        })
        .collect();
    Ok((conversation, members))
}

/// `ids` as users, or `Rejected` naming the first that does not exist.
async fn existing_users(store: &DynamoStore, ids: &[UserId]) -> Result<Vec<User>, BackendError> {
    let found = users::users(store, ids).await?;
    let by_id: HashMap<UserId, User> = found.into_iter().map(|user| (user.id, user)).collect();
    ids.iter()
        .map(|id| {
            by_id
                .get(id)
                .cloned()
                .ok_or_else(|| BackendError::rejected(format!("no user {id}")))
        })
        .collect()
}

/// The pair's conversation, if it has one.
async fn direct_of(
    store: &DynamoStore,
    pair: &str,
) -> Result<Option<ConversationId>, BackendError> {
    let found = calls::get(
        &store.client,
        &store.tables.direct_pairs,
        item([("pair", s(pair))]),
    )
    .await?;
    found
        .map(|found| Reader::new(&store.tables.direct_pairs, &found).id("conversation_id"))
        .transpose()
}

/// The direct conversation of `a` and `b` (two different users), and whether this call
/// created it: one transaction of the pair item (conditioned on its absence), the
/// conversation and its two members.
pub(super) async fn create_direct(
    store: &DynamoStore,
    a: UserId,
    b: UserId,
) -> Result<(ConversationId, bool), BackendError> {
    let pair = direct_key(a, b);
    if let Some(existing) = direct_of(store, &pair).await? {
        return Ok((existing, false));
    }
    let users = existing_users(store, &[a, b]).await?;
    // Nobody is an admin of a direct conversation: it always has exactly its two members.
    let members: Vec<(User, Role)> = users.into_iter().map(|user| (user, Role::Member)).collect();
    let (conversation, members) = new_conversation(ConversationKind::Direct, None, &members)?;
    let tables = &store.tables;
    let mut items = vec![
        calls::put(
            &tables.direct_pairs,
            item([
                ("pair", s(pair.clone())),
                ("conversation_id", s(conversation.id.to_string())),
            ]),
            Some("attribute_not_exists(pair)"),
            &[],
            Vec::new(),
        )?,
        calls::put(
            &tables.conversations,
            conversation.to_item(),
            None,
            &[],
            Vec::new(),
        )?,
    ];
    for member in &members {
        items.push(calls::put(
            &tables.members,
            member.to_item(),
            None,
            &[],
            Vec::new(),
        )?);
    }
    match calls::transact(&store.client, "put direct conversation", items).await? {
        Transacted::Committed => Ok((conversation.id, true)),
        // Another call created the pair's conversation meanwhile.
        Transacted::Cancelled(_) => match direct_of(store, &pair).await? {
            Some(existing) => Ok((existing, false)),
            None => Err(BackendError::unavailable(
                "put direct conversation: cancelled by another write",
            )),
        },
    }
}

/// A new group of `members` (distinct, the creator first), all of whom must exist: the
/// creator is its admin. The members are written first, the conversation item last: until
/// it exists, the members belong to nothing anyone can see or write to, so a crash between
/// leaves only unreachable items (a group may have more members than one transaction
/// holds).
pub(super) async fn create_group(
    store: &DynamoStore,
    title: &str,
    members: &[UserId],
) -> Result<ConversationId, BackendError> {
    let users = existing_users(store, members).await?;
    let members: Vec<(User, Role)> = users
        .into_iter()
        .enumerate()
        .map(|(index, user)| {
            let role = if index == 0 {
                Role::Admin
            } else {
                Role::Member
            };
            (user, role)
        })
        .collect();
    let (conversation, members) = new_conversation(ConversationKind::Group, Some(title), &members)?;
    for chunk in members.chunks(BATCH_WRITE_ITEMS_MAX) {
        let mut writes: Vec<aws_sdk_dynamodb::types::WriteRequest> = chunk
            .iter()
            .map(|member| {
                let put = aws_sdk_dynamodb::types::PutRequest::builder()
                    .set_item(Some(member.to_item()))
                    .build()
                    .map_err(|error| super::error::build("put members", error))?;
                Ok(aws_sdk_dynamodb::types::WriteRequest::builder()
                    .put_request(put)
                    .build())
            })
            .collect::<Result<_, BackendError>>()?;
        for round in 0.. {
            let output = store
                .client
                .batch_write_item()
                .request_items(&store.tables.members, writes)
                .send()
                .await
                .map_err(|error| sdk("put members", error))?;
            writes = output
                .unprocessed_items
                .and_then(|mut rest| rest.remove(&store.tables.members))
                .unwrap_or_default();
            if writes.is_empty() {
                break;
            }
            if round >= 10 {
                return Err(BackendError::unavailable(
                    "put members: still unprocessed after 10 rounds",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20 << round.min(5))).await;
        }
    }
    store
        .client
        .put_item()
        .table_name(&store.tables.conversations)
        .set_item(Some(conversation.to_item()))
        .send()
        .await
        .map_err(|error| sdk("put conversation", error))?;
    Ok(conversation.id)
}

pub(super) async fn member(
    store: &DynamoStore,
    conversation: ConversationId,
    user: UserId,
) -> Result<Option<MemberDoc>, BackendError> {
    let found = calls::get(
        &store.client,
        &store.tables.members,
        member_key(conversation, user),
    )
    .await?;
    found
        .map(|found| MemberDoc::from_item(&store.tables.members, &found))
        .transpose()
}

pub(super) async fn conversation(
    store: &DynamoStore,
    conversation: ConversationId,
) -> Result<Option<ConversationDoc>, BackendError> {
    let found = calls::get(
        &store.client,
        &store.tables.conversations,
        conversation_key(conversation),
    )
    .await?;
    found
        .map(|found| ConversationDoc::from_item(&store.tables.conversations, &found))
        .transpose()
}

/// Every member of `conversation`, strongly consistent, in no particular order.
pub(super) async fn member_docs(
    store: &DynamoStore,
    conversation: ConversationId,
) -> Result<Vec<MemberDoc>, BackendError> {
    let query = Query {
        table: &store.tables.members,
        index: None,
        key_condition: "conversation_id = :c",
        filter: None,
        projection: None,
        names: &[],
        values: vec![(":c", s(conversation.to_string()))],
        forward: true,
        page_items: None,
    };
    query
        .all(&store.client)
        .await?
        .iter()
        .map(|found| MemberDoc::from_item(&store.tables.members, found))
        .collect()
}

/// How many messages from others after `member`'s read marker are not deleted, and how
/// many of those mention them: one Query of the events after the marker, filtered. It
/// costs the read units of every event after the marker (filtered or not, about one unit
/// per 4 KB, doubled by the strong consistency): cheap for a member who keeps up, a page
/// of reads for one far behind.
async fn unread(store: &DynamoStore, member: &MemberDoc) -> Result<(u64, u64), BackendError> {
    let query = Query {
        table: &store.tables.events,
        index: None,
        key_condition: "conversation_id = :c AND #seq > :read",
        filter: Some("#kind = :message AND deleted = :no AND sender <> :me"),
        projection: Some("mentions"),
        names: &[("#seq", "seq"), ("#kind", "kind")],
        values: vec![
            (":c", s(member.conversation_id.to_string())),
            (":read", n(member.last_read_seq)),
            (":message", s("message")),
            (":no", super::codec::bool_value(false)),
            (":me", s(member.user.id.to_string())),
        ],
        forward: true,
        page_items: None,
    };
    let items = query.all(&store.client).await?;
    let me = member.user.id;
    let mut mentions = 0;
    for found in &items {
        let mentioned = Reader::new(&store.tables.events, found).user_ids("mentions")?;
        if mentioned.contains(&me) {
            mentions += 1;
        }
    }
    Ok((items.len() as u64, mentions))
}

/// The newest message of a conversation, in its current state.
async fn last_message(
    store: &DynamoStore,
    conversation: &ConversationDoc,
) -> Result<Option<Message>, BackendError> {
    if conversation.last_message_seq == 0 {
        return Ok(None);
    }
    let docs = event_docs(store, conversation.id, [conversation.last_message_seq]).await?;
    let Some(doc) = docs.get(&conversation.last_message_seq) else {
        return Ok(None);
    };
    let doc: EventDoc = doc.clone();
    let previews = previews(store, conversation.id, std::slice::from_ref(&doc)).await?;
    let reply_to = doc
        .message()
        .and_then(|state| state.reply_to_seq)
        .and_then(|seq| previews.get(&seq).cloned());
    Ok(message_of(&doc, reply_to))
}

/// The view `member` has of `conversation`: three reads at once (the members, the last
/// message, the unread counts).
async fn view(
    store: &DynamoStore,
    member: &MemberDoc,
    conversation: &ConversationDoc,
) -> Result<ConversationView, BackendError> {
    let (mut members, last_message, (unread_count, unread_mentions)) = try_join3(
        member_docs(store, conversation.id),
        last_message(store, conversation),
        unread(store, member),
    )
    .await?;
    // By name ignoring case, as the SQL stores order them.
    members.sort_by(|a, b| {
        (a.user.username.to_lowercase(), a.user.id)
            .cmp(&(b.user.username.to_lowercase(), b.user.id))
    });
    Ok(ConversationView {
        id: conversation.id,
        kind: conversation.kind,
        title: conversation.title.clone(),
        members: members
            .into_iter()
            .map(|other| MemberView {
                user: other.user,
                role: other.role,
                last_delivered_seq: other.last_delivered_seq,
                last_read_seq: other.last_read_seq,
            })
            .collect(),
        last_message,
        last_seq: conversation.last_seq,
        last_read_seq: member.last_read_seq,
        unread_count,
        unread_mentions,
        muted: member.muted,
    })
}

/// The conversations the `by_user` index lists for `user`, each read again: the member
/// item and the conversation, strongly consistent. Those `user` is not (or no longer) a
/// member of, and those not yet created (a group being written), are left out.
async fn memberships(
    store: &DynamoStore,
    user: UserId,
) -> Result<Vec<(MemberDoc, ConversationDoc)>, BackendError> {
    let query = Query {
        table: &store.tables.members,
        index: Some(MEMBERS_BY_USER),
        key_condition: "user_id = :u",
        filter: None,
        projection: Some("conversation_id"),
        names: &[],
        values: vec![(":u", s(user.to_string()))],
        forward: true,
        page_items: None,
    };
    let listed: Vec<ConversationId> = query
        .all(&store.client)
        .await?
        .iter()
        .map(|found| Reader::new(&store.tables.members, found).id("conversation_id"))
        .collect::<Result<_, _>>()?;
    if listed.is_empty() {
        return Ok(Vec::new());
    }
    let (members, conversations) = try_join(
        calls::batch_get(
            &store.client,
            &store.tables.members,
            listed.iter().map(|id| member_key(*id, user)).collect(),
        ),
        calls::batch_get(
            &store.client,
            &store.tables.conversations,
            listed.iter().map(|id| conversation_key(*id)).collect(),
        ),
    )
    .await?;
    let mut conversations: HashMap<ConversationId, ConversationDoc> = conversations
        .iter()
        .map(|found| {
            ConversationDoc::from_item(&store.tables.conversations, found).map(|doc| (doc.id, doc))
        })
        .collect::<Result<_, _>>()?;
    let mut found = Vec::with_capacity(members.len());
    for member in &members {
        let member = MemberDoc::from_item(&store.tables.members, member)?;
        if let Some(conversation) = conversations.remove(&member.conversation_id) {
            found.push((member, conversation));
        }
    }
    Ok(found)
}

/// Most recent activity first (then the newest created, then by id, as the SQL stores).
pub(super) async fn conversations_of(
    store: &DynamoStore,
    user: UserId,
) -> Result<Vec<ConversationView>, BackendError> {
    let mut found = memberships(store, user).await?;
    found.sort_by(|(_, a), (_, b)| {
        (b.last_activity_ns, b.created_at_ns, b.id).cmp(&(
            a.last_activity_ns,
            a.created_at_ns,
            a.id,
        ))
    });
    futures::stream::iter(found)
        .map(|(member, conversation)| async move { view(store, &member, &conversation).await })
        .buffered(VIEWS_CONCURRENCY)
        .try_collect()
        .await
}

pub(super) async fn conversation_of(
    store: &DynamoStore,
    user: UserId,
    id: ConversationId,
) -> Result<Option<ConversationView>, BackendError> {
    let (member, conversation) =
        try_join(member(store, id, user), self::conversation(store, id)).await?;
    match (member, conversation) {
        (Some(member), Some(conversation)) => Ok(Some(view(store, &member, &conversation).await?)),
        _ => Ok(None),
    }
}

pub(super) async fn is_member(
    store: &DynamoStore,
    conversation: ConversationId,
    user: UserId,
) -> Result<bool, BackendError> {
    Ok(member(store, conversation, user).await?.is_some())
}

/// By id.
pub(super) async fn members(
    store: &DynamoStore,
    conversation: ConversationId,
) -> Result<Vec<UserId>, BackendError> {
    let mut ids: Vec<UserId> = member_docs(store, conversation)
        .await?
        .into_iter()
        .map(|member| member.user.id)
        .collect();
    ids.sort();
    Ok(ids)
}

/// Everyone sharing a conversation of at most `members_max` members with `user`, by id:
/// the index query, the conversations' member counts, then the members of the small ones.
pub(super) async fn contacts(
    store: &DynamoStore,
    user: UserId,
    members_max: usize,
) -> Result<Vec<UserId>, BackendError> {
    let small: Vec<ConversationId> = memberships(store, user)
        .await?
        .into_iter()
        .filter(|(_, conversation)| conversation.member_count <= members_max as u64)
        .map(|(_, conversation)| conversation.id)
        .collect();
    let member_lists: Vec<Vec<MemberDoc>> = futures::stream::iter(small)
        .map(|id| member_docs(store, id))
        .buffer_unordered(VIEWS_CONCURRENCY)
        .try_collect()
        .await?;
    let mut contacts: HashSet<UserId> = HashSet::new();
    for list in member_lists {
        contacts.extend(list.into_iter().map(|member| member.user.id));
    }
    contacts.remove(&user);
    let mut contacts: Vec<UserId> = contacts.into_iter().collect();
    contacts.sort();
    Ok(contacts)
}
