//! Finding the queue and its DLQ: created with their redrive policy (tests, the emulator),
//! or looked up as the CloudFormation template made them (production).

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use parlor_core::BackendError;

use super::SqsQueueOptions;
use super::error::{CALL_TIMEOUT, sqs_error, timed};

/// Dead letters wait for an operator: SQS's longest retention, 14 days.
const DEAD_RETENTION_SECS: u32 = 14 * 24 * 60 * 60;
/// SQS accepts a maxReceiveCount of 1 to 1000.
const RECEIVE_COUNT_MAX: u32 = 1000;

pub struct Queues {
    pub url: String,
    pub dead_url: String,
    pub max_receive_count: u32,
}

fn queue_names(options: &SqsQueueOptions) -> (String, String) {
    (
        format!("{}.fifo", options.name),
        format!("{}-dlq.fifo", options.name),
    )
}

/// Creates both queues if missing (CreateQueue returns an existing queue of the same
/// attributes) and sets the redrive policy and visibility on the queue, so a reopen with
/// other options applies them.
pub async fn create(
    client: &Client,
    options: &SqsQueueOptions,
    visibility_secs: u64,
) -> Result<Queues, BackendError> {
    let (name, dead_name) = queue_names(options);
    let dead_url = create_fifo(client, &dead_name, Some(DEAD_RETENTION_SECS)).await?;
    let dead_arn = attribute(client, &dead_url, QueueAttributeName::QueueArn)
        .await?
        .ok_or_else(|| BackendError::unavailable(format!("{dead_name} has no ARN")))?;
    let url = create_fifo(client, &name, None).await?;
    let max_receive_count = options.attempts_max.clamp(1, RECEIVE_COUNT_MAX);
    let policy = serde_json::json!({
        "deadLetterTargetArn": dead_arn,
        "maxReceiveCount": max_receive_count,
    })
    .to_string();
    timed(CALL_TIMEOUT, "set the redrive policy", async {
        client
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::RedrivePolicy, policy)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility_secs.to_string(),
            )
            .send()
            .await
            .map_err(|error| sqs_error("set the redrive policy", error))
    })
    .await?;
    Ok(Queues {
        url,
        dead_url,
        max_receive_count,
    })
}

/// Looks both queues up and reads the redrive policy; refuses a queue without one (entries
/// that keep failing would never leave it).
pub async fn look_up(client: &Client, options: &SqsQueueOptions) -> Result<Queues, BackendError> {
    let (name, dead_name) = queue_names(options);
    let url = queue_url(client, &name).await?;
    let dead_url = queue_url(client, &dead_name).await?;
    let policy = attribute(client, &url, QueueAttributeName::RedrivePolicy)
        .await?
        .ok_or_else(|| {
            BackendError::rejected(format!(
                "{name} has no redrive policy: entries that keep failing would never reach \
                 {dead_name}"
            ))
        })?;
    let policy: serde_json::Value = serde_json::from_str(&policy).map_err(|error| {
        BackendError::rejected(format!("{name}'s redrive policy is not JSON: {error}"))
    })?;
    let target = policy["deadLetterTargetArn"].as_str().unwrap_or_default();
    if !target.ends_with(&format!(":{dead_name}")) {
        tracing::warn!(
            queue = %name,
            target,
            "the redrive policy sends dead letters elsewhere than {dead_name}, \
             which `dlq` lists and redrives"
        );
    }
    // SQS writes the count as a number or as a string of one.
    let max_receive_count = policy["maxReceiveCount"]
        .as_u64()
        .or_else(|| policy["maxReceiveCount"].as_str()?.parse().ok())
        .unwrap_or(u64::from(options.attempts_max)) as u32;
    if max_receive_count != options.attempts_max {
        tracing::warn!(
            queue = %name,
            max_receive_count,
            attempts_max = options.attempts_max,
            "the queue's maxReceiveCount differs from the configured attempts; the queue's applies"
        );
    }
    Ok(Queues {
        url,
        dead_url,
        max_receive_count,
    })
}

/// High-throughput FIFO: deduplication and throughput per message group (per conversation).
async fn create_fifo(
    client: &Client,
    name: &str,
    retention_secs: Option<u32>,
) -> Result<String, BackendError> {
    let mut request = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
        .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId");
    if let Some(retention_secs) = retention_secs {
        request = request.attributes(
            QueueAttributeName::MessageRetentionPeriod,
            retention_secs.to_string(),
        );
    }
    let output = timed(CALL_TIMEOUT, "create a queue", async {
        request
            .send()
            .await
            .map_err(|error| sqs_error(&format!("create {name}"), error))
    })
    .await?;
    output
        .queue_url()
        .map(str::to_owned)
        .ok_or_else(|| BackendError::unavailable(format!("SQS created {name} without a URL")))
}

async fn queue_url(client: &Client, name: &str) -> Result<String, BackendError> {
    let output = timed(CALL_TIMEOUT, "look up a queue", async {
        client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|error| sqs_error(&format!("look up {name}"), error))
    })
    .await?;
    output
        .queue_url()
        .map(str::to_owned)
        .ok_or_else(|| BackendError::unavailable(format!("SQS has no URL for {name}")))
}

async fn attribute(
    client: &Client,
    url: &str,
    name: QueueAttributeName,
) -> Result<Option<String>, BackendError> {
    let output = timed(CALL_TIMEOUT, "read a queue attribute", async {
        client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(name.clone())
            .send()
            .await
            .map_err(|error| sqs_error("read a queue attribute", error))
    })
    .await?;
    Ok(output.attributes().and_then(|all| all.get(&name)).cloned())
}
