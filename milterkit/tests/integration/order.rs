//! Command orders libmilter accepts, over a real socket: an MTA that sends no DATA gets every
//! reply and the end-of-message modifications.

use bytes::BytesMut;
use milterkit::proto::{Command, Envelope, FrameDecoder, Offer, Response};
use milterkit::{Decision, Modification, Stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::scripted::{Edit, Script, Scripted};
use crate::support::commands::greeting;
use crate::support::served::Served;

/// Sends `cmds` in one write, then reads until the milter closes; gives every response.
async fn exchange(spec: &str, cmds: &[Command]) -> Vec<Response> {
    let path = spec.trim_start_matches("unix:");
    let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let mut wire = BytesMut::new();
    for c in cmds {
        c.encode(&mut wire);
    }
    stream.write_all(&wire).await.unwrap();
    let mut answers = Vec::new();
    stream.read_to_end(&mut answers).await.unwrap();
    let mut buf = BytesMut::from(&answers[..]);
    let dec = FrameDecoder::default();
    std::iter::from_fn(|| dec.decode(&mut buf).unwrap())
        .map(|f| Response::decode(f).unwrap())
        .collect()
}

#[tokio::test]
async fn a_session_without_data_gets_every_reply_and_the_eom_modifications() {
    let dir = std::env::temp_dir().join(format!("milterkit-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = Script {
        changes: vec![
            Edit::AddHeader("X-Seen", "yes"),
            Edit::ReplaceBody(b"new body\r\n".to_vec()),
        ],
        ..Script::default()
    };
    let server = Served::start(
        &format!("unix:{}", dir.join("milter.sock").display()),
        Scripted::new(script),
    )
    .await;
    // As several MTA-side implementations send it: every stage agreed, and no DATA.
    let mut session = vec![Command::Optneg(Offer::default())];
    session.extend(greeting("client.example", 4711));
    session.extend([
        Command::Mail(Envelope::new("<alice@example.org>")),
        Command::Rcpt(Envelope::new("<bob@example.net>")),
        Command::Header {
            name: "From".into(),
            value: "alice@example.org".into(),
        },
        Command::Header {
            name: "Subject".into(),
            value: "no DATA".into(),
        },
        Command::Eoh,
        Command::Body("Hello.\r\n".into()),
        Command::Eom {
            chunk: Default::default(),
        },
        Command::Quit,
    ]);
    let responses = exchange(&server.spec, &session).await;
    let mut replies = responses.iter();
    assert!(matches!(replies.next(), Some(Response::Optneg(_))));
    let stages = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Header,
        Stage::Header,
        Stage::Eoh,
        Stage::Body,
    ];
    for stage in stages {
        assert_eq!(
            replies.next(),
            Some(&Response::Decision(Decision::Continue)),
            "{stage}: {responses:?}"
        );
    }
    assert_eq!(
        replies.next(),
        Some(&Response::Modification(Modification::AddHeader {
            name: "X-Seen".into(),
            value: "yes".into()
        }))
    );
    assert_eq!(
        replies.next(),
        Some(&Response::Modification(Modification::ReplaceBody {
            chunk: "new body\r\n".into()
        }))
    );
    assert_eq!(
        replies.next(),
        Some(&Response::Decision(Decision::Continue))
    );
    assert_eq!(replies.next(), None, "{responses:?}");
    server.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
