//! [`State`]: what an append has read of one conversation (strongly consistent), with the
//! batch's changes applied on top, and those changes as the items of one transaction.
//!
//! Each slot keeps what the table holds (`committed`) beside what it holds once the
//! pending changes are in (`current`); [`State::writes`] is the difference, guarded by the
//! conversation's `last_seq` as it was read. Once it commits, the state is the table's
//! again and the next changes build on it; if it is cancelled, the state is thrown away
//! and read afresh.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::TransactWriteItem;
use futures::future::{try_join_all, try_join4};
use parlor_core::blobs::BlobKey;
use parlor_core::error::BackendError;
use parlor_core::events::EventData;
use parlor_core::files::{Attachment, FileInfo, StoredFile};
use parlor_core::ids::{ConversationId, FileId, Seq, UserId};
use parlor_core::ports::NewEvent;

use super::DynamoStore;
use super::calls::{self, Transacted};
use super::codec::{Content, ConversationDoc, EventDoc, MemberDoc, Reader, item, n, s};
use super::conversations::{member_docs, member_key};
use super::facts::needs;
use super::files::{blob_updates, bytes_update, count_blobs, file_key, file_of};
use super::users::user_named;

/// Something [`State`] must read before a change can be judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Need {
    /// A `requests` item, by key.
    Request(String),
    Member(UserId),
    Event(Seq),
    /// A user's name (the subject of `member_added`).
    User(UserId),
    /// Who a folded `@name` is.
    Name(String),
    /// Every member (to find who is promoted when the last admin goes).
    AllMembers,
    /// A file item: one a message attaches, or one of a message being deleted.
    File(FileId),
}

/// A file item, as stored and as the pending changes leave it (attached, or removed).
#[derive(Clone, Debug)]
pub(super) struct FileSlot {
    committed: Option<StoredFile>,
    pub(super) current: Option<StoredFile>,
    /// Its place among its message's files, once a pending change attached it.
    pub(super) position: u32,
}

/// A member item, as stored and as the pending changes leave it.
#[derive(Clone, Debug)]
pub(super) struct MemberSlot {
    committed: Option<MemberDoc>,
    pub(super) current: Option<MemberDoc>,
    /// Removed and added again by the pending changes: written whole.
    pub(super) replaced: bool,
    /// The seq of the member's own newest pending message: their markers move there.
    pub(super) read_to: Option<Seq>,
}

/// An event item: whether the table has it, and its state with the pending changes.
#[derive(Clone, Debug)]
pub(super) struct EventSlot {
    exists: bool,
    pub(super) current: Option<EventDoc>,
    pub(super) dirty: bool,
}

/// A `requests` item: where (sender, client_msg_id) was stored, if it was.
#[derive(Clone, Debug)]
pub(super) struct RequestSlot {
    pub(super) committed: Option<(ConversationId, Seq)>,
    /// Stored by the pending changes, at this seq.
    pub(super) pending: Option<Seq>,
}

/// One conversation as an append sees it.
#[derive(Debug)]
pub(super) struct State {
    pub(super) conversation_id: ConversationId,
    /// As the table has it: `last_seq` here is the guard of the next transaction.
    seen: Option<ConversationDoc>,
    pub(super) conversation: Option<ConversationDoc>,
    pub(super) members: HashMap<UserId, MemberSlot>,
    /// Whether `members` holds every member.
    pub(super) all_members: bool,
    pub(super) events: HashMap<Seq, EventSlot>,
    pub(super) requests: HashMap<String, RequestSlot>,
    /// Usernames by id (`None`: no such user).
    pub(super) users: HashMap<UserId, Option<String>>,
    /// Users by folded name (`None`: nobody has it).
    pub(super) names: HashMap<String, Option<UserId>>,
    /// Edits whose bodies a delete erases after its transaction: those that did not fit.
    pub(super) erase_after_commit: Vec<Seq>,
    pub(super) files: HashMap<FileId, FileSlot>,
    /// How many files fewer use each blob, once the pending changes are in (removed
    /// files): one `ADD refs` each, so a blob is one item of the transaction however many
    /// of its files go.
    pub(super) blob_releases: HashMap<BlobKey, i64>,
    /// Bytes each owner's removed files took: one `ADD files_bytes` each.
    pub(super) bytes_released: HashMap<UserId, i64>,
    /// When the pending removals happened (the newest event's time): the blobs' `idle_since`.
    pub(super) released_at_ns: i64,
}

impl MemberSlot {
    /// Whether the table holds this member (before the pending changes).
    pub(super) fn is_stored(&self) -> bool {
        self.committed.is_some()
    }
}

impl State {
    /// The conversation as the table has it now; nothing else read yet.
    pub(super) async fn read(
        store: &DynamoStore,
        conversation_id: ConversationId,
    ) -> Result<State, BackendError> {
        let seen = super::conversations::conversation(store, conversation_id).await?;
        Ok(State {
            conversation_id,
            conversation: seen.clone(),
            seen,
            members: HashMap::new(),
            all_members: false,
            events: HashMap::new(),
            requests: HashMap::new(),
            users: HashMap::new(),
            names: HashMap::new(),
            erase_after_commit: Vec::new(),
            files: HashMap::new(),
            blob_releases: HashMap::new(),
            bytes_released: HashMap::new(),
            released_at_ns: 0,
        })
    }

    pub(super) fn file(&self, id: FileId) -> Option<&StoredFile> {
        self.files.get(&id).and_then(|slot| slot.current.as_ref())
    }

    /// Attaches the file `id` (loaded, the sender's, unattached: the rules said so) to the
    /// message at `seq`, at `position`; its infos.
    pub(super) fn attach_file(&mut self, id: FileId, seq: Seq, position: u32) -> Option<FileInfo> {
        let conversation_id = self.conversation_id;
        let slot = self.files.get_mut(&id)?;
        let file = slot.current.as_mut()?;
        file.attached_to = Some(Attachment {
            conversation_id,
            seq,
        });
        slot.position = position;
        Some(file.info.clone())
    }

    /// Removes the file `id` (its message is deleted): its blobs and bytes are released
    /// in the same transaction.
    pub(super) fn remove_file(&mut self, id: FileId, at_ns: i64) {
        let Some(file) = self.files.get_mut(&id).and_then(|slot| slot.current.take()) else {
            return;
        };
        count_blobs(&mut self.blob_releases, &file, -1);
        *self.bytes_released.entry(file.owner).or_default() -=
            i64::try_from(file.info.size).unwrap_or(i64::MAX);
        self.released_at_ns = self.released_at_ns.max(at_ns);
    }

    pub(super) fn member(&self, user: UserId) -> Option<&MemberDoc> {
        self.members
            .get(&user)
            .and_then(|slot| slot.current.as_ref())
    }

    pub(super) fn event(&self, seq: Seq) -> Option<&EventDoc> {
        self.events.get(&seq).and_then(|slot| slot.current.as_ref())
    }

    /// The pending state of the member `user` (loaded before).
    pub(super) fn member_slot(&mut self, user: UserId) -> &mut MemberSlot {
        self.members.entry(user).or_insert(MemberSlot {
            committed: None,
            current: None,
            replaced: false,
            read_to: None,
        })
    }

    /// The event at `seq` changed (or was created) by a pending change.
    pub(super) fn event_mut(&mut self, seq: Seq) -> Option<&mut EventDoc> {
        let slot = self.events.get_mut(&seq)?;
        slot.dirty = true;
        slot.current.as_mut()
    }

    pub(super) fn insert_event(&mut self, doc: EventDoc) {
        self.events.insert(
            doc.seq,
            EventSlot {
                exists: false,
                current: Some(doc),
                dirty: true,
            },
        );
    }

    /// Reads what `new` needs, until it needs nothing more.
    pub(super) async fn load_needs(
        &mut self,
        store: &DynamoStore,
        new: &NewEvent,
    ) -> Result<(), BackendError> {
        loop {
            let wanted = needs(self, new);
            if wanted.is_empty() {
                return Ok(());
            }
            self.load(store, wanted).await?;
        }
    }

    /// Reads `wanted` (strongly consistent), at once: one batch get per table, one get per
    /// name. Every key asked for gets a slot, found or not.
    pub(super) async fn load(
        &mut self,
        store: &DynamoStore,
        mut wanted: Vec<Need>,
    ) -> Result<(), BackendError> {
        wanted.dedup();
        let conversation = self.conversation_id;
        let (mut requests, mut members, mut events, mut users, mut names, mut files) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut all_members = false;
        for need in wanted {
            match need {
                Need::Request(key) if !requests.contains(&key) => requests.push(key),
                Need::Member(user) if !members.contains(&user) => members.push(user),
                Need::Event(seq) if !events.contains(&seq) => events.push(seq),
                Need::User(user) if !users.contains(&user) => users.push(user),
                Need::Name(name) if !names.contains(&name) => names.push(name),
                Need::AllMembers => all_members = true,
                Need::File(id) if !files.contains(&id) => files.push(id),
                _ => {}
            }
        }
        let tables = &store.tables;
        let (request_items, member_items, event_items, user_items) = try_join4(
            calls::batch_get(
                &store.client,
                &tables.requests,
                requests
                    .iter()
                    .map(|key| item([("key", s(key.clone()))]))
                    .collect(),
            ),
            calls::batch_get(
                &store.client,
                &tables.members,
                members
                    .iter()
                    .map(|user| member_key(conversation, *user))
                    .collect(),
            ),
            calls::batch_get(
                &store.client,
                &tables.events,
                events
                    .iter()
                    .map(|seq| {
                        item([
                            ("conversation_id", s(conversation.to_string())),
                            ("seq", n(*seq)),
                        ])
                    })
                    .collect(),
            ),
            calls::batch_get(
                &store.client,
                &tables.users,
                users
                    .iter()
                    .map(|user| item([("id", s(user.to_string()))]))
                    .collect(),
            ),
        )
        .await?;
        let (found_names, file_items) = futures::future::try_join(
            try_join_all(names.iter().map(|name| user_named(store, name))),
            calls::batch_get(
                &store.client,
                &tables.files,
                files.iter().map(|id| file_key(*id)).collect(),
            ),
        )
        .await?;
        let everyone = if all_members {
            Some(member_docs(store, conversation).await?)
        } else {
            None
        };

        for key in requests {
            self.requests.entry(key).or_insert(RequestSlot {
                committed: None,
                pending: None,
            });
        }
        for found in &request_items {
            let r = Reader::new(&tables.requests, found);
            let key = r.s("key")?.to_owned();
            let at = (r.id("conversation_id")?, r.n("seq")?);
            if let Some(slot) = self.requests.get_mut(&key)
                && slot.pending.is_none()
            {
                slot.committed = Some(at);
            }
        }
        let mut member_docs_found: Vec<MemberDoc> = member_items
            .iter()
            .map(|found| MemberDoc::from_item(&tables.members, found))
            .collect::<Result<_, _>>()?;
        for user in members {
            self.members.entry(user).or_insert(MemberSlot {
                committed: None,
                current: None,
                replaced: false,
                read_to: None,
            });
        }
        if let Some(everyone) = everyone {
            member_docs_found.extend(everyone);
            self.all_members = true;
        }
        for doc in member_docs_found {
            let slot = self.members.entry(doc.user.id);
            // A slot already there holds what the pending changes made of it.
            match slot {
                std::collections::hash_map::Entry::Occupied(mut slot) => {
                    let slot = slot.get_mut();
                    if slot.committed.is_none() && slot.current.is_none() && !slot.replaced {
                        slot.committed = Some(doc.clone());
                        slot.current = Some(doc);
                    }
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(MemberSlot {
                        committed: Some(doc.clone()),
                        current: Some(doc),
                        replaced: false,
                        read_to: None,
                    });
                }
            }
        }
        for seq in events {
            self.events.entry(seq).or_insert(EventSlot {
                exists: false,
                current: None,
                dirty: false,
            });
        }
        for found in &event_items {
            let doc = EventDoc::from_item(&tables.events, found)?;
            if let Some(slot) = self.events.get_mut(&doc.seq)
                && !slot.dirty
                && slot.current.is_none()
            {
                slot.exists = true;
                slot.current = Some(doc);
            }
        }
        for user in users {
            self.users.entry(user).or_insert(None);
        }
        for found in &user_items {
            let r = Reader::new(&tables.users, found);
            self.users
                .insert(r.id("id")?, Some(r.s("username")?.to_owned()));
        }
        for (name, user) in names.into_iter().zip(found_names) {
            self.names.insert(name, user);
        }
        for id in files {
            self.files.entry(id).or_insert(FileSlot {
                committed: None,
                current: None,
                position: 0,
            });
        }
        for found in &file_items {
            let file = file_of(&tables.files, found)?;
            // A slot a pending change touched keeps what it made of it.
            if let Some(slot) = self.files.get_mut(&file.info.id)
                && slot.committed.is_none()
                && slot.current.is_none()
            {
                slot.committed = Some(file.clone());
                slot.current = Some(file);
            }
        }
        Ok(())
    }

    /// How many items [`State::writes`] would hold now.
    pub(super) fn pending_items(&self) -> usize {
        let events = self.events.values().filter(|slot| slot.dirty).count();
        let requests = self
            .requests
            .values()
            .filter(|slot| slot.pending.is_some())
            .count();
        let members = self
            .members
            .values()
            .filter(|slot| member_write(slot).is_some())
            .count();
        let files = self
            .files
            .values()
            .filter(|slot| file_write(slot).is_some())
            .count();
        let released = self
            .blob_releases
            .values()
            .filter(|delta| **delta != 0)
            .count()
            + self.bytes_released.len();
        let rest = events + requests + members + files + released;
        if rest == 0 && self.conversation == self.seen {
            0
        } else {
            rest + 1
        }
    }

    /// The pending changes as transaction items: the conversation first, guarded by the
    /// `last_seq` it was read at.
    fn writes(&self, store: &DynamoStore) -> Result<Vec<TransactWriteItem>, BackendError> {
        let tables = &store.tables;
        let conversation = self
            .conversation
            .as_ref()
            .expect("changes are applied to conversations that exist");
        let seen = self.seen.as_ref().map_or(0, |seen| seen.last_seq);
        let mut items = vec![calls::put(
            &tables.conversations,
            conversation.to_item(),
            Some("last_seq = :seen"),
            &[],
            vec![(":seen", n(seen))],
        )?];
        for slot in self.events.values().filter(|slot| slot.dirty) {
            let Some(doc) = &slot.current else { continue };
            let condition = (!slot.exists).then_some("attribute_not_exists(conversation_id)");
            items.push(calls::put(
                &tables.events,
                doc.to_item(),
                condition,
                &[],
                Vec::new(),
            )?);
        }
        for (key, slot) in &self.requests {
            let Some(seq) = slot.pending else { continue };
            items.push(calls::put(
                &tables.requests,
                item([
                    ("key", s(key.clone())),
                    ("conversation_id", s(self.conversation_id.to_string())),
                    ("seq", n(seq)),
                ]),
                Some("attribute_not_exists(#key)"),
                &[("#key", "key")],
                Vec::new(),
            )?);
        }
        for (user, slot) in &self.members {
            let key = || member_key(self.conversation_id, *user);
            match member_write(slot) {
                None => {}
                Some(MemberWrite::Delete) => items.push(calls::delete(&tables.members, key())?),
                Some(MemberWrite::Create(doc)) => items.push(calls::put(
                    &tables.members,
                    doc.to_item(),
                    Some("attribute_not_exists(user_id)"),
                    &[],
                    Vec::new(),
                )?),
                Some(MemberWrite::Replace(doc)) => items.push(calls::put(
                    &tables.members,
                    doc.to_item(),
                    None,
                    &[],
                    Vec::new(),
                )?),
                Some(MemberWrite::Update(doc, read_to)) => {
                    // Markers never pass the last seq, and this seq is past it: setting
                    // them is moving them forward, whatever a marker update did meanwhile.
                    let (expression, mut values) = match read_to {
                        Some(seq) => (
                            "SET #role = :role, last_read_seq = :seq, last_delivered_seq = :seq",
                            vec![(":seq", n(seq))],
                        ),
                        None => ("SET #role = :role", Vec::new()),
                    };
                    values.push((":role", s(doc.role.as_str())));
                    items.push(calls::update(
                        &tables.members,
                        key(),
                        expression,
                        Some("attribute_exists(user_id)"),
                        &[("#role", "role")],
                        values,
                    )?);
                }
            }
        }
        for slot in self.files.values() {
            match file_write(slot) {
                None => {}
                Some(FileWrite::Attach(file)) => {
                    let at = file.attached_to.expect("attached");
                    // Unattached and the sender's when read, and still: a file is attached
                    // once, whatever another conversation's append does meanwhile.
                    items.push(calls::update(
                        &tables.files,
                        file_key(file.info.id),
                        "SET conversation_id = :c, seq = :seq, #position = :position \
                         REMOVE unattached",
                        Some("attribute_not_exists(conversation_id) AND #owner = :owner"),
                        &[("#position", "position"), ("#owner", "owner")],
                        vec![
                            (":c", s(at.conversation_id.to_string())),
                            (":seq", n(at.seq)),
                            (":position", n(slot.position)),
                            (":owner", s(file.owner.to_string())),
                        ],
                    )?);
                }
                Some(FileWrite::Remove(file)) => {
                    // Still as read: attached to this message, or (attached and removed by
                    // the pending changes alike) the owner's unattached upload.
                    let (condition, values) = match file.attached_to {
                        Some(at) => (
                            "conversation_id = :c AND seq = :seq",
                            vec![
                                (":c", s(at.conversation_id.to_string())),
                                (":seq", n(at.seq)),
                            ],
                        ),
                        None => (
                            "attribute_not_exists(conversation_id) AND #owner = :owner",
                            vec![(":owner", s(file.owner.to_string()))],
                        ),
                    };
                    let names: &[(&str, &str)] = if file.attached_to.is_some() {
                        &[]
                    } else {
                        &[("#owner", "owner")]
                    };
                    items.push(calls::delete_if(
                        &tables.files,
                        file_key(file.info.id),
                        condition,
                        names,
                        values,
                    )?);
                }
            }
        }
        items.extend(blob_updates(
            store,
            &self.blob_releases,
            self.released_at_ns,
        )?);
        for (user, delta) in &self.bytes_released {
            items.push(bytes_update(store, *user, *delta)?);
        }
        Ok(items)
    }

    /// Commits the pending changes in one transaction. On success the state is the
    /// table's; `Cancelled` when another append (or a concurrent marker update, or a
    /// request stored meanwhile) got in the way: throw the state away and read again.
    pub(super) async fn commit(&mut self, store: &DynamoStore) -> Result<Transacted, BackendError> {
        let items = self.writes(store)?;
        let outcome = calls::transact(&store.client, "append", items).await?;
        if let Transacted::Cancelled(_) = outcome {
            return Ok(outcome);
        }
        self.seen = self.conversation.clone();
        for slot in self.events.values_mut() {
            slot.exists |= slot.current.is_some();
            slot.dirty = false;
        }
        for slot in self.requests.values_mut() {
            if let Some(seq) = slot.pending.take() {
                slot.committed = Some((self.conversation_id, seq));
            }
        }
        for slot in self.members.values_mut() {
            slot.committed = slot.current.clone();
            slot.replaced = false;
            slot.read_to = None;
        }
        for slot in self.files.values_mut() {
            slot.committed = slot.current.clone();
        }
        self.blob_releases.clear();
        self.bytes_released.clear();
        for seq in std::mem::take(&mut self.erase_after_commit) {
            erase_edit(store, self.conversation_id, seq).await?;
        }
        Ok(Transacted::Committed)
    }
}

/// What a member slot's pending changes write.
enum MemberWrite<'a> {
    Delete,
    Create(&'a MemberDoc),
    Replace(&'a MemberDoc),
    /// The role, and the markers if the member sent a message.
    Update(&'a MemberDoc, Option<Seq>),
}

fn member_write(slot: &MemberSlot) -> Option<MemberWrite<'_>> {
    match (&slot.committed, &slot.current) {
        (Some(_), None) => Some(MemberWrite::Delete),
        (None, Some(doc)) => Some(MemberWrite::Create(doc)),
        (Some(_), Some(doc)) if slot.replaced => Some(MemberWrite::Replace(doc)),
        (Some(old), Some(doc)) if old.role != doc.role || slot.read_to.is_some() => {
            Some(MemberWrite::Update(doc, slot.read_to))
        }
        _ => None,
    }
}

/// What a file slot's pending changes write.
enum FileWrite<'a> {
    /// Attach it (as `current` says), conditioned on it being unattached and the owner's.
    Attach(&'a StoredFile),
    /// Delete it, conditioned on it being as read (`committed`).
    Remove(&'a StoredFile),
}

fn file_write(slot: &FileSlot) -> Option<FileWrite<'_>> {
    match (&slot.committed, &slot.current) {
        (Some(old), None) => Some(FileWrite::Remove(old)),
        (Some(old), Some(file)) if old.attached_to.is_none() && file.attached_to.is_some() => {
            Some(FileWrite::Attach(file))
        }
        _ => None,
    }
}

/// Erases the body and mentions of the edit at `seq` (its message was deleted).
async fn erase_edit(
    store: &DynamoStore,
    conversation: ConversationId,
    seq: Seq,
) -> Result<(), BackendError> {
    let docs = super::history::event_docs(store, conversation, [seq]).await?;
    let Some(mut doc) = docs.get(&seq).cloned() else {
        return Ok(());
    };
    if let Content::Other(EventData::Edit { body, mentions, .. }) = &mut doc.content {
        body.clear();
        mentions.clear();
    }
    store
        .client
        .put_item()
        .table_name(&store.tables.events)
        .set_item(Some(doc.to_item()))
        .send()
        .await
        .map_err(|error| super::error::sdk("erase edit", error))?;
    Ok(())
}
