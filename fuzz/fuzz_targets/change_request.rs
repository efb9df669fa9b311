//! A change request's JSON body (`POST /api/v1/conversations/{id}/events`) and the text fields
//! every request checks: never a panic, and a change that passes its check passes it again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parlor_core::events::Change;
use parlor_core::validate;

const BODY_BYTES_MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = validate::username(text);
        let _ = validate::password(text, "someone");
        let _ = validate::body(text, BODY_BYTES_MAX);
        let _ = validate::client_msg_id(text);
        let _ = validate::group_title(text);
        let _ = validate::emoji(text);
        let _ = validate::mention_names(text);
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(mut change) = Change::from_json(value) else {
        return;
    };
    if validate::change(&mut change, BODY_BYTES_MAX).is_ok() {
        // What a check lets through (trimmed titles, cleared blank captions) it lets through
        // again, unchanged: the persister relies on stored changes being valid.
        let checked = change.clone();
        validate::change(&mut change, BODY_BYTES_MAX).expect("a checked change passes again");
        assert_eq!(change, checked);
    }
});
