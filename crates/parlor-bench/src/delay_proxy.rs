//! `parlor-bench delay-proxy`: a TCP forwarder that holds every chunk for a fixed time in
//! each direction, to measure the cluster as if its roles, NATS and PostgreSQL were on
//! different machines (0.5 ms each way is a round trip within one availability zone). This
//! kernel has no netem, so the delay is made here.
//!
//! Each direction of each connection is a reader thread and a writer thread: the reader
//! stamps each chunk with when it is due, the writer sleeps until then and writes. Threads,
//! not tasks: tokio's timers have millisecond resolution, `std::thread::sleep` a few tens of
//! microseconds. Order is kept; the queue between them is bounded, so a slow peer slows
//! the sender instead of growing memory. For the few dozen connections of a cluster's roles.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

/// Chunks queued per direction before the reader waits.
const QUEUED_CHUNKS_MAX: usize = 256;
const CHUNK_BYTES: usize = 64 * 1024;

/// Forwards every connection to `listen` on to `target`, `delay` later each way, until the
/// process is stopped.
pub fn run(listen: &str, target: &str, delay: Duration) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    println!(
        "delay-proxy listening on {} → {target}, {} µs each way",
        listener.local_addr()?,
        delay.as_micros()
    );
    for client in listener.incoming() {
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                eprintln!("delay-proxy: accept failed: {error}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let server = match TcpStream::connect(target) {
            Ok(server) => server,
            Err(error) => {
                eprintln!("delay-proxy: cannot reach {target}: {error}");
                continue;
            }
        };
        for stream in [&client, &server] {
            let _ = stream.set_nodelay(true);
        }
        pipe(client.try_clone()?, server.try_clone()?, delay);
        pipe(server, client, delay);
    }
    Ok(())
}

/// Copies `from` to `to`, each chunk `delay` after it arrived.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (chunks, due): (SyncSender<(Instant, Vec<u8>)>, _) = sync_channel(QUEUED_CHUNKS_MAX);
    thread::spawn(move || {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks
                        .send((Instant::now() + delay, buffer[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping the sender ends the writer once it has written what is queued.
    });
    thread::spawn(move || {
        for (at, chunk) in due {
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_arrive_in_order_and_no_sooner_than_the_delay() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap().to_string();
        thread::spawn(move || {
            for stream in echo.incoming() {
                let mut stream = stream.unwrap();
                thread::spawn(move || {
                    let mut copy = stream.try_clone().unwrap();
                    std::io::copy(&mut stream, &mut copy).unwrap();
                });
            }
        });
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap().to_string();
        drop(probe);
        let delay = Duration::from_millis(20);
        {
            let (listen, target) = (listen.clone(), target.clone());
            thread::spawn(move || run(&listen, &target, delay).unwrap());
        }
        let mut client = loop {
            match TcpStream::connect(&listen) {
                Ok(client) => break client,
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        };
        let sent: Vec<u8> = (0..200_000u32).map(|n| (n % 251) as u8).collect();
        let started = Instant::now();
        let mut writer = client.try_clone().unwrap();
        let to_send = sent.clone();
        thread::spawn(move || writer.write_all(&to_send).unwrap());
        let mut received = vec![0u8; sent.len()];
        client.read_exact(&mut received).unwrap();
        assert_eq!(received, sent, "every byte, in order");
        assert!(
            started.elapsed() >= 2 * delay,
            "a round trip takes at least twice the delay: {:?}",
            started.elapsed()
        );
    }
}
