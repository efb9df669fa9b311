//! The AWS backend set: SQS FIFO queues (each with a FIFO dead-letter queue), DynamoDB for
//! the store, the connection registry and presence, and one SQS queue per gateway node as
//! the relay. `parlor gateway --aws` (on ECS behind an ALB) runs the gateway, presence and
//! the notifier on it; the persister runs as a Lambda function (this binary, started as
//! `bootstrap`: see `lambda`) or as `parlor persister --aws` on ECS.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use parlor_aws::AwsOptions;
use parlor_aws::registry::DynamoRegistry;
use parlor_aws::relay::SqsRelay;
use parlor_aws::sqs::{SqsQueue, SqsQueueOptions};
use parlor_aws::store::DynamoStore;
use parlor_core::NodeId;
use parlor_core::blobs::BlobStore;
use parlor_core::ports::Queue;
use parlor_server::Deps;

use crate::embedded::QueueName;

pub mod lambda;
pub mod roles;

/// Whether this process was started as a Lambda function's `bootstrap`.
pub fn started_as_bootstrap() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| path.file_name().map(|name| name == "bootstrap"))
        .unwrap_or(false)
}

/// Where the AWS resources are. Flags or environment only (the task definition and the
/// Lambda's configuration set the environment).
#[derive(Args, Clone, Debug, Default)]
pub struct AwsSettings {
    /// Names every table and queue: `{prefix}users`, `{prefix}inbound.fifo`, …
    #[arg(
        long = "aws-prefix",
        env = "PARLOR_AWS_PREFIX",
        default_value = "parlor-"
    )]
    pub prefix: String,
    /// The region; by default the environment's (`AWS_REGION`).
    #[arg(long = "aws-region", env = "PARLOR_AWS_REGION")]
    pub region: Option<String>,
    /// One endpoint for every AWS service: an emulator's, such as ministack's.
    #[arg(long = "aws-endpoint", env = "PARLOR_AWS_ENDPOINT")]
    pub endpoint: Option<String>,
    /// DynamoDB's endpoint, when it is not `--aws-endpoint` (DynamoDB Local).
    #[arg(long = "aws-dynamodb-endpoint", env = "PARLOR_AWS_DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,
    /// Creates missing tables and queues (on an emulator). In AWS the CloudFormation
    /// template creates them, and Parlor's roles are not allowed to.
    #[arg(long = "aws-create", env = "PARLOR_AWS_CREATE")]
    pub create: bool,
    /// How long a received entry stays invisible to other consumers. A crashed persister's
    /// entries come back after it, and their conversations wait for them (FIFO groups), so
    /// it bounds how long a crash delays a conversation.
    #[arg(
        long = "aws-visibility-timeout-secs",
        env = "PARLOR_AWS_VISIBILITY_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub visibility_timeout_secs: u64,
}

impl AwsSettings {
    pub fn options(&self) -> AwsOptions {
        AwsOptions {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            dynamodb_endpoint: self.dynamodb_endpoint.clone(),
        }
    }

    fn queue_options(&self, name: QueueName, attempts_max: u32) -> SqsQueueOptions {
        let queue = match name {
            QueueName::Inbound => "inbound",
            QueueName::Notifications => "notifications",
        };
        SqsQueueOptions {
            name: format!("{}{queue}", self.prefix),
            visibility_timeout: Duration::from_secs(self.visibility_timeout_secs),
            attempts_max,
            create: self.create,
        }
    }
}

/// The queues and the store: what a persister needs.
pub struct AwsQueues {
    pub store: Arc<DynamoStore>,
    pub inbound: Arc<SqsQueue>,
    pub notifications: Arc<SqsQueue>,
}

impl AwsQueues {
    pub async fn connect(settings: &AwsSettings, attempts_max: u32) -> anyhow::Result<Self> {
        let options = settings.options();
        let sqs = options.sqs().await;
        let store = DynamoStore::open(options.dynamodb().await, &settings.prefix, settings.create)
            .await
            .context("cannot open the DynamoDB store")?;
        let open = |name| SqsQueue::open(sqs.clone(), settings.queue_options(name, attempts_max));
        let inbound = open(QueueName::Inbound)
            .await
            .context("cannot open the inbound queue")?;
        let notifications = open(QueueName::Notifications)
            .await
            .context("cannot open the notification queue")?;
        Ok(Self {
            store: Arc::new(store),
            inbound: Arc::new(inbound),
            notifications: Arc::new(notifications),
        })
    }

    pub fn queue(&self, name: QueueName) -> &Arc<SqsQueue> {
        match name {
            QueueName::Inbound => &self.inbound,
            QueueName::Notifications => &self.notifications,
        }
    }
}

/// Everything a gateway node needs: the queues and the store, its registry and relay.
pub struct Aws {
    pub queues: AwsQueues,
    registry: Arc<DynamoRegistry>,
    pub relay: Arc<SqsRelay>,
}

impl Aws {
    /// Connects, as `node` in the connection registry.
    pub async fn connect(
        settings: &AwsSettings,
        node: NodeId,
        attempts_max: u32,
    ) -> anyhow::Result<Self> {
        let queues = AwsQueues::connect(settings, attempts_max).await?;
        let options = settings.options();
        let dynamodb = options.dynamodb().await;
        let registry =
            DynamoRegistry::open(dynamodb.clone(), &settings.prefix, node, settings.create)
                .await
                .context("cannot open the connection registry")?;
        let relay = SqsRelay::open(options.sqs().await, dynamodb, &settings.prefix)
            .await
            .context("cannot open the relay")?;
        Ok(Self {
            queues,
            registry: Arc::new(registry),
            relay: Arc::new(relay),
        })
    }

    /// The ports of the roles, with `blobs` for the bytes of files.
    pub fn deps(&self, blobs: Arc<dyn BlobStore>) -> Deps {
        Deps {
            store: self.queues.store.clone(),
            inbound: self.queues.inbound.clone() as Arc<dyn Queue>,
            notifications: self.queues.notifications.clone() as Arc<dyn Queue>,
            registry: self.registry.clone(),
            presence: self.registry.clone(),
            relay: self.relay.clone(),
            // DynamoDB has no full-text index: the gateway answers `not_available`.
            search: None,
            blobs,
            // SQS FIFO orders per conversation: persisters (Lambdas) need no lease.
            inbound_lease: None,
        }
    }
}
