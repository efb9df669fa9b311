//! The `search` contract: what every [`Search`] guarantees, one `pub async fn` per guarantee,
//! on a store that the same fixture provides (the index follows the store).
//!
//! ```ignore
//! parlor_testkit::search_contract!(SqliteFixture::new());
//! ```
//!
//! Checks assert what every engine agrees on (which messages match, in which order where
//! the order is not a matter of taste, which words are marked), not how an engine scores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parlor_core::events::Change;
use parlor_core::ids::{ConversationId, Seq, UserId};
use parlor_core::ports::{Appended, NewEvent, Store};
use parlor_core::search::{Search, SearchHit, SearchOrder, SearchPage, SearchQuery};
use time::{Duration, OffsetDateTime};

use crate::store::{StoreFixture, user};

/// A store and the search over it.
pub trait SearchFixture: StoreFixture {
    fn search(&self) -> Arc<dyn Search>;
}

/// One `#[tokio::test]` per contract check, each on a fresh fixture from `$fixture`.
#[macro_export]
macro_rules! search_contract {
    ($fixture:expr) => {
        $crate::search_contract!(@checks $fixture;
            finds_words_ignoring_case_and_accents_with_stems,
            every_word_must_match_and_the_last_also_as_a_prefix,
            finds_only_what_the_user_can_read_now,
            an_edit_is_found_by_its_new_body_and_a_delete_is_not_found,
            other_kinds_of_events_never_match,
            filters_by_conversation_sender_and_time,
            recent_order_pages_newest_first_without_overlap,
            relevance_ranks_the_closer_match_first_and_pages_do_not_overlap,
            snippets_mark_the_matched_words_in_the_original_text,
            operator_characters_are_only_separators,
        );
    };
    (@checks $fixture:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::search::$check($fixture).await;
            }
        )*
    };
}

/// Distinct client message ids for every change a check stores.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Stores `change` from `sender` at `accepted_at`; its seq.
async fn store_at(
    store: &dyn Store,
    conversation: ConversationId,
    sender: UserId,
    change: Change,
    accepted_at: OffsetDateTime,
) -> Seq {
    let event = NewEvent {
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: format!("search-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        accepted_at,
        change,
    };
    match store
        .append_events(&[event])
        .await
        .expect("append")
        .remove(0)
    {
        Appended::New(stored) => stored.event.seq,
        other => panic!("expected a new event, got {other:?}"),
    }
}

async fn say(store: &dyn Store, conversation: ConversationId, sender: UserId, body: &str) -> Seq {
    store_at(
        store,
        conversation,
        sender,
        message(body),
        OffsetDateTime::now_utc(),
    )
    .await
}

fn message(body: &str) -> Change {
    Change::Message {
        body: body.to_owned(),
        reply_to_seq: None,
        files: Vec::new(),
    }
}

fn query(text: &str) -> SearchQuery {
    SearchQuery::new(text).expect("a valid query")
}

async fn run(search: &dyn Search, user: UserId, query: &SearchQuery) -> SearchPage {
    search.search(user, query).await.expect("search")
}

/// The (conversation, seq) of each hit, in order.
fn found(page: &SearchPage) -> Vec<(ConversationId, Seq)> {
    page.hits
        .iter()
        .map(|hit| (hit.conversation_id, hit.seq))
        .collect()
}

async fn found_for(search: &dyn Search, user: UserId, text: &str) -> Vec<(ConversationId, Seq)> {
    let mut found_all = found(&run(search, user, &query(text)).await);
    found_all.sort();
    found_all
}

fn marked(hit: &SearchHit) -> Vec<&str> {
    hit.snippet
        .iter()
        .filter(|part| part.hit)
        .map(|part| part.text.as_str())
        .collect()
}

fn text_of(hit: &SearchHit) -> String {
    hit.snippet.iter().map(|part| part.text.as_str()).collect()
}

pub async fn finds_words_ignoring_case_and_accents_with_stems(fixture: impl SearchFixture) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let deploy = say(s, chat, ann, "We DEPLOYED the new build").await;
    let cafe = say(s, chat, bob, "Meet at the Café later").await;
    say(s, chat, bob, "nothing to see here").await;

    for text in ["deploy", "Deploying", "deploys", "DEPLOYED"] {
        assert_eq!(
            found_for(&*search, bob, text).await,
            [(chat, deploy)],
            "{text}"
        );
    }
    for text in ["cafe", "CAFÉ", "café"] {
        assert_eq!(
            found_for(&*search, ann, text).await,
            [(chat, cafe)],
            "{text}"
        );
    }
    assert!(found_for(&*search, ann, "tomorrow").await.is_empty());
}

pub async fn every_word_must_match_and_the_last_also_as_a_prefix(fixture: impl SearchFixture) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let both = say(s, chat, ann, "the release notes are ready").await;
    let release = say(s, chat, ann, "release on monday").await;
    let notes = say(s, chat, ann, "my notes from the meeting").await;

    assert_eq!(
        found_for(&*search, ann, "release notes").await,
        [(chat, both)]
    );
    assert_eq!(
        found_for(&*search, ann, "notes release").await,
        [(chat, both)]
    );
    assert_eq!(
        found_for(&*search, ann, "release").await,
        [(chat, both), (chat, release)]
    );
    // Typing: the last word is a prefix, the earlier ones are whole words.
    assert_eq!(
        found_for(&*search, ann, "rel").await,
        [(chat, both), (chat, release)]
    );
    assert_eq!(found_for(&*search, ann, "release no").await, [(chat, both)]);
    assert_eq!(found_for(&*search, ann, "mee").await, [(chat, notes)]);
    assert!(found_for(&*search, ann, "rel notes").await.is_empty());
    // A finished word (a space after it) is a whole word.
    assert!(found_for(&*search, ann, "rel ").await.is_empty());
    assert_eq!(found_for(&*search, ann, "meeting ").await, [(chat, notes)]);
}

pub async fn finds_only_what_the_user_can_read_now(fixture: impl SearchFixture) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob, carl, dora) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
        user(s, "dora").await,
    );
    let group = store
        .create_group(ann, "Team", &[ann, bob, carl])
        .await
        .unwrap();
    let (private, _) = store.create_direct(ann, carl).await.unwrap();
    let before = say(s, group, ann, "budget draft one").await;
    let secret = say(s, private, carl, "budget secret").await;

    assert_eq!(found_for(&*search, bob, "budget").await, [(group, before)]);
    assert!(found_for(&*search, dora, "budget").await.is_empty());
    assert_eq!(found_for(&*search, carl, "budget").await.len(), 2);

    store_at(
        s,
        group,
        ann,
        Change::MemberRemoved { user_id: bob },
        OffsetDateTime::now_utc(),
    )
    .await;
    let after = say(s, group, ann, "budget draft two").await;
    // Removed: nothing of the group, from before the removal or after it.
    assert!(found_for(&*search, bob, "budget").await.is_empty());

    // Added later: the whole history, as they can read it.
    store_at(
        s,
        group,
        ann,
        Change::MemberAdded { user_id: dora },
        OffsetDateTime::now_utc(),
    )
    .await;
    assert_eq!(
        found_for(&*search, dora, "budget").await,
        [(group, before), (group, after)]
    );
    assert!(
        !found_for(&*search, dora, "budget")
            .await
            .contains(&(private, secret))
    );
    let mut ann_sees = found_for(&*search, ann, "budget").await;
    ann_sees.sort();
    let mut expected = vec![(group, before), (group, after), (private, secret)];
    expected.sort();
    assert_eq!(ann_sees, expected);
}

pub async fn an_edit_is_found_by_its_new_body_and_a_delete_is_not_found(
    fixture: impl SearchFixture,
) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let typo = say(s, chat, ann, "see you at teh station").await;
    let gone = say(s, chat, ann, "the password is swordfish").await;
    assert_eq!(found_for(&*search, bob, "teh").await, [(chat, typo)]);

    let now = OffsetDateTime::now_utc();
    let edit = Change::Edit {
        target_seq: typo,
        body: "see you at the harbour".to_owned(),
    };
    store_at(s, chat, ann, edit, now).await;
    assert!(found_for(&*search, bob, "teh").await.is_empty());
    assert!(found_for(&*search, bob, "station").await.is_empty());
    assert_eq!(found_for(&*search, bob, "harbour").await, [(chat, typo)]);
    let page = run(&*search, bob, &query("harbour")).await;
    assert_eq!(page.hits[0].edited_at, Some(now));

    store_at(s, chat, ann, Change::Delete { target_seq: gone }, now).await;
    assert!(found_for(&*search, bob, "swordfish").await.is_empty());
    assert!(found_for(&*search, ann, "password").await.is_empty());
}

pub async fn other_kinds_of_events_never_match(fixture: impl SearchFixture) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let group = store.create_group(ann, "Plans", &[ann, bob]).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let seq = say(s, group, ann, "lunch?").await;
    let title = Change::TitleChanged {
        title: "Zeppelin club".to_owned(),
    };
    store_at(s, group, ann, title, now).await;
    let reaction = Change::ReactionAdded {
        target_seq: seq,
        emoji: "👍".to_owned(),
    };
    store_at(s, group, bob, reaction, now).await;
    assert!(found_for(&*search, ann, "zeppelin").await.is_empty());
    assert_eq!(found_for(&*search, ann, "lunch").await, [(group, seq)]);
}

pub async fn filters_by_conversation_sender_and_time(fixture: impl SearchFixture) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let group = store.create_group(ann, "G", &[ann, bob]).await.unwrap();
    let t0 = OffsetDateTime::now_utc() - Duration::days(30);
    let day = |n: i64| t0 + Duration::days(n);
    let a1 = store_at(s, chat, ann, message("report one"), day(1)).await;
    let b2 = store_at(s, chat, bob, message("report two"), day(2)).await;
    let a3 = store_at(s, group, ann, message("report three"), day(3)).await;
    let b4 = store_at(s, group, bob, message("report four"), day(4)).await;

    let mut q = query("report");
    q.conversation = Some(group);
    assert_eq!(found(&run(&*search, ann, &q).await).len(), 2);
    let mut in_group = found(&run(&*search, ann, &q).await);
    in_group.sort();
    assert_eq!(in_group, [(group, a3), (group, b4)]);

    let mut q = query("report");
    q.sender = Some(bob);
    q.order = SearchOrder::Recent;
    assert_eq!(
        found(&run(&*search, ann, &q).await),
        [(group, b4), (chat, b2)]
    );

    // `after` is inclusive, `before` exclusive.
    let mut q = query("report");
    q.after = Some(day(2));
    q.before = Some(day(4));
    q.order = SearchOrder::Recent;
    assert_eq!(
        found(&run(&*search, ann, &q).await),
        [(group, a3), (chat, b2)]
    );

    let mut q = query("report");
    q.conversation = Some(chat);
    q.sender = Some(ann);
    assert_eq!(found(&run(&*search, bob, &q).await), [(chat, a1)]);
}

pub async fn recent_order_pages_newest_first_without_overlap(fixture: impl SearchFixture) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let t0 = OffsetDateTime::now_utc() - Duration::hours(1);
    let mut seqs = Vec::new();
    for n in 0..7 {
        let body = format!("standup note {n}");
        seqs.push(store_at(s, chat, ann, message(&body), t0 + Duration::seconds(n)).await);
    }
    say(s, chat, ann, "unrelated").await;

    let mut q = query("standup");
    q.order = SearchOrder::Recent;
    q.limit = 3;
    let mut pages = Vec::new();
    loop {
        let page = run(&*search, bob, &q).await;
        let more = page.more;
        pages.push(found(&page));
        if !more {
            break;
        }
        q.offset += u32::from(q.limit);
    }
    let newest_first: Vec<_> = seqs.iter().rev().map(|&seq| (chat, seq)).collect();
    assert_eq!(
        pages,
        [
            newest_first[0..3].to_vec(),
            newest_first[3..6].to_vec(),
            newest_first[6..].to_vec()
        ]
    );
}

pub async fn relevance_ranks_the_closer_match_first_and_pages_do_not_overlap(
    fixture: impl SearchFixture,
) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let filler = "one two three four five six seven eight nine ten eleven twelve thirteen";
    let mut weak = Vec::new();
    for n in 0..4 {
        let body = format!("{filler} kettle {filler} {n}");
        weak.push(say(s, chat, ann, &body).await);
    }
    let strong = say(s, chat, ann, "kettle kettle kettle").await;

    let page = run(&*search, bob, &query("kettle")).await;
    assert_eq!(page.hits.first().map(|hit| hit.seq), Some(strong));
    assert_eq!(page.hits.len(), 5);

    let mut q = query("kettle");
    q.limit = 2;
    let mut seen = Vec::new();
    loop {
        let page = run(&*search, bob, &q).await;
        seen.extend(found(&page));
        if !page.more {
            break;
        }
        q.offset += 2;
    }
    seen.sort();
    let mut all: Vec<_> = weak
        .iter()
        .chain([&strong])
        .map(|&seq| (chat, seq))
        .collect();
    all.sort();
    assert_eq!(seen, all, "every hit once across pages");
}

pub async fn snippets_mark_the_matched_words_in_the_original_text(fixture: impl SearchFixture) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    say(s, chat, ann, "Shall we Deploy <b>tonight</b>?").await;
    let long: String = (0..200).map(|n| format!("w{n} ")).collect();
    say(s, chat, ann, &format!("{long} needle {long}")).await;

    let page = run(&*search, bob, &query("deploy tonight")).await;
    let hit = &page.hits[0];
    assert_eq!(marked(hit), ["Deploy", "tonight"]);
    assert_eq!(text_of(hit), "Shall we Deploy <b>tonight</b>?");

    let page = run(&*search, bob, &query("needle")).await;
    let hit = &page.hits[0];
    assert_eq!(marked(hit), ["needle"]);
    let text = text_of(hit);
    assert!(
        text.len() < 400,
        "a long body is cut around the match: {text}"
    );
    assert!(text.contains("needle"));
}

pub async fn operator_characters_are_only_separators(fixture: impl SearchFixture) {
    let (store, search) = (fixture.store(), fixture.search());
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let seq = say(s, chat, ann, "pay the invoice today").await;
    for text in [
        "\"invoice",
        "invoice*",
        "invoice OR nothing",
        "invoice:*",
        "(invoice)",
        "invoice & !today",
        "NEAR(invoice today)",
        "body:invoice",
        "invoice'; DROP TABLE events; --",
    ] {
        let hits = search
            .search(bob, &query(text))
            .await
            .unwrap_or_else(|error| panic!("{text}: {error}"));
        let words = query(text);
        let must_match = words.words().iter().all(|word| {
            ["invoice", "today", "pay", "the"]
                .iter()
                .any(|w| w.starts_with(word.as_str()))
        });
        if must_match {
            assert_eq!(found(&hits), [(chat, seq)], "{text}");
        }
    }
    assert_eq!(
        found_for(&*search, bob, "invoice today").await,
        [(chat, seq)]
    );
}
