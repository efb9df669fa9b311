//! Input validation, done before anything is accepted so that a backend never refuses
//! later what the gateway acknowledged (PostgreSQL refuses NUL in text, for one).

use crate::error::{ApiError, ErrorCode};

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
}
