//! A relayed command as an SQS message body: the relays' compact binary encoding
//! (`parlor_core::relay_codec`), in base64 because a body is XML-safe text (a frame may hold
//! characters SQS refuses, U+FFFE say).

use parlor_core::ports::NodeCommand;
use parlor_core::relay_codec;

use crate::base64;

pub(super) fn encode(command: &NodeCommand) -> String {
    base64::encode(&relay_codec::encode(command))
}

pub(super) fn decode(body: &str) -> Option<NodeCommand> {
    relay_codec::decode(&base64::decode(body)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parlor_core::UserId;

    use super::*;

    #[test]
    fn a_command_round_trips_through_a_body() {
        let frame: Arc<str> = "{\"body\":\"«ça» 🎉 \u{fffe}\"}".into();
        let command = NodeCommand::Deliver {
            users: vec![UserId::new()],
            frame: Arc::clone(&frame),
            order: None,
        };
        let body = encode(&command);
        assert!(body.is_ascii());
        match decode(&body) {
            Some(NodeCommand::Deliver { frame: decoded, .. }) => assert_eq!(decoded, frame),
            other => panic!("decoded {other:?}"),
        }
        assert!(decode("not base64").is_none());
        assert!(decode(&base64::encode(b"X")).is_none());
    }
}
