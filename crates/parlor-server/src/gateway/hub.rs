//! The live connections of this node, by user. Delivery never waits on a connection: a
//! connection whose queue is full is closed (it catches up from the store when it returns).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use parlor_core::ports::TokenHash;
use parlor_core::{ConnectionId, UserId};
use tokio::sync::{Notify, mpsc};

use crate::metrics as m;

/// What the hub keeps of one connection.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub id: ConnectionId,
    pub token: TokenHash,
    pub frames: mpsc::Sender<Utf8Bytes>,
    /// Tells the connection to close: it is too slow, or its session ended.
    pub close: Arc<Notify>,
}

#[derive(Default)]
pub struct Hub {
    users: RwLock<HashMap<UserId, Vec<ConnectionHandle>>>,
}

impl Hub {
    /// Adds a connection unless the user already has `per_user_max`.
    pub fn add(&self, user: UserId, connection: ConnectionHandle, per_user_max: usize) -> bool {
        let mut users = self.users.write().expect("hub lock");
        let connections = users.entry(user).or_default();
        if connections.len() >= per_user_max {
            return false;
        }
        connections.push(connection);
        true
    }

    pub fn remove(&self, user: UserId, id: ConnectionId) {
        let mut users = self.users.write().expect("hub lock");
        if let Some(connections) = users.get_mut(&user) {
            connections.retain(|c| c.id != id);
            if connections.is_empty() {
                users.remove(&user);
            }
        }
    }

    /// Queues `frame` on every connection of `users`; returns how many took it.
    pub fn deliver(&self, users: &[UserId], frame: &Utf8Bytes) -> usize {
        let users_map = self.users.read().expect("hub lock");
        let mut delivered = 0;
        for user in users {
            for connection in users_map.get(user).into_iter().flatten() {
                match connection.frames.try_send(frame.clone()) {
                    Ok(()) => delivered += 1,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        metrics::counter!(m::SLOW_CONSUMERS).increment(1);
                        connection.close.notify_one();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
        delivered
    }

    /// Closes the connections opened with `token` (logout).
    pub fn close_session(&self, user: UserId, token: TokenHash) {
        let users = self.users.read().expect("hub lock");
        for connection in users.get(&user).into_iter().flatten() {
            if connection.token == token {
                connection.close.notify_one();
            }
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        let users = self.users.read().expect("hub lock");
        for connection in users.values().flatten() {
            connection.close.notify_one();
        }
    }

    pub fn connection_count(&self) -> usize {
        self.users
            .read()
            .expect("hub lock")
            .values()
            .map(Vec::len)
            .sum()
    }
}
