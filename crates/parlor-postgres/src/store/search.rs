//! [`Search`] on PostgreSQL full-text search: `events.search`, a `tsvector` of each
//! message's terms that the persisters make (`lexemes.rs`), with a GIN index (see
//! `0004_search.sql`), and one query that joins the matches to the searcher's memberships, so
//! a conversation they are not a member of is never read. The query's words become terms by
//! the same function, and the snippet marks the words of the body whose terms match.

use async_trait::async_trait;
use parlor_core::error::BackendError;
use parlor_core::ids::{ConversationId, UserId};
use parlor_core::search::{Search, SearchHit, SearchOrder, SearchPage, SearchQuery, snippet_where};
use parlor_core::storage::nanos_bound;

use super::PgStore;
use super::codec::{Nanos, SeqColumn};
use super::failure::{Failure, run};
use super::lexemes;

#[async_trait]
impl Search for PgStore {
    async fn search(&self, user: UserId, query: &SearchQuery) -> Result<SearchPage, BackendError> {
        run("search", search(self, user, query)).await
    }
}

async fn search(store: &PgStore, user: UserId, query: &SearchQuery) -> Result<SearchPage, Failure> {
    let rank = match query.order {
        SearchOrder::Relevance => "ts_rank_cd(e.search, q.query)",
        SearchOrder::Recent => "0::real",
    };
    // Ties broken by time, then position, so that pages never overlap. The headline is cut
    // outside the ranked subquery: for the page only, not for every match.
    let order = "rank DESC, created_at_ns DESC, conversation_id, seq DESC";
    let sql = format!(
        "WITH q AS (SELECT $2::text::tsquery AS query)
         SELECT page.conversation_id, page.seq, page.sender_id, page.created_at_ns,
                page.edited_at_ns, page.body
         FROM (
             SELECT e.conversation_id, e.seq, e.sender_id, e.created_at_ns, e.edited_at_ns,
                    e.body, {rank} AS rank
             FROM q, events e
             JOIN members m ON m.conversation_id = e.conversation_id AND m.user_id = $1
             WHERE e.search @@ q.query AND e.kind = 'message' AND NOT e.deleted
               AND ($3::uuid IS NULL OR e.conversation_id = $3)
               AND ($4::uuid IS NULL OR e.sender_id = $4)
               AND ($5::bigint IS NULL OR e.created_at_ns >= $5)
               AND ($6::bigint IS NULL OR e.created_at_ns < $6)
             ORDER BY {order}
             LIMIT $7 OFFSET $8
         ) page
         ORDER BY {order}"
    );
    let limit = query.limit_clamped();
    // The query's terms, made once: for the tsquery and for marking the snippets.
    let terms: Vec<String> = query.words().iter().map(|w| lexemes::lexeme(w)).collect();
    let client = store.client().await?;
    let statement = client.prepare_cached(&sql).await?;
    let rows = client
        .query(
            &statement,
            &[
                &user.0,
                &lexemes::tsquery(&terms, query.last_is_prefix()),
                &query.conversation.map(|ConversationId(id)| id),
                &query.sender.map(|UserId(id)| id),
                &query.after.map(nanos_bound),
                &query.before.map(nanos_bound),
                &(i64::from(limit) + 1),
                &i64::from(query.offset_clamped()),
            ],
        )
        .await?;
    let mut hits = rows
        .iter()
        .map(|row| {
            let body: String = row.try_get(5)?;
            Ok(SearchHit {
                conversation_id: ConversationId(row.try_get(0)?),
                seq: row.try_get::<_, SeqColumn>(1)?.0,
                sender_id: UserId(row.try_get(2)?),
                created_at: row.try_get::<_, Nanos>(3)?.0,
                edited_at: row.try_get::<_, Option<Nanos>>(4)?.map(|Nanos(at)| at),
                snippet: snippet_where(&body, |word| {
                    lexemes::matches(word, &terms, query.last_is_prefix())
                }),
            })
        })
        .collect::<Result<Vec<_>, Failure>>()?;
    let more = hits.len() > usize::from(limit);
    hits.truncate(usize::from(limit));
    Ok(SearchPage { hits, more })
}
