//! Entry point for fuzzing a whole served connection in memory (`fuzz/` and a stable replay
//! test use it). Not part of the API.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Actions, Config, Decision, Eom, Milter, Result, Stages};

/// Continues everything and makes one of each header change at end of message.
#[derive(Default)]
struct Fuzzed;

impl Milter for Fuzzed {
    type Message = ();
    const ACTIONS: Actions = Actions::ADD_HEADER.union(Actions::CHANGE_BODY);
    const STAGES: Stages = Stages::all();

    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        eom.add_header("X-Fuzz", "1")?;
        eom.replace_body("new body\r\n")?;
        Ok(Decision::Continue)
    }
}

/// Serves `data` as everything an MTA sends on one connection, in pieces, and reads whatever the
/// milter answers. Must end (by EOF or error) without a panic or a hang.
pub fn served_connection(data: &[u8]) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        let (mut mta, milter) = tokio::io::duplex(8192);
        let config = Config {
            max_frame: 4096,
            ..Config::default()
        };
        let served =
            tokio::spawn(async move { crate::serve_connection(milter, Fuzzed, &config).await });
        let data = data.to_vec();
        let talk = async move {
            for piece in data.chunks(97) {
                if mta.write_all(piece).await.is_err() {
                    break;
                }
                let mut sink = [0u8; 1024];
                // Take what the milter answered so far without waiting for more.
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(1), mta.read(&mut sink)).await
                {
                    if n == 0 {
                        return;
                    }
                }
            }
            drop(mta);
        };
        talk.await;
        // The MTA hung up: the connection must end at once.
        let ended = tokio::time::timeout(Duration::from_secs(10), served).await;
        assert!(ended.is_ok(), "the connection did not end after EOF");
    });
}
