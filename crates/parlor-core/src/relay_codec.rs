//! Commands to gateway nodes as bytes, one compact encoding for every relay (a core NATS
//! message, an SQS body once in base64):
//!
//! `D`, user count (u32, big-endian), 16 bytes per user, then the frame's UTF-8 as is;
//! `M`, 16 bytes of conversation, the seq (u64, big-endian), then as `D`;
//! `C`, 16 bytes of user, 32 bytes of token hash.

use std::sync::Arc;

use uuid::Uuid;

use crate::ids::{ConversationId, UserId};
use crate::ports::{MessageOrder, NodeCommand, TokenHash};

const DELIVER: u8 = b'D';
const DELIVER_IN_ORDER: u8 = b'M';
const CLOSE_SESSION: u8 = b'C';

pub fn encode(command: &NodeCommand) -> Vec<u8> {
    match command {
        NodeCommand::Deliver {
            users,
            frame,
            order,
        } => {
            let mut bytes = Vec::with_capacity(29 + 16 * users.len() + frame.len());
            match order {
                None => bytes.push(DELIVER),
                Some(order) => {
                    bytes.push(DELIVER_IN_ORDER);
                    bytes.extend_from_slice(order.conversation.0.as_bytes());
                    bytes.extend_from_slice(&order.seq.to_be_bytes());
                }
            }
            bytes.extend_from_slice(&(users.len() as u32).to_be_bytes());
            for user in users {
                bytes.extend_from_slice(user.0.as_bytes());
            }
            bytes.extend_from_slice(frame.as_bytes());
            bytes
        }
        NodeCommand::CloseSession { user, token } => {
            let mut bytes = Vec::with_capacity(1 + 16 + 32);
            bytes.push(CLOSE_SESSION);
            bytes.extend_from_slice(user.0.as_bytes());
            bytes.extend_from_slice(&token.0);
            bytes
        }
    }
}

/// `None` for bytes that are no command.
pub fn decode(bytes: &[u8]) -> Option<NodeCommand> {
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
        });
        too_long.push(0);
        assert!(decode(&too_long).is_none());
    }
}
