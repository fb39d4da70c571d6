//! `Serve::with_threads`: several threads, each with a runtime of its own, accepting from one
//! listener; connections stay on the thread that took them; one shutdown ends them all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use milterkit::{Decision, Eom, Mail, Milter, Result, Stages};

/// Records the thread of every handler call, per connection.
struct Where {
    seen: Arc<Mutex<Vec<HashSet<ThreadId>>>>,
    mine: HashSet<ThreadId>,
}

impl Milter for Where {
    type Message = ();
    const STAGES: Stages = Stages::MAIL.union(Stages::EOM);

    async fn mail(&mut self, _: &mut (), _: Mail<'_>) -> Result<Decision> {
        self.mine.insert(std::thread::current().id());
        // Give the other connections a chance to be accepted meanwhile.
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, _: &mut (), _: &mut Eom<'_>) -> Result<Decision> {
        self.mine.insert(std::thread::current().id());
        Ok(Decision::Continue)
    }

    async fn close(&mut self) {
        self.seen
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.mine));
    }
}

#[test]
fn connections_spread_over_the_threads_and_stay_on_theirs_and_one_shutdown_ends_them_all() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
        let spec = listener.local_spec().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let factory = {
            let seen = seen.clone();
            move || Where {
                seen: seen.clone(),
                mine: HashSet::new(),
            }
        };
        let server = tokio::spawn(
            milterkit::serve(listener, factory)
                .with_threads(3)
                .with_graceful_shutdown(async {
                    stopped.await.ok();
                })
                .into_future(),
        );
        let mut clients = Vec::new();
        for i in 0..24 {
            let spec = spec.clone();
            clients.push(tokio::spawn(async move {
                let mut mta = Connection::open(&spec, Profile::postfix()).await.unwrap();
                let tx = Transaction::new()
                    .from(format!("<a{i}@example.org>"))
                    .to("<b@example.net>");
                let out = mta.run(&tx).await.unwrap();
                mta.quit().await.unwrap();
                out.verdict
            }));
        }
        for c in clients {
            assert_eq!(c.await.unwrap(), Some(Verdict::Accept));
        }
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("every thread ends at the shutdown")
            .unwrap()
            .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 24, "every connection closed once");
        assert!(
            seen.iter().all(|threads| threads.len() == 1),
            "a connection stays on its thread: {seen:?}"
        );
        let threads: HashSet<ThreadId> = seen.iter().flatten().copied().collect();
        assert!(
            threads.len() >= 2,
            "connections on more than one thread: {threads:?}"
        );
        assert!(threads.len() <= 3);
        assert!(!threads.contains(&std::thread::current().id()) || threads.len() > 1);
    });
}
