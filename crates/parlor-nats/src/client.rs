//! The connection to NATS that every part of a process shares.

use std::time::Duration;

use parlor_core::BackendError;

/// How often the client pings its server. A server cut off by the network sends nothing and
/// closes nothing: the client only notices when two pings go unanswered, so this bounds how
/// long a partitioned server keeps the process (~3 intervals) before it moves to another.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// Connects to the first server of `servers` that answers (NATS URLs, comma-separated, as
/// `nats://10.0.0.1:4222,nats://10.0.0.2:4222`); when the connection breaks the client moves
/// to another one of them or of the servers the cluster announces, and keeps trying forever.
pub async fn connect(servers: &str) -> Result<async_nats::Client, BackendError> {
    let urls = server_urls(servers);
    if urls.is_empty() {
        return Err(BackendError::unavailable("no NATS server named"));
    }
    async_nats::ConnectOptions::new()
        .name("parlor")
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(PING_INTERVAL)
        .connect(urls)
        .await
        .map_err(|error| {
            BackendError::unavailable(format!("cannot connect to NATS at {servers}: {error}"))
                .with_source(error)
        })
}

/// The URLs of a comma-separated list, trimmed, empty ones dropped.
fn server_urls(servers: &str) -> Vec<&str> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_servers_is_split_on_commas() {
        assert_eq!(
            server_urls("nats://a:4222, nats://b:4222,,nats://c:4222 "),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(server_urls("nats://a:4222"), ["nats://a:4222"]);
        assert!(server_urls(" , ").is_empty());
    }
}
