//! What a change depends on: [`needs`] says what of a conversation's [`State`] must be read
//! before a change can be judged and applied (its request item, the sender's membership,
//! the target message, the subject, the names it mentions, every member when the last
//! admin may be leaving, the files a message attaches or a delete removes), [`facts`] turns that state into the rules' [`Facts`], and
//! [`refusal`] is the gateway's check. The rules themselves live only in
//! `parlor_core::rules`.

use parlor_core::error::{ApiError, BackendError};
use parlor_core::events::Change;
use parlor_core::files::FileFacts;
use parlor_core::ids::{Seq, UserId};
use parlor_core::ports::NewEvent;
use parlor_core::protocol::ConversationKind;
use parlor_core::rules::{self, Facts, Target, promotes_on_departure};
use parlor_core::validate::mention_names;

use super::DynamoStore;
use super::codec::request_key;
use super::state::{Need, State};

/// The facts of a conversation that does not exist: nobody is a member of it, and with no
/// sender role no other fact is looked at.
pub(super) fn no_conversation() -> Facts {
    Facts {
        kind: ConversationKind::Group,
        sender_role: None,
        target: None,
        subject_role: None,
        subject_exists: false,
        admins: 0,
        members: 0,
        files: Vec::new(),
    }
}

/// The message a change points at (`target_seq`, `reply_to_seq`).
pub(super) fn target_seq(change: &Change) -> Option<Seq> {
    match change {
        Change::Message { reply_to_seq, .. } => *reply_to_seq,
        Change::Edit { target_seq, .. }
        | Change::Delete { target_seq }
        | Change::ReactionAdded { target_seq, .. }
        | Change::ReactionRemoved { target_seq, .. } => Some(*target_seq),
        _ => None,
    }
}

/// The user a member change acts upon; for `member_left`, the sender.
pub(super) fn subject(sender: UserId, change: &Change) -> Option<UserId> {
    match change {
        Change::MemberAdded { user_id }
        | Change::MemberRemoved { user_id }
        | Change::RoleChanged { user_id, .. } => Some(*user_id),
        Change::MemberLeft {} => Some(sender),
        _ => None,
    }
}

/// The member who goes, if the change is a departure.
pub(super) fn departing(sender: UserId, change: &Change) -> Option<UserId> {
    match change {
        Change::MemberRemoved { user_id } => Some(*user_id),
        Change::MemberLeft {} => Some(sender),
        _ => None,
    }
}

/// The body whose `@name`s a change resolves.
pub(super) fn mentioning_body(change: &Change) -> Option<&str> {
    match change {
        Change::Message { body, .. } | Change::Edit { body, .. } => Some(body),
        _ => None,
    }
}

/// What `state` lacks to judge and apply `new`. Asked again after each load: what one
/// read finds (a mentioned name's user, a target's edits) may need another.
pub(super) fn needs(state: &State, new: &NewEvent) -> Vec<Need> {
    let mut needs = Vec::new();
    let key = request_key(new.sender_id, &new.client_msg_id);
    if !state.requests.contains_key(&key) {
        needs.push(Need::Request(key));
    }
    let Some(conversation) = &state.conversation else {
        return needs;
    };
    let member = |user: UserId, needs: &mut Vec<Need>| {
        if !state.members.contains_key(&user) {
            needs.push(Need::Member(user));
        }
    };
    member(new.sender_id, &mut needs);
    if let Some(seq) = target_seq(&new.change) {
        match state.events.get(&seq) {
            None => needs.push(Need::Event(seq)),
            Some(slot) => {
                // A delete erases the bodies of the target's edits and removes its files:
                // they are read too.
                if let (Change::Delete { .. }, Some(target)) = (&new.change, &slot.current) {
                    for edit in target.message().map_or(&[][..], |m| &m.edit_seqs) {
                        if !state.events.contains_key(edit) {
                            needs.push(Need::Event(*edit));
                        }
                    }
                    for file in target.message().map_or(&[][..], |m| &m.files) {
                        if !state.files.contains_key(&file.id) {
                            needs.push(Need::File(file.id));
                        }
                    }
                }
            }
        }
    }
    if let Change::Message { files, .. } = &new.change {
        for id in files {
            if !state.files.contains_key(id) {
                needs.push(Need::File(*id));
            }
        }
    }
    if let Some(subject) = subject(new.sender_id, &new.change) {
        member(subject, &mut needs);
        if matches!(new.change, Change::MemberAdded { .. }) && !state.users.contains_key(&subject) {
            needs.push(Need::User(subject));
        }
    }
    if let Some(body) = mentioning_body(&new.change) {
        for name in mention_names(body) {
            match state.names.get(&name) {
                None => needs.push(Need::Name(name)),
                Some(Some(user)) => member(*user, &mut needs),
                Some(None) => {}
            }
        }
    }
    if let Some(gone) = departing(new.sender_id, &new.change) {
        let role = state.member(gone).map(|m| m.role);
        let promotes = promotes_on_departure(
            role,
            conversation.admin_count as usize,
            conversation.member_count as usize,
        );
        if promotes && !state.all_members {
            needs.push(Need::AllMembers);
        }
    }
    needs
}

/// The facts `new` depends on, from `state` (which [`needs`] says holds them).
pub(super) fn facts(state: &State, new: &NewEvent) -> Facts {
    let Some(conversation) = &state.conversation else {
        return no_conversation();
    };
    let emoji = match &new.change {
        Change::ReactionAdded { emoji, .. } | Change::ReactionRemoved { emoji, .. } => {
            Some(emoji.as_str())
        }
        _ => None,
    };
    let target = target_seq(&new.change)
        .and_then(|seq| state.event(seq))
        .map(|doc| {
            let reactions = doc.message().map_or(&[][..], |m| &m.reactions[..]);
            let (mut distinct, mut reacted, mut sender_reacted) = (Vec::new(), false, false);
            for (each, user) in reactions {
                if !distinct.contains(&each) {
                    distinct.push(each);
                }
                if Some(each.as_str()) == emoji {
                    reacted = true;
                    sender_reacted |= *user == new.sender_id;
                }
            }
            Target {
                is_message: doc.message().is_some(),
                sender: doc.sender,
                deleted: doc.message().is_some_and(|m| m.deleted),
                emoji_distinct: if emoji.is_some() { distinct.len() } else { 0 },
                emoji_reacted: reacted,
                sender_reacted,
            }
        });
    let subject = subject(new.sender_id, &new.change);
    Facts {
        kind: conversation.kind,
        sender_role: state.member(new.sender_id).map(|m| m.role),
        target,
        subject_role: subject.and_then(|user| state.member(user)).map(|m| m.role),
        subject_exists: subject.is_some_and(|user| matches!(state.users.get(&user), Some(Some(_)))),
        admins: conversation.admin_count as usize,
        members: conversation.member_count as usize,
        files: file_facts(state, &new.change),
    }
}

/// What the rules need of each file a message attaches, from the file items as read and
/// as the batch's earlier entries left them.
fn file_facts(state: &State, change: &Change) -> Vec<FileFacts> {
    let Change::Message { files, .. } = change else {
        return Vec::new();
    };
    files
        .iter()
        .map(|&id| {
            let file = state.file(id);
            FileFacts {
                id,
                owner: file.map(|file| file.owner),
                attached: file.is_some_and(|file| file.attached_to.is_some()),
            }
        })
        .collect()
}

/// The longest-standing member who stays when `gone` goes (by when they joined, then by
/// id), from every member (`state.all_members`).
pub(super) fn successor(state: &State, gone: UserId) -> Option<UserId> {
    state
        .members
        .values()
        .filter_map(|slot| slot.current.as_ref())
        .filter(|member| member.user.id != gone)
        .min_by_key(|member| (member.joined_at_ns, member.user.id))
        .map(|member| member.user.id)
}

/// The error `append_events` would answer for `new` now, if any; none for a change stored
/// before (a duplicate). The same reads an append makes, without the transaction.
pub(super) async fn refusal(
    store: &DynamoStore,
    new: &NewEvent,
) -> Result<Option<ApiError>, BackendError> {
    let mut state = State::read(store, new.conversation_id).await?;
    state.load_needs(store, new).await?;
    let key = request_key(new.sender_id, &new.client_msg_id);
    if state
        .requests
        .get(&key)
        .is_some_and(|request| request.committed.is_some())
    {
        return Ok(None);
    }
    Ok(rules::check(new.sender_id, &new.change, &facts(&state, new)).err())
}
