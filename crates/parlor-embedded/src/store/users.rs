//! Users, their credentials and last-seen times, and sessions: the transaction bodies of
//! those [`Store`](parlor_core::ports::Store) methods.

use parlor_core::ids::UserId;
use parlor_core::ports::{Session, TokenHash};
use parlor_core::protocol::User;
use parlor_core::storage::nanos;
use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::codec::{Id, Nanos, now_nanos, user_row};
use super::failure::Failure;

/// `None` if the name is taken (ignoring case); any other conflict is an error.
pub(super) fn create_user(
    tx: &Connection,
    user: User,
    password_hash: &str,
) -> Result<Option<User>, Failure> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO users (id, username, password_hash, created_at_ns)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (username) DO NOTHING",
        )?
        .execute(params![
            Id(user.id.0),
            user.username,
            password_hash,
            now_nanos()?
        ])?;
    Ok((inserted == 1).then_some(user))
}

pub(super) fn user_credentials(
    tx: &Connection,
    username: &str,
) -> Result<Option<(User, String)>, Failure> {
    let found = tx
        .prepare_cached("SELECT id, username, password_hash FROM users WHERE username = ?1")?
        .query_row(params![username], |row| Ok((user_row(row)?, row.get(2)?)))
        .optional()?;
    Ok(found)
}

/// `pattern` is a [`like_prefix`](parlor_core::storage::like_prefix).
pub(super) fn users_by_prefix(
    tx: &Connection,
    pattern: &str,
    limit: u16,
) -> Result<Vec<User>, Failure> {
    // `username` is COLLATE NOCASE, so LIKE ignores ASCII case and can use its index;
    // usernames are ASCII by validation.
    let users = tx
        .prepare_cached(
            "SELECT id, username FROM users WHERE username LIKE ?1 ESCAPE '\\'
             ORDER BY username LIMIT ?2",
        )?
        .query_map(params![pattern, limit], user_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(users)
}

/// The users that exist among `ids` (distinct), in that order.
pub(super) fn users(tx: &Connection, ids: &[UserId]) -> Result<Vec<User>, Failure> {
    let mut statement = tx.prepare_cached("SELECT id, username FROM users WHERE id = ?1")?;
    let mut users = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(user) = statement
            .query_row(params![Id(id.0)], user_row)
            .optional()?
        {
            users.push(user);
        }
    }
    Ok(users)
}

pub(super) fn set_last_seen(
    tx: &Connection,
    user: UserId,
    at: OffsetDateTime,
) -> Result<(), Failure> {
    let updated = tx
        .prepare_cached("UPDATE users SET last_seen_ns = ?2 WHERE id = ?1")?
        .execute(params![Id(user.0), nanos(at)?])?;
    if updated == 0 {
        return Err(Failure::Rejected(format!("no user {user}")));
    }
    Ok(())
}

/// One entry per user that exists among `ids` (distinct), in that order.
pub(super) fn last_seen(
    tx: &Connection,
    ids: &[UserId],
) -> Result<Vec<(UserId, Option<OffsetDateTime>)>, Failure> {
    let mut statement = tx.prepare_cached("SELECT last_seen_ns FROM users WHERE id = ?1")?;
    let mut seen = Vec::with_capacity(ids.len());
    for &id in ids {
        let found = statement
            .query_row(params![Id(id.0)], |row| row.get::<_, Option<Nanos>>(0))
            .optional()?;
        if let Some(at) = found {
            seen.push((id, at.map(|Nanos(at)| at)));
        }
    }
    Ok(seen)
}

pub(super) fn create_session(
    tx: &Connection,
    token: TokenHash,
    user: UserId,
    expires_at: OffsetDateTime,
) -> Result<(), Failure> {
    // An unknown user or a reused token violates a constraint: Rejected.
    tx.prepare_cached(
        "INSERT INTO sessions (token_hash, user_id, created_at_ns, expires_at_ns)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        &token.0[..],
        Id(user.0),
        now_nanos()?,
        nanos(expires_at)?
    ])?;
    Ok(())
}

pub(super) fn session_user(
    tx: &Connection,
    token: TokenHash,
    now: OffsetDateTime,
) -> Result<Option<Session>, Failure> {
    let session = tx
        .prepare_cached(
            "SELECT u.id, u.username, s.expires_at_ns FROM sessions s
             JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = ?1 AND s.expires_at_ns > ?2",
        )?
        .query_row(params![&token.0[..], nanos(now)?], |row| {
            Ok(Session {
                user: user_row(row)?,
                expires_at: row.get::<_, Nanos>(2)?.0,
            })
        })
        .optional()?;
    Ok(session)
}

pub(super) fn delete_session(tx: &Connection, token: TokenHash) -> Result<(), Failure> {
    tx.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
        .execute(params![&token.0[..]])?;
    Ok(())
}
