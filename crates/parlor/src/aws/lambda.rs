//! The persister as an AWS Lambda function (`provided.al2023`): this binary, named
//! `bootstrap` in the function's package, started by the Lambda runtime. The event source
//! mapping hands it batches of the inbound FIFO queue; each batch is stored and announced by
//! `persister::persist_batch`, and the failures are reported back (`ReportBatchItemFailures`):
//! the Lambda service deletes the rest, and the failed entries come back after the queue's
//! visibility timeout, until its receive count moves them to the dead-letter queue.
//! Entries that can never be stored go to the dead-letter queue at once, with why.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{LambdaEvent, service_fn};
use parlor_core::ports::{Delivery, DeliveryId};
use parlor_server::persister;

use crate::aws::{AwsQueues, AwsSettings};

/// The function's settings: its environment only (`PARLOR_AWS_PREFIX`, …).
#[derive(clap::Parser)]
struct FunctionEnvironment {
    #[command(flatten)]
    aws: AwsSettings,
    /// Deliveries before an entry is dead-lettered: the queues' maxReceiveCount.
    #[arg(long, env = "PARLOR_ATTEMPTS_MAX")]
    attempts_max: Option<u32>,
}

/// Serves invocations until the runtime stops the process, configured by the environment.
pub async fn run_from_environment() -> anyhow::Result<()> {
    use clap::Parser;
    let environment = FunctionEnvironment::try_parse_from(["bootstrap"])?;
    let attempts_max = environment
        .attempts_max
        .unwrap_or(parlor_server::config::ConsumerConfig::default().attempts_max);
    run(environment.aws, attempts_max).await
}

/// Serves invocations until the runtime stops the process.
pub async fn run(settings: AwsSettings, attempts_max: u32) -> anyhow::Result<()> {
    let queues = Arc::new(AwsQueues::connect(&settings, attempts_max).await?);
    tracing::info!(
        prefix = %settings.prefix,
        endpoint = ?settings.endpoint,
        dynamodb_endpoint = ?settings.dynamodb_endpoint,
        "the Lambda persister is ready"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let queues = Arc::clone(&queues);
        async move { Ok::<_, lambda_runtime::Error>(handle(&queues, event.payload).await) }
    }))
    .await
    .map_err(|error| anyhow::anyhow!("the Lambda runtime failed: {error}"))
}

/// One invocation: which records failed.
async fn handle(queues: &AwsQueues, event: SqsEvent) -> SqsBatchResponse {
    let mut failed: Vec<&SqsMessage> = Vec::new();
    let mut deliveries = Vec::with_capacity(event.records.len());
    let mut records = Vec::with_capacity(event.records.len());
    for record in &event.records {
        let payload = record
            .body
            .as_deref()
            .and_then(parlor_aws::sqs::decode_body);
        let attempts = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|count| count.parse().ok())
            .unwrap_or(1);
        let id = DeliveryId(records.len() as u64);
        records.push(record);
        // A body that is not ours is a payload nobody can read: it is dead-lettered as it
        // is, by the decoder's refusal below.
        deliveries.push(Delivery {
            id,
            payload: payload
                .unwrap_or_else(|| record.body.clone().unwrap_or_default().into_bytes()),
            attempts,
        });
    }
    let outcome = persister::persist_batch(
        queues.store.as_ref(),
        queues.notifications.as_ref(),
        &deliveries,
    )
    .await;
    for id in &outcome.failed {
        failed.push(records[id.0 as usize]);
    }
    for (id, reason) in &outcome.dead_letters {
        let record = records[id.0 as usize];
        let delivery = &deliveries[id.0 as usize];
        let group = record
            .attributes
            .get("MessageGroupId")
            .map(String::as_str)
            .unwrap_or("");
        if let Err(error) = queues
            .inbound
            .dead_letter_message(group, &delivery.payload, reason, delivery.attempts)
            .await
        {
            // Not dead-lettered: it comes back, and its receive count moves it there.
            tracing::warn!(%error, "cannot dead-letter an entry");
            failed.push(record);
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failed
        .into_iter()
        .filter_map(|record| record.message_id.clone())
        .map(|message_id| {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = message_id;
            failure
        })
        .collect();
    response
}
