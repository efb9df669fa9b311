//! Users: creating them (a name is unique ignoring case: the `usernames` item, keyed by the
//! lowercased name, is put in the same transaction as the user), credentials by name,
//! prefix search, lookups by id and last seen.

use futures::{StreamExt, TryStreamExt};
use parlor_core::error::BackendError;
use parlor_core::ids::UserId;
use parlor_core::protocol::User;
use parlor_core::storage::nanos;
use time::OffsetDateTime;

use super::DynamoStore;
use super::calls::{self, Query, Transacted};
use super::codec::{Item, Reader, folded_name, item, n, s, time_of_nanos};
use super::error::sdk;

/// The first characters a valid username can start with once lowercased, in byte order
/// (`parlor_core::validate::username`): the partitions an empty prefix reads, in turn.
const FIRST_CHARACTERS: &str = "-.0123456789_abcdefghijklmnopqrstuvwxyz";

/// `None` when the name is taken ignoring case. Two items in one transaction: the
/// `usernames` item (absent, or the name is taken) and the user.
pub(super) async fn create_user(
    store: &DynamoStore,
    username: &str,
    password_hash: &str,
) -> Result<Option<User>, BackendError> {
    let user = User {
        id: UserId::new(),
        username: username.to_owned(),
    };
    let (first, folded) = folded_name(username);
    let tables = &store.tables;
    let items = vec![
        calls::put(
            &tables.usernames,
            item([
                ("first", s(first)),
                ("name", s(folded)),
                ("user_id", s(user.id.to_string())),
                ("username", s(username)),
            ]),
            Some("attribute_not_exists(#name)"),
            &[("#name", "name")],
            Vec::new(),
        )?,
        calls::put(
            &tables.users,
            item([
                ("id", s(user.id.to_string())),
                ("username", s(username)),
                ("password_hash", s(password_hash)),
            ]),
            Some("attribute_not_exists(id)"),
            &[],
            Vec::new(),
        )?,
    ];
    match calls::transact(&store.client, "put user", items).await? {
        Transacted::Committed => Ok(Some(user)),
        Transacted::Cancelled(reasons) if reasons[0] == "ConditionalCheckFailed" => Ok(None),
        Transacted::Cancelled(reasons) => Err(BackendError::unavailable(format!(
            "put user: cancelled by another write: {reasons:?}"
        ))),
    }
}

/// The `usernames` item of `username`, ignoring case.
async fn name_item(store: &DynamoStore, username: &str) -> Result<Option<Item>, BackendError> {
    let (first, folded) = folded_name(username);
    if first.is_empty() {
        return Ok(None);
    }
    calls::get(
        &store.client,
        &store.tables.usernames,
        item([("first", s(first)), ("name", s(folded))]),
    )
    .await
}

pub(super) async fn user_credentials(
    store: &DynamoStore,
    username: &str,
) -> Result<Option<(User, String)>, BackendError> {
    let Some(name) = name_item(store, username).await? else {
        return Ok(None);
    };
    let user_id: UserId = Reader::new(&store.tables.usernames, &name).id("user_id")?;
    let Some(found) = calls::get(
        &store.client,
        &store.tables.users,
        item([("id", s(user_id.to_string()))]),
    )
    .await?
    else {
        return Ok(None);
    };
    let r = Reader::new(&store.tables.users, &found);
    Ok(Some((
        User {
            id: user_id,
            username: r.s("username")?.to_owned(),
        },
        r.s("password_hash")?.to_owned(),
    )))
}

/// The user whose name is folded to `folded` (lowercase), if any: what a mention names.
pub(super) async fn user_named(
    store: &DynamoStore,
    folded: &str,
) -> Result<Option<UserId>, BackendError> {
    match name_item(store, folded).await? {
        None => Ok(None),
        Some(name) => Ok(Some(
            Reader::new(&store.tables.usernames, &name).id("user_id")?,
        )),
    }
}

/// Partitions an empty prefix queries at once (each costs a round trip, most are empty).
const PARTITIONS_AT_ONCE: usize = 8;

/// By lowercased name (the sort key), where `_` sorts before letters. A prefix reads its
/// first character's partition; the empty prefix reads the partitions in order, several
/// at once, until `limit` are found.
pub(super) async fn users_by_prefix(
    store: &DynamoStore,
    prefix: &str,
    limit: u16,
) -> Result<Vec<User>, BackendError> {
    let limit = usize::from(limit);
    let (first, folded) = folded_name(prefix);
    let partitions: Vec<String> = if first.is_empty() {
        FIRST_CHARACTERS.chars().map(String::from).collect()
    } else {
        vec![first]
    };
    let mut pages = futures::stream::iter(partitions)
        .map(|partition| names_in(store, partition, &folded, limit))
        .buffered(PARTITIONS_AT_ONCE);
    let mut found = Vec::new();
    while let Some(page) = pages.try_next().await? {
        found.extend(page);
        if found.len() >= limit {
            found.truncate(limit);
            break;
        }
    }
    Ok(found)
}

/// Up to `limit` users of one partition of `usernames` whose folded name starts with
/// `folded`, by name.
async fn names_in(
    store: &DynamoStore,
    partition: String,
    folded: &str,
    limit: usize,
) -> Result<Vec<User>, BackendError> {
    // A key condition cannot compare with an empty string: the whole partition then.
    let (key_condition, names, mut values): (_, &[(&str, &str)], _) = if folded.is_empty() {
        ("#first = :first", &[("#first", "first")], Vec::new())
    } else {
        (
            "#first = :first AND begins_with(#name, :prefix)",
            &[("#first", "first"), ("#name", "name")],
            vec![(":prefix", s(folded))],
        )
    };
    values.push((":first", s(partition)));
    let query = Query {
        table: &store.tables.usernames,
        index: None,
        key_condition,
        filter: None,
        projection: None,
        names,
        values,
        forward: true,
        page_items: Some(i32::try_from(limit).unwrap_or(i32::MAX)),
    };
    let items = query
        .run(&store.client, |items| items.len() >= limit)
        .await?;
    items
        .iter()
        .take(limit)
        .map(|name| {
            let r = Reader::new(&store.tables.usernames, name);
            Ok(User {
                id: r.id("user_id")?,
                username: r.s("username")?.to_owned(),
            })
        })
        .collect()
}

/// The user items among `ids` (distinct), strongly consistent.
async fn user_items(store: &DynamoStore, ids: &[UserId]) -> Result<Vec<Item>, BackendError> {
    let keys = ids
        .iter()
        .map(|id| item([("id", s(id.to_string()))]))
        .collect();
    calls::batch_get(&store.client, &store.tables.users, keys).await
}

pub(super) async fn users(store: &DynamoStore, ids: &[UserId]) -> Result<Vec<User>, BackendError> {
    user_items(store, ids)
        .await?
        .iter()
        .map(|found| {
            let r = Reader::new(&store.tables.users, found);
            Ok(User {
                id: r.id("id")?,
                username: r.s("username")?.to_owned(),
            })
        })
        .collect()
}

/// `Rejected` for an unknown user (the update is conditioned on the user existing).
pub(super) async fn set_last_seen(
    store: &DynamoStore,
    user: UserId,
    at: OffsetDateTime,
) -> Result<(), BackendError> {
    let at_ns = nanos(at).map_err(|error| BackendError::rejected(error.to_string()))?;
    let result = store
        .client
        .update_item()
        .table_name(&store.tables.users)
        .key("id", s(user.to_string()))
        .update_expression("SET last_seen = :at")
        .condition_expression("attribute_exists(id)")
        .expression_attribute_values(":at", n(at_ns))
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Err(BackendError::rejected(format!("no user {user}")))
        }
        Err(error) => Err(sdk("update user", error)),
    }
}

pub(super) async fn last_seen(
    store: &DynamoStore,
    ids: &[UserId],
) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, BackendError> {
    user_items(store, ids)
        .await?
        .iter()
        .map(|found| {
            let r = Reader::new(&store.tables.users, found);
            Ok((r.id("id")?, r.opt_n("last_seen")?.map(time_of_nanos)))
        })
        .collect()
}
