//! [`Search`] on SQLite's FTS5: `message_search` indexes the bodies of message rows (kept by
//! triggers, see the schema), and one query joins the hits to the searcher's memberships,
//! so a conversation they are not a member of is never read.

use async_trait::async_trait;
use parlor_core::error::BackendError;
use parlor_core::ids::{ConversationId, UserId};
use parlor_core::search::{
    ELLIPSIS, HIT_END, HIT_START, Search, SearchHit, SearchOrder, SearchPage, SearchQuery,
    snippet_parts,
};
use parlor_core::storage::nanos_bound;
use rusqlite::{Connection, params};

use super::SqliteStore;
use super::codec::{Id, Nanos, SeqColumn};
use super::failure::Failure;

/// How many tokens a snippet shows around the matches.
const SNIPPET_TOKENS: i64 = 24;

#[async_trait]
impl Search for SqliteStore {
    async fn search(&self, user: UserId, query: &SearchQuery) -> Result<SearchPage, BackendError> {
        let query = query.clone();
        self.read("search", move |tx| search(tx, user, &query))
            .await
    }
}

/// Every word quoted (words are letters and digits only, so nothing in them is syntax);
/// the last one as a prefix if the query says so.
fn match_expression(query: &SearchQuery) -> String {
    let mut expression = query
        .words()
        .iter()
        .map(|word| format!("\"{word}\""))
        .collect::<Vec<_>>()
        .join(" ");
    if query.last_is_prefix() {
        expression.push('*');
    }
    expression
}

fn search(tx: &Connection, user: UserId, query: &SearchQuery) -> Result<SearchPage, Failure> {
    // Ties broken by time, then position, so that pages never overlap.
    let order = match query.order {
        SearchOrder::Relevance => {
            "bm25(message_search), e.created_at_ns DESC, e.conversation_id, e.seq DESC"
        }
        // Newest stored first: FTS5 walks its index backwards and stops once the page is
        // full, instead of sorting every match (a common word matches hundreds of thousands).
        // Stored order is each conversation's seq order, and across conversations the order
        // the persister stored them in, which follows acceptance.
        SearchOrder::Recent => "message_search.rowid DESC",
    };
    let sql = format!(
        "SELECT e.conversation_id, e.seq, e.sender_id, e.created_at_ns, e.edited_at_ns,
                snippet(message_search, 0, ?2, ?3, ?4, ?5)
         FROM message_search
         JOIN events e ON e.rowid = message_search.rowid
         JOIN members m ON m.conversation_id = e.conversation_id AND m.user_id = ?1
         WHERE message_search MATCH ?6
           AND e.kind = 'message' AND e.deleted = 0
           AND (?7 IS NULL OR e.conversation_id = ?7)
           AND (?8 IS NULL OR e.sender_id = ?8)
           AND (?9 IS NULL OR e.created_at_ns >= ?9)
           AND (?10 IS NULL OR e.created_at_ns < ?10)
         ORDER BY {order}
         LIMIT ?11 OFFSET ?12"
    );
    let limit = query.limit_clamped();
    let mut statement = tx.prepare_cached(&sql)?;
    let rows = statement.query_map(
        params![
            Id(user.0),
            HIT_START.to_string(),
            HIT_END.to_string(),
            ELLIPSIS,
            SNIPPET_TOKENS,
            match_expression(query),
            query.conversation.map(|ConversationId(id)| Id(id)),
            query.sender.map(|UserId(id)| Id(id)),
            query.after.map(nanos_bound),
            query.before.map(nanos_bound),
            i64::from(limit) + 1,
            i64::from(query.offset_clamped()),
        ],
        |row| {
            Ok(SearchHit {
                conversation_id: ConversationId(row.get::<_, Id>(0)?.0),
                seq: row.get::<_, SeqColumn>(1)?.0,
                sender_id: UserId(row.get::<_, Id>(2)?.0),
                created_at: row.get::<_, Nanos>(3)?.0,
                edited_at: row.get::<_, Option<Nanos>>(4)?.map(|Nanos(at)| at),
                snippet: snippet_parts(&row.get::<_, String>(5)?),
            })
        },
    )?;
    let mut hits = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let more = hits.len() > usize::from(limit);
    hits.truncate(usize::from(limit));
    Ok(SearchPage { hits, more })
}
