//! Full-text search over the messages a user can see: the query as the gateway checked it,
//! the hits as a store answers them, and the [`Search`] port.
//!
//! What a user can see is what they could read: the messages of every conversation they are
//! a member of now, whole (a member who joined late reads the history from the start, and so
//! finds it too). A removed member finds nothing of that conversation, as its history
//! answers `not_found`. Deleted messages never match.
//!
//! Matching is the same on every store: the query's words are matched ignoring case and
//! accents, with English stemming (`deploys` finds `deployed`); every word must match; the
//! last one also matches as a prefix unless a space follows it, so results follow what is
//! typed. The stores format
//! [`SearchQuery::words`] into their own query syntax, so nothing typed is ever parsed as an
//! operator.

use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::BackendError;
use crate::ids::{ConversationId, Seq, UserId};

/// The longest query text, in characters.
pub const QUERY_CHARS_MAX: usize = 200;
/// The most words a query keeps (more say nothing a search can use).
pub const QUERY_WORDS_MAX: usize = 12;
/// The most hits one page holds.
pub const PAGE_MAX: u16 = 50;
/// How deep paging goes: ranking every match again per page costs the store more the
/// deeper it goes, and nobody reads 1,000 hits.
pub const OFFSET_MAX: u32 = 1_000;

/// Marks the start of a matched word inside the text a store returns for a snippet;
/// [`snippet_parts`] turns marked text into parts. Private-use characters: never markup.
pub const HIT_START: char = '\u{E000}';
/// Marks the end of a matched word.
pub const HIT_END: char = '\u{E001}';
/// How a store marks the text it cut around a snippet.
pub const ELLIPSIS: &str = "…";

/// Best match first, or newest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SearchOrder {
    #[default]
    Relevance,
    Recent,
}

impl SearchOrder {
    pub fn parse(text: &str) -> Option<SearchOrder> {
        match text {
            "relevance" => Some(SearchOrder::Relevance),
            "recent" => Some(SearchOrder::Recent),
            _ => None,
        }
    }
}

/// A checked search: at least one word, filters, one page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchQuery {
    words: Vec<String>,
    last_is_prefix: bool,
    pub conversation: Option<ConversationId>,
    pub sender: Option<UserId>,
    /// Messages sent at or after this time.
    pub after: Option<OffsetDateTime>,
    /// Messages sent before this time.
    pub before: Option<OffsetDateTime>,
    pub order: SearchOrder,
    /// Hits to pass over (`0..=OFFSET_MAX`).
    pub offset: u32,
    /// Hits to return (`1..=PAGE_MAX`).
    pub limit: u16,
}

/// Why a query cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query has no words to search for")]
    NoWords,
    #[error("the query is longer than {QUERY_CHARS_MAX} characters")]
    TooLong,
}

impl SearchQuery {
    /// A query for the words of `text` (see [`words`]), with no filters, the first page of
    /// 20 by relevance.
    pub fn new(text: &str) -> Result<SearchQuery, QueryError> {
        if text.chars().count() > QUERY_CHARS_MAX {
            return Err(QueryError::TooLong);
        }
        let words = words(text);
        if words.is_empty() {
            return Err(QueryError::NoWords);
        }
        // Typing "deploy" finds "deployment"; "deploy " (the word finished) does not.
        let last_is_prefix = text.chars().last().is_some_and(char::is_alphanumeric);
        Ok(SearchQuery {
            words,
            last_is_prefix,
            conversation: None,
            sender: None,
            after: None,
            before: None,
            order: SearchOrder::Relevance,
            offset: 0,
            limit: 20,
        })
    }

    /// The words to match, lowercased, at least one.
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Whether the last word also matches as a prefix: when the text ends in it, not in a
    /// space or other separator.
    pub fn last_is_prefix(&self) -> bool {
        self.last_is_prefix
    }

    /// `limit` clamped to `1..=PAGE_MAX`, as stores apply it.
    pub fn limit_clamped(&self) -> u16 {
        self.limit.clamp(1, PAGE_MAX)
    }

    /// `offset` clamped to `0..=OFFSET_MAX`.
    pub fn offset_clamped(&self) -> u32 {
        self.offset.min(OFFSET_MAX)
    }
}

/// The words of a query: runs of letters and digits (any script), lowercased, at most
/// [`QUERY_WORDS_MAX`]. Everything else separates words, so quotes, `*`, `:`, `-`, `&`,
/// `|` and the like can never reach a store's query parser as operators.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .take(QUERY_WORDS_MAX)
        .map(str::to_lowercase)
        .collect()
}

/// A piece of a snippet: text, and whether it is a matched word.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnippetPart {
    pub text: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hit: bool,
}

/// Text marked with [`HIT_START`] and [`HIT_END`] as parts, neighbours of the same kind
/// merged. Markers that do not pair up (a body may hold the characters itself) are dropped.
pub fn snippet_parts(marked: &str) -> Vec<SnippetPart> {
    let mut parts: Vec<SnippetPart> = Vec::new();
    let mut hit = false;
    let mut text = String::new();
    let mut push = |text: &mut String, hit: bool| {
        if text.is_empty() {
            return;
        }
        match parts.last_mut() {
            Some(last) if last.hit == hit => last.text.push_str(text),
            _ => parts.push(SnippetPart {
                text: text.clone(),
                hit,
            }),
        }
        text.clear();
    };
    for c in marked.chars() {
        match c {
            HIT_START => {
                push(&mut text, hit);
                hit = true;
            }
            HIT_END => {
                push(&mut text, hit);
                hit = false;
            }
            c => text.push(c),
        }
    }
    push(&mut text, hit);
    parts
}

/// How many words a snippet shows around the first match.
pub const SNIPPET_WORDS: usize = 24;

/// A snippet of `body` whose hits are the words (runs of letters and digits) for which
/// `is_hit_word` holds: the [`SNIPPET_WORDS`] words around the first hit, the original text
/// between them kept as it is, [`ELLIPSIS`] where it was cut. For an engine whose own
/// snippets lose text (PostgreSQL's drop what its parser takes for markup), or that has none.
pub fn snippet_where(body: &str, is_hit_word: impl Fn(&str) -> bool) -> Vec<SnippetPart> {
    let words: Vec<(usize, usize)> = word_ranges(body);
    let is_hit = |&(start, end): &(usize, usize)| is_hit_word(&body[start..end]);
    let first = words.iter().position(is_hit).unwrap_or(0);
    let from = first.saturating_sub(SNIPPET_WORDS / 3);
    let to = (from + SNIPPET_WORDS).min(words.len());
    let (text_start, text_end) = match (
        words.get(from),
        to.checked_sub(1).and_then(|last| words.get(last)),
    ) {
        (Some(&(start, _)), Some(&(_, end))) => (
            if from == 0 { 0 } else { start },
            if to == words.len() { body.len() } else { end },
        ),
        _ => (0, body.len()),
    };
    let mut out = String::with_capacity(text_end - text_start + 16);
    if text_start > 0 {
        out.push_str(ELLIPSIS);
    }
    let mut cursor = text_start;
    for range in &words[from..to] {
        if is_hit(range) {
            out.push_str(&body[cursor..range.0]);
            out.push(HIT_START);
            out.push_str(&body[range.0..range.1]);
            out.push(HIT_END);
            cursor = range.1;
        }
    }
    out.push_str(&body[cursor..text_end]);
    if text_end < body.len() {
        out.push_str(ELLIPSIS);
    }
    snippet_parts(&out)
}

/// The byte ranges of the words of `text`, as [`words`] splits them.
pub fn word_ranges(text: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut start = None;
    for (index, c) in text.char_indices() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(index),
            (false, Some(from)) => {
                ranges.push((from, index));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(from) = start {
        ranges.push((from, text.len()));
    }
    ranges
}

/// One message that matched, as its snippet shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchHit {
    pub conversation_id: ConversationId,
    pub seq: Seq,
    pub sender_id: UserId,
    pub created_at: OffsetDateTime,
    pub edited_at: Option<OffsetDateTime>,
    /// The body around the matches (all of it when short), matches marked.
    pub snippet: Vec<SnippetPart>,
}

/// One page of hits, and whether more follow it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    pub more: bool,
}

/// Full-text search over messages, by what `user` can see (see the module doc). The index
/// follows the store in the same transaction as each event: a message is found as soon as
/// it is stored, an edit finds the new body and not the old one, a deleted message is not
/// found.
#[async_trait]
pub trait Search: Send + Sync {
    /// The page of `query`'s hits for `user`; ordered by `query.order` (relevance: best
    /// first, then newest; ties by conversation and seq, so pages never overlap).
    async fn search(&self, user: UserId, query: &SearchQuery) -> Result<SearchPage, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_letters_and_digits_lowercased() {
        assert_eq!(
            words("Deploy the API-v2 on Friday!"),
            ["deploy", "the", "api", "v2", "on", "friday"]
        );
        assert_eq!(words("Ünïcode ПРИВЕТ 東京"), ["ünïcode", "привет", "東京"]);
    }

    #[test]
    fn operators_never_survive_as_words() {
        for text in [
            "\"quoted\" AND*",
            "a:* & b | !c",
            "NEAR(x y)",
            "col:term",
            "-x +y ^z",
        ] {
            for word in words(text) {
                assert!(word.chars().all(char::is_alphanumeric), "{text} → {word}");
            }
        }
    }

    #[test]
    fn a_query_needs_a_word_and_a_bounded_length() {
        assert_eq!(SearchQuery::new(" ?! ").unwrap_err(), QueryError::NoWords);
        assert_eq!(SearchQuery::new("").unwrap_err(), QueryError::NoWords);
        let long = "a".repeat(QUERY_CHARS_MAX + 1);
        assert_eq!(SearchQuery::new(&long).unwrap_err(), QueryError::TooLong);
        let words_many = "w ".repeat(40);
        assert_eq!(
            SearchQuery::new(&words_many).unwrap().words().len(),
            QUERY_WORDS_MAX
        );
    }

    #[test]
    fn the_last_word_is_a_prefix_until_it_is_finished() {
        assert!(SearchQuery::new("deploy fri").unwrap().last_is_prefix());
        assert!(!SearchQuery::new("deploy fri ").unwrap().last_is_prefix());
        assert!(!SearchQuery::new("deploy fri?").unwrap().last_is_prefix());
    }

    #[test]
    fn marked_text_becomes_parts() {
        let marked = format!("we {HIT_START}deploy{HIT_END} on {HIT_START}fri{HIT_END}day");
        assert_eq!(
            snippet_parts(&marked),
            [
                SnippetPart {
                    text: "we ".into(),
                    hit: false
                },
                SnippetPart {
                    text: "deploy".into(),
                    hit: true
                },
                SnippetPart {
                    text: " on ".into(),
                    hit: false
                },
                SnippetPart {
                    text: "fri".into(),
                    hit: true
                },
                SnippetPart {
                    text: "day".into(),
                    hit: false
                },
            ]
        );
    }

    #[test]
    fn a_snippet_keeps_the_original_text() {
        let body = "Shall we Deploy <b>tonight</b>? deploy";
        let parts = snippet_where(body, |word| ["Deploy", "tonight"].contains(&word));
        let text: String = parts.iter().map(|part| part.text.as_str()).collect();
        assert_eq!(text, body);
        let hits: Vec<&str> = parts
            .iter()
            .filter(|p| p.hit)
            .map(|p| p.text.as_str())
            .collect();
        assert_eq!(hits, ["Deploy", "tonight"]);
    }

    #[test]
    fn a_long_body_is_cut_around_the_first_match() {
        let words: Vec<String> = (0..100).map(|n| format!("w{n}")).collect();
        let body = words.join(" ");
        let parts = snippet_where(&body, |word| word == "w50");
        let text: String = parts.iter().map(|part| part.text.as_str()).collect();
        assert!(text.starts_with("…w42 "), "{text}");
        assert!(text.ends_with(" w65…"), "{text}");
        assert_eq!(parts.iter().filter(|p| p.hit).count(), 1);
        // No hit in the body: the start of it.
        let parts = snippet_where(&body, |_| false);
        let text: String = parts.iter().map(|part| part.text.as_str()).collect();
        assert!(text.starts_with("w0 ") && text.ends_with(" w23…"), "{text}");
        assert!(snippet_where("", |_| true).is_empty());
    }

    #[test]
    fn adjacent_hits_merge_and_stray_markers_vanish() {
        let marked = format!("{HIT_START}a{HIT_END}{HIT_START}b{HIT_END} c{HIT_END}{HIT_END}");
        assert_eq!(
            snippet_parts(&marked),
            [
                SnippetPart {
                    text: "ab".into(),
                    hit: true
                },
                SnippetPart {
                    text: " c".into(),
                    hit: false
                },
            ]
        );
        assert!(snippet_parts("").is_empty());
    }
}
