//! The decoders of what Parlor keeps or passes between processes: inbound entries, notifications,
//! relay commands between gateways, blob keys and search orders. Any input gives an error or a
//! value, never a panic, and a value decoded once encodes to bytes that decode to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor_core::blobs::BlobKey;
use parlor_core::queue::{InboundEntry, Notification};
use parlor_core::relay_codec;
use parlor_core::search::SearchOrder;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = InboundEntry::decode(data) {
        let again = InboundEntry::decode(&entry.encode()).expect("an entry this build wrote");
        assert_eq!(again, entry);
    }
    if let Ok(notification) = Notification::decode(data) {
        let bytes = notification.encode();
        let again = Notification::decode(&bytes).expect("a notification this build wrote");
        assert_eq!(again.encode(), bytes);
    }
    if let Some(command) = relay_codec::decode(data) {
        let bytes = relay_codec::encode(&command);
        let again = relay_codec::decode(&bytes).expect("a command this build wrote");
        assert_eq!(relay_codec::encode(&again), bytes);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = BlobKey::parse(text);
        let _ = SearchOrder::parse(text);
    }
});
