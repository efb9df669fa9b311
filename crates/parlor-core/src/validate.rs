//! Input validation, done before anything is accepted so that a backend never refuses
//! later what the gateway acknowledged (PostgreSQL refuses NUL in text, for one).

use crate::error::{ApiError, ErrorCode};
use crate::events::Change;
use crate::files::FILES_PER_MESSAGE_MAX;
use crate::ids::FileId;

/// Username rules: 3–32 characters of `[A-Za-z0-9_.-]`; unique ignoring case.
pub fn username(name: &str) -> Result<(), ApiError> {
    let length_ok = (3..=32).contains(&name.len());
    let chars_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if length_ok && chars_ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidUsername,
            "a username is 3 to 32 characters of letters, digits, '_', '.' and '-'",
        ))
    }
}

/// Password rules: 8–128 characters, no NUL, not the username.
pub fn password(password: &str, username: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if !(8..=128).contains(&chars) {
        return Err(ApiError::new(
            ErrorCode::WeakPassword,
            "a password is 8 to 128 characters",
        ));
    }
    if password.contains('\0') {
        return Err(ApiError::new(
            ErrorCode::WeakPassword,
            "a password must not contain NUL",
        ));
    }
    if password.eq_ignore_ascii_case(username) {
        return Err(ApiError::new(
            ErrorCode::WeakPassword,
            "a password must differ from the username",
        ));
    }
    Ok(())
}

/// Message bodies: non-blank text of at most `bytes_max` bytes of UTF-8, without NUL.
/// (Invalid UTF-8 never gets this far: JSON decoding refuses it.)
pub fn body(body: &str, bytes_max: usize) -> Result<(), ApiError> {
    if body.len() > bytes_max {
        return Err(ApiError::new(
            ErrorCode::BodyTooLarge,
            format!(
                "a message body is at most {bytes_max} bytes of UTF-8 (this one is {})",
                body.len()
            ),
        ));
    }
    if body.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            "a message body must not be blank",
        ));
    }
    if body.contains('\0') {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            "a message body must not contain NUL",
        ));
    }
    Ok(())
}

/// Client message ids: 1–64 characters of `[A-Za-z0-9_.:-]` (a UUID fits).
pub fn client_msg_id(id: &str) -> Result<(), ApiError> {
    let length_ok = (1..=64).contains(&id.len());
    let chars_ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if length_ok && chars_ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidInput,
            "client_msg_id is 1 to 64 characters of letters, digits, '_', '.', ':' and '-'",
        ))
    }
}

/// Group titles: 1–100 characters after trimming, no control characters.
pub fn group_title(title: &str) -> Result<&str, ApiError> {
    let title = title.trim();
    let chars = title.chars().count();
    if !(1..=100).contains(&chars) || title.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            "a group title is 1 to 100 characters without control characters",
        ));
    }
    Ok(title)
}

/// A requested change's own input, whatever the conversation's state: bodies as for a send,
/// emoji as [`emoji`] says, titles as [`group_title`] says (the title is trimmed here).
pub fn change(change: &mut Change, body_bytes_max: usize) -> Result<(), ApiError> {
    match change {
        Change::Message {
            body: text, files, ..
        } if !files.is_empty() => {
            attachments(files)?;
            // A caption is optional; if there is one, it is a body like any other.
            if text.trim().is_empty() {
                text.clear();
                return Ok(());
            }
            body(text, body_bytes_max)
        }
        Change::Message { body: text, .. } | Change::Edit { body: text, .. } => {
            body(text, body_bytes_max)
        }
        Change::ReactionAdded { emoji: e, .. } | Change::ReactionRemoved { emoji: e, .. } => {
            emoji(e)
        }
        Change::TitleChanged { title } => {
            *title = group_title(title)?.to_owned();
            Ok(())
        }
        Change::Delete { .. }
        | Change::MemberAdded { .. }
        | Change::MemberRemoved { .. }
        | Change::MemberLeft {}
        | Change::RoleChanged { .. } => Ok(()),
    }
}

/// A message's files: at most [`FILES_PER_MESSAGE_MAX`], each once.
pub fn attachments(files: &[FileId]) -> Result<(), ApiError> {
    if files.len() > FILES_PER_MESSAGE_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("a message carries at most {FILES_PER_MESSAGE_MAX} files"),
        ));
    }
    let mut seen = files.to_vec();
    seen.sort();
    seen.dedup();
    if seen.len() != files.len() {
        return Err(ApiError::new(
            ErrorCode::InvalidInput,
            "a file is attached once per message",
        ));
    }
    Ok(())
}

/// Bytes of one reaction, at most: the longest emoji sequences (a family, a flag with tags)
/// fit.
pub const EMOJI_BYTES_MAX: usize = 32;

/// A reaction is one emoji: pictographs, with the joiners, variation selectors, skin tones,
/// keycaps and tags that build emoji sequences, at most [`EMOJI_BYTES_MAX`] bytes; never
/// letters, digits alone, spaces or markup.
pub fn emoji(text: &str) -> Result<(), ApiError> {
    fn pictograph(c: char) -> bool {
        matches!(c as u32,
            0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x2194..=0x21AA
            | 0x231A..=0x23FF | 0x24C2 | 0x25AA..=0x25FE | 0x2600..=0x27BF | 0x2934..=0x2935
            | 0x2B05..=0x2B55 | 0x3030 | 0x303D | 0x3297 | 0x3299 | 0x1F000..=0x1FAFF)
    }
    fn joiner(c: char) -> bool {
        matches!(
            c as u32,
            0x200D | 0xFE0E | 0xFE0F | 0x20E3 | 0xE0020..=0xE007F
        )
    }
    let keycap_base = |c: char| c.is_ascii_digit() || c == '#' || c == '*';
    let chars: Vec<char> = text.chars().collect();
    let well_formed = !text.is_empty()
        && text.len() <= EMOJI_BYTES_MAX
        && chars.iter().any(|&c| pictograph(c) || c == '\u{20E3}')
        && chars.iter().enumerate().all(|(index, &c)| {
            pictograph(c)
                || joiner(c)
                // A keycap: the base, then U+FE0F or U+20E3.
                || (keycap_base(c)
                    && chars
                        .get(index + 1)
                        .is_some_and(|&next| next == '\u{FE0F}' || next == '\u{20E3}'))
        });
    if well_formed {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidInput,
            format!("a reaction is one emoji of at most {EMOJI_BYTES_MAX} bytes"),
        ))
    }
}

/// Distinct names one message may mention, at most; later ones are plain text.
pub const MENTIONS_MAX: usize = 32;

/// The usernames `@name` mentions in `body`, lower-cased, each once, in order: `@` at the
/// start or after a character that cannot be part of a name (so `ann@example.org` mentions
/// nobody), then a valid [`username`] (a trailing `.` or `-` is punctuation, not the name).
/// The store resolves them against the conversation's members.
pub fn mention_names(body: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    // Most messages mention nobody: one fast scan says so.
    if !body.contains('@') {
        return names;
    }
    let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    let mut previous: Option<char> = None;
    for (index, c) in body.char_indices() {
        let at_start = previous.is_none_or(|p| !name_char(p) && p != '@');
        previous = Some(c);
        if c != '@' || !at_start {
            continue;
        }
        let rest = &body[index + 1..];
        let end = rest.find(|c: char| !name_char(c)).unwrap_or(rest.len());
        let name = rest[..end].trim_end_matches(['.', '-']);
        if username(name).is_ok() {
            let name = name.to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
                if names.len() == MENTIONS_MAX {
                    break;
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(username("alice").is_ok());
        assert!(username("a.b-c_d9").is_ok());
        assert!(username("al").is_err());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(username("al ice").is_err());
        assert!(username("älice").is_err());
        assert!(username("<script>").is_err());
    }

    #[test]
    fn passwords() {
        assert!(password("correct horse", "alice").is_ok());
        assert_eq!(
            password("short", "alice").unwrap_err().code,
            ErrorCode::WeakPassword
        );
        assert!(password("Alice123", "alice123").is_err());
        assert!(password("abc\0defgh", "alice").is_err());
        assert!(password(&"x".repeat(129), "alice").is_err());
    }

    #[test]
    fn bodies() {
        assert!(body("hello", 16 * 1024).is_ok());
        assert!(body(&"é".repeat(8 * 1024), 16 * 1024).is_ok());
        assert_eq!(
            body(&"é".repeat(8 * 1024 + 1), 16 * 1024).unwrap_err().code,
            ErrorCode::BodyTooLarge
        );
        assert_eq!(
            body("  \n ", 100).unwrap_err().code,
            ErrorCode::InvalidInput
        );
        assert_eq!(body("a\0b", 100).unwrap_err().code, ErrorCode::InvalidInput);
    }

    #[test]
    fn client_msg_ids() {
        assert!(client_msg_id("0192f0c1-7c5e-7a4b-9c1e-2f3a4b5c6d7e").is_ok());
        assert!(client_msg_id("").is_err());
        assert!(client_msg_id(&"a".repeat(65)).is_err());
        assert!(client_msg_id("a b").is_err());
    }

    #[test]
    fn group_titles() {
        assert_eq!(group_title("  Team  ").unwrap(), "Team");
        assert!(group_title("   ").is_err());
        assert!(group_title("a\u{7}b").is_err());
    }

    #[test]
    fn emoji_are_pictographs_and_their_sequences() {
        for ok in ["👍", "❤️", "🎉", "👍🏽", "👨‍👩‍👧", "🇫🇷", "1️⃣", "🏳️‍🌈", "☕"]
        {
            assert!(emoji(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "a",
            "1",
            "ok",
            " ",
            "<b>",
            "👍 ",
            "\u{200D}",
            &"👍".repeat(9),
        ] {
            assert!(emoji(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mentions_are_names_after_an_at_sign() {
        assert_eq!(mention_names("hi @Ann and @bob."), ["ann", "bob"]);
        assert_eq!(mention_names("@ann @ANN @ann"), ["ann"]);
        assert!(mention_names("mail ann@example.org or @@x or @ab").is_empty());
        assert_eq!(mention_names("(@carol_1)"), ["carol_1"]);
        let many: String = (0..40).map(|i| format!("@user{i:02} ")).collect();
        assert_eq!(mention_names(&many).len(), MENTIONS_MAX);
    }

    #[test]
    fn changes_are_validated_by_kind() {
        let mut blank = Change::Edit {
            target_seq: 1,
            body: " ".into(),
        };
        assert_eq!(
            change(&mut blank, 100).unwrap_err().code,
            ErrorCode::InvalidInput
        );
        let mut title = Change::TitleChanged {
            title: "  Team ".into(),
        };
        change(&mut title, 100).unwrap();
        assert_eq!(
            title,
            Change::TitleChanged {
                title: "Team".into()
            }
        );
        let mut react = Change::ReactionAdded {
            target_seq: 1,
            emoji: "x".into(),
        };
        assert!(change(&mut react, 100).is_err());
    }
}
