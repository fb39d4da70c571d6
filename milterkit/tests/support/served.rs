//! A milter served in the background on a real socket.

use std::future::IntoFuture;
use std::time::Duration;

use milterkit::{Config, Listener, Milter};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A milter served in a task of the test's runtime, and the handle to shut it down.
pub(crate) struct Served {
    /// The listener's socket spec, for clients.
    pub(crate) spec: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), milterkit::Error>>,
}

impl Served {
    /// Serves the milters `factory` makes on `listener`, with `config`.
    pub(crate) fn spawn<M, F>(listener: Listener, factory: F, config: Config) -> Served
    where
        M: Milter,
        F: Fn() -> M + Send + Sync + 'static,
    {
        let spec = listener.local_spec().unwrap().to_string();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(
            milterkit::serve(listener, factory)
                .with_config(config)
                .with_graceful_shutdown(async {
                    stopped.await.ok();
                })
                .into_future(),
        );
        Served {
            spec,
            stop: Some(stop),
            task,
        }
    }

    /// Begins the graceful shutdown; the server must still be running.
    pub(crate) fn shutdown(&mut self) {
        let stop = self.stop.take().expect("one shutdown");
        stop.send(()).expect("the server is still running");
    }

    /// Waits at most `limit` for the server to end, and gives its result.
    pub(crate) async fn ended(self, limit: Duration) -> Result<(), milterkit::Error> {
        tokio::time::timeout(limit, self.task)
            .await
            .expect("the server ends in time")
            .expect("the server task does not panic")
    }

    /// Shuts down (unless that has begun) and wants the server to end cleanly within 60 s.
    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            s.send(()).ok();
        }
        self.ended(Duration::from_secs(60)).await.unwrap();
    }
}
