//! What the benchmark milters share: the milter every contestant serves, and the stop signal.

use milterkit::{Actions, Decision, Eom, Milter, Result, Stages};

/// The benchmark milter: continues at every stage (each handled, so the MTA waits for every
/// reply, as with the C contestants), asks for `ADD_HEADER` and adds `X-Bench: 1` at end of
/// message. Served by `bench_milter` and by interop's `postfix-bench`.
#[derive(Debug, Default)]
pub struct Bench;

impl Milter for Bench {
    type Message = ();
    const STAGES: Stages = Stages::all();
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        eom.add_header("X-Bench", "1")?;
        Ok(Decision::Continue)
    }
}

/// Ends at SIGINT or SIGTERM: what `bench/bench.py` and `bench/filter.py` send to stop a milter.
pub async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}
