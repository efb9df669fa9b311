//! The users and conversations of a run: direct conversations in a ring, and groups with an
//! admin, a deputy (whom the admin promotes and demotes), core members, and floaters (added,
//! then removed or leaving, again and again).

use std::collections::{HashMap, HashSet};

use anyhow::{Context, bail};
use serde_json::json;

use super::record::{ConversationIndex, Names, UserIndex};
use crate::client::{self, Account, Http};

/// Core members of a group, its admin among them.
const CORE_MEMBERS: usize = 5;
/// Members who come and go.
const FLOATERS: usize = 2;

/// What a user is in a conversation, which decides what its devices do there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Direct,
    Member,
    Admin,
    /// Not a member at first; only joins (made so by the admin) and leaves.
    Floater,
}

pub struct Group {
    pub admin: usize,
    pub deputy: usize,
    pub floaters: Vec<usize>,
}

pub struct Conversation {
    pub id: String,
    pub group: Option<Group>,
    /// A member from start to end, whose reads of history stand for the store.
    pub reader: usize,
    members: Vec<usize>,
}

pub struct World {
    pub users: Vec<Account>,
    pub conversations: Vec<Conversation>,
    user_index: HashMap<String, UserIndex>,
    conversation_index: HashMap<String, ConversationIndex>,
}

impl World {
    /// Registers `users` users and opens their conversations on the server at `address`.
    pub async fn build(address: &str, users: usize, groups: usize) -> anyhow::Result<World> {
        if !(2..=usize::from(UserIndex::MAX)).contains(&users) {
            bail!("between 2 and {} users", UserIndex::MAX);
        }
        let accounts = client::register_many(address, "check", users, 4).await?;
        let mut http = Http::connect(address).await?;
        let mut conversations = Vec::new();
        let mut pairs = HashSet::new();
        for a in 0..users {
            for step in [1, 3] {
                let b = (a + step) % users;
                if a == b || !pairs.insert((a.min(b), a.max(b))) {
                    continue;
                }
                conversations.push(Conversation {
                    id: client::direct(&mut http, &accounts[a], &accounts[b]).await?,
                    group: None,
                    reader: a,
                    members: vec![a, b],
                });
            }
        }
        for number in 0..groups {
            let admin = (number * 3) % users;
            let ring = |offset: usize| (admin + offset) % users;
            let mut core: Vec<usize> = (0..CORE_MEMBERS.min(users)).map(ring).collect();
            core.dedup();
            let floaters: Vec<usize> = (CORE_MEMBERS..CORE_MEMBERS + FLOATERS)
                .filter(|offset| *offset < users)
                .map(ring)
                .collect();
            let members: Vec<&str> = core[1..]
                .iter()
                .map(|user| accounts[*user].id.as_str())
                .collect();
            let body =
                json!({"kind": "group", "title": format!("group {number}"), "members": members});
            let reply = http
                .expect(
                    201,
                    "POST",
                    "/api/v1/conversations",
                    Some(&accounts[admin].token),
                    Some(&body),
                )
                .await?;
            let id = reply["id"].as_str().context("no group id")?.to_string();
            conversations.push(Conversation {
                id,
                reader: admin,
                members: core.iter().chain(&floaters).copied().collect(),
                group: Some(Group {
                    admin,
                    deputy: core.get(1).copied().unwrap_or(admin),
                    floaters,
                }),
            });
        }
        if conversations.len() > usize::from(ConversationIndex::MAX) {
            bail!("too many conversations");
        }
        Ok(World {
            user_index: (0..users)
                .map(|user| (accounts[user].id.clone(), user as UserIndex))
                .collect(),
            conversation_index: (0..conversations.len())
                .map(|index| (conversations[index].id.clone(), index as ConversationIndex))
                .collect(),
            users: accounts,
            conversations,
        })
    }

    /// The conversations `user` takes part in (as a member now, or a floater later).
    pub fn conversations_of(&self, user: usize) -> Vec<(ConversationIndex, Role)> {
        (0..self.conversations.len())
            .filter_map(|index| {
                let conversation = &self.conversations[index];
                if !conversation.members.contains(&user) {
                    return None;
                }
                let role = match &conversation.group {
                    None => Role::Direct,
                    Some(group) if group.admin == user => Role::Admin,
                    Some(group) if group.floaters.contains(&user) => Role::Floater,
                    Some(_) => Role::Member,
                };
                Some((index as ConversationIndex, role))
            })
            .collect()
    }

    pub fn user_index(&self, id: &str) -> Option<UserIndex> {
        self.user_index.get(id).copied()
    }

    pub fn conversation_index(&self, id: &str) -> Option<ConversationIndex> {
        self.conversation_index.get(id).copied()
    }

    pub fn names(&self) -> Names {
        Names {
            users: self.users.iter().map(|user| user.id.clone()).collect(),
            conversations: self.conversations.iter().map(|c| c.id.clone()).collect(),
        }
    }
}
