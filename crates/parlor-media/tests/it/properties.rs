use parlor_media::{Disposition, NAME_BYTES_MAX, content_disposition, file_name, sniff};
use proptest::prelude::*;

/// Names drawn from the characters that matter: separators, dots, spaces, controls, the
/// invisible formatting characters, multi-byte letters, and anything else.
fn hostile_name() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("/".to_owned()),
        Just("\\".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just(" ".to_owned()),
        Just("\u{202e}".to_owned()),
        Just("\u{200b}".to_owned()),
        Just(".pdf".to_owned()),
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]",
        "[a-zé東😀]{1,40}",
        any::<String>(),
    ];
    prop::collection::vec(pieces, 0..40).prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn file_name_never_returns_separators_controls_or_too_many_bytes(raw in hostile_name()) {
        if let Ok(name) = file_name(&raw) {
            prop_assert!(!name.is_empty());
            prop_assert!(name.len() <= NAME_BYTES_MAX, "{} bytes", name.len());
            prop_assert!(!name.contains(['/', '\\']), "{name:?}");
            prop_assert!(!name.chars().any(char::is_control), "{name:?}");
            prop_assert!(!name.contains('\u{202e}'), "{name:?}");
            prop_assert!(!name.starts_with('.'), "{name:?}");
            let again = file_name(&name);
            prop_assert_eq!(again, Ok(name.clone()), "cleaning is idempotent");
        }
    }

    #[test]
    fn content_disposition_is_always_a_valid_header_value(raw in hostile_name()) {
        let value = content_disposition(Disposition::Attachment, &raw);
        prop_assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)), "{value:?}");
    }

    #[test]
    fn sniff_never_panics(head in prop::collection::vec(any::<u8>(), 0..5000)) {
        let _ = sniff(&head);
    }

    #[test]
    fn sniff_never_panics_on_near_magic(
        prefix in prop::sample::select(vec![
            b"\x89PNG".to_vec(), b"RIFF".to_vec(), b"\0\0\0\x18ftyp".to_vec(),
            b"\x1a\x45\xdf\xa3".to_vec(), b"\xff".to_vec(), b"PK".to_vec(),
        ]),
        rest in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let _ = sniff(&[prefix, rest].concat());
    }
}
