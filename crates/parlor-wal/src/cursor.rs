//! Durable consumer cursors: one 16-byte file per cursor in `cursors/`, replaced atomically.
//!
//! File format (also of the log's seal, see `seal`): magic (`PCUR` for cursors), value (u64 LE),
//! CRC32C of the preceding 12 bytes (u32 LE). Because a new value is written to a temporary
//! file, synced, and only then renamed over the old one, such a file is always either the old
//! or the new value; a bad one is corruption, not a torn write.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::WalError;
use crate::fs::{FileSystem, OpenMode};

const CURSOR_DIR: &str = "cursors";
const CURSOR_MAGIC: [u8; 4] = *b"PCUR";
const VALUE_FILE_BYTES: usize = 16;
/// Cursor names become file names; the limit keeps them far below any file-name limit.
pub(crate) const CURSOR_NAME_BYTES_MAX: usize = 64;
/// Cursor names cannot contain a dot, so this never collides with a cursor file.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

/// Refuses names that are not `[a-z0-9_-]{1,64}`, and duplicates.
pub(crate) fn validate_names(names: &[String]) -> Result<(), WalError> {
    for (index, name) in names.iter().enumerate() {
        let valid = !name.is_empty()
            && name.len() <= CURSOR_NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(WalError::invalid_input(
                "check cursor names",
                format!("cursor name {name:?} must match [a-z0-9_-]{{1,{CURSOR_NAME_BYTES_MAX}}}"),
            ));
        }
        if names[..index].contains(name) {
            return Err(WalError::invalid_input(
                "check cursor names",
                format!("cursor name {name:?} is listed twice"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn cursor_dir(dir: &Path) -> PathBuf {
    dir.join(CURSOR_DIR)
}

/// Reads the durable value of every named cursor (0 when it has no file yet), creating the cursor
/// directory and removing temporary files left by a crash in the middle of a commit.
pub(crate) fn load(
    fs: &dyn FileSystem,
    dir: &Path,
    names: &[String],
) -> Result<BTreeMap<String, u64>, WalError> {
    let cursors = cursor_dir(dir);
    match fs.create_dir(&cursors) {
        Ok(()) => fs
            .sync_dir(dir)
            .map_err(WalError::io("sync the log directory"))?,
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(WalError::io("create the cursor directory")(error)),
    }
    for name in fs
        .list(&cursors)
        .map_err(WalError::io("list the cursor directory"))?
    {
        if name.ends_with(TEMP_SUFFIX) {
            fs.remove_file(&cursors.join(name))
                .map_err(WalError::io("remove a temporary cursor file"))?;
        }
    }
    let mut values = BTreeMap::new();
    for name in names {
        let value = read_value(fs, &cursors.join(name), CURSOR_MAGIC)?;
        values.insert(name.clone(), value.unwrap_or(0));
    }
    Ok(values)
}

/// The value in the file at `path`, `None` if there is none.
pub(crate) fn read_value(
    fs: &dyn FileSystem,
    path: &Path,
    magic: [u8; 4],
) -> Result<Option<u64>, WalError> {
    let file = match fs.open(path, OpenMode::Read) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(WalError::io("open a cursor or seal file")(error)),
    };
    // One byte more than expected, to notice a file that is too long.
    let mut bytes = [0u8; VALUE_FILE_BYTES + 1];
    let mut filled = 0;
    loop {
        match file
            .read_at(&mut bytes[filled..], filled as u64)
            .map_err(WalError::io("read a cursor or seal file"))?
        {
            0 => break,
            read => filled += read,
        }
        if filled == bytes.len() {
            break;
        }
    }
    if filled != VALUE_FILE_BYTES {
        return Err(WalError::corrupt(
            path.to_owned(),
            0,
            format!("the file has {filled} bytes, expected 16"),
        ));
    }
    if bytes[0..4] != magic {
        return Err(WalError::corrupt(path.to_owned(), 0, "bad magic"));
    }
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&bytes[0..12]) {
        return Err(WalError::corrupt(path.to_owned(), 12, "crc mismatch"));
    }
    Ok(Some(u64::from_le_bytes(
        bytes[4..12].try_into().expect("8 bytes"),
    )))
}

/// Durably replaces the cursor file: write a temporary file, sync it, rename it over the old one,
/// sync the directory.
pub(crate) fn store(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    value: u64,
) -> Result<(), WalError> {
    store_value(fs, &cursor_dir(dir), name, CURSOR_MAGIC, value)
}

/// Durably replaces the file `dir/name` with one holding `value`.
pub(crate) fn store_value(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    magic: [u8; 4],
    value: u64,
) -> Result<(), WalError> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut bytes = [0u8; VALUE_FILE_BYTES];
    bytes[0..4].copy_from_slice(&magic);
    bytes[4..12].copy_from_slice(&value.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..12]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    let written = fs.open(&temp, OpenMode::CreateTruncate).and_then(|file| {
        file.write_all_at(&bytes, 0)?;
        file.sync_data()
    });
    if let Err(error) = written {
        // The old cursor file is untouched; a leftover temporary file is removed on the next open.
        let _ = fs.remove_file(&temp);
        return Err(WalError::io("write a cursor or seal file")(error));
    }
    fs.rename(&temp, &path)
        .map_err(WalError::io("rename a cursor or seal file"))?;
    // If this sync fails the rename may or may not survive a crash; both files hold a valid value.
    fs.sync_dir(dir)
        .map_err(WalError::io("sync the directory of a cursor or seal file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_names_are_restricted_to_file_name_safe_characters() {
        let ok = |names: &[&str]| {
            validate_names(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).is_ok()
        };
        assert!(ok(&["persister", "dead_letters-2"]));
        assert!(!ok(&[""]));
        assert!(!ok(&["Upper"]));
        assert!(!ok(&["../escape"]));
        assert!(!ok(&["dot.tmp"]));
        assert!(!ok(&[&"x".repeat(CURSOR_NAME_BYTES_MAX + 1)]));
        assert!(!ok(&["twice", "twice"]));
    }
}
