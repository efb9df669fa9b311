//! Measures group commit: 8 threads each doing 1000 blocking appends of one 200-byte record.
//!
//! `cargo run -p parlor-wal --release --example append_throughput [dir]` (default: a temporary
//! directory, which must be on the disk you care about; tmpfs makes fsync free).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use parlor_wal::{Wal, WalOptions};

const THREADS: usize = 8;
const APPENDS_PER_THREAD: usize = 1000;
const RECORD_BYTES: usize = 200;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_owned());
    // Counts fsyncs (files and directories) to show how many appends each one covered.
    let syncs = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&syncs);
    let hook: parlor_wal::SyncHook = Arc::new(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let (wal, _) = Wal::open_with_sync_hook(&dir.join("bench-wal"), WalOptions::default(), hook)?;
    let syncs_before = syncs.load(Ordering::Relaxed);
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let wal = wal.clone();
            thread::spawn(move || {
                for _ in 0..APPENDS_PER_THREAD {
                    wal.append(vec![vec![0x5a; RECORD_BYTES]]).expect("append");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("appender thread");
    }
    let elapsed = started.elapsed();
    let appends = (THREADS * APPENDS_PER_THREAD) as f64;
    let fsyncs = syncs.load(Ordering::Relaxed) - syncs_before;
    println!(
        "{appends} appends of {RECORD_BYTES} bytes from {THREADS} threads in {:.3} s: {:.0} appends/s, {fsyncs} fsyncs ({:.1} appends per fsync)",
        elapsed.as_secs_f64(),
        appends / elapsed.as_secs_f64(),
        appends / fsyncs as f64,
    );
    wal.close();
    Ok(())
}
