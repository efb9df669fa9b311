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
//! behaviour fails here, not in production. The one freedom left on purpose: a view's
//! `last_message` may come without its reactions (the chat list does not show them). Where
//! an order depends on time (reactions, who joined first), the changes carry distinct
//! `accepted_at` times, so that no backend's tie-break decides it. A new check goes both here
//! and in the list of [`store_contract!`](crate::store_contract).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::future::BoxFuture;
use parlor_core::error::{BackendErrorKind, ErrorCode};
use parlor_core::events::{Change, Event, EventData, Reaction, ReplyPreview, Role};
use parlor_core::ids::{ConversationId, Seq, UserId};
use parlor_core::ports::{
    Appended, ConversationView, MemberView, NewEvent, Page, Session, Store, Stored, TokenHash,
};
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
            create_group_has_its_distinct_members_and_the_creator_as_admin,
            create_group_adds_a_missing_creator_and_rejects_unknown_users,
            conversations_of_lists_most_recent_activity_first,
            conversation_views_show_members_last_message_and_read_marker,
            conversation_of_is_none_for_non_members_and_unknown_conversations,
            is_member_and_members_follow_membership,
            contacts_are_everyone_sharing_a_small_enough_conversation,
            seq_is_gap_free_per_conversation_across_batches,
            appended_messages_read_back_exactly,
            repeated_client_msg_id_returns_the_first_message_and_consumes_no_seq,
            repeat_within_one_batch_returns_the_first_of_the_batch,
            non_member_is_refused_not_found_and_consumes_no_seq,
            mixed_batch_answers_each_entry_in_input_order,
            sender_read_marker_moves_to_their_own_message,
            messages_pages_are_ascending_and_after_seq_wins,
            messages_limit_is_clamped_to_1_and_200,
            mark_read_clamps_to_last_seq_and_never_goes_back,
            every_kind_is_stored_with_the_next_seq_and_read_back_by_events,
            a_repeat_of_any_kind_returns_the_event_as_it_is_now_and_consumes_no_seq,
            edits_replace_the_body_and_each_keeps_its_version,
            delete_erases_the_body_its_edits_reactions_and_mentions,
            reactions_are_grouped_by_first_reaction_with_users_in_order,
            replies_carry_a_preview_of_the_original_as_it_is_now,
            mentions_resolve_to_current_members_ignoring_case_and_again_on_edit,
            every_rule_refuses_through_the_store_and_changes_nothing,
            refusal_is_none_for_what_append_would_store,
            refusal_is_none_for_a_change_already_stored,
            an_earlier_entry_of_the_batch_can_make_a_later_one_refused,
            messages_interleaved_with_a_removal_in_one_batch_follow_it,
            a_removed_member_loses_the_conversation_at_once,
            a_re_added_member_starts_afresh_with_history_read,
            the_last_admin_leaving_promotes_the_longest_standing_member,
            the_last_member_may_leave,
            views_count_unread_messages_and_mentions_of_others,
            views_show_the_newest_message_the_newest_seq_and_mute,
            mark_delivered_clamps_moves_forward_and_reading_raises_it,
            messages_pages_count_messages_not_events,
            events_pages_follow_after_seq_and_clamp_the_limit,
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

/// A new user named `name`, for the suites of this crate.
pub(crate) async fn user(store: &dyn Store, name: &str) -> UserId {
    store
        .create_user(name, "hash")
        .await
        .expect("create user")
        .expect("name is free")
        .id
}

/// A change accepted now: later than every conversation created before it, so a message
/// counts as the newest activity.
fn new_event(
    conversation: ConversationId,
    sender: UserId,
    client_msg_id: &str,
    change: Change,
) -> NewEvent {
    NewEvent {
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: client_msg_id.to_owned(),
        accepted_at: OffsetDateTime::now_utc(),
        change,
    }
}

/// A message (no reply) accepted now.
fn new_message(
    conversation: ConversationId,
    sender: UserId,
    client_msg_id: &str,
    body: &str,
) -> NewEvent {
    new_event(conversation, sender, client_msg_id, message(body))
}

fn message(body: &str) -> Change {
    Change::Message {
        body: body.to_owned(),
        reply_to_seq: None,
        files: Vec::new(),
    }
}

fn reply(body: &str, to: Seq) -> Change {
    Change::Message {
        body: body.to_owned(),
        reply_to_seq: Some(to),
        files: Vec::new(),
    }
}

fn edit(target_seq: Seq, body: &str) -> Change {
    Change::Edit {
        target_seq,
        body: body.to_owned(),
    }
}

fn react(target_seq: Seq, emoji: &str) -> Change {
    Change::ReactionAdded {
        target_seq,
        emoji: emoji.to_owned(),
    }
}

fn unreact(target_seq: Seq, emoji: &str) -> Change {
    Change::ReactionRemoved {
        target_seq,
        emoji: emoji.to_owned(),
    }
}

/// `event` accepted at `at` instead of now.
fn at(mut event: NewEvent, at: OffsetDateTime) -> NewEvent {
    event.accepted_at = at;
    event
}

/// The stored event of a `New` answer.
fn new_stored(appended: &Appended) -> Stored {
    match appended {
        Appended::New(stored) => stored.clone(),
        other => panic!("expected a new event, got {other:?}"),
    }
}

/// The message of a stored message event.
fn message_of(event: &Event) -> Message {
    match &event.data {
        EventData::Message { message } => message.clone(),
        other => panic!("expected a message event, got {other:?}"),
    }
}

fn new_ones(appended: &[Appended]) -> Vec<Message> {
    appended
        .iter()
        .map(|a| message_of(&new_stored(a).event))
        .collect()
}

async fn append_new(store: &dyn Store, batch: &[NewEvent]) -> Vec<Message> {
    new_ones(&store.append_events(batch).await.expect("append"))
}

/// Appends `batch`, every entry of which must be stored now.
async fn append_stored(store: &dyn Store, batch: &[NewEvent]) -> Vec<Stored> {
    let appended = store.append_events(batch).await.expect("append");
    appended.iter().map(new_stored).collect()
}

/// Appends one change that must be stored now; its seq.
async fn append_one(store: &dyn Store, event: NewEvent) -> Seq {
    append_stored(store, &[event]).await.remove(0).event.seq
}

/// A message as its event carries it.
fn message_event(message: &Message) -> Event {
    Event {
        conversation_id: message.conversation_id,
        seq: message.seq,
        sender_id: message.sender_id,
        client_msg_id: message.client_msg_id.clone(),
        created_at: message.created_at,
        data: EventData::Message {
            message: message.clone(),
        },
    }
}

/// The answer to a repeat of `message`, in a conversation whose members never changed.
fn duplicate(message: &Message) -> Appended {
    Appended::Duplicate(Stored {
        event: message_event(message),
        members_seq: 0,
    })
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

fn event_seqs(events: &[Event]) -> Vec<Seq> {
    events.iter().map(|e| e.seq).collect()
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

/// The whole log, page after page.
async fn all_events(store: &dyn Store, conversation: ConversationId) -> Vec<Event> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let next = store
            .events(conversation, after, 200)
            .await
            .expect("events");
        let Some(last) = next.last() else { break };
        after = last.seq;
        all.extend(next);
    }
    all
}

/// The one message at `seq`, as `messages` reads it now.
async fn message_at(store: &dyn Store, conversation: ConversationId, seq: Seq) -> Message {
    let found = store
        .messages(conversation, page(None, Some(seq - 1), 1))
        .await
        .expect("messages");
    match found.as_slice() {
        [message] if message.seq == seq => message.clone(),
        other => panic!("no message at seq {seq}: {other:?}"),
    }
}

async fn view(store: &dyn Store, user: UserId, conversation: ConversationId) -> ConversationView {
    store
        .conversation_of(user, conversation)
        .await
        .expect("conversation of")
        .expect("a member")
}

/// One member's row in a view.
fn member_of(view: &ConversationView, user: UserId) -> MemberView {
    view.members
        .iter()
        .find(|m| m.user.id == user)
        .cloned()
        .unwrap_or_else(|| panic!("{user:?} is not in {:?}", view.members))
}

/// Everything a refused change must leave as it was: the log, the messages, and each
/// user's view of the conversation.
async fn state_of(
    store: &dyn Store,
    conversation: ConversationId,
    users: &[UserId],
) -> (
    Vec<Event>,
    Vec<Message>,
    Vec<UserId>,
    Vec<Option<ConversationView>>,
) {
    let mut views = Vec::new();
    for &user in users {
        views.push(store.conversation_of(user, conversation).await.unwrap());
    }
    (
        all_events(store, conversation).await,
        all_messages(store, conversation).await,
        store.members(conversation).await.unwrap(),
        views,
    )
}

/// `message` without its reactions: a view's last message may leave them out.
fn without_reactions(message: Option<Message>) -> Option<Message> {
    message.map(|message| Message {
        reactions: Vec::new(),
        ..message
    })
}

/// The body of a message change.
fn body_of(change: &Change) -> String {
    match change {
        Change::Message { body, .. } => body.clone(),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// `T0` plus `n` seconds: times for changes whose order must be exact.
fn seconds(n: i64) -> OffsetDateTime {
    T0 + Duration::seconds(n)
}

/// The event `new` becomes when it is stored at `seq` and does `data`.
fn stored_as(new: &NewEvent, seq: Seq, data: EventData) -> Event {
    Event {
        conversation_id: new.conversation_id,
        seq,
        sender_id: new.sender_id,
        client_msg_id: new.client_msg_id.clone(),
        created_at: new.accepted_at,
        data,
    }
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

fn names(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.username.as_str()).collect()
}

fn member_names(members: &[MemberView]) -> Vec<&str> {
    members.iter().map(|m| m.user.username.as_str()).collect()
}

/// A member row as a view shows it.
fn member_view(user: &User, role: Role, last_delivered_seq: Seq, last_read_seq: Seq) -> MemberView {
    MemberView {
        user: user.clone(),
        role,
        last_delivered_seq,
        last_read_seq,
    }
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

pub async fn create_group_has_its_distinct_members_and_the_creator_as_admin(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let ann = store.create_user("ann", "h").await.unwrap().unwrap();
    let bob = store.create_user("bob", "h").await.unwrap().unwrap();
    let carl = user(&*store, "carl").await;
    let team = store
        .create_group(bob.id, "Team", &[bob.id, ann.id, bob.id])
        .await
        .unwrap();
    assert_eq!(
        store.members(team).await.unwrap(),
        sorted(vec![ann.id, bob.id])
    );
    let view = view(&*store, bob.id, team).await;
    assert_eq!(view.kind, ConversationKind::Group);
    assert_eq!(view.title.as_deref(), Some("Team"));
    assert_eq!(
        view.members,
        [
            member_view(&ann, Role::Member, 0, 0),
            member_view(&bob, Role::Admin, 0, 0)
        ]
    );
    assert_eq!(
        (view.last_seq, view.unread_count, view.muted),
        (0, 0, false)
    );

    // The same members again make another group; one member is enough.
    let again = store
        .create_group(ann.id, "Team", &[ann.id, bob.id])
        .await
        .unwrap();
    assert_ne!(again, team);
    let solo = store.create_group(carl, "Notes", &[carl]).await.unwrap();
    assert_eq!(store.members(solo).await.unwrap(), [carl]);
    let solo = store.conversation_of(carl, solo).await.unwrap().unwrap();
    assert_eq!(solo.members[0].role, Role::Admin);
}

pub async fn create_group_adds_a_missing_creator_and_rejects_unknown_users(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let alone = store.create_group(ann, "Alone", &[]).await.unwrap();
    assert_eq!(store.members(alone).await.unwrap(), [ann]);
    let team = store.create_group(ann, "Team", &[bob]).await.unwrap();
    assert_eq!(store.members(team).await.unwrap(), sorted(vec![ann, bob]));
    let roles: Vec<_> = view(&*store, bob, team)
        .await
        .members
        .iter()
        .map(|m| (m.user.id, m.role))
        .collect();
    assert_eq!(roles, [(ann, Role::Admin), (bob, Role::Member)]);

    let stranger = store
        .create_group(ann, "Team", &[ann, UserId::new()])
        .await
        .unwrap_err();
    assert_eq!(stranger.kind, BackendErrorKind::Rejected);
    let nobody = store
        .create_group(UserId::new(), "Team", &[ann])
        .await
        .unwrap_err();
    assert_eq!(nobody.kind, BackendErrorKind::Rejected);
    // Nothing half-made is left behind.
    assert_eq!(store.conversations_of(ann).await.unwrap().len(), 2);
}

pub async fn conversations_of_lists_most_recent_activity_first(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, carl) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "carl").await,
    );
    let one = store.create_group(ann, "one", &[ann, bob]).await.unwrap();
    let (two, _) = store.create_direct(ann, bob).await.unwrap();
    let three = store
        .create_group(ann, "three", &[ann, carl])
        .await
        .unwrap();
    let elsewhere = store
        .create_group(bob, "not ann's", &[bob, carl])
        .await
        .unwrap();
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
        .create_group(carl.id, "Team", &[carl.id, ann.id, bob.id])
        .await
        .unwrap();
    let (chat, _) = store.create_direct(bob.id, ann.id).await.unwrap();

    let empty = view(&*store, ann.id, chat).await;
    assert_eq!(empty.id, chat);
    assert_eq!(empty.kind, ConversationKind::Direct);
    assert_eq!(
        empty.members,
        [
            member_view(&ann, Role::Member, 0, 0),
            member_view(&bob, Role::Member, 0, 0)
        ]
    );
    assert_eq!(empty.last_message, None);
    assert_eq!((empty.last_seq, empty.last_read_seq), (0, 0));
    assert_eq!((empty.unread_count, empty.unread_mentions), (0, 0));
    assert!(!empty.muted);

    let stored = append_new(
        &*store,
        &[
            new_message(team, bob.id, "b1", "one"),
            new_message(team, ann.id, "a1", "two"),
            new_message(team, ann.id, "a2", "three"),
        ],
    )
    .await;
    let ann_view = view(&*store, ann.id, team).await;
    assert_eq!(ann_view.id, team);
    assert_eq!(ann_view.kind, ConversationKind::Group);
    assert_eq!(ann_view.title.as_deref(), Some("Team"));
    assert_eq!(
        ann_view.members,
        [
            member_view(&ann, Role::Member, 3, 3),
            member_view(&bob, Role::Member, 1, 1),
            member_view(&carl, Role::Admin, 0, 0),
        ]
    );
    assert_eq!(ann_view.last_message.as_ref(), Some(&stored[2]));
    assert_eq!((ann_view.last_seq, ann_view.last_read_seq), (3, 3));
    assert_eq!((ann_view.unread_count, ann_view.unread_mentions), (0, 0));
    let bob_view = view(&*store, bob.id, team).await;
    assert_eq!((bob_view.last_seq, bob_view.last_read_seq), (3, 1));
    assert_eq!(bob_view.unread_count, 2);
    let carl_view = view(&*store, carl.id, team).await;
    assert_eq!((carl_view.last_seq, carl_view.last_read_seq), (3, 0));
    assert_eq!(carl_view.unread_count, 3);
    assert_eq!(carl_view.last_message.as_ref(), Some(&stored[2]));
    assert_eq!(carl_view.members, ann_view.members);

    // The list shows the same views as the single lookups.
    let listed = store.conversations_of(ann.id).await.unwrap();
    let single = view(&*store, ann.id, chat).await;
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
    let team = store
        .create_group(carl, "Team", &[carl, ann, bob])
        .await
        .unwrap();
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
    store
        .create_group(ann, "one", &[ann, carl, bob])
        .await
        .unwrap();
    store.create_group(dave, "two", &[dave, ann]).await.unwrap();
    store
        .create_group(eve, "others", &[eve, frank])
        .await
        .unwrap();
    store.create_group(ann, "alone", &[ann]).await.unwrap();

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
    let two = store.create_group(ann, "two", &[ann, bob]).await.unwrap();

    assert!(store.append_events(&[]).await.unwrap().is_empty());
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
    assert_eq!(
        stored,
        Message::new(
            stored.id,
            chat,
            1,
            ann,
            "client-1:x.y_z".into(),
            body.into(),
            accepted_at
        ),
        "a new message has no reply, mentions, reactions, edit or deletion"
    );

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
    let group = store.create_group(ann, "g", &[ann, bob]).await.unwrap();
    let first = append_new(&*store, &[new_message(chat, ann, "m1", "original")])
        .await
        .remove(0);

    let mut later = new_message(chat, ann, "m1", "original");
    later.accepted_at = first.created_at + Duration::seconds(5);
    let again = store
        .append_events(&[
            later,
            new_message(chat, ann, "m1", "a different body"),
            // Another kind with the same id is a repeat too: the id is per sender.
            new_event(group, ann, "m1", Change::TitleChanged { title: "t".into() }),
            // The same id from someone else is a different message.
            new_message(chat, bob, "m1", "bob's own"),
            new_message(chat, ann, "m2", "next"),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], duplicate(&first));
    assert_eq!(again[1], duplicate(&first));
    assert_eq!(again[2], duplicate(&first));
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
        .append_events(&[new_message(group, ann, "m1", "yet another")])
        .await
        .unwrap();
    assert_eq!(once_more, [duplicate(&first)]);
}

pub async fn repeat_within_one_batch_returns_the_first_of_the_batch(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();

    let appended = store
        .append_events(&[
            new_message(chat, ann, "m1", "first"),
            new_message(chat, ann, "m1", "second"),
            new_message(chat, ann, "m2", "third"),
            new_message(chat, ann, "m1", "fourth"),
        ])
        .await
        .unwrap();
    let first = new_ones(&appended[..1]).remove(0);
    assert_eq!(first.seq, 1);
    assert_eq!(appended[1], duplicate(&first));
    let third = new_ones(&appended[2..3]).remove(0);
    assert_eq!((third.seq, third.body.as_str()), (2, "third"));
    assert_eq!(appended[3], duplicate(&first));
    let history = store.messages(chat, page(None, None, 50)).await.unwrap();
    assert_eq!(seqs(&history), [1, 2]);
    assert_eq!(history[0], first);
}

pub async fn non_member_is_refused_not_found_and_consumes_no_seq(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob, eve) = (
        user(&*store, "ann").await,
        user(&*store, "bob").await,
        user(&*store, "eve").await,
    );
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();

    let appended = store
        .append_events(&[
            new_message(chat, eve, "e1", "intruding"),
            new_message(ConversationId::new(), ann, "a0", "nowhere"),
            new_message(chat, UserId::new(), "x1", "nobody"),
        ])
        .await
        .unwrap();
    assert_eq!(appended.len(), 3);
    // Not a member and no such conversation are the same answer.
    for refused in &appended {
        assert!(
            matches!(refused, Appended::Refused(error) if error.code == ErrorCode::NotFound),
            "{refused:?}"
        );
    }
    assert_eq!(appended[0], appended[1]);
    let view = store.conversation_of(ann, chat).await.unwrap().unwrap();
    assert_eq!(view.last_seq, 0);

    // A refused client_msg_id was not stored, so it is free for a real message.
    let eve_group = store.create_group(eve, "eve's", &[eve]).await.unwrap();
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
    let group = store.create_group(ann, "g", &[ann, eve]).await.unwrap();
    let earlier = append_new(&*store, &[new_message(chat, bob, "b0", "earlier")])
        .await
        .remove(0);

    let appended = store
        .append_events(&[
            new_message(group, eve, "e1", "one"),
            new_message(chat, eve, "e2", "not a member"),
            new_message(chat, bob, "b0", "repeat of an earlier batch"),
            new_message(chat, ann, "a1", "two"),
            new_message(group, ann, "a1", "repeat within the batch"),
            new_message(ConversationId::new(), bob, "b1", "nowhere"),
            new_message(chat, bob, "b2", "three"),
            at(
                new_message(chat, bob, "b3", "in 2300"),
                datetime!(2300-01-01 0:00 UTC),
            ),
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
            Appended::New(s) => {
                let m = message_of(&s.event);
                format!("new {}#{} {}", name(m.conversation_id), m.seq, m.body)
            }
            Appended::Duplicate(s) => {
                let m = message_of(&s.event);
                format!("dup {}#{} {}", name(m.conversation_id), m.seq, m.body)
            }
            Appended::Refused(error) => format!("refused {}", error.code),
            Appended::Rejected(reason) => {
                assert!(!reason.is_empty());
                "rejected".to_owned()
            }
        })
        .collect();
    assert_eq!(
        summary,
        [
            "new group#1 one",
            "refused not_found",
            "dup chat#1 earlier",
            "new chat#2 two",
            "dup chat#2 two",
            "refused not_found",
            "new chat#3 three",
            "rejected",
            "new group#2 four",
        ]
    );
    assert_eq!(appended[2], duplicate(&earlier));
    let two = new_ones(&appended[3..4]).remove(0);
    assert_eq!(appended[4], duplicate(&two));
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
        .append_events(&[new_message(chat, bob, "b1", "two")])
        .await
        .unwrap();
    assert!(matches!(&again[0], Appended::Duplicate(s) if s.event.seq == 2));
    assert_eq!((marker(ann).await, marker(bob).await), (5, 4));
}

pub async fn messages_pages_are_ascending_and_after_seq_wins(fixture: impl StoreFixture) {
    let store = fixture.store();
    let (ann, bob) = (user(&*store, "ann").await, user(&*store, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let other = store.create_group(ann, "other", &[ann]).await.unwrap();
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
    let notes = store.create_group(ann, "notes", &[ann]).await.unwrap();
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

// ---- events ---------------------------------------------------------------------------

/// Every kind of event, in one batch, in the group "Team" of ann (its creator, so its admin),
/// bob and carl: dave joins and is removed again, carl leaves.
struct EveryKind {
    group: ConversationId,
    ann: User,
    bob: User,
    carl: User,
    dave: User,
    batch: Vec<NewEvent>,
    answers: Vec<Appended>,
}

async fn every_kind(store: &dyn Store) -> EveryKind {
    let mut users = Vec::new();
    for name in ["ann", "bob", "carl", "dave"] {
        users.push(store.create_user(name, "h").await.unwrap().unwrap());
    }
    let [ann, bob, carl, dave] = <[User; 4]>::try_from(users).unwrap();
    let group = store
        .create_group(ann.id, "Team", &[ann.id, bob.id, carl.id])
        .await
        .unwrap();
    let changes = [
        (ann.id, "m1", message("hello @Bob")),
        (ann.id, "e1", edit(1, "hello @carl")),
        (bob.id, "r1", react(1, "👍")),
        (bob.id, "r2", unreact(1, "👍")),
        (ann.id, "a1", Change::MemberAdded { user_id: dave.id }),
        (
            ann.id,
            "t1",
            Change::TitleChanged {
                title: "Renamed".into(),
            },
        ),
        (
            ann.id,
            "p1",
            Change::RoleChanged {
                user_id: bob.id,
                role: Role::Admin,
            },
        ),
        (bob.id, "x1", Change::MemberRemoved { user_id: dave.id }),
        (carl.id, "l1", Change::MemberLeft {}),
        (bob.id, "m2", reply("re: hello", 1)),
        (bob.id, "d1", Change::Delete { target_seq: 10 }),
    ];
    let batch: Vec<NewEvent> = changes
        .into_iter()
        .zip(1..)
        .map(|((sender, id, change), n)| at(new_event(group, sender, id, change), seconds(n)))
        .collect();
    let answers = store.append_events(&batch).await.expect("append");
    EveryKind {
        group,
        ann,
        bob,
        carl,
        dave,
        batch,
        answers,
    }
}

pub async fn every_kind_is_stored_with_the_next_seq_and_read_back_by_events(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let s = &*store;
    let EveryKind {
        group,
        ann,
        bob,
        carl,
        dave,
        batch,
        answers,
    } = every_kind(s).await;
    let stored: Vec<Stored> = answers.iter().map(new_stored).collect();

    // As stored: the messages as they were then, with their mentions and reply resolved.
    let first = Message {
        mentions: vec![bob.id],
        ..Message::new(
            message_of(&stored[0].event).id,
            group,
            1,
            ann.id,
            "m1".into(),
            "hello @Bob".into(),
            seconds(1),
        )
    };
    let second = Message {
        reply_to: Some(ReplyPreview {
            seq: 1,
            sender_id: ann.id,
            excerpt: "hello @carl".into(),
            deleted: false,
        }),
        ..Message::new(
            message_of(&stored[9].event).id,
            group,
            10,
            bob.id,
            "m2".into(),
            "re: hello".into(),
            seconds(10),
        )
    };
    assert_ne!(first.id, second.id);
    let data = [
        EventData::Message {
            message: first.clone(),
        },
        EventData::Edit {
            target_seq: 1,
            body: "hello @carl".into(),
            mentions: vec![carl.id],
        },
        EventData::ReactionAdded {
            target_seq: 1,
            emoji: "👍".into(),
        },
        EventData::ReactionRemoved {
            target_seq: 1,
            emoji: "👍".into(),
        },
        EventData::MemberAdded {
            user: dave.clone(),
            role: Role::Member,
        },
        EventData::TitleChanged {
            title: "Renamed".into(),
        },
        EventData::RoleChanged {
            user_id: bob.id,
            role: Role::Admin,
        },
        EventData::MemberRemoved {
            user_id: dave.id,
            promoted_user_id: None,
        },
        EventData::MemberLeft {
            user_id: carl.id,
            promoted_user_id: None,
        },
        EventData::Message {
            message: second.clone(),
        },
        EventData::Delete { target_seq: 10 },
    ];
    // members_seq moves with member and role events only.
    let members_seqs = [0, 0, 0, 0, 5, 5, 7, 8, 9, 9, 9];
    assert_eq!(stored.len(), data.len());
    let mut expected = Vec::new();
    for (index, (data, members_seq)) in data.into_iter().zip(members_seqs).enumerate() {
        let seq = index as Seq + 1;
        let want = Stored {
            event: stored_as(&batch[index], seq, data),
            members_seq,
        };
        assert_eq!(stored[index], want, "answer to entry {index}");
        expected.push(want.event);
    }

    // As read now: the first message edited, the reply deleted; every other event as stored.
    let first_now = Message {
        body: "hello @carl".into(),
        mentions: vec![carl.id],
        edited_at: Some(seconds(2)),
        ..first
    };
    let second_now = Message {
        body: String::new(),
        deleted: true,
        ..second
    };
    expected[0].data = EventData::Message {
        message: first_now.clone(),
    };
    expected[9].data = EventData::Message {
        message: second_now.clone(),
    };
    assert_eq!(s.events(group, 0, 200).await.unwrap(), expected);
    assert_eq!(
        s.messages(group, page(None, None, 50)).await.unwrap(),
        [first_now, second_now.clone()]
    );
    for (index, event) in expected.iter().enumerate() {
        assert_eq!(event.data.kind(), batch[index].change.kind());
        assert_eq!(event.created_at.offset(), UtcOffset::UTC);
    }

    // Applied to the conversation: its title, who is in it and with which role.
    let view = view(s, ann.id, group).await;
    assert_eq!(view.title.as_deref(), Some("Renamed"));
    assert_eq!(
        view.members,
        [
            member_view(&ann, Role::Admin, 1, 1),
            member_view(&bob, Role::Admin, 10, 10)
        ]
    );
    assert_eq!(view.last_seq, 11);
    assert_eq!(
        without_reactions(view.last_message),
        Some(second_now),
        "the newest message, deleted since"
    );
    assert_eq!(
        store.members(group).await.unwrap(),
        sorted(vec![ann.id, bob.id])
    );
    for gone in [carl.id, dave.id] {
        assert_eq!(s.conversation_of(gone, group).await.unwrap(), None);
    }
}

pub async fn a_repeat_of_any_kind_returns_the_event_as_it_is_now_and_consumes_no_seq(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let s = &*store;
    let EveryKind {
        group,
        ann,
        carl,
        batch,
        answers,
        ..
    } = every_kind(s).await;
    assert!(answers.iter().all(|a| matches!(a, Appended::New(_))));
    append_one(
        s,
        at(new_event(group, ann.id, "r3", react(1, "🎉")), seconds(12)),
    )
    .await;
    let now = all_events(s, group).await;
    assert_eq!(event_seqs(&now), (1..=12).collect::<Vec<_>>());
    assert_eq!(
        message_of(&now[0]).reactions,
        [Reaction {
            emoji: "🎉".into(),
            user_ids: vec![ann.id]
        }]
    );

    // Every entry again, a second later: each is the event as it is now (the message with
    // its edit, its reaction and its deletion), with the members_seq of now, even the
    // changes the rules would refuse now (carl is no longer a member).
    let again: Vec<NewEvent> = batch
        .iter()
        .map(|new| at(new.clone(), new.accepted_at + Duration::seconds(100)))
        .collect();
    let expected: Vec<Appended> = now[..11]
        .iter()
        .map(|event| {
            Appended::Duplicate(Stored {
                event: event.clone(),
                members_seq: 9,
            })
        })
        .collect();
    assert_eq!(store.append_events(&again).await.unwrap(), expected);
    // Whatever the repeat asks for, where: the id is the sender's.
    let elsewhere = store.create_group(carl.id, "Carl's", &[]).await.unwrap();
    let repeat = store
        .append_events(&[new_message(elsewhere, carl.id, "l1", "not a departure")])
        .await
        .unwrap();
    assert_eq!(repeat, [expected[8].clone()]);
    assert_eq!(all_events(s, group).await, now);
    assert!(all_events(s, elsewhere).await.is_empty());
    assert_eq!(view(s, ann.id, group).await.last_seq, 12);
}

pub async fn edits_replace_the_body_and_each_keeps_its_version(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let answers = append_stored(
        s,
        &[
            at(new_message(chat, ann, "m1", "first"), seconds(1)),
            at(new_event(chat, ann, "e1", edit(1, "second")), seconds(2)),
            at(new_message(chat, bob, "m2", "reply"), seconds(3)),
            at(new_event(chat, ann, "e2", edit(1, "third")), seconds(4)),
        ],
    )
    .await;
    assert_eq!(
        answers[1].event.data,
        EventData::Edit {
            target_seq: 1,
            body: "second".into(),
            mentions: Vec::new()
        }
    );
    let edited = message_at(s, chat, 1).await;
    assert_eq!(edited.body, "third");
    assert_eq!(edited.edited_at, Some(seconds(4)));
    assert_eq!(edited.created_at, seconds(1));
    assert_eq!(
        Message {
            body: "first".into(),
            edited_at: None,
            ..edited
        },
        message_of(&answers[0].event),
        "nothing else of the message changes"
    );
    let bodies: Vec<_> = all_events(s, chat)
        .await
        .into_iter()
        .filter_map(|event| match event.data {
            EventData::Edit { body, .. } => Some(body),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, ["second", "third"], "each edit keeps its version");

    // Edits are not messages: they neither count as unread nor become the last message.
    let bob_view = view(s, bob, chat).await;
    assert_eq!((bob_view.last_read_seq, bob_view.unread_count), (3, 0));
    let ann_view = view(s, ann, chat).await;
    assert_eq!((ann_view.last_seq, ann_view.unread_count), (4, 1));
    assert_eq!(ann_view.last_message.map(|m| m.seq), Some(3));
}

pub async fn delete_erases_the_body_its_edits_reactions_and_mentions(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, carl) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
    );
    let group = store
        .create_group(ann, "Team", &[ann, bob, carl])
        .await
        .unwrap();
    append_stored(
        s,
        &[
            at(new_message(group, bob, "m1", "hi @carl"), seconds(1)),
            at(
                new_event(group, bob, "e1", edit(1, "hi @carl again")),
                seconds(2),
            ),
            at(new_event(group, carl, "r1", react(1, "👍")), seconds(3)),
            at(new_event(group, ann, "r2", react(1, "🎉")), seconds(4)),
            at(new_event(group, ann, "m2", reply("answer", 1)), seconds(5)),
        ],
    )
    .await;
    let before = view(s, carl, group).await;
    assert_eq!((before.unread_count, before.unread_mentions), (2, 1));
    let original = message_at(s, group, 1).await;
    assert_eq!(original.mentions, [carl]);
    assert_eq!(original.reactions.len(), 2);

    // An admin deletes bob's message.
    let delete = at(
        new_event(group, ann, "d1", Change::Delete { target_seq: 1 }),
        seconds(6),
    );
    let stored = append_stored(s, std::slice::from_ref(&delete))
        .await
        .remove(0);
    assert_eq!(
        stored.event,
        stored_as(&delete, 6, EventData::Delete { target_seq: 1 })
    );
    let deleted = message_at(s, group, 1).await;
    assert_eq!(
        deleted,
        Message {
            body: String::new(),
            mentions: Vec::new(),
            reactions: Vec::new(),
            deleted: true,
            ..original
        },
        "a placeholder in its place, still edited then"
    );
    let events = all_events(s, group).await;
    assert_eq!(event_seqs(&events), [1, 2, 3, 4, 5, 6]);
    assert_eq!(events[0].data, EventData::Message { message: deleted });
    assert_eq!(
        events[1].data,
        EventData::Edit {
            target_seq: 1,
            body: String::new(),
            mentions: Vec::new()
        },
        "the edit's body and mentions are erased too"
    );
    // The reactions stay in the log (they happened), not on the message.
    assert_eq!(
        events[2].data,
        EventData::ReactionAdded {
            target_seq: 1,
            emoji: "👍".into()
        }
    );
    assert_eq!(
        message_of(&events[4]).reply_to,
        Some(ReplyPreview {
            seq: 1,
            sender_id: bob,
            excerpt: String::new(),
            deleted: true
        })
    );
    // A deleted message is neither unread nor a mention.
    let after = view(s, carl, group).await;
    assert_eq!((after.unread_count, after.unread_mentions), (1, 0));
}

pub async fn reactions_are_grouped_by_first_reaction_with_users_in_order(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, carl) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
    );
    let group = store
        .create_group(ann, "Team", &[ann, bob, carl])
        .await
        .unwrap();
    let reaction = |emoji: &str, user_ids: &[UserId]| Reaction {
        emoji: emoji.to_owned(),
        user_ids: user_ids.to_vec(),
    };
    append_stored(
        s,
        &[
            at(new_message(group, ann, "m1", "one"), seconds(1)),
            at(new_message(group, ann, "m2", "two"), seconds(2)),
            at(new_event(group, bob, "r1", react(1, "👍")), seconds(3)),
            at(new_event(group, carl, "r2", react(1, "🎉")), seconds(4)),
            at(new_event(group, ann, "r3", react(1, "👍")), seconds(5)),
            at(new_event(group, bob, "r4", react(1, "🎉")), seconds(6)),
            at(new_event(group, carl, "r5", react(2, "👀")), seconds(7)),
        ],
    )
    .await;
    let reactions = |messages: Vec<Message>| -> Vec<Vec<Reaction>> {
        messages.into_iter().map(|m| m.reactions).collect()
    };
    assert_eq!(
        reactions(s.messages(group, page(None, None, 10)).await.unwrap()),
        [
            vec![reaction("👍", &[bob, ann]), reaction("🎉", &[carl, bob])],
            vec![reaction("👀", &[carl])],
        ]
    );

    append_stored(
        s,
        &[at(
            new_event(group, bob, "u1", unreact(1, "👍")),
            seconds(8),
        )],
    )
    .await;
    // 👍 is ann's now, from after carl's 🎉: the order follows the first reaction left.
    assert_eq!(
        message_at(s, group, 1).await.reactions,
        [reaction("🎉", &[carl, bob]), reaction("👍", &[ann])]
    );
    append_stored(
        s,
        &[at(
            new_event(group, carl, "u2", unreact(1, "🎉")),
            seconds(9),
        )],
    )
    .await;
    assert_eq!(
        message_at(s, group, 1).await.reactions,
        [reaction("👍", &[ann]), reaction("🎉", &[bob])]
    );
    // Reacting again comes last.
    append_stored(
        s,
        &[at(
            new_event(group, carl, "r6", react(1, "🎉")),
            seconds(10),
        )],
    )
    .await;
    let now = [reaction("👍", &[ann]), reaction("🎉", &[bob, carl])];
    assert_eq!(message_at(s, group, 1).await.reactions, now);
    // The log's message event carries them too; a page of one message has its own only.
    let events = s.events(group, 0, 1).await.unwrap();
    assert_eq!(message_of(&events[0]).reactions, now);
    assert_eq!(
        message_at(s, group, 2).await.reactions,
        [reaction("👀", &[carl])]
    );
    // Reactions are not messages: the newest message is still the second.
    let view = view(s, bob, group).await;
    assert_eq!(view.last_seq, 10);
    assert_eq!(view.last_message.map(|m| m.seq), Some(2));
    assert_eq!(view.unread_count, 2);
}

pub async fn replies_carry_a_preview_of_the_original_as_it_is_now(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let long = format!("{}!", "é".repeat(130));
    append_one(s, new_message(chat, ann, "m1", &long)).await;
    let answer = append_stored(s, &[new_event(chat, bob, "m2", reply("sure", 1))])
        .await
        .remove(0);
    let preview = |excerpt: &str, deleted: bool| {
        Some(ReplyPreview {
            seq: 1,
            sender_id: ann,
            excerpt: excerpt.to_owned(),
            deleted,
        })
    };
    let cut = "é".repeat(120);
    assert_eq!(message_of(&answer.event).reply_to, preview(&cut, false));
    assert_eq!(message_at(s, chat, 2).await.reply_to, preview(&cut, false));

    append_one(s, new_event(chat, ann, "e1", edit(1, "short now"))).await;
    assert_eq!(
        message_at(s, chat, 2).await.reply_to,
        preview("short now", false)
    );
    append_one(
        s,
        new_event(chat, ann, "d1", Change::Delete { target_seq: 1 }),
    )
    .await;
    assert_eq!(message_at(s, chat, 2).await.reply_to, preview("", true));
    let events = s.events(chat, 1, 1).await.unwrap();
    assert_eq!(message_of(&events[0]).reply_to, preview("", true));
    // Nothing more answers a deleted message.
    let again = new_event(chat, bob, "m3", reply("still?", 1));
    let refused = store.append_events(&[again]).await.unwrap();
    assert!(
        matches!(&refused[0], Appended::Refused(e) if e.code == ErrorCode::NotFound),
        "{refused:?}"
    );
}

pub async fn mentions_resolve_to_current_members_ignoring_case_and_again_on_edit(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let s = &*store;
    let ann = user(s, "ann").await;
    let bob = user(s, "Bob").await;
    let (carl, dave) = (user(s, "carl").await, user(s, "dave").await);
    let group = store
        .create_group(ann, "Team", &[ann, bob, carl])
        .await
        .unwrap();
    let body = "@CARL and @bob, not @dave or @nobody, nor carl@example.org; @bob again";
    let answer = append_stored(s, &[new_message(group, ann, "m1", body)])
        .await
        .remove(0);
    assert_eq!(
        message_of(&answer.event).mentions,
        [carl, bob],
        "members only, in the order they appear, once each"
    );
    assert_eq!(message_at(s, group, 1).await.mentions, [carl, bob]);

    let answer = append_stored(s, &[new_event(group, ann, "e1", edit(1, "only @Ann now"))])
        .await
        .remove(0);
    assert_eq!(
        answer.event.data,
        EventData::Edit {
            target_seq: 1,
            body: "only @Ann now".into(),
            mentions: vec![ann]
        }
    );
    assert_eq!(message_at(s, group, 1).await.mentions, [ann]);

    append_stored(
        s,
        &[
            new_event(group, ann, "a1", Change::MemberAdded { user_id: dave }),
            new_event(group, ann, "x1", Change::MemberRemoved { user_id: carl }),
            new_message(group, bob, "m2", "@dave @carl @bob"),
        ],
    )
    .await;
    assert_eq!(message_at(s, group, 5).await.mentions, [dave, bob]);
}

// ---- rules ----------------------------------------------------------------------------

/// 21 different emoji: a message takes the first 20.
const EMOJI: [&str; 21] = [
    "👍", "👎", "😀", "😂", "😍", "😢", "😡", "🎉", "🔥", "❤️", "👀", "🙏", "💯", "🤔", "👏", "🚀",
    "✅", "❌", "⭐", "🍕", "🌈",
];

pub async fn every_rule_refuses_through_the_store_and_changes_nothing(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, carl, eve) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
        user(s, "eve").await,
    );
    let ghost = UserId::new();
    let group = store
        .create_group(ann, "G", &[ann, bob, carl])
        .await
        .unwrap();
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let mut setup = vec![
        new_message(group, ann, "s1", "one"),
        new_message(group, bob, "s2", "two"),
        new_event(group, bob, "s3", react(1, "👍")),
        new_message(group, carl, "s4", "three"),
        new_event(group, carl, "s5", Change::Delete { target_seq: 4 }),
        new_message(group, ann, "s6", "full"),
    ];
    for (i, emoji) in EMOJI[..20].iter().enumerate() {
        setup.push(new_event(group, ann, &format!("f{i}"), react(6, emoji)));
    }
    setup.push(new_message(chat, bob, "s7", "hi"));
    append_stored(s, &setup).await;
    // Group: 1 ann's, 2 bob's, 3 bob's 👍 on 1, 4 carl's (deleted by 5), 6 ann's with 20
    // distinct emoji (7 to 26). Chat: 1 bob's.
    use ErrorCode::{Conflict, Forbidden, InvalidInput, NotFound};
    let title = || Change::TitleChanged { title: "t".into() };
    let role = |user_id, role| Change::RoleChanged { user_id, role };
    let nowhere = ConversationId::new();
    let cases: Vec<(&str, ConversationId, UserId, Change, ErrorCode)> = vec![
        (
            "edit by another member",
            group,
            bob,
            edit(1, "x"),
            Forbidden,
        ),
        ("edit by an admin", group, ann, edit(2, "x"), Forbidden),
        (
            "delete by another member",
            group,
            bob,
            Change::Delete { target_seq: 1 },
            Forbidden,
        ),
        (
            "delete of the other's in a direct chat",
            chat,
            ann,
            Change::Delete { target_seq: 1 },
            Forbidden,
        ),
        (
            "the same reaction twice",
            group,
            bob,
            react(1, "👍"),
            Conflict,
        ),
        (
            "a 21st distinct emoji",
            group,
            bob,
            react(6, EMOJI[20]),
            Conflict,
        ),
        (
            "unreact by who did not react",
            group,
            carl,
            unreact(1, "👍"),
            NotFound,
        ),
        (
            "unreact of another emoji",
            group,
            bob,
            unreact(1, "🎉"),
            NotFound,
        ),
        (
            "add a member",
            group,
            ann,
            Change::MemberAdded { user_id: carl },
            Conflict,
        ),
        (
            "add an unknown user",
            group,
            ann,
            Change::MemberAdded { user_id: ghost },
            NotFound,
        ),
        (
            "add by a member",
            group,
            bob,
            Change::MemberAdded { user_id: eve },
            Forbidden,
        ),
        (
            "remove a non-member",
            group,
            ann,
            Change::MemberRemoved { user_id: eve },
            NotFound,
        ),
        (
            "remove by a member",
            group,
            bob,
            Change::MemberRemoved { user_id: carl },
            Forbidden,
        ),
        (
            "remove oneself",
            group,
            ann,
            Change::MemberRemoved { user_id: ann },
            InvalidInput,
        ),
        ("rename by a member", group, bob, title(), Forbidden),
        (
            "role by a member",
            group,
            bob,
            role(carl, Role::Admin),
            Forbidden,
        ),
        (
            "the last admin stepping down",
            group,
            ann,
            role(ann, Role::Member),
            Conflict,
        ),
        (
            "the role one has",
            group,
            ann,
            role(bob, Role::Member),
            Conflict,
        ),
        (
            "role of a non-member",
            group,
            ann,
            role(eve, Role::Admin),
            NotFound,
        ),
        (
            "edit a deleted message",
            group,
            carl,
            edit(4, "x"),
            NotFound,
        ),
        (
            "delete a deleted message",
            group,
            carl,
            Change::Delete { target_seq: 4 },
            NotFound,
        ),
        (
            "react to a deleted message",
            group,
            bob,
            react(4, "👍"),
            NotFound,
        ),
        ("edit a reaction", group, bob, edit(3, "x"), NotFound),
        ("react to a reaction", group, ann, react(3, "👍"), NotFound),
        (
            "delete a seq past the last",
            group,
            ann,
            Change::Delete { target_seq: 99 },
            NotFound,
        ),
        (
            "reply to a deleted message",
            group,
            ann,
            reply("x", 4),
            NotFound,
        ),
        ("reply to a reaction", group, ann, reply("x", 3), NotFound),
        (
            "reply to a seq past the last",
            group,
            ann,
            reply("x", 99),
            NotFound,
        ),
        (
            "message by a non-member",
            group,
            eve,
            message("x"),
            NotFound,
        ),
        (
            "leave by a non-member",
            group,
            eve,
            Change::MemberLeft {},
            NotFound,
        ),
        (
            "message to no conversation",
            nowhere,
            ann,
            message("x"),
            NotFound,
        ),
        (
            "add to a direct chat",
            chat,
            ann,
            Change::MemberAdded { user_id: carl },
            Forbidden,
        ),
        (
            "remove from a direct chat",
            chat,
            ann,
            Change::MemberRemoved { user_id: bob },
            Forbidden,
        ),
        (
            "leave a direct chat",
            chat,
            ann,
            Change::MemberLeft {},
            Forbidden,
        ),
        ("rename a direct chat", chat, ann, title(), Forbidden),
        (
            "role in a direct chat",
            chat,
            ann,
            role(bob, Role::Admin),
            Forbidden,
        ),
    ];
    let everyone = [ann, bob, carl, eve];
    let before = (
        state_of(s, group, &everyone).await,
        state_of(s, chat, &everyone).await,
    );
    assert_eq!(before.0.0.len(), 26);

    let mut batch = Vec::new();
    let mut errors = Vec::new();
    for (index, (what, conversation, sender, change, code)) in cases.into_iter().enumerate() {
        let entry = new_event(conversation, sender, &format!("refused-{index}"), change);
        let told = store.refusal(&entry).await.unwrap();
        let Some(error) = told else {
            panic!("{what}: refusal() allows {entry:?}");
        };
        assert_eq!(error.code, code, "{what}: {error}");
        let appended = store
            .append_events(std::slice::from_ref(&entry))
            .await
            .unwrap();
        assert_eq!(
            appended,
            [Appended::Refused(error.clone())],
            "{what}: append answers what refusal() said"
        );
        let after = (
            state_of(s, group, &everyone).await,
            state_of(s, chat, &everyone).await,
        );
        assert!(
            after == before,
            "{what}: a refused change changed something"
        );
        batch.push(entry);
        errors.push(Appended::Refused(error));
    }
    // All of them in one batch: the same answers, in order, and still nothing changed.
    assert_eq!(store.append_events(&batch).await.unwrap(), errors);
    let after = (
        state_of(s, group, &everyone).await,
        state_of(s, chat, &everyone).await,
    );
    assert!(after == before, "a refused batch changed something");
    // A refused client_msg_id was not stored: it is free for a change that is allowed.
    let allowed = new_message(group, bob, "refused-0", "now allowed");
    assert_eq!(append_one(s, allowed).await, 27);
}

pub async fn refusal_is_none_for_what_append_would_store(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, carl) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
    );
    let group = store.create_group(ann, "G", &[ann, bob]).await.unwrap();
    let mut setup = vec![new_message(group, ann, "m1", "one")];
    for (i, emoji) in EMOJI[..20].iter().enumerate() {
        setup.push(new_event(group, ann, &format!("f{i}"), react(1, emoji)));
    }
    append_stored(s, &setup).await;
    // In order, each allowed by the state the ones before it made.
    let changes = [
        (bob, "c1", react(1, EMOJI[0])),
        (ann, "c2", edit(1, "one, edited")),
        (ann, "c3", Change::MemberAdded { user_id: carl }),
        (carl, "c4", reply("hello", 1)),
        (
            ann,
            "c5",
            Change::TitleChanged {
                title: "New".into(),
            },
        ),
        (
            ann,
            "c6",
            Change::RoleChanged {
                user_id: bob,
                role: Role::Admin,
            },
        ),
        (
            ann,
            "c7",
            Change::RoleChanged {
                user_id: ann,
                role: Role::Member,
            },
        ),
        (bob, "c8", Change::Delete { target_seq: 1 }),
        (bob, "c9", Change::MemberRemoved { user_id: ann }),
        (carl, "c10", Change::MemberLeft {}),
    ];
    for (n, (sender, id, change)) in changes.into_iter().enumerate() {
        let entry = new_event(group, sender, id, change);
        assert_eq!(store.refusal(&entry).await.unwrap(), None, "{entry:?}");
        // Asking twice stores nothing.
        assert_eq!(store.refusal(&entry).await.unwrap(), None, "{entry:?}");
        let seq = 21 + n as Seq + 1;
        assert_eq!(view(s, bob, group).await.last_seq, seq - 1);
        assert_eq!(append_one(s, entry).await, seq);
    }
    assert_eq!(store.members(group).await.unwrap(), [bob]);
}

/// A client whose `accepted` was lost (its connection or the server died) sends the change
/// again under the same client id, and `append_events` answers `Duplicate`: so `refusal`,
/// the gateway's check before `accepted`, must not refuse it by the state the change made
/// itself (a reaction present or gone, a message deleted, a member added or gone, a role
/// given).
pub async fn refusal_is_none_for_a_change_already_stored(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, carl) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
    );
    let group = store.create_group(ann, "G", &[ann, bob]).await.unwrap();
    append_stored(
        s,
        &[
            new_message(group, ann, "m1", "one"),
            new_message(group, ann, "m2", "two"),
        ],
    )
    .await;
    let changes = [
        (bob, "r1", react(1, EMOJI[0])),
        (bob, "r2", unreact(1, EMOJI[0])),
        (ann, "d1", Change::Delete { target_seq: 2 }),
        (ann, "a1", Change::MemberAdded { user_id: carl }),
        (
            ann,
            "p1",
            Change::RoleChanged {
                user_id: bob,
                role: Role::Admin,
            },
        ),
        (carl, "l1", Change::MemberLeft {}),
        (bob, "x1", Change::MemberRemoved { user_id: ann }),
    ];
    for (sender, id, change) in changes {
        let entry = new_event(group, sender, id, change);
        let seq = append_one(s, entry.clone()).await;
        assert_eq!(
            store.refusal(&entry).await.unwrap(),
            None,
            "a resend of {entry:?}"
        );
        let again = store
            .append_events(std::slice::from_ref(&entry))
            .await
            .unwrap();
        assert!(
            matches!(&again[..], [Appended::Duplicate(first)] if first.event.seq == seq),
            "{entry:?}: {again:?}"
        );
    }
}

/// A store may remember, through a batch, what plain messages depend on (the sender's
/// membership, the conversation's newest seq): a removal between two messages of the same
/// sender must still refuse the second, and seqs stay gap-free across senders.
pub async fn messages_interleaved_with_a_removal_in_one_batch_follow_it(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let s = store.as_ref();
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let group = store.create_group(ann, "G", &[ann, bob]).await.unwrap();
    let batch = [
        new_message(group, bob, "b1", "one"),
        new_message(group, ann, "a1", "two"),
        new_message(group, bob, "b2", "three"),
        new_event(group, ann, "a2", Change::MemberRemoved { user_id: bob }),
        new_message(group, bob, "b3", "let me in"),
        new_message(group, ann, "a3", "four"),
        new_event(group, ann, "a4", Change::MemberAdded { user_id: bob }),
        new_message(group, bob, "b4", "back"),
    ];
    let answers = store.append_events(&batch).await.unwrap();
    let summary: Vec<String> = answers
        .iter()
        .map(|answer| match answer {
            Appended::New(stored) => {
                format!("new {} {}", stored.event.seq, stored.event.data.kind())
            }
            Appended::Refused(error) => format!("refused {}", error.code),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "new 1 message",
            "new 2 message",
            "new 3 message",
            "new 4 member_removed",
            "refused not_found",
            "new 5 message",
            "new 6 member_added",
            "new 7 message",
        ]
    );
}

pub async fn an_earlier_entry_of_the_batch_can_make_a_later_one_refused(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, carl) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
    );
    let group = store
        .create_group(ann, "G", &[ann, bob, carl])
        .await
        .unwrap();
    append_one(s, new_message(group, carl, "m1", "hello")).await;
    let batch = [
        new_event(group, bob, "b1", react(1, "👍")),
        new_event(group, ann, "a1", Change::MemberRemoved { user_id: bob }),
        new_message(group, bob, "b2", "still here?"),
        new_event(group, carl, "c1", Change::Delete { target_seq: 1 }),
        new_event(group, ann, "a2", react(1, "🎉")),
        new_event(
            group,
            ann,
            "a3",
            Change::RoleChanged {
                user_id: carl,
                role: Role::Admin,
            },
        ),
        new_message(group, carl, "c2", "mine"),
        new_message(group, carl, "c2", "mine again"),
        new_event(group, bob, "b3", unreact(1, "👍")),
    ];
    let answers = store.append_events(&batch).await.unwrap();
    let summary: Vec<String> = answers
        .iter()
        .map(|answer| match answer {
            Appended::New(stored) => {
                format!("new {} {}", stored.event.seq, stored.event.data.kind())
            }
            Appended::Duplicate(stored) => format!("dup {}", stored.event.seq),
            Appended::Refused(error) => format!("refused {}", error.code),
            Appended::Rejected(reason) => format!("rejected {reason}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "new 2 reaction_added",
            "new 3 member_removed",
            "refused not_found",
            "new 4 delete",
            "refused not_found",
            "new 5 role_changed",
            "new 6 message",
            "dup 6",
            "refused not_found",
        ]
    );
    assert_eq!(event_seqs(&all_events(s, group).await), [1, 2, 3, 4, 5, 6]);
    // What refusal() says now agrees with what the batch answered.
    for index in [2, 4, 8] {
        let told = store.refusal(&batch[index]).await.unwrap();
        assert_eq!(answers[index], Appended::Refused(told.unwrap()));
    }
}

// ---- membership -----------------------------------------------------------------------

pub async fn a_removed_member_loses_the_conversation_at_once(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, carl) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
    );
    let group = store
        .create_group(ann, "G", &[ann, bob, carl])
        .await
        .unwrap();
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let mine = append_new(s, &[new_message(group, bob, "b1", "mine")])
        .await
        .remove(0);
    assert!(store.set_muted(group, bob, true).await.unwrap());
    let removed = append_stored(
        s,
        &[new_event(
            group,
            ann,
            "a1",
            Change::MemberRemoved { user_id: bob },
        )],
    )
    .await
    .remove(0);
    assert_eq!(
        removed.event.data,
        EventData::MemberRemoved {
            user_id: bob,
            promoted_user_id: None
        }
    );
    assert_eq!(removed.members_seq, 2);

    assert!(!store.is_member(group, bob).await.unwrap());
    assert_eq!(store.members(group).await.unwrap(), sorted(vec![ann, carl]));
    let listed: Vec<_> = store
        .conversations_of(bob)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(listed, [chat]);
    assert_eq!(store.conversation_of(bob, group).await.unwrap(), None);
    assert_eq!(
        member_names(&view(s, ann, group).await.members),
        ["ann", "carl"]
    );
    assert_eq!(store.contacts(carl, 100).await.unwrap(), [ann]);
    for marker in [
        store.mark_read(group, bob, 2).await,
        store.mark_delivered(group, bob, 2).await,
    ] {
        assert_eq!(marker.unwrap_err().kind, BackendErrorKind::Rejected);
    }
    assert!(!store.set_muted(group, bob, false).await.unwrap());
    let refused = store
        .refusal(&new_message(group, bob, "b2", "hello?"))
        .await
        .unwrap();
    assert_eq!(refused.map(|e| e.code), Some(ErrorCode::NotFound));
    // Their messages stay.
    assert_eq!(message_at(s, group, 1).await, mine);
}

pub async fn a_re_added_member_starts_afresh_with_history_read(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let ann = store.create_user("ann", "h").await.unwrap().unwrap();
    let bob = store.create_user("bob", "h").await.unwrap().unwrap();
    let carl = store.create_user("carl", "h").await.unwrap().unwrap();
    let group = store.create_group(ann.id, "G", &[bob.id]).await.unwrap();
    let (chat, _) = store.create_direct(bob.id, carl.id).await.unwrap();
    append_stored(
        s,
        &[
            new_message(group, bob.id, "b1", "one"),
            new_event(
                group,
                ann.id,
                "a1",
                Change::RoleChanged {
                    user_id: bob.id,
                    role: Role::Admin,
                },
            ),
        ],
    )
    .await;
    assert!(store.set_muted(group, bob.id, true).await.unwrap());
    assert_eq!(store.mark_read(group, bob.id, 2).await.unwrap(), Some(2));
    append_stored(
        s,
        &[
            new_event(
                group,
                ann.id,
                "a2",
                Change::MemberRemoved { user_id: bob.id },
            ),
            new_message(group, ann.id, "a3", "while bob is away"),
        ],
    )
    .await;
    // The chat with carl is bob's newest activity now.
    append_one(s, new_message(chat, carl.id, "c1", "hi bob")).await;

    let added = append_stored(
        s,
        &[
            new_event(group, ann.id, "a4", Change::MemberAdded { user_id: bob.id }),
            new_event(
                group,
                ann.id,
                "a5",
                Change::MemberAdded { user_id: carl.id },
            ),
        ],
    )
    .await;
    assert_eq!(
        added[0].event.data,
        EventData::MemberAdded {
            user: bob.clone(),
            role: Role::Member
        }
    );
    assert_eq!((added[0].members_seq, added[1].members_seq), (5, 6));
    let bob_view = view(s, bob.id, group).await;
    assert_eq!(
        member_of(&bob_view, bob.id),
        member_view(&bob, Role::Member, 5, 5),
        "a fresh member row: no admin role, history before joining read"
    );
    assert_eq!(
        member_of(&bob_view, carl.id),
        member_view(&carl, Role::Member, 6, 6)
    );
    assert_eq!((bob_view.last_read_seq, bob_view.unread_count), (5, 0));
    assert!(!bob_view.muted);
    assert_eq!(bob_view.last_seq, 6);
    // Being added is activity: the group comes first in bob's list again.
    let listed: Vec<_> = store
        .conversations_of(bob.id)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(listed, [group, chat]);
    // The whole history is there for the new members.
    assert_eq!(seqs(&all_messages(s, group).await), [1, 4]);
}

pub async fn the_last_admin_leaving_promotes_the_longest_standing_member(
    fixture: impl StoreFixture,
) {
    let store = fixture.store();
    let s = &*store;
    // Created in this order, so bob's id is smaller than carl's: the promotion follows who
    // joined first, not ids.
    let (ann, bob, carl, dave) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
        user(s, "dave").await,
    );
    assert!(bob < carl);
    let group = store.create_group(ann, "G", &[]).await.unwrap();
    append_stored(
        s,
        &[
            at(
                new_event(group, ann, "a1", Change::MemberAdded { user_id: carl }),
                seconds(1),
            ),
            at(
                new_event(group, ann, "a2", Change::MemberAdded { user_id: bob }),
                seconds(2),
            ),
        ],
    )
    .await;
    let left = append_stored(
        s,
        &[at(
            new_event(group, ann, "a3", Change::MemberLeft {}),
            seconds(3),
        )],
    )
    .await
    .remove(0);
    assert_eq!(
        left.event.data,
        EventData::MemberLeft {
            user_id: ann,
            promoted_user_id: Some(carl)
        }
    );
    assert_eq!(left.members_seq, 3);
    let roles = |view: ConversationView| -> Vec<(UserId, Role)> {
        view.members.iter().map(|m| (m.user.id, m.role)).collect()
    };
    assert_eq!(
        roles(view(s, bob, group).await),
        [(bob, Role::Member), (carl, Role::Admin)]
    );
    assert_eq!(
        event_seqs(&all_events(s, group).await),
        [1, 2, 3],
        "no event of its own"
    );

    // An admin leaving while another stays promotes nobody.
    append_one(
        s,
        new_event(
            group,
            carl,
            "c1",
            Change::RoleChanged {
                user_id: bob,
                role: Role::Admin,
            },
        ),
    )
    .await;
    let left = append_stored(s, &[new_event(group, carl, "c2", Change::MemberLeft {})])
        .await
        .remove(0);
    assert_eq!(
        left.event.data,
        EventData::MemberLeft {
            user_id: carl,
            promoted_user_id: None
        }
    );
    assert_eq!(roles(view(s, bob, group).await), [(bob, Role::Admin)]);

    // Members who joined together (at the group's creation) go by id.
    let team = store.create_group(ann, "Team", &[dave, bob]).await.unwrap();
    let left = append_stored(s, &[new_event(team, ann, "t1", Change::MemberLeft {})])
        .await
        .remove(0);
    assert_eq!(
        left.event.data,
        EventData::MemberLeft {
            user_id: ann,
            promoted_user_id: Some(bob.min(dave))
        }
    );
}

pub async fn the_last_member_may_leave(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let ann = user(s, "ann").await;
    let notes = store.create_group(ann, "Notes", &[]).await.unwrap();
    append_one(s, new_message(notes, ann, "m1", "note")).await;
    let left = append_stored(s, &[new_event(notes, ann, "m2", Change::MemberLeft {})])
        .await
        .remove(0);
    assert_eq!(
        left.event.data,
        EventData::MemberLeft {
            user_id: ann,
            promoted_user_id: None
        }
    );
    assert_eq!(left.members_seq, 2);
    assert!(store.members(notes).await.unwrap().is_empty());
    assert!(store.conversations_of(ann).await.unwrap().is_empty());
    assert_eq!(event_seqs(&all_events(s, notes).await), [1, 2]);
    let refused = store.refusal(&new_message(notes, ann, "m3", "back?")).await;
    assert_eq!(refused.unwrap().map(|e| e.code), Some(ErrorCode::NotFound));
}

// ---- views and markers ----------------------------------------------------------------

pub async fn views_count_unread_messages_and_mentions_of_others(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, carl) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
    );
    let group = store
        .create_group(ann, "G", &[ann, bob, carl])
        .await
        .unwrap();
    append_stored(
        s,
        &[
            new_message(group, ann, "a1", "mine, @ann"),
            new_message(group, bob, "b1", "hi"),
            new_message(group, bob, "b2", "hey @ann"),
            new_event(group, carl, "c1", react(2, "👍")),
            new_event(group, bob, "b3", edit(3, "hey there")),
            new_message(group, carl, "c2", "@ANN look"),
            new_message(group, bob, "b4", "@ann secret"),
            new_event(group, bob, "b5", Change::Delete { target_seq: 7 }),
        ],
    )
    .await;
    let counts = |user: UserId| async move {
        let view = view(s, user, group).await;
        (view.last_read_seq, view.unread_count, view.unread_mentions)
    };
    // ann: others' messages 2, 3 and 6 (not her own, the reaction, the edit or the deleted
    // one); only 6 still mentions her (the edit took 3's mention back).
    assert_eq!(counts(ann).await, (1, 3, 1));
    assert_eq!(counts(bob).await, (7, 0, 0));
    assert_eq!(counts(carl).await, (6, 0, 0));

    assert_eq!(store.mark_read(group, ann, 3).await.unwrap(), Some(3));
    assert_eq!(counts(ann).await, (3, 1, 1));
    assert_eq!(store.mark_read(group, ann, 6).await.unwrap(), Some(6));
    assert_eq!(counts(ann).await, (6, 0, 0));
    // Reading past the last message, up to the last event.
    assert_eq!(store.mark_read(group, ann, 99).await.unwrap(), Some(8));
    assert_eq!(counts(ann).await, (8, 0, 0));
    append_one(s, new_message(group, carl, "c3", "@bob and @ann")).await;
    assert_eq!(counts(ann).await, (8, 1, 1));
    assert_eq!(counts(bob).await, (7, 1, 1));
}

pub async fn views_show_the_newest_message_the_newest_seq_and_mute(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, eve) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "eve").await,
    );
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    let group = store.create_group(bob, "G", &[ann]).await.unwrap();
    let order = |user: UserId| async move {
        let views = s.conversations_of(user).await.unwrap();
        views.into_iter().map(|v| v.id).collect::<Vec<_>>()
    };
    assert_eq!(order(bob).await, [group, chat]);
    append_one(s, new_message(chat, ann, "a1", "one")).await;
    assert_eq!(order(bob).await, [chat, group]);
    append_one(s, new_message(group, bob, "b1", "g1")).await;
    assert_eq!(order(bob).await, [group, chat]);
    // Reactions and edits are not new messages: the order stays.
    append_stored(
        s,
        &[
            new_event(chat, bob, "b2", react(1, "👍")),
            new_event(chat, ann, "a2", edit(1, "one!")),
        ],
    )
    .await;
    assert_eq!(order(bob).await, [group, chat]);
    let chat_view = view(s, bob, chat).await;
    assert_eq!(chat_view.last_seq, 3);
    let newest = message_at(s, chat, 1).await;
    assert_eq!(newest.body, "one!");
    assert_eq!(
        without_reactions(chat_view.last_message.clone()),
        without_reactions(Some(newest))
    );
    assert_eq!(chat_view.unread_count, 1);

    // Muting is per member and moves nothing else.
    assert!(!chat_view.muted);
    assert!(store.set_muted(chat, bob, true).await.unwrap());
    let muted = view(s, bob, chat).await;
    assert!(muted.muted);
    assert_eq!(
        ConversationView {
            muted: false,
            ..muted
        },
        chat_view
    );
    assert!(!view(s, ann, chat).await.muted);
    assert_eq!(order(bob).await, [group, chat]);
    assert!(
        store.set_muted(chat, bob, true).await.unwrap(),
        "muting twice is fine"
    );
    assert!(!store.set_muted(chat, eve, true).await.unwrap());
    assert!(
        !store
            .set_muted(ConversationId::new(), bob, true)
            .await
            .unwrap()
    );
    assert!(store.set_muted(chat, bob, false).await.unwrap());
    assert!(!view(s, bob, chat).await.muted);
}

pub async fn mark_delivered_clamps_moves_forward_and_reading_raises_it(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob, carl, eve) = (
        user(s, "ann").await,
        user(s, "bob").await,
        user(s, "carl").await,
        user(s, "eve").await,
    );
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    assert_eq!(store.mark_delivered(chat, bob, 3).await.unwrap(), None);
    let batch: Vec<_> = (1..=5)
        .map(|i| new_message(chat, ann, &format!("m{i}"), "x"))
        .collect();
    append_new(s, &batch).await;
    let markers = |user: UserId| async move {
        let member = member_of(&view(s, ann, chat).await, user);
        (member.last_delivered_seq, member.last_read_seq)
    };
    assert_eq!(store.mark_delivered(chat, bob, 0).await.unwrap(), None);
    assert_eq!(store.mark_delivered(chat, bob, 3).await.unwrap(), Some(3));
    assert_eq!(store.mark_delivered(chat, bob, 3).await.unwrap(), None);
    assert_eq!(store.mark_delivered(chat, bob, 2).await.unwrap(), None);
    assert_eq!(markers(bob).await, (3, 0));
    assert_eq!(store.mark_delivered(chat, bob, 99).await.unwrap(), Some(5));
    assert_eq!(
        store.mark_delivered(chat, bob, Seq::MAX).await.unwrap(),
        None
    );
    assert_eq!(markers(bob).await, (5, 0));
    // Reading below the delivered marker leaves it.
    assert_eq!(store.mark_read(chat, bob, 2).await.unwrap(), Some(2));
    assert_eq!(markers(bob).await, (5, 2));
    assert_eq!(markers(ann).await, (5, 5));

    // Reading raises the delivered marker with it.
    let (other, _) = store.create_direct(ann, carl).await.unwrap();
    let batch: Vec<_> = (1..=3)
        .map(|i| new_message(other, ann, &format!("o{i}"), "x"))
        .collect();
    append_new(s, &batch).await;
    assert_eq!(store.mark_read(other, carl, 2).await.unwrap(), Some(2));
    let carl_row = member_of(&view(s, carl, other).await, carl);
    assert_eq!(
        (carl_row.last_delivered_seq, carl_row.last_read_seq),
        (2, 2)
    );
    assert_eq!(store.mark_delivered(other, carl, 2).await.unwrap(), None);
    assert_eq!(store.mark_delivered(other, carl, 3).await.unwrap(), Some(3));
    let carl_row = member_of(&view(s, carl, other).await, carl);
    assert_eq!(
        (carl_row.last_delivered_seq, carl_row.last_read_seq),
        (3, 2)
    );

    let outsider = store.mark_delivered(chat, eve, 1).await.unwrap_err();
    assert_eq!(outsider.kind, BackendErrorKind::Rejected);
    let nowhere = store
        .mark_delivered(ConversationId::new(), ann, 1)
        .await
        .unwrap_err();
    assert_eq!(nowhere.kind, BackendErrorKind::Rejected);
}

// ---- pages ----------------------------------------------------------------------------

pub async fn messages_pages_count_messages_not_events(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let (ann, bob) = (user(s, "ann").await, user(s, "bob").await);
    let (chat, _) = store.create_direct(ann, bob).await.unwrap();
    // Messages at 1, 3, 5, 7, 9, 11; bob's 👍 on each right after it.
    let batch: Vec<_> = (0..6)
        .flat_map(|i| {
            [
                new_message(chat, ann, &format!("m{i}"), &format!("body {i}")),
                new_event(chat, bob, &format!("r{i}"), react(2 * i + 1, "👍")),
            ]
        })
        .collect();
    append_stored(s, &batch).await;
    assert_eq!(seqs_of(s, chat, page(None, None, 2)).await, [9, 11]);
    assert_eq!(seqs_of(s, chat, page(Some(9), None, 2)).await, [5, 7]);
    assert_eq!(seqs_of(s, chat, page(Some(12), None, 1)).await, [11]);
    assert_eq!(seqs_of(s, chat, page(None, Some(1), 2)).await, [3, 5]);
    assert_eq!(seqs_of(s, chat, page(None, Some(2), 2)).await, [3, 5]);
    assert_eq!(
        seqs_of(s, chat, page(None, Some(11), 5)).await,
        [] as [Seq; 0]
    );
    let all = s.messages(chat, page(None, None, 50)).await.unwrap();
    assert_eq!(seqs(&all), [1, 3, 5, 7, 9, 11]);
    for message in &all {
        assert_eq!(
            message.reactions,
            [Reaction {
                emoji: "👍".into(),
                user_ids: vec![bob]
            }],
            "{message:?}"
        );
    }
}

pub async fn events_pages_follow_after_seq_and_clamp_the_limit(fixture: impl StoreFixture) {
    let store = fixture.store();
    let s = &*store;
    let ann = user(s, "ann").await;
    let notes = store.create_group(ann, "notes", &[]).await.unwrap();
    let mut batch = vec![new_message(notes, ann, "m0", "draft 0")];
    batch.extend(
        (1..=200).map(|i| new_event(notes, ann, &format!("e{i}"), edit(1, &format!("draft {i}")))),
    );
    append_stored(s, &batch).await;

    let seqs_after = |after: Seq, limit: u16| async move {
        event_seqs(&s.events(notes, after, limit).await.unwrap())
    };
    assert_eq!(seqs_after(0, 0).await, [1]);
    assert_eq!(seqs_after(5, 3).await, [6, 7, 8]);
    assert_eq!(seqs_after(0, u16::MAX).await, (1..=200).collect::<Vec<_>>());
    assert_eq!(seqs_after(0, 201).await.len(), 200);
    assert_eq!(seqs_after(199, 10).await, [200, 201]);
    assert_eq!(seqs_after(201, 10).await, [] as [Seq; 0]);
    assert_eq!(seqs_after(Seq::MAX, 10).await, [] as [Seq; 0]);
    assert!(
        s.events(ConversationId::new(), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let all = all_events(s, notes).await;
    assert_eq!(all.len(), 201);
    assert_eq!(
        message_of(&all[0]).body,
        "draft 200",
        "the message as it is now"
    );
    assert_eq!(
        all[200].data,
        EventData::Edit {
            target_seq: 1,
            body: "draft 200".into(),
            mentions: Vec::new()
        }
    );
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
    let even = first
        .create_group(senders[0], "even", &senders)
        .await
        .unwrap();
    let odd = second
        .create_group(senders[1], "odd", &senders)
        .await
        .unwrap();
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
                    let appended = store.append_events(&batch).await.expect("append");
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
        if let Appended::New(stored) = answer {
            let message = message_of(&stored.event);
            assert_eq!(
                (message.sender_id, message.conversation_id, &message.body),
                (sent.sender_id, sent.conversation_id, &body_of(&sent.change))
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
            Appended::Duplicate(stored) => {
                assert_eq!(Some(&message_of(&stored.event)), first_stored.get(&key))
            }
            Appended::Refused(error) => panic!("refused {sent:?}: {error}"),
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
    let group = first.create_group(ann, "g", &[ann, bob]).await.unwrap();

    let mut stored = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("race-{round}");
        let to_chat = [new_message(chat, ann, &id, "to chat")];
        let to_group = [new_message(group, ann, &id, "to group")];
        let (one, two) = (Arc::clone(&first), Arc::clone(&second));
        let one = tokio::spawn(async move { one.append_events(&to_chat).await });
        let two = tokio::spawn(async move { two.append_events(&to_group).await });
        let one = one.await.unwrap().expect("append to chat").remove(0);
        let two = two.await.unwrap().expect("append to group").remove(0);
        match (one, two) {
            (Appended::New(m), Appended::Duplicate(d))
            | (Appended::Duplicate(d), Appended::New(m)) => {
                assert_eq!(m, d);
                stored.push(message_of(&m.event));
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
