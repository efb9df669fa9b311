//! A simulated disk that loses power, for the log's crash tests.
//!
//! [`SimFs`] keeps two states of every file and directory: what is there now, and what a power
//! loss would keep for sure (what the last `sync_data` or `sync_dir` made durable), with the
//! changes made since, in order. [`SimFs::after_power_loss`] makes the disk a power loss leaves,
//! from a seed:
//!
//! - each write not yet synced is dropped, kept, or torn (each of its 512-byte sectors kept or
//!   not: half of them), and the kept ones land in any order (a later write may land and an earlier one not;
//!   the gap reads as zeros); so does each unsynced change of length;
//! - each directory keeps its unsynced changes (creations, removals, renames) up to some point,
//!   in order, as a journaling file system does; a file whose entry is lost is gone.
//!
//! [`SimFs::cut_power_after`] picks the moment: the operation that reaches it and every one after
//! fails, as if the process had died there. [`SimFs::fail_syncs`] makes every sync fail, to
//! check that the log stops acknowledging.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::fs::{FileSystem, OpenMode, WalFile};

/// Sector size of the simulated disk: the unit a torn write keeps or loses.
pub const SECTOR_BYTES: u64 = 512;

/// The simulated disk. Cheap to clone: clones share the disk.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    /// While true, file syncs wait (see [`SimFs::hold_file_syncs`]).
    syncs_held: Arc<(Mutex<bool>, Condvar)>,
}

#[derive(Default)]
struct State {
    /// Every directory but the root, which always exists.
    dirs: BTreeMap<PathBuf, Dir>,
    root: Dir,
    locks: BTreeSet<PathBuf>,
    /// Operations that change the disk, so far.
    operations: u64,
    /// The operation count at which power is lost.
    power_cut_at: Option<u64>,
    powered_off: bool,
    fail_syncs: bool,
    /// Bytes returned by reads so far.
    bytes_read: u64,
}

#[derive(Clone, Default)]
struct Dir {
    entries: BTreeMap<String, Node>,
    durable: BTreeMap<String, Node>,
    /// Changes of `entries` since `durable`, oldest first.
    changes: Vec<Change>,
}

#[derive(Clone)]
enum Node {
    File(Arc<SimFile>),
    Dir,
}

#[derive(Clone)]
enum Change {
    Insert(String, Node),
    Remove(String),
    Rename { from: String, to: String },
}

#[derive(Default)]
struct SimFile {
    data: Mutex<FileData>,
}

#[derive(Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since `durable`, oldest first.
    unsynced: Vec<Write>,
    /// One past the furthest byte any read has returned.
    read_end: u64,
}

#[derive(Clone)]
enum Write {
    Bytes { at: u64, bytes: Vec<u8> },
    SetLen(u64),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn power_lost() -> io::Error {
    io::Error::other("the simulated disk lost power")
}

/// When power went, for an operation that fails for it.
enum Cut {
    /// During this operation.
    During,
    /// Before it.
    Before,
}

impl From<Cut> for io::Error {
    fn from(_: Cut) -> io::Error {
        power_lost()
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl SimFs {
    /// An empty disk.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Operations that changed the disk so far (writes, length changes, syncs, directory changes).
    pub fn operations(&self) -> u64 {
        lock(&self.state).operations
    }

    /// Loses power at the `n`th disk-changing operation from now (1 = the next one): it and every
    /// operation after it fail.
    pub fn cut_power_after(&self, n: u64) {
        let mut state = lock(&self.state);
        state.power_cut_at = Some(state.operations + n.max(1));
    }

    /// Bytes returned by reads so far, to check how much the log reads.
    pub fn bytes_read(&self) -> u64 {
        lock(&self.state).bytes_read
    }

    /// While `hold` is true, every `sync_data` waits before it syncs: a test can look at the
    /// disk while a write is on it and not yet durable.
    pub fn hold_file_syncs(&self, hold: bool) {
        let (held, changed) = &*self.syncs_held;
        *lock(held) = hold;
        changed.notify_all();
    }

    /// One past the furthest byte of the file at `path` that any read has returned.
    pub fn read_end(&self, path: &Path) -> io::Result<u64> {
        match lock(&self.state).entry(path)? {
            Node::File(file) => Ok(lock(&file.data).read_end),
            Node::Dir => Err(io::Error::other("a directory")),
        }
    }

    /// Whether power has been lost.
    pub fn is_powered_off(&self) -> bool {
        lock(&self.state).powered_off
    }

    /// While set, every `sync_data` and `sync_dir` fails with an IO error and makes nothing
    /// durable.
    pub fn fail_syncs(&self, fail: bool) {
        lock(&self.state).fail_syncs = fail;
    }

    /// The disk a power loss leaves now, chosen by `seed` (see the module's documentation). This
    /// disk is left as it is.
    pub fn after_power_loss(&self, seed: u64) -> SimFs {
        let state = lock(&self.state);
        let mut rng = Rng(seed);
        let mut files: HashMap<*const SimFile, Arc<SimFile>> = HashMap::new();
        let mut crashed = State {
            root: crash_dir(&state.root, &mut rng, &mut files),
            ..State::default()
        };
        // Parents before children: a directory survives if its entry in its parent did.
        for (path, dir) in &state.dirs {
            let parent = path.parent().unwrap_or(Path::new("/"));
            let entry_kept = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| {
                    crashed
                        .dir(parent)
                        .is_some_and(|parent| matches!(parent.entries.get(name), Some(Node::Dir)))
                });
            if entry_kept {
                let kept = crash_dir(dir, &mut rng, &mut files);
                crashed.dirs.insert(path.clone(), kept);
            }
        }
        SimFs {
            state: Arc::new(Mutex::new(crashed)),
            syncs_held: Arc::default(),
        }
    }

    /// The bytes of the file at `path` now, for tests that damage or inspect files.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        let state = lock(&self.state);
        match state.entry(path)? {
            Node::File(file) => Ok(lock(&file.data).current.clone()),
            Node::Dir => Err(io::Error::other("a directory")),
        }
    }

    /// Replaces the bytes of the file at `path`, durably: damage at rest, for corruption tests.
    pub fn replace_file(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let state = lock(&self.state);
        match state.entry(path)? {
            Node::File(file) => {
                let mut data = lock(&file.data);
                data.current = bytes.clone();
                data.durable = bytes;
                data.unsynced.clear();
                Ok(())
            }
            Node::Dir => Err(io::Error::other("a directory")),
        }
    }

    /// Counts a disk-changing operation, failing it once power is lost.
    fn operate(&self) -> Result<MutexGuard<'_, State>, Cut> {
        let mut state = lock(&self.state);
        if state.powered_off {
            return Err(Cut::Before);
        }
        state.operations += 1;
        if state.power_cut_at.is_some_and(|at| state.operations >= at) {
            state.powered_off = true;
            return Err(Cut::During);
        }
        Ok(state)
    }

    /// [`SimFs::operate`] for a write: one under way when power goes may land in part, so it
    /// counts as unsynced.
    fn write(&self, file: &SimFile, write: Write) -> io::Result<()> {
        match self.operate() {
            Ok(state) => drop(state),
            Err(Cut::During) => {
                record(file, write);
                return Err(power_lost());
            }
            Err(Cut::Before) => return Err(power_lost()),
        }
        record(file, write);
        Ok(())
    }

    fn read(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = lock(&self.state);
        state.check_power()?;
        Ok(state)
    }
}

/// A directory after a power loss: its durable entries and its changes up to a random point.
fn crash_dir(dir: &Dir, rng: &mut Rng, files: &mut HashMap<*const SimFile, Arc<SimFile>>) -> Dir {
    let mut entries = dir.durable.clone();
    let kept = rng.below(dir.changes.len() as u64 + 1) as usize;
    for change in &dir.changes[..kept] {
        apply_change(&mut entries, change.clone());
    }
    let entries: BTreeMap<String, Node> = entries
        .into_iter()
        .map(|(name, node)| {
            let node = match node {
                Node::File(file) => Node::File(Arc::clone(
                    files
                        .entry(Arc::as_ptr(&file))
                        .or_insert_with(|| Arc::new(crash_file(&file, rng))),
                )),
                Node::Dir => Node::Dir,
            };
            (name, node)
        })
        .collect();
    Dir {
        durable: entries.clone(),
        entries,
        changes: Vec::new(),
    }
}

/// A file after a power loss: its durable bytes with each unsynced write dropped, kept or torn,
/// in a random order.
fn crash_file(file: &SimFile, rng: &mut Rng) -> SimFile {
    let data = lock(&file.data);
    let mut bytes = data.durable.clone();
    let mut writes = data.unsynced.clone();
    // Half the time in order (the common case), half the time shuffled.
    if rng.below(2) == 0 {
        for i in (1..writes.len()).rev() {
            writes.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    for write in writes {
        // A quarter dropped, a quarter kept, half torn: the torn ones are what recovery is for.
        match (rng.below(4), write) {
            (0, _) => {}
            (1, Write::Bytes { at, bytes: written }) => write_into(&mut bytes, at, &written),
            (_, Write::Bytes { at, bytes: written }) => {
                let end = at + written.len() as u64;
                let mut sector_start = at;
                while sector_start < end {
                    let sector_end = ((sector_start / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
                    if rng.below(2) == 0 {
                        let from = (sector_start - at) as usize;
                        let to = (sector_end - at) as usize;
                        write_into(&mut bytes, sector_start, &written[from..to]);
                    }
                    sector_start = sector_end;
                }
            }
            (_, Write::SetLen(len)) => bytes.resize(len as usize, 0),
        }
    }
    SimFile {
        data: Mutex::new(FileData {
            current: bytes.clone(),
            durable: bytes,
            unsynced: Vec::new(),
            read_end: 0,
        }),
    }
}

fn write_into(file: &mut Vec<u8>, at: u64, bytes: &[u8]) {
    let at = at as usize;
    if file.len() < at + bytes.len() {
        file.resize(at + bytes.len(), 0);
    }
    file[at..at + bytes.len()].copy_from_slice(bytes);
}

fn apply_change(entries: &mut BTreeMap<String, Node>, change: Change) {
    match change {
        Change::Insert(name, node) => {
            entries.insert(name, node);
        }
        Change::Remove(name) => {
            entries.remove(&name);
        }
        Change::Rename { from, to } => {
            if let Some(node) = entries.remove(&from) {
                entries.insert(to, node);
            }
        }
    }
}

impl State {
    fn check_power(&self) -> io::Result<()> {
        if self.powered_off {
            return Err(power_lost());
        }
        Ok(())
    }

    fn dir(&self, path: &Path) -> Option<&Dir> {
        if path == Path::new("/") || path.as_os_str().is_empty() {
            return Some(&self.root);
        }
        self.dirs.get(path)
    }

    fn dir_mut(&mut self, path: &Path) -> io::Result<&mut Dir> {
        if path == Path::new("/") || path.as_os_str().is_empty() {
            return Ok(&mut self.root);
        }
        self.dirs.get_mut(path).ok_or_else(|| not_found(path))
    }

    /// The parent directory of `path` and the entry's name in it.
    fn split(path: &Path) -> io::Result<(PathBuf, String)> {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        Ok((parent.to_owned(), name.to_owned()))
    }

    fn entry(&self, path: &Path) -> io::Result<Node> {
        let (parent, name) = State::split(path)?;
        self.dir(&parent)
            .and_then(|dir| dir.entries.get(&name))
            .cloned()
            .ok_or_else(|| not_found(path))
    }

    fn change(&mut self, dir: &Path, change: Change) -> io::Result<()> {
        let dir = self.dir_mut(dir)?;
        apply_change(&mut dir.entries, change.clone());
        dir.changes.push(change);
        Ok(())
    }
}

impl FileSystem for SimFs {
    fn create_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.operate()?;
        if state.dir(dir).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", dir.display()),
            ));
        }
        let (parent, name) = State::split(dir)?;
        state.change(&parent, Change::Insert(name, Node::Dir))?;
        state.dirs.insert(dir.to_owned(), Dir::default());
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        lock(&self.state).dir(path).is_some()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.read()?;
        let dir = state.dir(dir).ok_or_else(|| not_found(dir))?;
        Ok(dir.entries.keys().cloned().collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn WalFile>> {
        let existing = self.read()?.entry(path);
        let file = match (mode, existing) {
            (OpenMode::Read | OpenMode::ReadWrite, Ok(Node::File(file))) => file,
            (OpenMode::CreateTruncate, Ok(Node::File(file))) => {
                self.write(&file, Write::SetLen(0))?;
                file
            }
            (_, Ok(Node::Dir)) => return Err(io::Error::other("a directory")),
            (OpenMode::CreateNew, Ok(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ));
            }
            (OpenMode::Read | OpenMode::ReadWrite, Err(error)) => return Err(error),
            (OpenMode::CreateNew | OpenMode::CreateTruncate, Err(_)) => {
                let mut state = self.operate()?;
                let file = Arc::new(SimFile::default());
                let (parent, name) = State::split(path)?;
                state.change(&parent, Change::Insert(name, Node::File(Arc::clone(&file))))?;
                file
            }
        };
        Ok(Box::new(SimHandle {
            fs: self.clone(),
            file,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.operate()?;
        match state.entry(path)? {
            Node::File(_) => {
                let (parent, name) = State::split(path)?;
                state.change(&parent, Change::Remove(name))
            }
            Node::Dir => Err(io::Error::other("a directory")),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.operate()?;
        state.entry(from)?;
        let (parent, from_name) = State::split(from)?;
        let (to_parent, to_name) = State::split(to)?;
        if parent != to_parent {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "renames across directories are not simulated",
            ));
        }
        state.change(
            &parent,
            Change::Rename {
                from: from_name,
                to: to_name,
            },
        )
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.operate()?;
        if state.fail_syncs {
            return Err(io::Error::other("injected sync failure"));
        }
        let dir = state.dir_mut(dir)?;
        dir.durable = dir.entries.clone();
        dir.changes.clear();
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Send + Sync>> {
        drop(
            self.open(path, OpenMode::ReadWrite)
                .or_else(|_| self.open(path, OpenMode::CreateNew))?,
        );
        let mut state = self.read()?;
        if !state.locks.insert(path.to_owned()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "another open wal holds it",
            ));
        }
        Ok(Box::new(LockGuard {
            fs: self.clone(),
            path: path.to_owned(),
        }))
    }
}

struct LockGuard {
    fs: SimFs,
    path: PathBuf,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        lock(&self.fs.state).locks.remove(&self.path);
    }
}

struct SimHandle {
    fs: SimFs,
    file: Arc<SimFile>,
}

fn record(file: &SimFile, write: Write) {
    let mut data = lock(&file.data);
    match &write {
        Write::Bytes { at, bytes } => write_into(&mut data.current, *at, bytes),
        Write::SetLen(len) => data.current.resize(*len as usize, 0),
    }
    data.unsynced.push(write);
}

impl WalFile for SimHandle {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        let mut state = self.fs.read()?;
        let mut data = lock(&self.file.data);
        let Some(available) = data.current.get(position as usize..) else {
            return Ok(0);
        };
        let read = buf.len().min(available.len());
        buf[..read].copy_from_slice(&available[..read]);
        state.bytes_read += read as u64;
        data.read_end = data.read_end.max(position + read as u64);
        Ok(read)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.fs.write(
            &self.file,
            Write::Bytes {
                at: position,
                bytes: buf.to_vec(),
            },
        )
    }

    fn byte_len(&self) -> io::Result<u64> {
        drop(self.fs.read()?);
        Ok(lock(&self.file.data).current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.write(&self.file, Write::SetLen(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        let (held, changed) = &*self.fs.syncs_held;
        let mut hold = lock(held);
        while *hold {
            hold = changed.wait(hold).unwrap_or_else(PoisonError::into_inner);
        }
        drop(hold);
        let state = self.fs.operate()?;
        if state.fail_syncs {
            return Err(io::Error::other("injected sync failure"));
        }
        let mut data = lock(&self.file.data);
        data.durable = data.current.clone();
        data.unsynced.clear();
        Ok(())
    }
}

/// SplitMix64: small, seedable, and good enough to pick crash outcomes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}
