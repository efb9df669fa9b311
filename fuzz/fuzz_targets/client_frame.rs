//! A client's WebSocket text frame, as the gateway reads it: decoded, its change checked as the
//! gateway checks it, and, if it passes, the inbound entry it becomes survives its durable
//! encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor_core::events::Change;
use parlor_core::protocol::{ClientFrame, decode_client_frame};
use parlor_core::queue::InboundEntry;
use parlor_core::{ConversationId, UserId, validate};

/// The gateway's default (`PARLOR_BODY_BYTES_MAX`).
const BODY_BYTES_MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = decode_client_frame(text) else {
        return;
    };
    let (client_msg_id, mut change) = match frame {
        ClientFrame::Send {
            client_msg_id,
            body,
            reply_to_seq,
            files,
            ..
        } => (
            client_msg_id,
            Change::Message {
                body,
                reply_to_seq,
                files,
            },
        ),
        ClientFrame::Event {
            client_msg_id,
            change,
            ..
        } => (client_msg_id, change),
        _ => return,
    };
    if validate::client_msg_id(&client_msg_id).is_err()
        || validate::change(&mut change, BODY_BYTES_MAX).is_err()
    {
        return;
    }
    let entry = InboundEntry {
        conversation_id: ConversationId::new(),
        sender_id: UserId::new(),
        client_msg_id,
        accepted_at: time::OffsetDateTime::UNIX_EPOCH,
        change,
    };
    let decoded = InboundEntry::decode(&entry.encode()).expect("an entry this build wrote");
    assert_eq!(decoded, entry);
});
