//! Metric names and the Prometheus recorder. Names live here so that dashboards have one
//! place to look.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// What renders `/metrics`; named here so that callers need no exporter crate of their own.
pub use metrics_exporter_prometheus::PrometheusHandle;

pub const CONNECTIONS: &str = "parlor_connections";
/// The `messages_*` counters count events of every kind (a message, an edit, a reaction…):
/// each travels the same path.
pub const MESSAGES_ACCEPTED: &str = "parlor_messages_accepted_total";
pub const MESSAGES_STORED: &str = "parlor_messages_stored_total";
pub const MESSAGES_DUPLICATE: &str = "parlor_messages_duplicate_total";
pub const MESSAGES_DELIVERED: &str = "parlor_messages_delivered_total";
pub const FILES_UPLOADED: &str = "parlor_files_uploaded_total";
pub const FILE_BYTES_UPLOADED: &str = "parlor_file_bytes_uploaded_total";
/// Changes accepted by the gateway that the store's rules refused when it came to store them
/// (the conversation changed in between); their senders get an error.
pub const CHANGES_REFUSED: &str = "parlor_changes_refused_total";
pub const DEAD_LETTERED: &str = "parlor_dead_lettered_total";
pub const SLOW_CONSUMERS: &str = "parlor_slow_consumer_disconnects_total";
pub const RATE_LIMITED: &str = "parlor_rate_limited_total";
/// State changes refused because a browser said they came from another site.
pub const CROSS_SITE_REFUSED: &str = "parlor_cross_site_refused_total";
/// Times the persister found the store down and held its batch until it answered.
pub const STORE_OUTAGES: &str = "parlor_store_outages_total";
/// Times a persister step (`step` label) found the disk full and held its batch until space
/// was freed.
pub const STORAGE_FULL: &str = "parlor_storage_full_total";
/// Batches the store refused because this persister's lease on the inbound queue had
/// lapsed or passed to another (it stopped consuming then).
pub const BATCHES_FENCED: &str = "parlor_batches_fenced_total";
/// Partitions of the inbound queue this persister holds now.
pub const PARTITIONS_HELD: &str = "parlor_inbound_partitions_held";
/// Persisters sharing the inbound queue, as this one last read them.
pub const PERSISTERS_LIVE: &str = "parlor_persisters_live";
pub const QUEUE_PENDING: &str = "parlor_queue_pending";
pub const QUEUE_IN_FLIGHT: &str = "parlor_queue_in_flight";
pub const QUEUE_DEAD: &str = "parlor_queue_dead_letters";
/// Send received → durable in the inbound queue.
pub const ACCEPT_SECONDS: &str = "parlor_accept_seconds";
/// Accepted → stored.
pub const STORE_SECONDS: &str = "parlor_store_seconds";
/// Accepted → handed to the connections of the members.
pub const DELIVERY_SECONDS: &str = "parlor_delivery_seconds";
pub const PERSIST_BATCH_MESSAGES: &str = "parlor_persist_batch_messages";

/// Installs the process-wide recorder (the `metrics` facade is global by design) and returns
/// the handle that renders `/metrics`. Call once, from the binary.
pub fn install() -> Result<PrometheusHandle, String> {
    let latency_buckets = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    let batch_buckets = [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency_buckets)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(PERSIST_BATCH_MESSAGES.into()),
                &batch_buckets,
            )
        })
        .map_err(|error| error.to_string())?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|error| error.to_string())?;
    Ok(handle)
}
