//! The search terms of a message body, made in Rust, not by PostgreSQL's `to_tsvector`: its
//! parser and stemmer were 28 % of the primary's work per message stored, and the primary is
//! the one part of a cluster that does not scale out, while the persisters that make these
//! terms do. A term is a word as `parlor_core::search::words` splits them (a run of letters
//! and digits), lowercased, its accents folded, and stemmed by Snowball's English stemmer if
//! it is letters only, as the `parlor_search` configuration of `0004_search.sql` does
//! (PostgreSQL's parser leaves a word with digits in it, a "numword", unstemmed).
//!
//! A query's words become terms by the same function, and so do the words a snippet marks:
//! what is stored, asked and shown match by construction. Rows stored before migration 0008
//! keep the vectors PostgreSQL made; `lexemes_match_what_postgresql_made` checks that the two
//! agree on words of letters and digits.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::LazyLock;

use parlor_core::search::word_ranges;
use rust_stemmers::{Algorithm, Stemmer};

static ENGLISH: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));

/// PostgreSQL's bounds on a `tsvector`: a lexeme's length in bytes (longer words are not
/// indexed, as `to_tsvector` skips them), the largest position (later words share it), and
/// the positions kept per lexeme.
const LEXEME_BYTES_MAX: usize = 2047;
const POSITION_MAX: usize = 16_383;
const POSITIONS_PER_LEXEME_MAX: usize = 256;

/// The term of one word (letters and digits, as `words` splits them).
pub fn lexeme(word: &str) -> String {
    let folded = if word.is_ascii() {
        word.to_ascii_lowercase()
    } else {
        fold(&word.to_lowercase())
    };
    // Snowball's English leaves a word of one or two letters as it is.
    if folded.chars().nth(2).is_none() || !folded.chars().all(char::is_alphabetic) {
        return folded;
    }
    STEMS.with_borrow_mut(|stems| {
        if let Some(stem) = stems.get(&folded) {
            return stem.clone();
        }
        let stem = ENGLISH.stem(&folded).into_owned();
        if folded.len() <= STEMMED_WORD_BYTES_MAX {
            if stems.len() == STEMS_MAX {
                stems.clear();
            }
            stems.insert(folded, stem.clone());
        }
        stem
    })
}

/// The stems of the words seen last on this thread: the stemmer costs about 0.2 µs a word,
/// and a chat's words repeat (the thousand most common words of English make about three
/// quarters of what people write). Cleared when full; short words only.
const STEMS_MAX: usize = 4096;
const STEMMED_WORD_BYTES_MAX: usize = 24;
thread_local! {
    static STEMS: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
}

/// Lowercase letters without their accents: decomposed, the combining marks dropped, and
/// the letters that do not decompose spelled as PostgreSQL's `unaccent` spells them.
fn fold(word: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    let mut folded = String::with_capacity(word.len());
    for c in word.nfd().filter(|c| !is_combining_mark(*c)) {
        match c {
            'ø' => folded.push('o'),
            'ł' => folded.push('l'),
            'đ' | 'ð' => folded.push('d'),
            'ħ' => folded.push('h'),
            'ı' => folded.push('i'),
            'ŧ' => folded.push('t'),
            'æ' => folded.push_str("ae"),
            'œ' => folded.push_str("oe"),
            'ß' => folded.push_str("ss"),
            'þ' => folded.push_str("th"),
            c => folded.push(c),
        }
    }
    folded
}

/// `body`'s terms as the text of a `tsvector` (`'term':1,4 'other':2`), positions counted
/// in words from 1.
pub fn tsvector(body: &str) -> String {
    let mut positions: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (index, (start, end)) in word_ranges(body).into_iter().enumerate() {
        let term = lexeme(&body[start..end]);
        if term.is_empty() || term.len() > LEXEME_BYTES_MAX {
            continue;
        }
        let at = positions.entry(term).or_default();
        let position = (index + 1).min(POSITION_MAX);
        if at.len() < POSITIONS_PER_LEXEME_MAX && at.last() != Some(&position) {
            at.push(position);
        }
    }
    let mut text = String::new();
    for (term, at) in &positions {
        if !text.is_empty() {
            text.push(' ');
        }
        quote(&mut text, term);
        for (i, position) in at.iter().enumerate() {
            let _ = write!(text, "{}{position}", if i == 0 { ':' } else { ',' });
        }
    }
    text
}

/// The text of a `tsquery` that asks for every one of `terms` (from [`lexeme`]: `'a' & 'b'`),
/// the last one also as a prefix if `last_is_prefix` (`'b':*`).
pub fn tsquery(terms: &[String], last_is_prefix: bool) -> String {
    let mut text = String::new();
    for (i, term) in terms.iter().enumerate() {
        if i > 0 {
            text.push_str(" & ");
        }
        quote(&mut text, term);
        if last_is_prefix && i + 1 == terms.len() {
            text.push_str(":*");
        }
    }
    text
}

/// Whether a word of a body matches one of a query's terms (`terms`, from [`lexeme`]; the
/// last one also as a prefix if `last_is_prefix`).
pub fn matches(word: &str, terms: &[String], last_is_prefix: bool) -> bool {
    let term = lexeme(word);
    terms.iter().enumerate().any(|(i, wanted)| {
        term == *wanted || (last_is_prefix && i + 1 == terms.len() && term.starts_with(wanted))
    })
}

/// `term` quoted for a `tsvector` or `tsquery`: terms are letters and digits, but a quote or
/// a backslash would be doubled.
fn quote(text: &mut String, term: &str) {
    text.push('\'');
    for c in term.chars() {
        if c == '\'' || c == '\\' {
            text.push(c);
        }
        text.push(c);
    }
    text.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_folded_lowercased_and_stemmed() {
        assert_eq!(lexeme("Deploys"), "deploy");
        assert_eq!(lexeme("deployed"), "deploy");
        assert_eq!(lexeme("Café"), "cafe");
        assert_eq!(lexeme("Smørrebrød"), "smorrebrod");
        assert_eq!(lexeme("straße"), "strass");
        // A word with digits is kept as it is.
        assert_eq!(lexeme("v2running"), "v2running");
        assert_eq!(lexeme("2026"), "2026");
    }

    #[test]
    fn the_cache_of_stems_answers_as_the_stemmer_and_stays_bounded() {
        let fresh = lexeme("connections");
        assert_eq!(lexeme("connections"), fresh);
        for n in 0..STEMS_MAX + 10 {
            let word: String = [n % 26, n / 26 % 26, n / 676 % 26, 18]
                .iter()
                .map(|&letter| char::from(b'a' + letter as u8))
                .collect();
            lexeme(&word);
        }
        assert!(STEMS.with_borrow(|stems| stems.len()) <= STEMS_MAX);
        assert_eq!(lexeme("connections"), "connect");
    }

    #[test]
    fn a_body_becomes_a_tsvector_with_word_positions() {
        assert_eq!(
            tsvector("Deploys, deployed: the café's 2 deploys!"),
            "'2':6 'cafe':4 'deploy':1,2,7 's':5 'the':3"
        );
        assert_eq!(tsvector(""), "");
        assert_eq!(tsvector("¡¿!?"), "");
    }

    #[test]
    fn tsvector_bounds_hold() {
        let long = "a".repeat(LEXEME_BYTES_MAX + 1);
        assert_eq!(tsvector(&format!("{long} b")), "'b':2");
        let many = "x ".repeat(POSITION_MAX + 10);
        let text = tsvector(&many);
        assert_eq!(text.matches(',').count(), POSITIONS_PER_LEXEME_MAX - 1);
    }

    #[test]
    fn a_query_asks_for_every_term_the_last_as_a_prefix() {
        let words: Vec<String> = ["deploys", "Straße"].map(lexeme).into();
        assert_eq!(tsquery(&words, false), "'deploy' & 'strass'");
        assert_eq!(tsquery(&words, true), "'deploy' & 'strass':*");
    }

    #[test]
    fn quotes_are_doubled() {
        let mut text = String::new();
        quote(&mut text, "it's\\");
        assert_eq!(text, "'it''s\\\\'");
    }

    #[test]
    fn a_word_matches_its_terms_and_a_prefix_only_last() {
        let terms = vec![lexeme("deploy"), lexeme("prod")];
        assert!(matches("Deployed", &terms, true));
        assert!(matches("production", &terms, true));
        assert!(!matches("production", &terms, false));
        let terms = vec![lexeme("prod"), lexeme("deploy")];
        assert!(!matches("production", &terms, true));
    }
}
