//! The chain's metrics, per child milter, beside a served milter's own ([`crate::metrics`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use milterkit_proto::{Decision, Stage};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;
type Counters = Family<Labels, Counter>;

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
/// assert!(metrics.encode().contains("milter_chain_reloads_total{result=\"failed\"} 0"));
/// chain.reload(true);
/// assert!(metrics.encode().contains("milter_chain_reloads_total{result=\"ok\"} 1"));
/// ```
#[derive(Clone)]
pub struct ChainMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    decisions: Counters,
    modifications: Counters,
    fail_safe: Counters,
    errors: Counters,
    reloads: Counters,
    /// The handles of each child (by name and mode), made once: a lookup in a family hashes
    /// its labels (about a fifth of the chain's CPU per message when done per command).
    children: Mutex<HashMap<(String, &'static str), Arc<ChildMetrics>>>,
}

/// The stage labels of [`ChildMetrics`]: `Stage::ALL`'s names, then `NEGOTIATE`.
const STAGES: usize = Stage::ALL.len() + 1;
/// The decision labels: as `Decision::name`, in this order.
const DECISIONS: [&str; 8] = [
    "continue", "accept", "reject", "tempfail", "discard", "skip", "reply", "shutdown",
];

/// One child's duration histograms and decision counters, looked up once.
pub(super) struct ChildMetrics {
    name: String,
    mode: &'static str,
    durations: Vec<Histogram>,
    decisions: Vec<OnceLock<Counter>>,
    family: Counters,
}

impl fmt::Debug for ChildMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildMetrics")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One more in `family`'s counter for `labels`.
fn bump(family: &Counters, labels: &[(&'static str, &str)]) {
    let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    family.get_or_create(&labels).inc();
}

fn stage_index(stage: Option<Stage>) -> usize {
    stage
        .and_then(|s| Stage::ALL.iter().position(|x| *x == s))
        .unwrap_or(STAGES - 1)
}

fn stage_name(index: usize) -> &'static str {
    Stage::ALL.get(index).map_or("NEGOTIATE", |s| s.name())
}

impl ChildMetrics {
    /// A command to the child at `stage` (`None`: the negotiation) took `took`.
    pub(super) fn duration(&self, stage: Option<Stage>, took: Duration) {
        if let Some(h) = self.durations.get(stage_index(stage)) {
            h.observe(took.as_secs_f64());
        }
    }

    /// The child decided `decision` at `stage`.
    pub(super) fn decision(&self, stage: Stage, decision: &Decision) {
        let d = DECISIONS
            .iter()
            .position(|n| *n == decision.name())
            .unwrap_or(0);
        let s = stage_index(Some(stage));
        if let Some(slot) = self.decisions.get(s * DECISIONS.len() + d) {
            slot.get_or_init(|| {
                self.family
                    .get_or_create(&vec![
                        ("child", self.name.clone()),
                        ("stage", stage_name(s).to_owned()),
                        ("decision", DECISIONS[d].to_owned()),
                        ("mode", self.mode.to_owned()),
                    ])
                    .clone()
            })
            .inc();
        }
    }
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
            children: Mutex::default(),
        };
        registry.register(
            "milter_chain_child_duration_seconds",
            "Time from a command to a child milter to its reply, by child and stage",
            inner.duration.clone(),
        );
        // One line a metric: name, help, family.
        #[rustfmt::skip]
        let counters = [
            ("milter_chain_child_decisions", "Child milters' decisions", &inner.decisions),
            ("milter_chain_child_modifications", "Child milters' modifications", &inner.modifications),
            ("milter_chain_child_fail_safe", "Fail-safe uses for child milters", &inner.fail_safe),
            ("milter_chain_child_errors", "Failed exchanges with child milters", &inner.errors),
            ("milter_chain_reloads", "Configuration reloads (SIGHUP)", &inner.reloads),
        ];
        for (name, help, family) in counters {
            registry.register(name, help, family.clone());
        }
        // Both series from the start, at 0: an alert on `result="failed"` has a series to watch
        // before the first reload.
        for result in ["ok", "failed"] {
            drop(
                inner
                    .reloads
                    .get_or_create(&vec![("result", result.to_owned())]),
            );
        }
        ChainMetrics {
            inner: Arc::new(inner),
        }
    }

    /// The handles of the child `name` in `mode`, made at its first connection.
    pub(super) fn child(&self, name: &str, mode: &'static str) -> Arc<ChildMetrics> {
        let mut children = self
            .inner
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        children
            .entry((name.to_owned(), mode))
            .or_insert_with(|| {
                let durations = (0..STAGES)
                    .map(|s| {
                        let labels = vec![
                            ("child", name.to_owned()),
                            ("stage", stage_name(s).to_owned()),
                        ];
                        self.inner.duration.get_or_create(&labels).clone()
                    })
                    .collect();
                Arc::new(ChildMetrics {
                    name: name.to_owned(),
                    mode,
                    durations,
                    decisions: (0..STAGES * DECISIONS.len())
                        .map(|_| OnceLock::new())
                        .collect(),
                    family: self.inner.decisions.clone(),
                })
            })
            .clone()
    }

    pub(super) fn modification(&self, child: &str, kind: &str, mode: &str) {
        let labels = [("child", child), ("kind", kind), ("mode", mode)];
        bump(&self.inner.modifications, &labels);
    }

    pub(super) fn fail_safe(&self, child: &str, fail_safe: &str) {
        bump(
            &self.inner.fail_safe,
            &[("child", child), ("fail_safe", fail_safe)],
        );
    }

    pub(super) fn error(&self, child: &str, kind: &str) {
        bump(&self.inner.errors, &[("child", child), ("kind", kind)]);
    }

    /// Counts a configuration reload that worked (`ok`) or did not (`failed`).
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        bump(&self.inner.reloads, &[("result", result)]);
    }
}
