//! A relayed command as an SQS message body: a compact binary encoding, in base64 because
//! a body is XML-safe text (a frame may hold characters SQS refuses, U+FFFE say).
//!
//! `D`, user count (u32, big-endian), 16 bytes per user, then the frame's UTF-8 as is;
//! `M`, 16 bytes of conversation, the seq (u64, big-endian), then as `D`;
//! `C`, 16 bytes of user, 32 bytes of token hash.

use std::sync::Arc;

use parlor_core::ports::{MessageOrder, NodeCommand, TokenHash};
use parlor_core::{ConversationId, UserId};
use uuid::Uuid;

const DELIVER: u8 = b'D';
const DELIVER_IN_ORDER: u8 = b'M';
const CLOSE_SESSION: u8 = b'C';

pub(super) fn encode(command: &NodeCommand) -> String {
    let mut bytes = Vec::new();
    match command {
        NodeCommand::Deliver {
            users,
            frame,
            order,
        } => {
            bytes.reserve(29 + 16 * users.len() + frame.len());
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
        }
        NodeCommand::CloseSession { user, token } => {
            bytes.push(CLOSE_SESSION);
            bytes.extend_from_slice(user.0.as_bytes());
            bytes.extend_from_slice(&token.0);
        }
    }
    base64_encode(&bytes)
}

pub(super) fn decode(body: &str) -> Option<NodeCommand> {
    let bytes = base64_decode(body)?;
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
            let users_len = (u32::from_be_bytes(*count) as usize).checked_mul(16)?;
            if rest.len() < users_len {
                return None;
            }
            let (users, frame) = rest.split_at(users_len);
            let users = users
                .chunks_exact(16)
                .map(|user| Some(UserId(Uuid::from_slice(user).ok()?)))
                .collect::<Option<_>>()?;
            let frame: Arc<str> = std::str::from_utf8(frame).ok()?.into();
            Some(NodeCommand::Deliver {
                users,
                frame,
                order,
            })
        }
        CLOSE_SESSION => {
            let (user, token) = rest.split_first_chunk::<16>()?;
            let token: [u8; 32] = token.try_into().ok()?;
            Some(NodeCommand::CloseSession {
                user: UserId(Uuid::from_bytes(*user)),
                token: TokenHash(token),
            })
        }
        _ => None,
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
fn base64_encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    for (index, chunk) in text.chunks(4).enumerate() {
        let last = index == text.len() / 4 - 1;
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - padding] {
            let value = ALPHABET.iter().position(|&a| a == c)? as u32;
            n = (n << 6) | value;
        }
        n <<= 6 * padding as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        bytes.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).as_deref(), Some(plain.as_bytes()));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)), Some(all));
        assert_eq!(base64_decode("Zg="), None);
        assert_eq!(base64_decode("Zg==Zm8="), None);
        assert_eq!(base64_decode("Z!=="), None);
    }

    #[test]
    fn commands_round_trip() {
        let users = vec![UserId::new(), UserId::new()];
        let frame: Arc<str> = "{\"body\":\"«ça» \\\"q\\\" 🎉 \u{fffe}\"}".into();
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
        for bytes in [
            &b""[..],
            b"X",
            &[DELIVER, 0, 0, 0, 2, 1, 2, 3],
            &[DELIVER, 255, 255, 255, 255],
            &[DELIVER, 0, 0, 0, 0, 0xff],
            &[CLOSE_SESSION, 1, 2],
        ] {
            assert!(decode(&base64_encode(bytes)).is_none(), "{bytes:?}");
        }
        assert!(decode("not base64").is_none());
    }
}
