//! [`ChainServer`]: a `milterkit::chain` served by the test process, for the chain tests and
//! the chain's benchmark behind Postfix.

use std::sync::Arc;

use milterkit::chain::{Chain, ChainMetrics, Settings};
use milterkit::metrics::Metrics;
use milterkit::Config;
use prometheus_client::registry::Registry;

use crate::util::Error;
use crate::{Journal, MilterServer, MilterSocket, Result, Transport};

/// A [`Chain`] served on a TCP port of 127.0.0.1 by a [`MilterServer`] (a thread and runtime of
/// its own), counting into metrics of its own; stopped when dropped.
pub struct ChainServer {
    server: MilterServer,
    metrics: Metrics,
}

impl ChainServer {
    /// Serves the chain that `settings` (TOML) describe.
    pub fn start(settings: &str) -> Result<ChainServer> {
        let settings = Arc::new(
            Settings::from_toml(settings)
                .map_err(|e| Error::new(format!("chain settings: {e}")))?,
        );
        let mut registry = Registry::default();
        let chain_metrics = ChainMetrics::register(&mut registry);
        let metrics = Metrics::with_registry(registry);
        let config = Config {
            metrics: Some(metrics.clone()),
            ..MilterServer::default_config()
        };
        let factory = move || Chain::new(settings.clone()).with_metrics(chain_metrics.clone());
        let server = MilterServer::serve(Transport::Tcp, config, factory, Journal::default())?;
        Ok(ChainServer { server, metrics })
    }

    /// The metrics page: the chain's per-child metrics and the served milter's.
    pub fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

impl Drop for ChainServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- chain metrics ----\n{}", self.metrics());
        }
    }
}

impl MilterSocket for ChainServer {
    fn postfix_spec(&self) -> String {
        self.server.postfix_spec()
    }
    fn sendmail_spec(&self) -> String {
        self.server.sendmail_spec()
    }
}
