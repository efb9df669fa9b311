//! One supervisor for the roles of a process (`serve`, `gateway`, `persister`): they run until
//! SIGTERM or Ctrl-C, or until one of them stops or a watch fires (a poisoned log), and then
//! they all stop: the shutdown signal fires at once (so `/readyz` answers 503 and balancers
//! move on), and every role is awaited while it drains.

use std::fmt::Display;
use std::future::Future;

use futures::FutureExt;
use futures::future::BoxFuture;
use parlor_server::{Shutdown, ShutdownSignal};
use tokio::task::JoinHandle;

pub struct Supervisor {
    signal: ShutdownSignal,
    shutdown: Shutdown,
    /// A role stopping on its own is a failure of the process.
    roles: Vec<(&'static str, JoinHandle<Result<(), String>>)>,
    /// Futures that resolve with a failure's cause.
    watches: Vec<BoxFuture<'static, String>>,
}

impl Supervisor {
    pub fn new() -> Supervisor {
        let (signal, shutdown) = ShutdownSignal::new();
        Supervisor {
            signal,
            shutdown,
            roles: Vec::new(),
            watches: Vec::new(),
        }
    }

    /// What roles wait on to stop.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Runs `role` (given the shutdown to obey) as a task of the process.
    pub fn role<F, T, E>(&mut self, name: &'static str, role: F)
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
        E: Display,
    {
        let task = tokio::spawn(role.map(|result| result.map(drop).map_err(|e| e.to_string())));
        self.roles.push((name, task));
    }

    /// [`Supervisor::role`] for a role that cannot fail, only stop.
    pub fn infallible_role<F>(&mut self, name: &'static str, role: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.role(name, role.map(Ok::<(), std::convert::Infallible>));
    }

    /// Stops the process with `watch`'s answer as the cause, should it ever resolve.
    pub fn watch(&mut self, watch: impl Future<Output = String> + Send + 'static) {
        self.watches.push(watch.boxed());
    }

    /// Runs until a signal, a role that stops or a watch; then stops every role and waits
    /// for them. Returns the first failure, if any (a signal is none).
    pub async fn run(mut self) -> Option<String> {
        let watches = futures::future::select_all(
            std::mem::take(&mut self.watches)
                .into_iter()
                .chain([futures::future::pending().boxed()]),
        );
        let names: Vec<&'static str> = self.roles.iter().map(|(name, _)| *name).collect();
        assert!(!names.is_empty(), "a process runs at least one role");
        let ended = futures::future::select_all(self.roles.iter_mut().map(|(_, task)| task));
        let mut failure = None;
        let mut ended_early = None;
        tokio::select! {
            signal = terminate() => tracing::info!(signal, "shutting down"),
            (cause, _, _) = watches => {
                tracing::error!(%cause, "stopping");
                failure = Some(cause);
            }
            (result, index, _) = ended => {
                let name = names[index];
                let cause = match result {
                    Ok(Ok(())) => format!("the {name} stopped"),
                    Ok(Err(error)) => format!("the {name} failed: {error}"),
                    Err(error) => format!("the {name} panicked: {error}"),
                };
                tracing::error!(%cause, "stopping");
                failure = Some(cause);
                ended_early = Some(index);
            }
        }
        self.signal.fire();
        for (index, (name, task)) in self.roles.into_iter().enumerate() {
            if Some(index) == ended_early {
                continue;
            }
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    failure.get_or_insert(format!("the {name} failed: {error}"));
                }
                Err(error) => {
                    failure.get_or_insert(format!("the {name} panicked: {error}"));
                }
            }
        }
        failure
    }
}

/// Resolves on SIGTERM or Ctrl-C, with the signal's name.
async fn terminate() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "interrupt";
        }
    };
    tokio::select! {
        _ = term.recv() => "terminate",
        _ = tokio::signal::ctrl_c() => "interrupt",
    }
}
