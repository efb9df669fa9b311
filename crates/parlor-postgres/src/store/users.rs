//! Users, their credentials and last-seen times, and sessions: the bodies of those
//! [`Store`](parlor_core::ports::Store) methods.

use std::collections::HashMap;

use parlor_core::ids::UserId;
use parlor_core::ports::{Session, TokenHash};
use parlor_core::protocol::User;
use parlor_core::storage::{like_prefix, nanos};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use super::PgStore;
use super::codec::{Nanos, now_nanos, user_row};
use super::failure::Failure;

/// `None` if the name is taken (ignoring ASCII case); any other conflict is an error.
pub(super) async fn create_user(
    store: &PgStore,
    username: &str,
    password_hash: &str,
) -> Result<Option<User>, Failure> {
    let user = User {
        id: UserId::new(),
        username: username.to_owned(),
    };
    let client = store.client().await?;
    // Only a clash on the name is an answer; any other conflict is an error.
    let statement = client
        .prepare_cached(
            r#"INSERT INTO users (id, username, password_hash, created_at_ns)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT ((lower(username COLLATE "C"))) DO NOTHING"#,
        )
        .await?;
    let inserted = client
        .execute(
            &statement,
            &[&user.id.0, &user.username, &password_hash, &now_nanos()?],
        )
        .await?;
    Ok((inserted == 1).then_some(user))
}

pub(super) async fn user_credentials(
    store: &PgStore,
    username: &str,
) -> Result<Option<(User, String)>, Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            r#"SELECT id, username, password_hash FROM users
               WHERE lower(username COLLATE "C") = $1"#,
        )
        .await?;
    let folded = username.to_ascii_lowercase();
    let Some(row) = client.query_opt(&statement, &[&folded]).await? else {
        return Ok(None);
    };
    Ok(Some((user_row(&row)?, row.try_get(2)?)))
}

/// `limit` is at least 1.
pub(super) async fn users_by_prefix(
    store: &PgStore,
    prefix: &str,
    limit: u16,
) -> Result<Vec<User>, Failure> {
    let client = store.client().await?;
    // The folded name under "C" sorts as SQLite's NOCASE does, and LIKE with a
    // fixed prefix can use the users_by_folded_name index.
    let statement = client
        .prepare_cached(
            r#"SELECT id, username FROM users
               WHERE lower(username COLLATE "C") LIKE $1
               ORDER BY lower(username COLLATE "C") LIMIT $2"#,
        )
        .await?;
    // Folded as the users_by_folded_name index is (ASCII only); `\` escapes `_` and `%`, as
    // it does in SQLite.
    let pattern = like_prefix(&prefix.to_ascii_lowercase());
    let rows = client
        .query(&statement, &[&pattern, &i64::from(limit)])
        .await?;
    Ok(rows.iter().map(user_row).collect::<Result<Vec<_>, _>>()?)
}

/// The users that exist among `ids` (distinct), in that order.
pub(super) async fn users(store: &PgStore, ids: &[UserId]) -> Result<Vec<User>, Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached("SELECT id, username FROM users WHERE id = ANY($1::uuid[])")
        .await?;
    let wanted: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let mut found = HashMap::with_capacity(ids.len());
    for row in client.query(&statement, &[&wanted]).await? {
        let user = user_row(&row)?;
        found.insert(user.id, user);
    }
    // In the order asked for, as the embedded store answers.
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

pub(super) async fn set_last_seen(
    store: &PgStore,
    user: UserId,
    at: OffsetDateTime,
) -> Result<(), Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached("UPDATE users SET last_seen_ns = $2 WHERE id = $1")
        .await?;
    let updated = client.execute(&statement, &[&user.0, &nanos(at)?]).await?;
    if updated == 0 {
        return Err(Failure::Rejected(format!("no user {user}")));
    }
    Ok(())
}

/// One entry per user that exists among `ids` (distinct), in that order.
pub(super) async fn last_seen(
    store: &PgStore,
    ids: &[UserId],
) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached("SELECT id, last_seen_ns FROM users WHERE id = ANY($1::uuid[])")
        .await?;
    let wanted: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    let mut found = HashMap::with_capacity(ids.len());
    for row in client.query(&statement, &[&wanted]).await? {
        let at = row.try_get::<_, Option<Nanos>>(1)?.map(|Nanos(at)| at);
        found.insert(UserId(row.try_get(0)?), at);
    }
    Ok(ids
        .iter()
        .filter_map(|id| found.remove(id).map(|at| (*id, at)))
        .collect())
}

pub(super) async fn create_session(
    store: &PgStore,
    token: TokenHash,
    user: UserId,
    expires_at: OffsetDateTime,
) -> Result<(), Failure> {
    let client = store.client().await?;
    // An unknown user or a reused token violates a constraint: Rejected.
    let statement = client
        .prepare_cached(
            "INSERT INTO sessions (token_hash, user_id, created_at_ns, expires_at_ns)
             VALUES ($1, $2, $3, $4)",
        )
        .await?;
    client
        .execute(
            &statement,
            &[&&token.0[..], &user.0, &now_nanos()?, &nanos(expires_at)?],
        )
        .await?;
    Ok(())
}

pub(super) async fn session_user(
    store: &PgStore,
    token: TokenHash,
    now: OffsetDateTime,
) -> Result<Option<Session>, Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT u.id, u.username, s.expires_at_ns FROM sessions s
             JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1 AND s.expires_at_ns > $2",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&&token.0[..], &nanos(now)?])
        .await?;
    let session = |row: &Row| -> Result<Session, tokio_postgres::Error> {
        Ok(Session {
            user: user_row(row)?,
            expires_at: row.try_get::<_, Nanos>(2)?.0,
        })
    };
    Ok(row.as_ref().map(session).transpose()?)
}

pub(super) async fn delete_session(store: &PgStore, token: TokenHash) -> Result<(), Failure> {
    let client = store.client().await?;
    let statement = client
        .prepare_cached("DELETE FROM sessions WHERE token_hash = $1")
        .await?;
    client.execute(&statement, &[&&token.0[..]]).await?;
    Ok(())
}
