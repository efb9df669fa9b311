//! What the client calls a file, made safe to store, to show and to send in a header.

use std::fmt::Write as _;

/// The longest name kept, in UTF-8 bytes: what most filesystems allow for one component.
pub const NAME_BYTES_MAX: usize = 255;

/// Past this many bytes (after the dot) the part after the last dot is not treated as an
/// extension worth keeping when a name is cut.
const EXTENSION_BYTES_MAX: usize = 16;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was left once paths, controls, leading dots and spaces were removed. The caller
    /// may refuse the upload or choose a name of its own.
    #[error("file name is empty once cleaned")]
    Empty,
}

/// Cleans `raw`, the name a client gave: keeps the last path component (after `/` or `\`),
/// removes control characters and the invisible formatting characters that can disguise a
/// name (bidirectional overrides such as U+202E turn `gpj.exe` into what reads as `exe.jpg`;
/// zero-width spaces, line separators), removes leading dots (no hidden files, no `..`) and
/// surrounding whitespace, and cuts the result to [`NAME_BYTES_MAX`] bytes at a character
/// boundary, keeping a short extension. Other Unicode is kept as given (no normalisation).
///
/// The result is never empty and contains no `/`, `\` or control character.
pub fn file_name(raw: &str) -> Result<String, NameError> {
    // Removed before splitting, so an invisible character cannot hide a separator's effect.
    let visible: String = raw.chars().filter(|&c| !is_hidden(c)).collect();
    let last = visible.rsplit(['/', '\\']).next().unwrap_or_default();
    let trimmed = last
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end();
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    Ok(shorten(trimmed))
}

/// Characters that do not show, or reorder what shows: controls (C0, DEL, C1) and the
/// format characters of bidirectional text and zero-width joining.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'                      // Arabic letter mark
            | '\u{180e}'                    // Mongolian vowel separator
            | '\u{200b}'..='\u{200f}'       // zero-width space/joiners, LRM, RLM
            | '\u{2028}'..='\u{202e}'       // line/paragraph separators, embeddings, overrides
            | '\u{2060}'..='\u{2064}'       // word joiner, invisible operators
            | '\u{2066}'..='\u{2069}'       // isolates
            | '\u{feff}'                    // zero-width no-break space (BOM)
            | '\u{fff9}'..='\u{fffb}' // interlinear annotations
        )
}

fn shorten(name: &str) -> String {
    if name.len() <= NAME_BYTES_MAX {
        return name.to_owned();
    }
    if let Some(dot) = name.rfind('.')
        && dot > 0
        && (2..=EXTENSION_BYTES_MAX + 1).contains(&(name.len() - dot))
    {
        let extension = &name[dot..];
        let stem = cut(&name[..dot], NAME_BYTES_MAX - extension.len()).trim_end();
        if !stem.is_empty() {
            return format!("{stem}{extension}");
        }
    }
    cut(name, NAME_BYTES_MAX).trim_end().to_owned()
}

/// The longest prefix of `s` of at most `max_bytes` that ends on a character boundary.
fn cut(s: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How a download is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Saved as a file (everything but the inline images).
    Attachment,
    /// Shown in the page (see [`crate::is_inline_image`]).
    Inline,
}

/// A `Content-Disposition` header value naming the file `name` (RFC 6266): an ASCII
/// `filename="…"` for old clients, in which `"`, `\`, `%`, controls and non-ASCII characters
/// are replaced by `_`, and the exact name as RFC 5987 `filename*=UTF-8''…`, percent-encoded.
/// Whatever `name` holds, the value is visible ASCII and spaces only, so it is a valid header.
pub fn content_disposition(disposition: Disposition, name: &str) -> String {
    let kind = match disposition {
        Disposition::Attachment => "attachment",
        Disposition::Inline => "inline",
    };
    let fallback: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' | '%' => '_',
            ' ' => ' ',
            c if c.is_ascii_graphic() => c,
            _ => '_',
        })
        .collect();
    let mut value = format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''");
    for &b in name.as_bytes() {
        if is_attr_char(b) {
            value.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(value, "%{b:02X}");
        }
    }
    value
}

/// RFC 5987 `attr-char`: what may appear unencoded in an extended parameter value.
fn is_attr_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_stops_at_a_character_boundary() {
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aé", 3), "aé");
        assert_eq!(cut("ab", 10), "ab");
    }

    #[test]
    fn a_long_extension_is_not_kept() {
        let name = format!("{}.{}", "a".repeat(300), "b".repeat(40));
        let short = shorten(&name);
        assert_eq!(short.len(), NAME_BYTES_MAX);
        assert!(short.chars().all(|c| c == 'a'));
    }
}
