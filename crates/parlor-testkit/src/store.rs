//! The `store` contract: what every [`Store`] guarantees, one `pub async fn` per guarantee.
//!
//! One file, though long: a port's contract is read as one list of guarantees, each check
//! standing alone, and its macro names every one of them.
//!
//! A backend implements [`StoreFixture`] (fresh, empty data per fixture, plus a way to open
//! a second handle on the same data) and turns the checks into tests with one line:
//!
//! ```ignore
//! parlor_testkit::store_contract!(SqliteFixture::new().await);
//! ```
//!
//! The expression is evaluated once per test, inside the test's async body. The calling
//! crate needs `tokio` (with `macros` and `rt-multi-thread`) as a dependency.
//!
//! Every check asserts exact values, so a backend that drifts from the embedded store's
//! behaviour fails here, not in production. A new check goes both here and in the list of
//! [`store_contract!`](crate::store_contract).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use parlor_core::error::BackendErrorKind;
use parlor_core::ids::{ConversationId, Seq, UserId};
use parlor_core::ports::{Appended, NewMessage, Page, Session, Store, TokenHash};
use parlor_core::protocol::{ConversationKind, Message, User};
use time::macros::datetime;
use time::{Duration, OffsetDateTime, UtcOffset};

/// A store on fresh, empty data, and whatever keeps that data alive (a temporary directory,
/// a database dropped at the end).
pub trait StoreFixture: Send + Sync + 'static {
    /// The store under test.
    fn store(&self) -> Arc<dyn Store>;
    /// Another handle on the same data, opened as a second process would open it.
    fn open_another(&self) -> BoxFuture<'_, Arc<dyn Store>>;
}

/// One `#[tokio::test]` per contract check, each on a fresh fixture from `$fixture`.
#[macro_export]
macro_rules! store_contract {
    ($fixture:expr) => {
        $crate::store_contract!(@checks $fixture;
            create_user_refuses_a_taken_name_ignoring_case,
            user_credentials_are_found_by_name_ignoring_case,
            users_by_prefix_ignores_case_orders_by_name_and_limits,
            users_returns_the_existing_ones_once,
            last_seen_is_one_entry_per_existing_user,
            session_is_valid_until_it_expires,
            deleted_session_is_gone,
            create_session_rejects_a_reused_token_and_an_unknown_user,
            create_direct_is_one_per_pair_in_either_order,
            create_direct_rejects_a_lone_or_unknown_user,
            create_group_has_its_distinct_members,
            create_group_rejects_no_members_and_unknown_users,
            conversations_of_lists_most_recent_activity_first,
            conversation_views_show_members_last_message_and_read_marker,
            conversation_of_is_none_for_non_members_and_unknown_conversations,
            is_member_and_members_follow_membership,
            contacts_are_everyone_sharing_a_small_enough_conversation,
            seq_is_gap_free_per_conversation_across_batches,
            appended_messages_read_back_exactly,
            repeated_client_msg_id_returns_the_first_message_and_consumes_no_seq,
            repeat_within_one_batch_returns_the_first_of_the_batch,
            non_member_is_rejected_and_consumes_no_seq,
            mixed_batch_answers_each_entry_in_input_order,
            sender_read_marker_moves_to_their_own_message,
            messages_pages_are_ascending_and_after_seq_wins,
            messages_limit_is_clamped_to_1_and_200,
            mark_read_clamps_to_last_seq_and_never_goes_back,
            concurrent_appends_from_two_handles_store_each_message_once_with_seq_1_to_n,
            same_client_msg_id_raced_into_two_conversations_is_stored_once,
        );
    };
    (@checks $fixture:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::store::$check($fixture).await;
            }
        )*
    };
}

/// A fixed instant with nanoseconds, to check that times round-trip exactly.
const T0: OffsetDateTime = datetime!(2025-03-04 05:06:07.123456789 UTC);

async fn user(store: &dyn Store, name: &str) -> UserId {
    store
        .create_user(name, "hash")
        .await
        .expect("create user")
        .expect("name is free")
        .id
}

/// A message accepted now: later than every conversation created before it, so it counts
/// as the newest activity.
fn new_message(
    conversation: ConversationId,
    sender: UserId,
    client_msg_id: &str,
    body: &str,
) -> NewMessage {
    NewMessage {
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: client_msg_id.to_owned(),
        body: body.to_owned(),
        accepted_at: OffsetDateTime::now_utc(),
    }
}

fn new_ones(appended: &[Appended]) -> Vec<Message> {
    appended
        .iter()
        .map(|a| match a {
            Appended::New(message) => message.clone(),
            other => panic!("expected a new message, got {other:?}"),
        })
        .collect()
}

async fn append_new(store: &dyn Store, batch: &[NewMessage]) -> Vec<Message> {
    new_ones(&store.append_messages(batch).await.expect("append"))
}

fn page(before_seq: Option<Seq>, after_seq: Option<Seq>, limit: u16) -> Page {
    Page {
        before_seq,
        after_seq,
        limit,
    }
}

fn seqs(messages: &[Message]) -> Vec<Seq> {
    messages.iter().map(|m| m.seq).collect()
}

async fn seqs_of(store: &dyn Store, conversation: ConversationId, page: Page) -> Vec<Seq> {
    seqs(&store.messages(conversation, page).await.expect("messages"))
}

/// The whole history, page after page.
async fn all_messages(store: &dyn Store, conversation: ConversationId) -> Vec<Message> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let next = store
            .messages(conversation, page(None, Some(after), 200))
            .await
            .expect("messages");
        let Some(last) = next.last() else { break };
        after = last.seq;
        all.extend(next);
    }
    all
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

fn names(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.username.as_str()).collect()
}

// ---- users ----------------------------------------------------------------------------

pub async fn create_user_refuses_a_taken_name_ignoring_case(fixture: impl StoreFixture) {
    let store = fixture.store();
    let ann = store.create_user("Ann", "h1").await.unwrap().unwrap();
    assert_eq!(ann.username, "Ann");
    assert_eq!(store.create_user("Ann", "h2").await.unwrap(), None);
    assert_eq!(store.create_user("aNN", "h2").await.unwrap(), None);
    let ann2 = store.create_user("ann2", "h3").await.unwrap().unwrap();
    assert_eq!(ann2.username, "ann2");
    assert_ne!(ann2.id, ann.id);
    // The refused attempts changed nothing.
    let (found, hash) = store.user_credentials("ann").await.unwrap().unwrap();
    assert_eq!((found, hash.as_str()), (ann, "h1"));
}

pub async fn user_credentials_are_found_by_name_ignoring_case(fixture: impl StoreFixture) {
    let store = fixture.store();
    let ann = store.create_user("Ann_1", "hash-1").await.unwrap().unwrap();
    let bob = store.create_user("bob", "hash-2").await.unwrap().unwrap();
    for name in ["Ann_1", "ann_1", "ANN_1"] {
        let (user, hash) = store.user_credentials(name).await.unwrap().unwrap();
        assert_eq!((user, hash.as_str()), (ann.clone(), "hash-1"), "{name}");
    }
    let (user, hash) = store.user_credentials("BOB").await.unwrap().unwrap();
    assert_eq!((user, hash.as_str()), (bob, "hash-2"));
    assert_eq!(store.user_credentials("nobody").await.unwrap(), None);
    assert_eq!(store.user_credentials("ann").await.unwrap(), None);
}

pub async fn users_by_prefix_ignores_case_orders_by_name_and_limits(fixture: impl StoreFixture) {
    let store = fixture.store();
    for name in ["annx1", "ANNA", "bob_1", "ann_2", "Ann_1", "annb"] {
        user(&*store, name).await;
    }
    let found = |prefix: &'static str, limit: u16| {
        let store = Arc::clone(&store);
        async move { store.users_by_prefix(prefix, limit).await.unwrap() }
    };
    // By name ignoring case, where `_` sorts before letters.
    assert_eq!(
        names(&found("ann", 10).await),
        ["Ann_1", "ann_2", "ANNA", "annb", "annx1"]
    );
    assert_eq!(
        names(&found("", 10).await),
        ["Ann_1", "ann_2", "ANNA", "annb", "annx1", "bob_1"]
    );
    // `_` is a literal: "annx1" must not match "ann_".
    assert_eq!(names(&found("ANN_", 10).await), ["Ann_1", "ann_2"]);
    assert_eq!(names(&found("aNnA", 10).await), ["ANNA"]);
    assert_eq!(names(&found("ann", 2).await), ["Ann_1", "ann_2"]);
    assert!(found("%", 10).await.is_empty());
    assert!(found("ann", 0).await.is_empty());
    assert!(found("carl", 10).await.is_empty());
}

pub async fn users_returns_the_existing_ones_once(fixture: impl StoreFixture) {
    let store = fixture.store();
    let ann = store.create_user("ann", "h").await.unwrap().unwrap();
    let bob = store.create_user("bob", "h").await.unwrap().unwrap();
    user(&*store, "carl").await;
    let mut found = store
        .users(&[bob.id, UserId::new(), ann.id, bob.id])
        .await
        .unwrap();
    found.sort_by_key(|u| u.id);
    let mut expected = vec![ann, bob];
    expected.sort_by_key(|u| u.id);
    assert_eq!(found, expected);
    assert!(store.users(&[]).await.unwrap().is_empty());
    assert!(store.users(&[UserId::new()]).await.unwrap().is_empty());
}

pub async fn last_seen_is_one_entry_per_existing_user(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let seen = store.last_seen(&[ann, bob]).await.unwrap();
    assert_eq!(sorted(seen), sorted(vec![(ann, None), (bob, None)]));

    store.set_last_seen(ann, T0).await.unwrap();
    let seen = store
        .last_seen(&[ann, UserId::new(), bob, ann])
        .await
        .unwrap();
    assert_eq!(sorted(seen), sorted(vec![(ann, Some(T0)), (bob, None)]));

    // A later value replaces the earlier one; the time reads back exactly, in UTC.
    let later = datetime!(2031-12-31 23:59:59.999999999 +05:30);
    store.set_last_seen(ann, later).await.unwrap();
    let seen = store.last_seen(&[ann]).await.unwrap();
    assert_eq!(seen, [(ann, Some(later))]);
    assert_eq!(seen[0].1.unwrap().offset(), UtcOffset::UTC);

    let unknown = store.set_last_seen(UserId::new(), T0).await.unwrap_err();
    assert_eq!(unknown.kind, BackendErrorKind::Rejected);
}

// ---- sessions -------------------------------------------------------------------------

pub async fn session_is_valid_until_it_expires(fixture: impl StoreFixture) {
    let store = fixture.store();
    let ann = store.create_user("ann", "h").await.unwrap().unwrap();
    let token = TokenHash([7; 32]);
    let expires_at = T0 + Duration::hours(1);
    store
        .create_session(token, ann.id, expires_at)
        .await
        .unwrap();

    let session = Session {
        user: ann,
        expires_at,
    };
    assert_eq!(
        store.session_user(token, T0).await.unwrap(),
        Some(session.clone())
    );
    let just_before = expires_at - Duration::nanoseconds(1);
    assert_eq!(
        store.session_user(token, just_before).await.unwrap(),
        Some(session)
    );
    assert_eq!(store.session_user(token, expires_at).await.unwrap(), None);
    let later = expires_at + Duration::days(1);
    assert_eq!(store.session_user(token, later).await.unwrap(), None);
    assert_eq!(
        store.session_user(TokenHash([8; 32]), T0).await.unwrap(),
        None
    );
}

pub async fn deleted_session_is_gone(fixture: impl StoreFixture) {
    let store = fixture.store();
    let ann = store.create_user("ann", "h").await.unwrap().unwrap();
    let (one, two) = (TokenHash([1; 32]), TokenHash([2; 32]));
    let expires_at = T0 + Duration::days(1);
    store.create_session(one, ann.id, expires_at).await.unwrap();
    store.create_session(two, ann.id, expires_at).await.unwrap();

    store.delete_session(one).await.unwrap();
    assert_eq!(store.session_user(one, T0).await.unwrap(), None);
    assert_eq!(
        store.session_user(two, T0).await.unwrap().map(|s| s.user),
        Some(ann)
    );
    // Deleting what is not there is fine.
    store.delete_session(one).await.unwrap();
    store.delete_session(TokenHash([3; 32])).await.unwrap();
}

pub async fn create_session_rejects_a_reused_token_and_an_unknown_user(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let token = TokenHash([7; 32]);
    let expires_at = T0 + Duration::hours(1);
    store.create_session(token, ann, expires_at).await.unwrap();

    let reused = store.create_session(token, bob, expires_at).await;
    assert_eq!(reused.unwrap_err().kind, BackendErrorKind::Rejected);
    let stranger = store
        .create_session(TokenHash([9; 32]), UserId::new(), expires_at)
        .await;
    assert_eq!(stranger.unwrap_err().kind, BackendErrorKind::Rejected);
    // The first session still belongs to ann.
    let owner = store.session_user(token, T0).await.unwrap().unwrap();
    assert_eq!(owner.user.id, ann);
    assert_eq!(
        store.session_user(TokenHash([9; 32]), T0).await.unwrap(),
        None
    );
}

// ---- conversations --------------------------------------------------------------------

pub async fn create_direct_is_one_per_pair_in_either_order(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, carl) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "carl").await,
    );
    let (chat, created) = store.create_direct(ann, bob).await.unwrap();
    assert!(created);
    assert_eq!(store.create_direct(bob, ann).await.unwrap(), (chat, false));
    assert_eq!(store.create_direct(ann, bob).await.unwrap(), (chat, false));

    let (other, created) = store.create_direct(carl, ann).await.unwrap();
    assert!(created);
    assert_ne!(other, chat);
    assert_eq!(
        store.create_direct(ann, carl).await.unwrap(),
        (other, false)
    );

    let view = store.conversation_of(ann, chat).await.unwrap().unwrap();
    assert_eq!(view.kind, ConversationKind::Direct);
    assert_eq!(view.title, None);
    assert_eq!(store.members(chat).await.unwrap(), sorted(vec![ann, bob]));
    assert_eq!(store.conversations_of(ann).await.unwrap().len(), 2);
}

pub async fn create_direct_rejects_a_lone_or_unknown_user(fixture: impl StoreFixture) {
    let store = fixture.store();
    let ann = user(&*store, "ann").await;
    let alone = store.create_direct(ann, ann).await.unwrap_err();
    assert_eq!(alone.kind, BackendErrorKind::Rejected);
    let stranger = store.create_direct(ann, UserId::new()).await.unwrap_err();
    assert_eq!(stranger.kind, BackendErrorKind::Rejected);
    let stranger = store.create_direct(UserId::new(), ann).await.unwrap_err();
    assert_eq!(stranger.kind, BackendErrorKind::Rejected);
    assert!(store.conversations_of(ann).await.unwrap().is_empty());
}

pub async fn create_group_has_its_distinct_members(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, carl) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "carl").await,
    );
    let team = store.create_group("Team", &[bob, ann, bob]).await.unwrap();
    assert_eq!(store.members(team).await.unwrap(), sorted(vec![ann, bob]));
    let view = store.conversation_of(bob, team).await.unwrap().unwrap();
    assert_eq!(view.kind, ConversationKind::Group);
    assert_eq!(view.title.as_deref(), Some("Team"));
    assert_eq!(names(&view.members), ["ann", "bob"]);

    // The same members again make another group; one member is enough.
    let again = store.create_group("Team", &[ann, bob]).await.unwrap();
    assert_ne!(again, team);
    let solo = store.create_group("Notes", &[carl]).await.unwrap();
    assert_eq!(store.members(solo).await.unwrap(), [carl]);
}

pub async fn create_group_rejects_no_members_and_unknown_users(fixture: impl StoreFixture) {
    let store = fixture.store();
    let ann = user(&*store, "ann").await;
    let empty = store.create_group("Empty", &[]).await.unwrap_err();
    assert_eq!(empty.kind, BackendErrorKind::Rejected);
    let stranger = store
        .create_group("Team", &[ann, UserId::new()])
        .await
        .unwrap_err();
    assert_eq!(stranger.kind, BackendErrorKind::Rejected);
    // Nothing half-made is left behind.
    assert!(store.conversations_of(ann).await.unwrap().is_empty());
}

pub async fn conversations_of_lists_most_recent_activity_first(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, carl) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "carl").await,
    );
    let one = store.create_group("one", &[ann, bob]).await.unwrap();
    let (two, _) = store.create_direct(ann, bob).await.unwrap();
    let three = store.create_group("three", &[ann, carl]).await.unwrap();
    let elsewhere = store.create_group("not ann's", &[bob, carl]).await.unwrap();
    let order = |user: UserId| {
        let store = Arc::clone(&store);
        async move {
            let views = store.conversations_of(user).await.unwrap();
            views.into_iter().map(|v| v.id).collect::<Vec<_>>()
        }
    };
    // Without messages, the newest conversation is the most recent activity.
    assert_eq!(order(ann).await, [three, two, one]);
    assert_eq!(order(bob).await, [elsewhere, two, one]);

    append_new(&*store, &[new_message(one, bob, "b1", "hi")]).await;
    assert_eq!(order(ann).await, [one, three, two]);
    append_new(&*store, &[new_message(two, ann, "a1", "hi")]).await;
    assert_eq!(order(ann).await, [two, one, three]);
    assert_eq!(order(carl).await, [elsewhere, three]);
    assert!(order(UserId::new()).await.is_empty());
}

pub async fn conversation_views_show_members_last_message_and_read_marker(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    // "Bob" sorts between "ann" and "carl" ignoring case, but before both by byte.
    let ann = store.create_user("ann", "h").await.unwrap().unwrap();
    let bob = store.create_user("Bob", "h").await.unwrap().unwrap();
    let carl = store.create_user("carl", "h").await.unwrap().unwrap();
    let team = store
        .create_group("Team", &[carl.id, ann.id, bob.id])
        .await
        .unwrap();
    let (chat, _) = store.create_direct(bob.id, ann.id).await.unwrap();

    let empty = store.conversation_of(ann.id, chat).await.unwrap().unwrap();
    assert_eq!(empty.id, chat);
    assert_eq!(empty.members, [ann.clone(), bob.clone()]);
    assert_eq!(empty.last_message, None);
    assert_eq!((empty.last_seq, empty.last_read_seq), (0, 0));

    let stored = append_new(
        &*store,
        &[
            new_message(team, bob.id, "b1", "one"),
            new_message(team, ann.id, "a1", "two"),
            new_message(team, ann.id, "a2", "three"),
        ],
    )
    .await;
    let view_of = |user: UserId| {
        let store = Arc::clone(&store);
        async move { store.conversation_of(user, team).await.unwrap().unwrap() }
    };
    let ann_view = view_of(ann.id).await;
    assert_eq!(ann_view.id, team);
    assert_eq!(ann_view.kind, ConversationKind::Group);
    assert_eq!(ann_view.title.as_deref(), Some("Team"));
    assert_eq!(ann_view.members, [ann.clone(), bob.clone(), carl.clone()]);
    assert_eq!(ann_view.last_message.as_ref(), Some(&stored[2]));
    assert_eq!((ann_view.last_seq, ann_view.last_read_seq), (3, 3));
    let bob_view = view_of(bob.id).await;
    assert_eq!((bob_view.last_seq, bob_view.last_read_seq), (3, 1));
    let carl_view = view_of(carl.id).await;
    assert_eq!((carl_view.last_seq, carl_view.last_read_seq), (3, 0));
    assert_eq!(carl_view.last_message.as_ref(), Some(&stored[2]));

    // The list shows the same views as the single lookups.
    let listed = store.conversations_of(ann.id).await.unwrap();
    let single = store.conversation_of(ann.id, chat).await.unwrap().unwrap();
    assert_eq!(listed, [ann_view, single]);
}

pub async fn conversation_of_is_none_for_non_members_and_unknown_conversations(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let (ann, bob, eve) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "eve").await,
    );
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    append_new(&*store, &[new_message(chat, ann, "a1", "private")]).await;
    assert_eq!(store.conversation_of(eve, chat).await.unwrap(), None);
    assert_eq!(
        store.conversation_of(UserId::new(), chat).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .conversation_of(ann, ConversationId::new())
            .await
            .unwrap(),
        None
    );
    assert!(store.conversations_of(eve).await.unwrap().is_empty());
}

pub async fn is_member_and_members_follow_membership(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, carl, eve) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "carl").await,
        user(&*store, "eve").await,
    );
    let team = store.create_group("Team", &[carl, ann, bob]).await.unwrap();
    for member in [ann, bob, carl] {
        assert!(store.is_member(team, member).await.unwrap());
    }
    assert!(!store.is_member(team, eve).await.unwrap());
    assert!(!store.is_member(team, UserId::new()).await.unwrap());
    assert!(!store.is_member(ConversationId::new(), ann).await.unwrap());

    // By id.
    assert_eq!(
        store.members(team).await.unwrap(),
        sorted(vec![ann, bob, carl])
    );
    assert!(
        store
            .members(ConversationId::new())
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn contacts_are_everyone_sharing_a_small_enough_conversation(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, carl, dave, eve, frank) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "carl").await,
        user(&*store, "dave").await,
        user(&*store, "eve").await,
        user(&*store, "frank").await,
    );
    store.create_direct(ann, bob).await.unwrap();
    store.create_group("one", &[ann, carl, bob]).await.unwrap();
    store.create_group("two", &[dave, ann]).await.unwrap();
    store.create_group("others", &[eve, frank]).await.unwrap();
    store.create_group("alone", &[ann]).await.unwrap();

    // Once each, by id, without the user.
    assert_eq!(
        store.contacts(ann, 100).await.unwrap(),
        sorted(vec![bob, carl, dave])
    );
    assert_eq!(
        store.contacts(bob, 100).await.unwrap(),
        sorted(vec![ann, carl])
    );
    assert_eq!(store.contacts(eve, 100).await.unwrap(), [frank]);
    assert!(store.contacts(UserId::new(), 100).await.unwrap().is_empty());
    // Only conversations of at most `members_max` members count: "one" has three.
    assert_eq!(
        store.contacts(ann, 2).await.unwrap(),
        sorted(vec![bob, dave])
    );
    assert_eq!(store.contacts(carl, 2).await.unwrap(), []);
}

// ---- messages -------------------------------------------------------------------------

pub async fn seq_is_gap_free_per_conversation_across_batches(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let (one, _) = store.create_direct(ann, bob).await.unwrap();
    let two = store.create_group("two", &[ann, bob]).await.unwrap();

    assert!(store.append_messages(&[]).await.unwrap().is_empty());
    let first = append_new(
        &*store,
        &[
            new_message(one, ann, "a1", "hi"),
            new_message(two, ann, "a2", "hi all"),
            new_message(one, bob, "b1", "hello"),
        ],
    )
    .await;
    let second = append_new(
        &*store,
        &[
            new_message(two, bob, "b2", "yo"),
            new_message(one, ann, "a3", "how are you"),
        ],
    )
    .await;

    let assigned: Vec<_> = first
        .iter()
        .chain(&second)
        .map(|m| (m.conversation_id, m.seq, m.client_msg_id.as_str()))
        .collect();
    assert_eq!(
        assigned,
        [
            (one, 1, "a1"),
            (two, 1, "a2"),
            (one, 2, "b1"),
            (two, 2, "b2"),
            (one, 3, "a3")
        ]
    );
    let history = store.messages(one, page(None, None, 50)).await.unwrap();
    assert_eq!(
        history,
        [first[0].clone(), first[2].clone(), second[1].clone()]
    );
    let history = store.messages(two, page(None, None, 50)).await.unwrap();
    assert_eq!(history, [first[1].clone(), second[0].clone()]);
    let ids: HashSet<_> = first.iter().chain(&second).map(|m| m.id).collect();
    assert_eq!(ids.len(), 5, "every message has its own id");
}

pub async fn appended_messages_read_back_exactly(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let accepted_at = datetime!(2031-12-31 23:59:59.999999999 +05:30);
    let body = "héllo 👋 <b>&amp;</b> 'quoted' \"double\" \\ back\nslash";
    let mut message = new_message(chat, ann, "client-1:x.y_z", body);
    message.accepted_at = accepted_at;

    let stored = append_new(&*store, &[message]).await.remove(0);
    assert_eq!(stored.conversation_id, chat);
    assert_eq!(stored.seq, 1);
    assert_eq!(stored.sender_id, ann);
    assert_eq!(stored.client_msg_id, "client-1:x.y_z");
    assert_eq!(stored.body, body);
    assert_eq!(stored.created_at, accepted_at);
    assert_eq!(stored.created_at.offset(), UtcOffset::UTC);

    let read = store.messages(chat, page(None, None, 1)).await.unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0], stored);
    assert_eq!(read[0].created_at.offset(), UtcOffset::UTC);
    // Another handle reads the same.
    let another = fixture.open_another().await;
    assert_eq!(
        another.messages(chat, page(None, None, 1)).await.unwrap(),
        [stored]
    );
}

pub async fn repeated_client_msg_id_returns_the_first_message_and_consumes_no_seq(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let group = store.create_group("g", &[ann, bob]).await.unwrap();
    let first = append_new(&*store, &[new_message(chat, ann, "m1", "original")])
        .await
        .remove(0);

    let mut later = new_message(chat, ann, "m1", "original");
    later.accepted_at = first.created_at + Duration::seconds(5);
    let again = store
        .append_messages(&[
            later,
            new_message(chat, ann, "m1", "a different body"),
            new_message(group, ann, "m1", "another conversation"),
            // The same id from someone else is a different message.
            new_message(chat, bob, "m1", "bob's own"),
            new_message(chat, ann, "m2", "next"),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], Appended::Duplicate(first.clone()));
    assert_eq!(again[1], Appended::Duplicate(first.clone()));
    assert_eq!(again[2], Appended::Duplicate(first.clone()));
    let rest = new_ones(&again[3..]);
    assert_eq!(seqs(&rest), [2, 3]);
    assert_eq!(rest[0].body, "bob's own");

    let history = store.messages(chat, page(None, None, 50)).await.unwrap();
    assert_eq!(history, [first.clone(), rest[0].clone(), rest[1].clone()]);
    assert!(
        store
            .messages(group, page(None, None, 50))
            .await
            .unwrap()
            .is_empty()
    );
    let view = store.conversation_of(ann, group).await.unwrap().unwrap();
    assert_eq!((view.last_seq, view.last_message), (0, None));

    // Still the same in a later batch, on another handle.
    let another = fixture.open_another().await;
    let once_more = another
        .append_messages(&[new_message(group, ann, "m1", "yet another")])
        .await
        .unwrap();
    assert_eq!(once_more, [Appended::Duplicate(first)]);
}

pub async fn repeat_within_one_batch_returns_the_first_of_the_batch(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();

    let appended = store
        .append_messages(&[
            new_message(chat, ann, "m1", "first"),
            new_message(chat, ann, "m1", "second"),
            new_message(chat, ann, "m2", "third"),
            new_message(chat, ann, "m1", "fourth"),
        ])
        .await
        .unwrap();
    let Appended::New(first) = &appended[0] else {
        panic!("expected new, got {:?}", appended[0]);
    };
    assert_eq!(first.seq, 1);
    assert_eq!(appended[1], Appended::Duplicate(first.clone()));
    assert!(matches!(&appended[2], Appended::New(m) if m.seq == 2 && m.body == "third"));
    assert_eq!(appended[3], Appended::Duplicate(first.clone()));
    let history = store.messages(chat, page(None, None, 50)).await.unwrap();
    assert_eq!(seqs(&history), [1, 2]);
    assert_eq!(history[0], *first);
}

pub async fn non_member_is_rejected_and_consumes_no_seq(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, eve) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "eve").await,
    );
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();

    let appended = store
        .append_messages(&[
            new_message(chat, eve, "e1", "intruding"),
            new_message(ConversationId::new(), ann, "a0", "nowhere"),
            new_message(chat, UserId::new(), "x1", "nobody"),
        ])
        .await
        .unwrap();
    assert_eq!(appended.len(), 3);
    for rejected in &appended {
        assert!(
            matches!(rejected, Appended::Rejected(reason) if !reason.is_empty()),
            "{rejected:?}"
        );
    }
    let view = store.conversation_of(ann, chat).await.unwrap().unwrap();
    assert_eq!(view.last_seq, 0);

    // A rejected client_msg_id was not stored, so it is free for a real message.
    let eve_group = store.create_group("eve's", &[eve]).await.unwrap();
    let stored = append_new(&*store, &[new_message(eve_group, eve, "e1", "mine")]).await;
    assert_eq!(seqs(&stored), [1]);
    let stored = append_new(&*store, &[new_message(chat, ann, "a1", "first")]).await;
    assert_eq!(seqs(&stored), [1]);
}

pub async fn mixed_batch_answers_each_entry_in_input_order(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, eve) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "eve").await,
    );
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let group = store.create_group("g", &[ann, eve]).await.unwrap();
    let earlier = append_new(&*store, &[new_message(chat, bob, "b0", "earlier")])
        .await
        .remove(0);

    let appended = store
        .append_messages(&[
            new_message(group, eve, "e1", "one"),
            new_message(chat, eve, "e2", "not a member"),
            new_message(chat, bob, "b0", "repeat of an earlier batch"),
            new_message(chat, ann, "a1", "two"),
            new_message(group, ann, "a1", "repeat within the batch"),
            new_message(ConversationId::new(), bob, "b1", "nowhere"),
            new_message(chat, bob, "b2", "three"),
            new_message(group, ann, "a2", "four"),
        ])
        .await
        .unwrap();
    let name = |conversation: ConversationId| {
        if conversation == chat {
            "chat"
        } else {
            "group"
        }
    };
    let summary: Vec<String> = appended
        .iter()
        .map(|a| match a {
            Appended::New(m) => format!("new {}#{} {}", name(m.conversation_id), m.seq, m.body),
            Appended::Duplicate(m) => {
                format!("dup {}#{} {}", name(m.conversation_id), m.seq, m.body)
            }
            Appended::Rejected(_) => "rejected".to_owned(),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "new group#1 one",
            "rejected",
            "dup chat#1 earlier",
            "new chat#2 two",
            "dup chat#2 two",
            "rejected",
            "new chat#3 three",
            "new group#2 four",
        ]
    );
    assert_eq!(appended[2], Appended::Duplicate(earlier));
    let two = new_ones(&appended[3..4]).remove(0);
    assert_eq!(appended[4], Appended::Duplicate(two));
    assert_eq!(
        seqs_of(&*store, chat, page(None, None, 50)).await,
        [1, 2, 3]
    );
    assert_eq!(seqs_of(&*store, group, page(None, None, 50)).await, [1, 2]);
}

pub async fn sender_read_marker_moves_to_their_own_message(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let marker = |user: UserId| {
        let store = Arc::clone(&store);
        async move {
            let view = store.conversation_of(user, chat).await.unwrap().unwrap();
            view.last_read_seq
        }
    };

    append_new(&*store, &[new_message(chat, ann, "a1", "one")]).await;
    assert_eq!((marker(ann).await, marker(bob).await), (1, 0));
    append_new(
        &*store,
        &[
            new_message(chat, bob, "b1", "two"),
            new_message(chat, ann, "a2", "three"),
            new_message(chat, bob, "b2", "four"),
        ],
    )
    .await;
    assert_eq!((marker(ann).await, marker(bob).await), (3, 4));

    // A marker ahead of one's own message stays where it is.
    assert_eq!(store.mark_read(chat, bob, 4).await.unwrap(), None);
    assert_eq!(store.mark_read(chat, ann, 4).await.unwrap(), Some(4));
    append_new(&*store, &[new_message(chat, ann, "a3", "five")]).await;
    assert_eq!((marker(ann).await, marker(bob).await), (5, 4));
    // A duplicate moves nothing.
    let again = store
        .append_messages(&[new_message(chat, bob, "b1", "two")])
        .await
        .unwrap();
    assert!(matches!(&again[0], Appended::Duplicate(m) if m.seq == 2));
    assert_eq!((marker(ann).await, marker(bob).await), (5, 4));
}

pub async fn messages_pages_are_ascending_and_after_seq_wins(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let other = store.create_group("other", &[ann]).await.unwrap();
    let batch: Vec<_> = (1..=10)
        .flat_map(|i| {
            [
                new_message(chat, ann, &format!("m{i}"), &format!("body {i}")),
                new_message(other, ann, &format!("o{i}"), "elsewhere"),
            ]
        })
        .collect();
    let stored: Vec<_> = append_new(&*store, &batch)
        .await
        .into_iter()
        .filter(|m| m.conversation_id == chat)
        .collect();
    assert_eq!(seqs(&stored), (1..=10).collect::<Vec<_>>());

    let s = &*store;
    assert_eq!(
        s.messages(chat, page(None, None, 50)).await.unwrap(),
        stored
    );
    assert_eq!(seqs_of(s, chat, page(None, None, 3)).await, [8, 9, 10]);
    assert_eq!(seqs_of(s, chat, page(Some(5), None, 3)).await, [2, 3, 4]);
    assert_eq!(seqs_of(s, chat, page(Some(3), None, 10)).await, [1, 2]);
    assert_eq!(
        seqs_of(s, chat, page(Some(1), None, 10)).await,
        [] as [Seq; 0]
    );
    assert_eq!(seqs_of(s, chat, page(None, Some(5), 3)).await, [6, 7, 8]);
    assert_eq!(seqs_of(s, chat, page(None, Some(8), 10)).await, [9, 10]);
    assert_eq!(seqs_of(s, chat, page(None, Some(0), 2)).await, [1, 2]);
    assert_eq!(
        seqs_of(s, chat, page(None, Some(10), 10)).await,
        [] as [Seq; 0]
    );
    // after_seq wins over before_seq.
    assert_eq!(seqs_of(s, chat, page(Some(3), Some(5), 3)).await, [6, 7, 8]);
    assert_eq!(seqs_of(s, chat, page(Some(9), Some(1), 2)).await, [2, 3]);
    // Bounds past any seq.
    assert_eq!(
        seqs_of(s, chat, page(Some(Seq::MAX), None, 2)).await,
        [9, 10]
    );
    assert_eq!(
        seqs_of(s, chat, page(None, Some(Seq::MAX), 2)).await,
        [] as [Seq; 0]
    );
    assert!(
        s.messages(ConversationId::new(), page(None, None, 10))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn messages_limit_is_clamped_to_1_and_200(fixture: impl StoreFixture) {
    let store = fixture.store();
    let ann = user(&*store, "ann").await;
    let notes = store.create_group("notes", &[ann]).await.unwrap();
    let batch: Vec<_> = (1..=201)
        .map(|i| new_message(notes, ann, &format!("m{i}"), "x"))
        .collect();
    append_new(&*store, &batch).await;

    let s = &*store;
    assert_eq!(seqs_of(s, notes, page(None, None, 0)).await, [201]);
    assert_eq!(seqs_of(s, notes, page(None, Some(5), 0)).await, [6]);
    assert_eq!(
        seqs_of(s, notes, page(None, None, u16::MAX)).await,
        (2..=201).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs_of(s, notes, page(None, Some(0), 201)).await,
        (1..=200).collect::<Vec<_>>()
    );
    assert_eq!(all_messages(s, notes).await.len(), 201);
}

pub async fn mark_read_clamps_to_last_seq_and_never_goes_back(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, eve) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "eve").await,
    );
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    assert_eq!(store.mark_read(chat, bob, 3).await.unwrap(), None);

    let batch: Vec<_> = (1..=5)
        .map(|i| new_message(chat, ann, &format!("m{i}"), "x"))
        .collect();
    append_new(&*store, &batch).await;
    // Only a marker that moves forward says so; the rest move nothing.
    assert_eq!(store.mark_read(chat, bob, 0).await.unwrap(), None);
    assert_eq!(store.mark_read(chat, bob, 3).await.unwrap(), Some(3));
    assert_eq!(store.mark_read(chat, bob, 3).await.unwrap(), None);
    assert_eq!(store.mark_read(chat, bob, 2).await.unwrap(), None);
    assert_eq!(store.mark_read(chat, bob, 99).await.unwrap(), Some(5));
    assert_eq!(store.mark_read(chat, bob, Seq::MAX).await.unwrap(), None);
    assert_eq!(store.mark_read(chat, ann, 0).await.unwrap(), None);
    let view = store.conversation_of(bob, chat).await.unwrap().unwrap();
    assert_eq!(view.last_read_seq, 5);

    let outsider = store.mark_read(chat, eve, 1).await.unwrap_err();
    assert_eq!(outsider.kind, BackendErrorKind::Rejected);
    let nowhere = store
        .mark_read(ConversationId::new(), ann, 1)
        .await
        .unwrap_err();
    assert_eq!(nowhere.kind, BackendErrorKind::Rejected);
}

// ---- concurrency ----------------------------------------------------------------------

/// Several persisters (two handles, as two processes would have) append to the same two
/// conversations at once, each message twice (two tasks send the same client ids, in
/// opposite orders), and every batch touches both conversations.
pub async fn concurrent_appends_from_two_handles_store_each_message_once_with_seq_1_to_n(
    fixture: impl StoreFixture,
) {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 48;
    const PER_BATCH: usize = 8;
    let first = fixture.store();
    let second = fixture.open_another().await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        senders.push(user(&*first, &format!("user{i}")).await);
    }
    let even = first.create_group("even", &senders).await.unwrap();
    let odd = second.create_group("odd", &senders).await.unwrap();
    let conversation_of = move |n: usize| if n.is_multiple_of(2) { even } else { odd };

    let mut tasks = tokio::task::JoinSet::new();
    for (s, &sender) in senders.iter().enumerate() {
        for (store, reversed) in [(Arc::clone(&first), false), (Arc::clone(&second), true)] {
            let mut numbers: Vec<usize> = (0..PER_SENDER).collect();
            if reversed {
                numbers.reverse();
            }
            tasks.spawn(async move {
                let mut answers = Vec::new();
                for chunk in numbers.chunks(PER_BATCH) {
                    let batch: Vec<_> = chunk
                        .iter()
                        .map(|&n| {
                            let id = format!("s{s}-{n}");
                            new_message(conversation_of(n), sender, &id, &id)
                        })
                        .collect();
                    let appended = store.append_messages(&batch).await.expect("append");
                    assert_eq!(appended.len(), batch.len());
                    answers.extend(batch.into_iter().zip(appended));
                }
                answers
            });
        }
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        answers.extend(joined.expect("append task"));
    }

    // Exactly one `New` per (sender, client_msg_id); every repeat got that message back.
    let mut first_stored: HashMap<(UserId, String), Message> = HashMap::new();
    for (sent, answer) in &answers {
        if let Appended::New(message) = answer {
            assert_eq!(
                (message.sender_id, message.conversation_id, &message.body),
                (sent.sender_id, sent.conversation_id, &sent.body)
            );
            let key = (sent.sender_id, sent.client_msg_id.clone());
            let earlier = first_stored.insert(key, message.clone());
            assert_eq!(earlier, None, "stored twice: {message:?}");
        }
    }
    assert_eq!(first_stored.len(), SENDERS * PER_SENDER);
    for (sent, answer) in &answers {
        let key = (sent.sender_id, sent.client_msg_id.clone());
        match answer {
            Appended::New(_) => {}
            Appended::Duplicate(message) => assert_eq!(Some(message), first_stored.get(&key)),
            Appended::Rejected(reason) => panic!("rejected {sent:?}: {reason}"),
        }
    }

    // Each conversation holds seqs 1..=N, one per message, exactly as answered.
    let per_conversation = SENDERS * PER_SENDER / 2;
    for conversation in [even, odd] {
        for store in [&first, &second] {
            let history = all_messages(&**store, conversation).await;
            assert_eq!(
                seqs(&history),
                (1..=per_conversation as Seq).collect::<Vec<_>>()
            );
            for message in &history {
                let key = (message.sender_id, message.client_msg_id.clone());
                assert_eq!(first_stored.get(&key), Some(message));
            }
            let view = store
                .conversation_of(senders[0], conversation)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(view.last_seq, per_conversation as Seq);
        }
    }
}

/// The same (sender, client_msg_id) sent to two conversations at once through two handles
/// is stored once; the other send gets it back as a duplicate.
pub async fn same_client_msg_id_raced_into_two_conversations_is_stored_once(
    fixture: impl StoreFixture,
) {
    const ROUNDS: usize = 20;
    let first = fixture.store();
    let second = fixture.open_another().await;
    let (ann, bob) = (user(&*first, "ann").await, user(&*first, "bob").await);
    let (chat, _) = first.create_direct(ann, bob).await.unwrap();
    let group = first.create_group("g", &[ann, bob]).await.unwrap();

    let mut stored = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("race-{round}");
        let to_chat = [new_message(chat, ann, &id, "to chat")];
        let to_group = [new_message(group, ann, &id, "to group")];
        let (one, two) = (Arc::clone(&first), Arc::clone(&second));
        let one = tokio::spawn(async move { one.append_messages(&to_chat).await });
        let two = tokio::spawn(async move { two.append_messages(&to_group).await });
        let one = one.await.unwrap().expect("append to chat").remove(0);
        let two = two.await.unwrap().expect("append to group").remove(0);
        match (one, two) {
            (Appended::New(m), Appended::Duplicate(d))
            | (Appended::Duplicate(d), Appended::New(m)) => {
                assert_eq!(m, d);
                stored.push(m);
            }
            other => panic!("round {round}: expected one new and one duplicate, got {other:?}"),
        }
    }

    let in_chat = all_messages(&*first, chat).await;
    let in_group = all_messages(&*first, group).await;
    assert_eq!(
        seqs(&in_chat),
        (1..=in_chat.len() as Seq).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&in_group),
        (1..=in_group.len() as Seq).collect::<Vec<_>>()
    );
    let mut everything: Vec<_> = in_chat.into_iter().chain(in_group).collect();
    everything.sort_by_key(|m| m.id);
    stored.sort_by_key(|m| m.id);
    assert_eq!(everything, stored);
}
