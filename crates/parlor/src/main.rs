//! `parlor`: the binary. It alone reads flags, environment and files, picks the backends,
//! and wires the roles of `parlor-server` to them. No business logic lives here.

mod assets;
#[cfg(feature = "aws")]
mod aws;
mod blobs;
mod cluster;
mod config;
mod embedded;
mod supervise;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use parlor_core::NodeId;
use parlor_core::ports::{DeadLetterSelection, Queue, Store};
use parlor_core::queue::{InboundEntry, Notification};
use parlor_server::janitor;
use parlor_server::metrics::PrometheusHandle;
use parlor_server::{Deps, gateway, notifier, persister, presence};
use tracing_subscriber::EnvFilter;

use crate::blobs::BlobSettings;
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::{DEFAULT_DATA_DIR, ServeConfig, ServeSettings};
use crate::embedded::{Embedded, QueueName};
use crate::supervise::Supervisor;

#[derive(Parser)]
#[command(
    name = "parlor",
    version,
    about = "Parlor: real-time chat that never loses a message"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every role in this process on the embedded backends.
    Serve {
        #[command(flatten)]
        settings: ServeSettings,
        /// A TOML file with the same settings (flags and environment win over it).
        #[arg(long, env = "PARLOR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Runs the gateway and presence roles on the cluster backends (NATS + PostgreSQL); run
    /// several behind a load balancer.
    Gateway {
        #[command(flatten)]
        settings: ServeSettings,
        #[command(flatten)]
        cluster: ClusterSettings,
        #[command(flatten)]
        aws: AwsChoice,
        #[command(flatten)]
        blobs: BlobSettings,
        #[arg(long, env = "PARLOR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Runs the persister role on the cluster backends, which also delivers the notifications
    /// of the partitions it holds; run several. `--listen` serves /healthz, /readyz and
    /// /metrics.
    Persister {
        #[command(flatten)]
        settings: ServeSettings,
        #[command(flatten)]
        cluster: ClusterSettings,
        #[command(flatten)]
        aws: AwsChoice,
        #[command(flatten)]
        blobs: BlobSettings,
        #[arg(long, env = "PARLOR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Prints the effective configuration of `serve`.
    Config {
        #[command(flatten)]
        settings: ServeSettings,
        #[arg(long, env = "PARLOR_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Inspects and redrives dead-letter queues (Parlor must be stopped: the embedded queues
    /// belong to one process at a time).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Prints the cluster's partitions of the inbound and notification queues, or changes
    /// them (`--set N`): with every gateway and persister stopped and every partition empty,
    /// which it checks, refusing otherwise with what to do.
    Partitions {
        /// The new count, 1 to 1024.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        set: Option<u32>,
        #[command(flatten)]
        cluster: ClusterSettings,
    },
    /// Manages users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(clap::Args)]
struct DlqTarget {
    #[arg(long, env = "PARLOR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    #[arg(long, value_enum, default_value = "inbound")]
    queue: QueueName,
    /// The cluster's queues on NATS (works while the cluster runs) instead of the data
    /// directory's.
    #[arg(long, conflicts_with = "aws")]
    cluster: bool,
    #[command(flatten)]
    cluster_settings: ClusterSettings,
    /// The AWS deployment's SQS queues.
    #[command(flatten)]
    aws: AwsChoice,
}

/// `--aws`: the AWS backends (SQS, DynamoDB) instead of the cluster's (NATS, PostgreSQL).
#[derive(clap::Args, Clone, Debug)]
struct AwsChoice {
    /// Runs on the AWS deployment's backends: SQS queues and DynamoDB tables.
    #[arg(long)]
    aws: bool,
    #[cfg(feature = "aws")]
    #[command(flatten)]
    settings: aws::AwsSettings,
}

#[derive(clap::Args)]
struct DlqSelection {
    /// Dead-letter ids (from `parlor dlq list`).
    #[arg(long = "id", required_unless_present = "all", conflicts_with = "all")]
    ids: Vec<u64>,
    /// Every dead letter of the queue.
    #[arg(long)]
    all: bool,
}

impl DlqSelection {
    fn selection(self) -> DeadLetterSelection {
        if self.all {
            DeadLetterSelection::All
        } else {
            DeadLetterSelection::Ids(self.ids)
        }
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Lists dead letters as JSON lines, oldest first.
    List {
        #[command(flatten)]
        target: DlqTarget,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Puts dead letters back on their queue.
    Redrive {
        #[command(flatten)]
        target: DlqTarget,
        #[command(flatten)]
        selection: DlqSelection,
    },
    /// Deletes dead letters for good.
    Purge {
        #[command(flatten)]
        target: DlqTarget,
        #[command(flatten)]
        selection: DlqSelection,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Creates a user; the password is read from standard input (one line).
    Add {
        username: String,
        #[arg(long, env = "PARLOR_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// In the cluster's PostgreSQL store instead of the data directory's.
        #[arg(long)]
        cluster: bool,
        #[command(flatten)]
        cluster_settings: ClusterSettings,
    },
}

fn main() -> anyhow::Result<()> {
    return_large_allocations_to_the_system();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("PARLOR_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // A Lambda function's package runs `bootstrap` with no arguments: this binary, renamed.
    #[cfg(feature = "aws")]
    if aws::started_as_bootstrap() {
        return runtime.block_on(aws::lambda::run_from_environment());
    }
    let cli = Cli::parse();
    runtime.block_on(async {
        match cli.command {
            Command::Serve { settings, config } => serve(resolve(settings, config)?).await,
            Command::Gateway {
                settings,
                cluster,
                aws,
                blobs,
                config,
            } => {
                let config = resolve(settings, config)?;
                if aws.aws {
                    aws_gateway(config, aws, blobs).await
                } else {
                    cluster_gateway(config, cluster, blobs).await
                }
            }
            Command::Persister {
                settings,
                cluster,
                aws,
                blobs,
                config,
            } => {
                let config = resolve(settings, config)?;
                if aws.aws {
                    aws_persister(config, aws, blobs).await
                } else {
                    cluster_persister(config, cluster, blobs).await
                }
            }
            Command::Config { settings, config } => {
                println!("{:#?}", resolve(settings, config)?);
                Ok(())
            }
            Command::Dlq { command } => dlq(command).await,
            Command::Partitions { set, cluster } => match set {
                None => match cluster::recorded_partitions(&cluster).await? {
                    Some(partitions) => {
                        println!("{partitions}");
                        Ok(())
                    }
                    None => bail!("this database records no partitions: no cluster ran on it"),
                },
                Some(to) => {
                    let from = cluster::change_partitions(&cluster, to).await?;
                    println!(
                        "the inbound and notification queues have {to} partitions (they had \
                         {from}); start the gateways and persisters again"
                    );
                    Ok(())
                }
            },
            Command::User {
                command:
                    UserCommand::Add {
                        username,
                        data_dir,
                        cluster,
                        cluster_settings,
                    },
            } => {
                let store: Arc<dyn Store> = if cluster {
                    Arc::new(
                        parlor_postgres::PgStore::connect(&cluster_settings.postgres_url, 1)
                            .await?,
                    )
                } else {
                    Arc::new(embedded::open_store(&data_dir)?)
                };
                add_user(&username, store.as_ref()).await
            }
        }
    })
}

fn resolve(settings: ServeSettings, file: Option<PathBuf>) -> anyhow::Result<ServeConfig> {
    let file = match file {
        Some(path) => ServeSettings::load_file(&path)?,
        None => ServeSettings::default(),
    };
    ServeConfig::resolve(settings.over(file))
}

async fn serve(mut config: ServeConfig) -> anyhow::Result<()> {
    let backends = Embedded::open(&config.data_dir)?;
    config.gateway.files.staging_dir = embedded::uploads_dir(&config.data_dir);
    let deps = backends.deps();
    let metrics = parlor_server::metrics::install().map_err(anyhow::Error::msg)?;
    let (listener, address) = bind(&config).await?;
    let mut roles = Supervisor::new();
    let shutdown = roles.shutdown();
    gateway_role(&mut roles, &deps, &config, listener, metrics);
    roles.role(
        "persister",
        persister::run(deps.clone(), config.persister.clone(), shutdown.clone()),
    );
    roles.role(
        "notifier",
        notifier::run(deps.clone(), config.notifier.clone(), shutdown.clone()),
    );
    roles.infallible_role("presence", presence::run(deps.clone(), shutdown.clone()));
    roles.infallible_role(
        "janitor",
        janitor::run(deps.clone(), config.janitor.clone(), shutdown.clone()),
    );
    for queue in [&backends.inbound, &backends.notifications] {
        let commits = queue.clone().run_cursor_commits(shutdown.clone().wait());
        roles.infallible_role("queue cursor commits", commits);
    }
    let logs = vec![backends.inbound.clone(), backends.notifications.clone()];
    roles.watch(async move {
        let cause = first_poisoned_log(logs).await;
        format!("a write-ahead log is poisoned ({cause}): nothing more is accepted")
    });
    tracing::info!(%address, data_dir = %config.data_dir.display(), "parlor is serving");
    announce(address);

    let failure = roles.run().await;
    backends.close();
    match failure {
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        Some(failure) => {
            bail!("{failure}; acknowledged messages are safe in the log, restart to recover")
        }
    }
}

/// The listener of `config`, and the address it got (the port, when 0 was asked for).
async fn bind(config: &ServeConfig) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listen = config.gateway.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener.local_addr().context("no local address")?;
    Ok((listener, address))
}

/// The gateway role with the web client, as `serve` and `parlor gateway` run it.
fn gateway_role(
    roles: &mut Supervisor,
    deps: &Deps,
    config: &ServeConfig,
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
) {
    let run = gateway::run(
        deps.clone(),
        config.gateway.clone(),
        listener,
        metrics,
        Some(assets::router()),
        roles.shutdown(),
    );
    roles.role("gateway", run);
}

/// Says where this process listens; tests and scripts read the address from this line.
fn announce(address: SocketAddr) {
    println!("parlor listening on http://{address}");
    let _ = std::io::stdout().flush();
}

/// Resolves with the cause once one of `queues` has a poisoned log. Polled, because a log
/// poisons itself on its writer thread and tells only the appends that failed; the roles may
/// not be appending at all (a gateway answering 503 to every send keeps running).
async fn first_poisoned_log(queues: Vec<Arc<parlor_embedded::WalQueue>>) -> String {
    const POLL: std::time::Duration = std::time::Duration::from_millis(100);
    let mut ticker = tokio::time::interval(POLL);
    loop {
        ticker.tick().await;
        if let Some(cause) = queues.iter().find_map(|queue| queue.poison_cause()) {
            return cause;
        }
    }
}

/// `parlor gateway`: HTTP + WebSocket and presence, on the cluster backends.
async fn cluster_gateway(
    mut config: ServeConfig,
    settings: ClusterSettings,
    blobs: BlobSettings,
) -> anyhow::Result<()> {
    config.gateway.files.staging_dir = blobs.staging_dir(config.gateway.node)?;
    let backends = Cluster::connect(
        &settings,
        config.gateway.node,
        config.persister.attempts_max,
    )
    .await?;
    let deps = backends.deps(blobs.open().await?);
    let metrics = parlor_server::metrics::install().map_err(anyhow::Error::msg)?;
    let (listener, address) = bind(&config).await?;
    let mut roles = Supervisor::new();
    let shutdown = roles.shutdown();
    gateway_role(&mut roles, &deps, &config, listener, metrics);
    roles.infallible_role("presence", presence::run(deps, shutdown));
    tracing::info!(%address, node = %config.gateway.node, "parlor gateway is serving");
    announce(address);

    match roles.run().await {
        None => Ok(()),
        Some(failure) => bail!("{failure}"),
    }
}

/// `parlor persister`: inbound queue → store → notifications → gateways, on the cluster
/// backends; `--listen` serves health and metrics only.
async fn cluster_persister(
    config: ServeConfig,
    settings: ClusterSettings,
    blobs: BlobSettings,
) -> anyhow::Result<()> {
    let backends =
        Cluster::connect(&settings, NodeId::new(), config.persister.attempts_max).await?;
    let deps = backends.deps(blobs.open().await?);
    let metrics = parlor_server::metrics::install().map_err(anyhow::Error::msg)?;
    let (listener, address) = bind(&config).await?;
    let mut roles = Supervisor::new();
    let shutdown = roles.shutdown();
    // Each partition's holder delivers the partition's notifications too: no notifier role.
    roles.role(
        "persister",
        persister::run(deps.clone(), config.persister.clone(), shutdown.clone()),
    );
    roles.infallible_role(
        "janitor",
        janitor::run(deps.clone(), config.janitor.clone(), shutdown.clone()),
    );
    let ops = ops_router(metrics, shutdown.clone());
    roles.infallible_role(
        "ops listener",
        parlor_server::listen::serve(
            listener,
            ops,
            config.gateway.listener.clone(),
            shutdown.wait(),
        ),
    );
    tracing::info!(%address, "parlor persister is running");
    announce(address);

    let failure = roles.run().await;
    // Hand the queues to a standby persister at once rather than after the takeover delay
    // (if this fails, the standby takes over after it anyway).
    for queue in backends.consumed_queues() {
        if let Err(error) = queue.release().await {
            tracing::warn!(%error, queue = queue.name(), "cannot hand the queue over");
        }
    }
    match failure {
        None => Ok(()),
        Some(failure) => bail!("{failure}; unacknowledged entries are redelivered"),
    }
}

/// /healthz, /readyz (failing once shutdown begins) and /metrics: what a process without the
/// gateway serves on `--listen`.
fn ops_router(metrics: PrometheusHandle, ready: parlor_server::Shutdown) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let shutting_down = ready.is_fired();
                async move {
                    if shutting_down {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "shutting down\n",
                        )
                    } else {
                        (axum::http::StatusCode::OK, "ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )
}

#[cfg(feature = "aws")]
async fn aws_gateway(
    config: ServeConfig,
    aws: AwsChoice,
    blobs: BlobSettings,
) -> anyhow::Result<()> {
    aws::roles::gateway(config, aws.settings, blobs).await
}

#[cfg(feature = "aws")]
async fn aws_persister(
    config: ServeConfig,
    aws: AwsChoice,
    blobs: BlobSettings,
) -> anyhow::Result<()> {
    aws::roles::persister(config, aws.settings, blobs).await
}

#[cfg(feature = "aws")]
async fn aws_dlq(
    target: DlqTarget,
    action: Result<(bool, DeadLetterSelection), usize>,
) -> anyhow::Result<()> {
    let attempts_max = parlor_server::config::ConsumerConfig::default().attempts_max;
    let queues = aws::AwsQueues::connect(&target.aws.settings, attempts_max).await?;
    let queue: Arc<dyn Queue> = queues.queue(target.queue).clone();
    dlq_run(queue.as_ref(), target.queue, action).await
}

#[cfg(not(feature = "aws"))]
async fn aws_gateway(_: ServeConfig, _: AwsChoice, _: BlobSettings) -> anyhow::Result<()> {
    bail!(WITHOUT_AWS)
}

#[cfg(not(feature = "aws"))]
async fn aws_persister(_: ServeConfig, _: AwsChoice, _: BlobSettings) -> anyhow::Result<()> {
    bail!(WITHOUT_AWS)
}

#[cfg(not(feature = "aws"))]
async fn aws_dlq(
    _: DlqTarget,
    _: Result<(bool, DeadLetterSelection), usize>,
) -> anyhow::Result<()> {
    bail!(WITHOUT_AWS)
}

#[cfg(not(feature = "aws"))]
const WITHOUT_AWS: &str =
    "this parlor was built without the AWS backends: build it with `--features aws`";

async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    let (target, action) = match command {
        DlqCommand::List { target, limit } => (target, Err(limit)),
        DlqCommand::Redrive { target, selection } => (target, Ok((true, selection.selection()))),
        DlqCommand::Purge { target, selection } => (target, Ok((false, selection.selection()))),
    };
    if target.aws.aws {
        return aws_dlq(target, action).await;
    }
    if target.cluster {
        let backends = Cluster::connect(
            &target.cluster_settings,
            NodeId::new(),
            parlor_server::config::ConsumerConfig::default().attempts_max,
        )
        .await?;
        let queue = backends.queue(target.queue);
        return dlq_run(queue.as_ref(), target.queue, action).await;
    }
    let backends = Embedded::open(&target.data_dir)?;
    let queue = backends.queue(target.queue).clone();
    let result = dlq_run(queue.as_ref(), target.queue, action).await;
    // The cursors and the logs are flushed before the lock is released.
    queue.commit_cursor().await?;
    backends.close();
    result
}

/// Lists (`Err(limit)`), redrives (`Ok((true, …))`) or purges (`Ok((false, …))`).
async fn dlq_run(
    queue: &dyn Queue,
    name: QueueName,
    action: Result<(bool, DeadLetterSelection), usize>,
) -> anyhow::Result<()> {
    match action {
        Err(limit) => {
            for letter in queue.dead_letters(limit).await? {
                let entry = describe(name, &letter.payload);
                let line = serde_json::json!({
                    "id": letter.id,
                    "queue": format!("{name:?}").to_lowercase(),
                    "reason": letter.reason,
                    "attempts": letter.attempts,
                    "failed_at": letter.failed_at.format(&time::format_description::well_known::Rfc3339)?,
                    "entry": entry,
                });
                println!("{line}");
            }
        }
        Ok((true, selection)) => println!("redriven: {}", queue.redrive(selection).await?),
        Ok((false, selection)) => println!("purged: {}", queue.purge(selection).await?),
    }
    Ok(())
}

/// A dead letter's payload as JSON, or its bytes as text if it does not decode.
fn describe(queue: QueueName, payload: &[u8]) -> serde_json::Value {
    let decoded = match queue {
        QueueName::Inbound => InboundEntry::decode(payload)
            .ok()
            .and_then(|e| serde_json::to_value(e).ok()),
        QueueName::Notifications => Notification::decode(payload)
            .ok()
            .and_then(|n| serde_json::to_value(n).ok()),
    };
    decoded
        .unwrap_or_else(|| serde_json::Value::String(String::from_utf8_lossy(payload).into_owned()))
}

async fn add_user(username: &str, store: &dyn Store) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("cannot read the password")?;
    let password = password.trim_end_matches(['\r', '\n']).to_string();
    parlor_core::validate::username(username)?;
    parlor_core::validate::password(&password, username)?;
    let hash = parlor_server::auth::Passwords::new(1)
        .hash(password)
        .await
        .map_err(anyhow::Error::msg)?;
    match store.create_user(username, &hash).await? {
        Some(user) => {
            println!("{}", serde_json::to_string(&user)?);
            Ok(())
        }
        None => bail!("the username {username:?} is taken"),
    }
}

/// Every password hash allocates 19 MiB (Argon2id's memory cost). glibc raises its mmap
/// threshold after the first such block is freed, so later ones come from per-thread arenas
/// and stay resident: measured, 600 MiB of RSS after a few dozen logins. A fixed threshold
/// keeps every allocation of 1 MiB or more a private mapping, unmapped when freed.
#[allow(unsafe_code)] // a libc call with no safe wrapper; see SAFETY below
fn return_large_allocations_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
