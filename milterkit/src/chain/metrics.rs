//! The chain's metrics, per child milter, beside a served milter's own ([`crate::metrics`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels2 = [(&'static str, String); 2];
type Labels3 = [(&'static str, String); 3];
type Labels4 = [(&'static str, String); 4];

/// Counters and a latency histogram per child milter of a [`Chain`](super::Chain), registered in
/// a [`Registry`] (cheap to clone: clones count into the same values).
///
/// | metric | type | labels |
/// |---|---|---|
/// | `milter_chain_child_duration_seconds` | histogram | `child`, `stage` (spec name: `CONNECT` … `EOM`, `NEGOTIATE`): from sending a command to its reply |
/// | `milter_chain_child_decisions` | counter | `child`, `stage`, `decision` (`continue`, `accept`, `reject`, `tempfail`, `discard`, `skip`, `reply`, `shutdown`), `mode` (`enforce`, `evaluate`) |
/// | `milter_chain_child_modifications` | counter | `child`, `kind` (as `milter_modifications`), `mode` |
/// | `milter_chain_child_fail_safe` | counter | `child`, `fail_safe` (`tempfail`, `reject`, `skip`) |
/// | `milter_chain_child_errors` | counter | `child`, `kind` (`connect`, `timeout`, `closed`, `protocol`, `interrupted`) |
/// | `milter_chain_reloads` | counter | `result` (`ok`, `failed`) |
///
/// ```
/// use prometheus_client::registry::Registry;
/// let mut registry = Registry::default();
/// let chain = milterkit::chain::ChainMetrics::register(&mut registry);
/// let metrics = milterkit::metrics::Metrics::with_registry(registry);
/// chain.reload(true);
/// assert!(metrics.encode().contains("milter_chain_reloads_total{result=\"ok\"} 1"));
/// ```
#[derive(Clone)]
pub struct ChainMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    duration: Family<Labels2, Histogram, fn() -> Histogram>,
    decisions: Family<Labels4, Counter>,
    modifications: Family<Labels3, Counter>,
    fail_safe: Family<Labels2, Counter>,
    errors: Family<Labels2, Counter>,
    reloads: Family<[(&'static str, &'static str); 1], Counter>,
}

impl fmt::Debug for ChainMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainMetrics").finish_non_exhaustive()
    }
}

/// Latency buckets: 100 µs to about 26 s, doubling (as the milter's handler histogram).
fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl ChainMetrics {
    /// The chain's metrics, added to `registry`.
    pub fn register(registry: &mut Registry) -> ChainMetrics {
        let inner = Inner {
            duration: Family::new_with_constructor(histogram),
            decisions: Family::default(),
            modifications: Family::default(),
            fail_safe: Family::default(),
            errors: Family::default(),
            reloads: Family::default(),
        };
        registry.register(
            "milter_chain_child_duration_seconds",
            "Time from a command to a child milter to its reply, by child and stage",
            inner.duration.clone(),
        );
        registry.register(
            "milter_chain_child_decisions",
            "Decisions of child milters, by child, stage, decision and mode (enforce, evaluate)",
            inner.decisions.clone(),
        );
        registry.register(
            "milter_chain_child_modifications",
            "Modifications child milters asked for at end of message, by child, kind and mode",
            inner.modifications.clone(),
        );
        registry.register(
            "milter_chain_child_fail_safe",
            "Fail-safe uses for child milters down, slow or broken, by child and fail-safe",
            inner.fail_safe.clone(),
        );
        registry.register(
            "milter_chain_child_errors",
            "Failed connections and exchanges with child milters, by child and kind",
            inner.errors.clone(),
        );
        registry.register(
            "milter_chain_reloads",
            "Configuration reloads (SIGHUP), by result",
            inner.reloads.clone(),
        );
        ChainMetrics {
            inner: Arc::new(inner),
        }
    }

    pub(super) fn duration(&self, child: &str, stage: &'static str, took: Duration) {
        self.inner
            .duration
            .get_or_create(&[("child", child.to_owned()), ("stage", stage.to_owned())])
            .observe(took.as_secs_f64());
    }

    pub(super) fn decision(&self, child: &str, stage: &str, decision: &str, mode: &str) {
        self.inner
            .decisions
            .get_or_create(&[
                ("child", child.to_owned()),
                ("stage", stage.to_owned()),
                ("decision", decision.to_owned()),
                ("mode", mode.to_owned()),
            ])
            .inc();
    }

    pub(super) fn modification(&self, child: &str, kind: &str, mode: &str) {
        self.inner
            .modifications
            .get_or_create(&[
                ("child", child.to_owned()),
                ("kind", kind.to_owned()),
                ("mode", mode.to_owned()),
            ])
            .inc();
    }

    pub(super) fn fail_safe(&self, child: &str, fail_safe: &str) {
        self.inner
            .fail_safe
            .get_or_create(&[
                ("child", child.to_owned()),
                ("fail_safe", fail_safe.to_owned()),
            ])
            .inc();
    }

    pub(super) fn error(&self, child: &str, kind: &str) {
        self.inner
            .errors
            .get_or_create(&[("child", child.to_owned()), ("kind", kind.to_owned())])
            .inc();
    }

    /// Counts a configuration reload that worked (`ok`) or did not (`failed`).
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.inner
            .reloads
            .get_or_create(&[("result", result)])
            .inc();
    }
}
