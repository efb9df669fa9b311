//! Sessions: one item per token hash, with the user's name beside the id (names never
//! change) so that checking a session is one read, and `ttl` (epoch seconds) so that
//! DynamoDB deletes expired ones; until it does (up to a few days), `expires_at` decides.

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use parlor_core::error::BackendError;
use parlor_core::ids::UserId;
use parlor_core::ports::{Session, TokenHash};
use parlor_core::protocol::User;
use parlor_core::storage::nanos;
use time::OffsetDateTime;

use super::DynamoStore;
use super::calls;
use super::codec::{Reader, item, n, s, time_of_nanos};
use super::error::sdk;

fn token_key(token: TokenHash) -> AttributeValue {
    AttributeValue::B(Blob::new(token.0.to_vec()))
}

/// `Rejected` for a token already in use or an unknown user.
pub(super) async fn create_session(
    store: &DynamoStore,
    token: TokenHash,
    user: UserId,
    expires_at: OffsetDateTime,
) -> Result<(), BackendError> {
    let expires_at_ns =
        nanos(expires_at).map_err(|error| BackendError::rejected(error.to_string()))?;
    let Some(found) = calls::get(
        &store.client,
        &store.tables.users,
        item([("id", s(user.to_string()))]),
    )
    .await?
    else {
        return Err(BackendError::rejected(format!("no user {user}")));
    };
    let username = Reader::new(&store.tables.users, &found).s("username")?;
    // Whole seconds, rounded up: DynamoDB's TTL never deletes a session before it ends.
    let ttl = expires_at.unix_timestamp() + i64::from(expires_at.nanosecond() > 0);
    let result = store
        .client
        .put_item()
        .table_name(&store.tables.sessions)
        .set_item(Some(item([
            ("token", token_key(token)),
            ("user_id", s(user.to_string())),
            ("username", s(username)),
            ("expires_at", n(expires_at_ns)),
            ("ttl", n(ttl)),
        ])))
        .condition_expression("attribute_not_exists(#token)")
        .expression_attribute_names("#token", "token")
        .send()
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Err(BackendError::rejected("the session token is in use"))
        }
        Err(error) => Err(sdk("put session", error)),
    }
}

pub(super) async fn session_user(
    store: &DynamoStore,
    token: TokenHash,
    now: OffsetDateTime,
) -> Result<Option<Session>, BackendError> {
    let Some(found) = calls::get(
        &store.client,
        &store.tables.sessions,
        item([("token", token_key(token))]),
    )
    .await?
    else {
        return Ok(None);
    };
    let r = Reader::new(&store.tables.sessions, &found);
    let expires_at = time_of_nanos(r.n("expires_at")?);
    if expires_at <= now {
        return Ok(None);
    }
    Ok(Some(Session {
        user: User {
            id: r.id("user_id")?,
            username: r.s("username")?.to_owned(),
        },
        expires_at,
    }))
}

/// Deleting what is not there is fine.
pub(super) async fn delete_session(
    store: &DynamoStore,
    token: TokenHash,
) -> Result<(), BackendError> {
    store
        .client
        .delete_item()
        .table_name(&store.tables.sessions)
        .key("token", token_key(token))
        .send()
        .await
        .map_err(|error| sdk("delete session", error))?;
    Ok(())
}
