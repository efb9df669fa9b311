//! The processes of the AWS deployment that are not the Lambda: `parlor gateway --aws` and
//! `parlor persister --aws`.

use anyhow::bail;
use parlor_core::NodeId;
use parlor_server::janitor;
use parlor_server::{notifier, persister, presence};

use super::{Aws, AwsSettings};
use crate::blobs::BlobSettings;

/// The most entries a persister or notifier takes from SQS at once (ten receive calls). A
/// batch must be done within the visibility timeout: past it, SQS hands the same
/// conversation's entries to another consumer while the first still works on them, and a
/// conversation's frames could reach its members twice and out of order. Larger batches buy
/// little here anyway: a FIFO group hands out nothing more while part of it is in flight.
const SQS_BATCH_MAX: usize = 100;

/// `config` with batches that fit the visibility timeout.
fn for_sqs(mut config: ServeConfig) -> ServeConfig {
    config.persister.batch_max = config.persister.batch_max.min(SQS_BATCH_MAX);
    config.notifier.batch_max = config.notifier.batch_max.min(SQS_BATCH_MAX);
    config
}
use crate::config::ServeConfig;
use crate::supervise::Supervisor;
use crate::{announce, bind, gateway_role, ops_router};

/// The gateway (HTTP and WebSocket), presence, and the notifier: notifications from their
/// FIFO queue to the node queues of the gateways that hold each recipient. Run as an ECS
/// service behind an ALB. SIGTERM drains: sockets close with a close frame, so clients
/// reconnect to another task, and this node's relay queue is deleted.
pub async fn gateway(
    config: ServeConfig,
    settings: AwsSettings,
    blobs: BlobSettings,
) -> anyhow::Result<()> {
    let mut config = for_sqs(config);
    let node = config.gateway.node;
    config.gateway.files.staging_dir = blobs.staging_dir(node)?;
    let backends = Aws::connect(&settings, node, config.persister.attempts_max).await?;
    let deps = backends.deps(blobs.open().await?);
    let metrics = parlor_server::metrics::install().map_err(anyhow::Error::msg)?;
    let (listener, address) = bind(&config).await?;
    let mut roles = Supervisor::new();
    let shutdown = roles.shutdown();
    gateway_role(&mut roles, &deps, &config, listener, metrics);
    roles.infallible_role("presence", presence::run(deps.clone(), shutdown.clone()));
    // The gateways keep the files tidy: the Lambda persister runs only while there is work.
    roles.infallible_role(
        "janitor",
        janitor::run(deps.clone(), config.janitor.clone(), shutdown.clone()),
    );
    roles.role(
        "notifier",
        notifier::run(deps, config.notifier.clone(), shutdown),
    );
    tracing::info!(%address, %node, "parlor gateway is serving on AWS");
    announce(address);

    let failure = roles.run().await;
    if let Err(error) = backends.relay.close(node).await {
        tracing::warn!(%error, "cannot delete this node's relay queue: the next reaper will");
    }
    match failure {
        None => Ok(()),
        Some(failure) => bail!("{failure}"),
    }
}

/// The persister on ECS instead of Lambda, for steady load: any number of them consume the
/// inbound FIFO queue together (each conversation is one message group, so its order holds
/// whoever stores it). `--listen` serves health and metrics only.
pub async fn persister(
    config: ServeConfig,
    settings: AwsSettings,
    blobs: BlobSettings,
) -> anyhow::Result<()> {
    let config = for_sqs(config);
    let backends = Aws::connect(&settings, NodeId::new(), config.persister.attempts_max).await?;
    let deps = backends.deps(blobs.open().await?);
    let metrics = parlor_server::metrics::install().map_err(anyhow::Error::msg)?;
    let (listener, address) = bind(&config).await?;
    let mut roles = Supervisor::new();
    let shutdown = roles.shutdown();
    roles.role(
        "persister",
        persister::run(deps, config.persister.clone(), shutdown.clone()),
    );
    roles.infallible_role(
        "ops listener",
        parlor_server::listen::serve(
            listener,
            ops_router(metrics, shutdown.clone()),
            config.gateway.listener.clone(),
            shutdown.wait(),
        ),
    );
    tracing::info!(%address, "parlor persister is running on AWS");
    announce(address);
    match roles.run().await {
        None => Ok(()),
        Some(failure) => bail!("{failure}; unacknowledged entries are redelivered"),
    }
}
