//! The store's ten tables, named from one prefix, and creating them (tests, the local
//! emulator) or deleting them (tests' cleanup). Production's tables come from the
//! CloudFormation template, which must match [`create_tables`] exactly (see the Store
//! section of the AWS design: keys, the `by_user` index of members and the `unattached`
//! index of files with their keys only, the `idle` index of blobs with `refs`, TTL on
//! sessions).

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use parlor_core::error::BackendError;

use super::error::{build, sdk};

/// The index of `members` by user: a user's conversations.
pub(super) const MEMBERS_BY_USER: &str = "by_user";
/// The sparse index of `files` by `unattached` and `created_at`: the uploads not yet
/// attached, oldest first (expiry).
pub(super) const FILES_UNATTACHED: &str = "unattached";
/// The sparse index of `blobs` by `idle` and `idle_since`, with `refs`: the blobs that may
/// have no users, longest idle first (the janitor).
pub(super) const BLOBS_IDLE: &str = "idle";

/// How long creating tables may take before `open` gives up.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// The names of the store's tables.
#[derive(Clone, Debug)]
pub(super) struct Tables {
    pub(super) users: String,
    pub(super) usernames: String,
    pub(super) sessions: String,
    pub(super) conversations: String,
    pub(super) direct_pairs: String,
    pub(super) members: String,
    pub(super) events: String,
    pub(super) requests: String,
    pub(super) files: String,
    pub(super) blobs: String,
}

impl Tables {
    pub(super) fn new(prefix: &str) -> Tables {
        let name = |table: &str| format!("{prefix}{table}");
        Tables {
            users: name("users"),
            usernames: name("usernames"),
            sessions: name("sessions"),
            conversations: name("conversations"),
            direct_pairs: name("direct_pairs"),
            members: name("members"),
            events: name("events"),
            requests: name("requests"),
            files: name("files"),
            blobs: name("blobs"),
        }
    }

    fn all(&self) -> [&str; 10] {
        [
            &self.users,
            &self.usernames,
            &self.sessions,
            &self.conversations,
            &self.direct_pairs,
            &self.members,
            &self.events,
            &self.requests,
            &self.files,
            &self.blobs,
        ]
    }
}

/// One key attribute: its name, type and role.
type KeyPart = (&'static str, ScalarAttributeType, KeyType);

fn hash(name: &'static str, kind: ScalarAttributeType) -> KeyPart {
    (name, kind, KeyType::Hash)
}

fn range(name: &'static str, kind: ScalarAttributeType) -> KeyPart {
    (name, kind, KeyType::Range)
}

fn key_schema(parts: &[KeyPart]) -> Result<Vec<KeySchemaElement>, BackendError> {
    parts
        .iter()
        .map(|(name, _, key_type)| {
            KeySchemaElement::builder()
                .attribute_name(*name)
                .key_type(key_type.clone())
                .build()
                .map_err(|error| build("create table", error))
        })
        .collect()
}

/// Creates the tables that do not exist yet (PAY_PER_REQUEST, the `by_user` index, TTL
/// on sessions) and waits until every one is active.
pub(super) async fn create_tables(client: &Client, tables: &Tables) -> Result<(), BackendError> {
    use ScalarAttributeType::{B, N, S};
    let specs: [(&str, Vec<KeyPart>); 10] = [
        (&tables.users, vec![hash("id", S)]),
        (&tables.usernames, vec![hash("first", S), range("name", S)]),
        (&tables.sessions, vec![hash("token", B)]),
        (&tables.conversations, vec![hash("id", S)]),
        (&tables.direct_pairs, vec![hash("pair", S)]),
        (
            &tables.members,
            vec![hash("conversation_id", S), range("user_id", S)],
        ),
        (
            &tables.events,
            vec![hash("conversation_id", S), range("seq", N)],
        ),
        (&tables.requests, vec![hash("key", S)]),
        (&tables.files, vec![hash("id", S)]),
        (&tables.blobs, vec![hash("key", S)]),
    ];
    for (name, parts) in &specs {
        if table_status(client, name).await?.is_some() {
            continue;
        }
        let mut request = client
            .create_table()
            .table_name(*name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_key_schema(Some(key_schema(parts)?));
        for (attribute, kind, _) in parts {
            request = request.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*attribute)
                    .attribute_type(kind.clone())
                    .build()
                    .map_err(|error| build("create table", error))?,
            );
        }
        if *name == tables.members {
            // The key of `members` reversed: the index adds no attribute definition. Keys
            // only: a user's conversations are read again from the table anyway, and an
            // update of markers (the most frequent write) then never writes the index.
            let index = GlobalSecondaryIndex::builder()
                .index_name(MEMBERS_BY_USER)
                .set_key_schema(Some(key_schema(&[
                    hash("user_id", S),
                    range("conversation_id", S),
                ])?))
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()
                .map_err(|error| build("create table", error))?;
            request = request.global_secondary_indexes(index);
        }
        // Sparse indexes, their hash key one constant while the item is in them (see
        // `files`): the uploads not yet attached (keys only: each candidate is read again
        // from the table before it is removed), and the blobs that may have no users
        // (with `refs`, which the janitor's query filters on).
        let sparse = if *name == tables.files {
            Some((FILES_UNATTACHED, "unattached", "created_at", None))
        } else if *name == tables.blobs {
            Some((BLOBS_IDLE, "idle", "idle_since", Some("refs")))
        } else {
            None
        };
        if let Some((index_name, hash_key, range_key, included)) = sparse {
            for (attribute, kind) in [(hash_key, S), (range_key, N)] {
                request = request.attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(attribute)
                        .attribute_type(kind)
                        .build()
                        .map_err(|error| build("create table", error))?,
                );
            }
            let projection = match included {
                Some(attribute) => Projection::builder()
                    .projection_type(ProjectionType::Include)
                    .non_key_attributes(attribute)
                    .build(),
                None => Projection::builder()
                    .projection_type(ProjectionType::KeysOnly)
                    .build(),
            };
            let index = GlobalSecondaryIndex::builder()
                .index_name(index_name)
                .set_key_schema(Some(key_schema(&[hash(hash_key, S), range(range_key, N)])?))
                .projection(projection)
                .build()
                .map_err(|error| build("create table", error))?;
            request = request.global_secondary_indexes(index);
        }
        match request.send().await {
            Ok(_) => {}
            // Another handle created it meanwhile.
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|error| error.is_resource_in_use_exception()) => {}
            Err(error) => return Err(sdk(&format!("create table {name}"), error)),
        }
    }
    let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
    for name in tables.all() {
        while table_status(client, name).await? != Some(TableStatus::Active) {
            if tokio::time::Instant::now() > deadline {
                return Err(BackendError::unavailable(format!(
                    "table {name} is not active after {TABLE_ACTIVE_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let ttl = TimeToLiveSpecification::builder()
        .attribute_name("ttl")
        .enabled(true)
        .build()
        .map_err(|error| build("update time to live", error))?;
    match client
        .update_time_to_live()
        .table_name(&tables.sessions)
        .time_to_live_specification(ttl)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Already enabled (a second handle, or a table that existed).
        Err(error) if error.code() == Some("ValidationException") => Ok(()),
        Err(error) => Err(sdk("update time to live of sessions", error)),
    }
}

/// `None` if the table does not exist.
async fn table_status(client: &Client, name: &str) -> Result<Option<TableStatus>, BackendError> {
    match client.describe_table().table_name(name).send().await {
        Ok(output) => Ok(output
            .table()
            .and_then(|table| table.table_status().cloned())),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|error| error.is_resource_not_found_exception()) =>
        {
            Ok(None)
        }
        Err(error) => Err(sdk(&format!("describe table {name}"), error)),
    }
}

/// Deletes every table of the store; a table already gone is fine.
pub(super) async fn delete_tables(client: &Client, tables: &Tables) -> Result<(), BackendError> {
    for name in tables.all() {
        match client.delete_table().table_name(name).send().await {
            Ok(_) => {}
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|error| error.is_resource_not_found_exception()) => {}
            Err(error) => return Err(sdk(&format!("delete table {name}"), error)),
        }
    }
    Ok(())
}
