//! The seal: `dir/END`, written by the writer thread when the log is closed cleanly, holding the
//! offset the log ends at (in the format of a cursor file, magic `PEND`). It is what lets `open`
//! tell a log that was cut from one that simply ended: without it, the last segment cut exactly
//! between two groups looks like a log that ended there. After a crash there is no seal, and a
//! torn tail is cut as usual; `open` removes the seal before anything new is appended.

use std::path::Path;

use crate::WalError;
use crate::cursor::{TEMP_SUFFIX, read_value, store_value};
use crate::fs::FileSystem;

const SEAL_FILE: &str = "END";
const SEAL_MAGIC: [u8; 4] = *b"PEND";

/// The end offset the log was closed at, if it was closed cleanly.
pub(crate) fn read(fs: &dyn FileSystem, dir: &Path) -> Result<Option<u64>, WalError> {
    read_value(fs, &dir.join(SEAL_FILE), SEAL_MAGIC)
}

/// Records that the log ends at `end`, durably. Called by the writer as it stops.
pub(crate) fn write(fs: &dyn FileSystem, dir: &Path, end: u64) -> Result<(), WalError> {
    store_value(fs, dir, SEAL_FILE, SEAL_MAGIC, end)
}

/// Removes the seal (and a temporary file of an interrupted one), durably, before the log
/// changes: a crash from then on must not find a seal that no longer holds.
pub(crate) fn remove(fs: &dyn FileSystem, dir: &Path) -> Result<(), WalError> {
    let names = fs
        .list(dir)
        .map_err(WalError::io("list the log directory"))?;
    let temp = format!("{SEAL_FILE}{TEMP_SUFFIX}");
    let mut removed = false;
    for name in names
        .iter()
        .filter(|name| **name == SEAL_FILE || **name == temp)
    {
        fs.remove_file(&dir.join(name))
            .map_err(WalError::io("remove the seal"))?;
        removed = true;
    }
    if removed {
        fs.sync_dir(dir)
            .map_err(WalError::io("sync the log directory"))?;
    }
    Ok(())
}

/// The error for a sealed log that no longer ends where it was closed.
pub(crate) fn broken(dir: &Path, sealed_end: u64, found: String) -> WalError {
    WalError::corrupt(
        dir.join(SEAL_FILE),
        0,
        format!("the log was closed cleanly at offset {sealed_end}, but {found}"),
    )
}
