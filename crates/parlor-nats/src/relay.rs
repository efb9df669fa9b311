//! Commands to gateway nodes over core NATS: one subject per node, `<prefix>.node.<node>`,
//! so a notification costs one publish per node that holds a recipient.
//!
//! Core NATS is at most once: a command published while a node reconnects, or dropped
//! because the node fell behind, is lost. That is acceptable here because clients detect
//! the `seq` gap and catch up from the store, which is the truth. (A lost `CloseSession`
//! leaves that socket open until it reconnects; its session is already deleted.) Commands from one publisher reach a
//! node in the order they were sent.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use parlor_core::ports::{MessageOrder, NodeCommand, Relay, TokenHash};
use parlor_core::{BackendError, ConversationId, NodeId, UserId};
use uuid::Uuid;

/// How long `inbox` waits for the server to confirm the subscription.
const SUBSCRIBE_WAIT_MAX: Duration = Duration::from_secs(5);

const DELIVER: u8 = b'D';
const DELIVER_IN_ORDER: u8 = b'M';
const CLOSE_SESSION: u8 = b'C';

pub struct NatsRelay {
    client: Client,
    prefix: String,
}

impl NatsRelay {
    /// A relay on subjects `<prefix>.node.<node>`.
    pub fn new(client: Client, prefix: &str) -> Self {
        Self {
            client,
            prefix: prefix.to_string(),
        }
    }

    fn subject(&self, node: NodeId) -> String {
        format!("{}.node.{node}", self.prefix)
    }
}

#[async_trait]
impl Relay for NatsRelay {
    async fn send(&self, node: NodeId, command: NodeCommand) -> Result<(), BackendError> {
        // No flush per command: the client flushes on its own, and batching the writes is
        // what keeps a burst of notifications cheap.
        self.client
            .publish(self.subject(node), encode(&command))
            .await
            .map_err(|error| {
                BackendError::unavailable(format!("cannot relay to node {node}: {error}"))
                    .with_source(error)
            })
    }

    async fn inbox(&self, node: NodeId) -> Result<BoxStream<'static, NodeCommand>, BackendError> {
        let subscriber = self
            .client
            .subscribe(self.subject(node))
            .await
            .map_err(|error| {
                BackendError::unavailable(format!("cannot subscribe to node {node}'s inbox"))
                    .with_source(error)
            })?;
        // A message to ourselves comes back only after the server has processed the
        // subscription before it: from then on, commands sent to this node arrive.
        tokio::time::timeout(SUBSCRIBE_WAIT_MAX, self.round_trip())
            .await
            .map_err(|_| {
                BackendError::unavailable("the NATS server did not confirm a subscription")
            })??;
        Ok(Box::pin(subscriber.filter_map(|message| async move {
            let command = decode(&message.payload);
            if command.is_none() {
                tracing::warn!(
                    subject = %message.subject,
                    bytes = message.payload.len(),
                    "relay: ignoring an undecodable command"
                );
            }
            command
        })))
    }
}

impl NatsRelay {
    async fn round_trip(&self) -> Result<(), BackendError> {
        let failed = |error: &dyn std::fmt::Display| {
            BackendError::unavailable(format!("cannot reach the NATS server: {error}"))
        };
        let subject = self.client.new_inbox();
        let mut echo = self
            .client
            .subscribe(subject.clone())
            .await
            .map_err(|e| failed(&e))?;
        self.client
            .publish(subject, Bytes::new())
            .await
            .map_err(|e| failed(&e))?;
        self.client.flush().await.map_err(|e| failed(&e))?;
        echo.next()
            .await
            .ok_or_else(|| failed(&"connection closed"))?;
        Ok(())
    }
}

/// `D`, user count (u32, big-endian), 16 bytes per user, then the frame's UTF-8 as is;
/// `M`, 16 bytes of conversation, the seq (u64, big-endian), then as `D`;
/// `C`, 16 bytes of user, 32 bytes of token hash.
fn encode(command: &NodeCommand) -> Bytes {
    match command {
        NodeCommand::Deliver {
            users,
            frame,
            order,
        } => {
            let mut bytes = BytesMut::with_capacity(29 + 16 * users.len() + frame.len());
            match order {
                None => bytes.put_u8(DELIVER),
                Some(order) => {
                    bytes.put_u8(DELIVER_IN_ORDER);
                    bytes.put_slice(order.conversation.0.as_bytes());
                    bytes.put_u64(order.seq);
                }
            }
            bytes.put_u32(users.len() as u32);
            for user in users {
                bytes.put_slice(user.0.as_bytes());
            }
            bytes.put_slice(frame.as_bytes());
            bytes.freeze()
        }
        NodeCommand::CloseSession { user, token } => {
            let mut bytes = BytesMut::with_capacity(1 + 16 + 32);
            bytes.put_u8(CLOSE_SESSION);
            bytes.put_slice(user.0.as_bytes());
            bytes.put_slice(&token.0);
            bytes.freeze()
        }
    }
}

fn decode(bytes: &[u8]) -> Option<NodeCommand> {
    let (&tag, mut rest) = bytes.split_first()?;
    match tag {
        DELIVER | DELIVER_IN_ORDER => {
            let mut order = None;
            if tag == DELIVER_IN_ORDER {
                let (conversation, after) = rest.split_first_chunk::<16>()?;
                let (seq, after) = after.split_first_chunk::<8>()?;
                order = Some(MessageOrder {
                    conversation: ConversationId(Uuid::from_bytes(*conversation)),
                    seq: u64::from_be_bytes(*seq),
                });
                rest = after;
            }
            let (count, rest) = rest.split_first_chunk::<4>()?;
            let count = u32::from_be_bytes(*count) as usize;
            let users_len = count.checked_mul(16)?;
            if rest.len() < users_len {
                return None;
            }
            let (users, frame) = rest.split_at(users_len);
            let users = users.chunks_exact(16).map(user).collect::<Option<_>>()?;
            let frame: Arc<str> = std::str::from_utf8(frame).ok()?.into();
            Some(NodeCommand::Deliver {
                users,
                frame,
                order,
            })
        }
        CLOSE_SESSION => {
            let (user_bytes, token) = rest.split_first_chunk::<16>()?;
            let token: [u8; 32] = token.try_into().ok()?;
            Some(NodeCommand::CloseSession {
                user: user(user_bytes)?,
                token: TokenHash(token),
            })
        }
        _ => None,
    }
}

fn user(bytes: &[u8]) -> Option<UserId> {
    Some(UserId(Uuid::from_slice(bytes).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let users = vec![UserId::new(), UserId::new()];
        let frame: Arc<str> = r#"{"type":"message","body":"«ça» \"q\" 🎉"}"#.into();
        let ordered = MessageOrder {
            conversation: ConversationId::new(),
            seq: u64::MAX - 1,
        };
        for order in [None, Some(ordered)] {
            let command = NodeCommand::Deliver {
                users: users.clone(),
                frame: Arc::clone(&frame),
                order,
            };
            match decode(&encode(&command)) {
                Some(NodeCommand::Deliver {
                    users: decoded_users,
                    frame: decoded_frame,
                    order: decoded_order,
                }) => {
                    assert_eq!(decoded_users, users);
                    assert_eq!(decoded_frame, frame);
                    assert_eq!(decoded_order, order);
                }
                other => panic!("decoded {other:?}"),
            }
        }
        let (user, token) = (UserId::new(), TokenHash([7; 32]));
        match decode(&encode(&NodeCommand::CloseSession { user, token })) {
            Some(NodeCommand::CloseSession {
                user: decoded_user,
                token: decoded_token,
            }) => assert_eq!((decoded_user, decoded_token), (user, token)),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn garbage_is_not_a_command() {
        assert!(decode(b"").is_none());
        assert!(decode(b"X").is_none());
        assert!(decode(&[DELIVER, 0, 0, 0, 2, 1, 2, 3]).is_none());
        assert!(decode(&[DELIVER, 255, 255, 255, 255]).is_none());
        assert!(decode(&[DELIVER, 0, 0, 0, 0, 0xff]).is_none());
        assert!(decode(&[CLOSE_SESSION, 1, 2]).is_none());
        let mut too_long = encode(&NodeCommand::CloseSession {
            user: UserId::new(),
            token: TokenHash([1; 32]),
        })
        .to_vec();
        too_long.push(0);
        assert!(decode(&too_long).is_none());
    }
}
