//! `GET /api/v1/search`: full-text search over the messages the caller can read. The
//! query string is checked here; what matches and who may see it is the [`Search`]
//! port's (membership is part of its query, never a filter applied afterwards).
//!
//! [`Search`]: parlor_core::search::Search

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use parlor_core::search::{self, QueryError, SearchHit, SearchOrder, SearchQuery, SnippetPart};
use parlor_core::{ConversationId, ErrorCode, Seq, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Gateway;
use super::actions::MembershipCache;
use super::extract::Caller;
use super::http::{HttpError, query_of};

#[derive(Deserialize)]
pub struct SearchParams {
    q: String,
    conversation_id: Option<String>,
    sender_id: Option<String>,
    after: Option<String>,
    before: Option<String>,
    sort: Option<String>,
    /// The opaque `next_cursor` of the previous page.
    cursor: Option<String>,
    limit: Option<u16>,
}

#[derive(Serialize)]
pub struct Hit {
    conversation_id: ConversationId,
    seq: Seq,
    sender_id: UserId,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    edited_at: Option<OffsetDateTime>,
    snippet: Vec<SnippetPart>,
}

#[derive(Serialize)]
pub struct Hits {
    hits: Vec<Hit>,
    /// Present when more hits follow: pass it back as `cursor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

fn invalid(message: impl Into<String>) -> HttpError {
    HttpError::new(ErrorCode::InvalidInput, message)
}

fn time_param(name: &str, text: Option<&str>) -> Result<Option<OffsetDateTime>, HttpError> {
    text.map(|text| {
        OffsetDateTime::parse(text, &Rfc3339)
            .map_err(|_| invalid(format!("{name} is an RFC 3339 time")))
    })
    .transpose()
}

pub async fn search(
    State(gateway): State<Arc<Gateway>>,
    caller: Caller,
    params: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Hits>, HttpError> {
    let Some(engine) = gateway.deps.search.clone() else {
        return Err(HttpError::new(
            ErrorCode::NotAvailable,
            "search is not available on this server",
        ));
    };
    let params = query_of(params)?;
    gateway
        .limits
        .searches
        .check(&caller.user.id)
        .map_err(|wait| {
            HttpError(parlor_core::error::ApiError::rate_limited(
                "too many searches; slow down",
                wait,
            ))
        })?;

    let mut query = SearchQuery::new(&params.q).map_err(|error| match error {
        QueryError::NoWords => invalid("q needs at least one word"),
        QueryError::TooLong => invalid(error.to_string()),
    })?;
    query.limit = params.limit.unwrap_or(20);
    if query.limit == 0 || query.limit > search::PAGE_MAX {
        return Err(invalid(format!("limit is 1 to {}", search::PAGE_MAX)));
    }
    query.offset = match params.cursor.as_deref() {
        None => 0,
        Some(cursor) => cursor
            .parse::<u32>()
            .ok()
            .filter(|&offset| offset <= search::OFFSET_MAX)
            .ok_or_else(|| invalid("cursor is not one this server gave"))?,
    };
    query.order = match params.sort.as_deref() {
        None => SearchOrder::Relevance,
        Some(sort) => {
            SearchOrder::parse(sort).ok_or_else(|| invalid("sort is relevance or recent"))?
        }
    };
    query.after = time_param("after", params.after.as_deref())?;
    query.before = time_param("before", params.before.as_deref())?;
    query.sender = params
        .sender_id
        .as_deref()
        .map(|id| id.parse().map_err(|_| invalid("sender_id is a user id")))
        .transpose()?;
    if let Some(id) = params.conversation_id.as_deref() {
        // The same not_found as the conversation's history gives a non-member.
        let conversation = gateway
            .member_conversation(caller.user.id, id, &mut MembershipCache::default())
            .await?;
        query.conversation = Some(conversation);
    }

    let page = engine.search(caller.user.id, &query).await?;
    let next = query.offset + u32::from(query.limit);
    let next_cursor = (page.more && next <= search::OFFSET_MAX).then(|| next.to_string());
    Ok(Json(Hits {
        hits: page.hits.into_iter().map(hit).collect(),
        next_cursor,
    }))
}

fn hit(hit: SearchHit) -> Hit {
    Hit {
        conversation_id: hit.conversation_id,
        seq: hit.seq,
        sender_id: hit.sender_id,
        created_at: hit.created_at,
        edited_at: hit.edited_at,
        snippet: hit.snippet,
    }
}
