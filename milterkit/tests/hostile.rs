//! Hostile input against a served milter over a real socket. Each case names what it sends and
//! what must happen: the expected reply or a clean close, no panic, memory bounded, and the server
//! still serving a normal transaction afterwards. Hand-written bytes are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use milterkit::proto::{Command, Envelope, FrameDecoder, Offer, Response};
use milterkit::{Actions, Config, Decision, Eom, Milter, Result, Stages};
use testkit::rss_kib;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;

use support::commands::greeting;

/// Continues everything, adds a header at end of message.
#[derive(Default)]
struct Plain;

impl Milter for Plain {
    type Message = ();
    const ACTIONS: Actions = Actions::ADD_HEADER;
    const STAGES: Stages = Stages::all();
    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        eom.add_header("X-Checked", "yes")?;
        Ok(Decision::Continue)
    }
}

struct Server {
    spec: String,
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::result::Result<(), milterkit::Error>>,
}

async fn server(config: Config) -> Server {
    let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
    let spec = listener.local_spec().unwrap();
    let port = match &spec {
        milterkit::SocketSpec::Inet { port, .. } => *port,
        milterkit::SocketSpec::Unix(_) => unreachable!(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        milterkit::serve(listener, Plain::default)
            .with_config(config)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .into_future(),
    );
    Server {
        spec: spec.to_string(),
        port,
        stop,
        task,
    }
}

impl Server {
    /// A normal transaction still works.
    async fn still_serves(&self) {
        let mut conn = Connection::open(&self.spec, Profile::postfix())
            .await
            .unwrap();
        let out = conn
            .run(&Transaction::new().to("<b@example.net>"))
            .await
            .unwrap();
        assert_eq!(out.verdict, Some(Verdict::Accept));
        assert_eq!(out.modifications.len(), 1);
        conn.quit().await.unwrap();
    }

    async fn stop(self) {
        self.stop.send(()).ok();
        self.task.await.unwrap().unwrap();
    }
}

fn frame(code: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(u32::try_from(payload.len() + 1).unwrap());
    b.put_u8(code);
    b.put_slice(payload);
    b.to_vec()
}

fn wire(cmds: &[Command]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for c in cmds {
        c.encode(&mut b);
    }
    b.to_vec()
}

/// OPTNEG, CONNECT, HELO: a negotiated connection at connection level.
fn preamble() -> Vec<u8> {
    let [connect, helo] = greeting("client", 25);
    wire(&[Command::Optneg(Offer::default()), connect, helo])
}

/// What came back: the responses, and whether the milter closed the connection.
#[derive(Debug)]
struct Seen {
    codes: String,
    closed: bool,
}

/// Sends `bytes` (after `prefix`), then reads until the milter closes or goes quiet.
async fn send(port: u16, bytes: &[u8]) -> Seen {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    // Write in the background: a milter that closes early makes the write fail, which is fine.
    let (mut r, mut w) = s.into_split();
    let data = bytes.to_vec();
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&data).await;
        w
    });
    let mut got = BytesMut::new();
    let closed = loop {
        match tokio::time::timeout(Duration::from_millis(1500), r.read_buf(&mut got)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => {}
            Err(_) => break false,
        }
    };
    drop(writer.await);
    let dec = FrameDecoder::default();
    let mut codes = String::new();
    while let Ok(Some(f)) = dec.decode(&mut got) {
        let _ = Response::decode(f.clone()).expect("everything sent decodes");
        codes.push(f.code as char);
    }
    Seen { codes, closed }
}

/// The tests that measure the process's memory take turns: they run in one process, and a
/// 50 MiB flood beside a 32 MiB bound would be counted against it.
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One case: bytes after the preamble, the codes expected back, closed or not.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    codes: &'static str,
    closed: bool,
}

fn cases() -> Vec<Case> {
    let p = preamble;
    let with = |tail: Vec<u8>| {
        let mut v = p();
        v.extend(tail);
        v
    };
    let mail = || wire(&[Command::Mail(Envelope::new("<a@example.org>"))]);
    let mut in_message = mail();
    in_message.extend(wire(&[Command::Rcpt(Envelope::new("<b@example.net>"))]));
    let len = |n: u32, code: u8| {
        let mut v = n.to_be_bytes().to_vec();
        v.push(code);
        v
    };
    vec![
        Case {
            name: "length prefix 0",
            bytes: with(len(0, b'H')),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "length prefix 1 on HELO (no name, no NUL)",
            bytes: with(len(1, b'H')),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "length prefix 65,536: a 65,535-byte header is accepted",
            bytes: {
                let mut v = with(in_message.clone());
                v.extend(wire(&[Command::Data]));
                let mut payload = b"X-Big\0".to_vec();
                payload.extend(std::iter::repeat_n(b'v', 65_535 - 7));
                payload.push(0);
                v.extend(frame(b'L', &payload));
                v
            },
            codes: "Occcccc",
            closed: false,
        },
        Case {
            name: "length prefix 2^31",
            bytes: with(len(0x8000_0000, b'B')),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "length prefix 2^32-1",
            bytes: with(len(0xFFFF_FFFF, b'B')),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "payload one byte over the limit",
            bytes: with(len(1_048_577, b'B')),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "unknown command code",
            bytes: with(frame(b'Z', b"")),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "command code below 0x20",
            bytes: with(frame(0x01, b"")),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "HELO without its NUL",
            bytes: with(frame(b'H', b"client")),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "MAIL with an empty payload",
            bytes: with(frame(b'M', b"")),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "MAIL's last argument without its NUL",
            bytes: with(frame(b'M', b"<a@b>\0SIZE=1")),
            codes: "Occc",
            closed: false,
        },
        Case {
            name: "RCPT without its NUL",
            bytes: with({
                let mut v = mail();
                v.extend(frame(b'R', b"<b@c>"));
                v
            }),
            codes: "Occc",
            closed: true,
        },
        Case {
            name: "HEADER without the value's NUL",
            bytes: with({
                let mut v = in_message.clone();
                v.extend(wire(&[Command::Data]));
                v.extend(frame(b'L', b"Subject\0hi"));
                v
            }),
            codes: "Occccc",
            closed: true,
        },
        Case {
            name: "UNKNOWN without its NUL",
            bytes: with(frame(b'U', b"XFOO")),
            codes: "Occc",
            closed: false,
        },
        Case {
            name: "OPTNEG shorter than 12 bytes",
            bytes: frame(b'O', &[0, 0, 0, 6, 0, 0]),
            codes: "",
            closed: true,
        },
        Case {
            name: "CONNECT with an unknown family",
            bytes: {
                let mut v = wire(&[Command::Optneg(Offer::default())]);
                v.extend(frame(b'C', b"host\0S\0\x19x\0"));
                v
            },
            codes: "O",
            closed: true,
        },
        Case {
            name: "CONNECT truncated after the family",
            bytes: {
                let mut v = wire(&[Command::Optneg(Offer::default())]);
                v.extend(frame(b'C', b"host\x004"));
                v
            },
            codes: "O",
            closed: true,
        },
        Case {
            name: "CONNECT with a port but no address",
            bytes: {
                let mut v = wire(&[Command::Optneg(Offer::default())]);
                v.extend(frame(b'C', b"host\x004\x00\x19"));
                v
            },
            codes: "O",
            closed: true,
        },
        Case {
            name: "macro packet with no stage",
            bytes: with(frame(b'D', b"")),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "macro packets of odd shape are ignored",
            bytes: with({
                let mut v = frame(b'D', b"Cj\0");
                v.extend(frame(b'D', b"Cj"));
                v.extend(frame(b'D', b"Z"));
                v.extend(mail());
                v
            }),
            codes: "Occc",
            closed: false,
        },
        Case {
            name: "BODY after RCPT, with no DATA",
            bytes: with({
                let mut v = in_message.clone();
                v.extend(frame(b'B', b"x"));
                v
            }),
            codes: "Occccc",
            closed: false,
        },
        Case {
            name: "BODY right after DATA",
            bytes: with({
                let mut v = in_message.clone();
                v.extend(wire(&[Command::Data]));
                v.extend(frame(b'B', b"x"));
                v
            }),
            codes: "Occccc",
            closed: true,
        },
        Case {
            name: "EOM with no message",
            bytes: with(frame(b'E', b"")),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "RCPT with no message",
            bytes: with(frame(b'R', b"<b@c>\0")),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "MAIL inside a message aborts it and starts anew",
            bytes: with({
                let mut v = in_message.clone();
                v.extend(mail());
                v
            }),
            codes: "Occccc",
            closed: false,
        },
        Case {
            name: "a second OPTNEG",
            bytes: with(wire(&[Command::Optneg(Offer::default())])),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "a second CONNECT",
            bytes: with(preamble()[17..].to_vec()),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "an MTA below protocol version 2",
            bytes: wire(&[Command::Optneg(Offer {
                version: 1,
                ..Offer::default()
            })]),
            codes: "",
            closed: true,
        },
        Case {
            name: "an MTA that lacks the milter's actions",
            bytes: wire(&[Command::Optneg(Offer {
                actions: Actions::QUARANTINE,
                ..Offer::default()
            })]),
            codes: "",
            closed: true,
        },
        Case {
            name: "oversize HEADER payload",
            bytes: with(len(1_048_576 + 1, b'L')),
            codes: "Occ",
            closed: true,
        },
        Case {
            name: "QUIT in the middle of a message",
            bytes: with({
                let mut v = in_message.clone();
                v.extend(wire(&[Command::Quit]));
                v
            }),
            codes: "Occcc",
            closed: true,
        },
    ]
}

/// Runs the case called `name` against a fresh server.
async fn check(name: &str) {
    let case = cases()
        .into_iter()
        .find(|c| c.name == name)
        .expect("a case of that name");
    let _turn = MEASURING.lock().await;
    let s = server(Config::default()).await;
    let before = rss_kib();
    let seen = send(s.port, &case.bytes).await;
    assert_eq!(
        (seen.codes.as_str(), seen.closed),
        (case.codes, case.closed),
        "{name}"
    );
    s.still_serves().await;
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "{name}: memory grew by {grown} KiB");
    s.stop().await;
}

macro_rules! hostile {
    ($($test:ident => $name:literal;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                check($name).await;
            }
        )*

        #[test]
        fn every_case_of_the_table_has_its_named_test() {
            let named = [$($name),*];
            for case in cases() {
                assert!(named.contains(&case.name), "no test for {:?}", case.name);
            }
            assert_eq!(named.len(), cases().len());
        }
    };
}

hostile! {
    length_prefix_0_closes => "length prefix 0";
    length_prefix_1_on_helo_closes => "length prefix 1 on HELO (no name, no NUL)";
    length_prefix_65536_is_an_accepted_header => "length prefix 65,536: a 65,535-byte header is accepted";
    length_prefix_2_pow_31_closes => "length prefix 2^31";
    length_prefix_2_pow_32_minus_1_closes => "length prefix 2^32-1";
    payload_one_byte_over_the_limit_closes => "payload one byte over the limit";
    unknown_command_code_closes => "unknown command code";
    command_code_below_0x20_closes => "command code below 0x20";
    helo_without_nul_closes => "HELO without its NUL";
    mail_with_empty_payload_closes => "MAIL with an empty payload";
    mail_argument_without_nul_is_dropped => "MAIL's last argument without its NUL";
    rcpt_without_nul_closes => "RCPT without its NUL";
    header_value_without_nul_closes => "HEADER without the value's NUL";
    unknown_without_nul_is_answered => "UNKNOWN without its NUL";
    short_optneg_closes_without_a_reply => "OPTNEG shorter than 12 bytes";
    connect_with_unknown_family_closes => "CONNECT with an unknown family";
    connect_truncated_after_family_closes => "CONNECT truncated after the family";
    connect_with_port_but_no_address_closes => "CONNECT with a port but no address";
    macro_packet_without_stage_closes => "macro packet with no stage";
    odd_macro_packets_are_ignored => "macro packets of odd shape are ignored";
    body_after_rcpt_without_data_is_answered => "BODY after RCPT, with no DATA";
    body_right_after_data_closes => "BODY right after DATA";
    eom_with_no_message_closes => "EOM with no message";
    rcpt_with_no_message_closes => "RCPT with no message";
    mail_inside_a_message_restarts_it => "MAIL inside a message aborts it and starts anew";
    second_optneg_closes => "a second OPTNEG";
    second_connect_closes => "a second CONNECT";
    mta_below_version_2_is_refused => "an MTA below protocol version 2";
    mta_lacking_actions_is_refused => "an MTA that lacks the milter's actions";
    oversize_header_payload_closes => "oversize HEADER payload";
    quit_inside_a_message_closes => "QUIT in the middle of a message";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_payloads_of_every_command_close_before_any_allocation() {
    for code in *b"OCHMRTLNBEUDAQK" {
        let mut v = preamble();
        v.extend_from_slice(&(1_048_576u32 + 1).to_be_bytes());
        v.push(code);
        let s = server(Config::default()).await;
        let seen = send(s.port, &v).await;
        assert_eq!(
            (seen.codes.as_str(), seen.closed),
            ("Occ", true),
            "{}",
            code as char
        );
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_served_in_bounded_memory() {
    let _turn = MEASURING.lock().await;
    let s = server(Config::default()).await;
    let before = rss_kib();
    // 100,000 macro packets, 10,000 recipients, 10,000 headers of 64 bytes, a 50 MiB body.
    let mut v = preamble();
    for i in 0..100_000u32 {
        v.extend(frame(b'D', format!("M{{x}}\0{i}\0").as_bytes()));
    }
    v.extend(wire(&[Command::Mail(Envelope::new("<a@example.org>"))]));
    for i in 0..10_000 {
        v.extend(wire(&[Command::Rcpt(Envelope::new(format!(
            "<r{i}@example.net>"
        )))]));
    }
    v.extend(wire(&[Command::Data]));
    for i in 0..10_000 {
        v.extend(wire(&[Command::Header {
            name: "X-Flood".into(),
            value: format!("{i:060}").into(),
        }]));
    }
    v.extend(wire(&[Command::Eoh]));
    let chunk = vec![b'x'; 65_535];
    for _ in 0..(50 * 1024 * 1024 / 65_535) {
        v.extend(wire(&[Command::Body(chunk.clone().into())]));
    }
    v.extend(wire(&[
        Command::Eom {
            chunk: Default::default(),
        },
        Command::Quit,
    ]));
    let input = v.len();
    let seen = send(s.port, &v).await;
    drop(v);
    // O, CONNECT, HELO, MAIL, 10,000 RCPT, DATA, 10,000 HEADER, EOH, 800 BODY, then h and c.
    let expected = 3 + 1 + 10_000 + 1 + 10_000 + 1 + 800 + 2;
    assert_eq!(seen.codes.len(), expected, "every command answered once");
    assert!(seen.codes.ends_with("hc"));
    assert!(seen.closed);
    let grown = rss_kib().saturating_sub(before);
    println!(
        "flood of {} MiB served; memory grew {grown} KiB",
        input / (1024 * 1024)
    );
    assert!(
        grown < 200 * 1024,
        "memory grew by {grown} KiB for {input} bytes of input"
    );
    s.still_serves().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_peer_is_dropped_after_the_read_timeout() {
    let s = server(Config {
        read_timeout: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let mut v = preamble();
    v.extend_from_slice(&[0, 0, 0, 20, b'H', b'a']); // half a frame, then nothing
    c.write_all(&v).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0; 1024];
    let mut total = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("closed in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert_eq!(
        total,
        17 + 5 + 5,
        "OPTNEG reply and two continues, then a close"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2) && started.elapsed() < Duration::from_secs(8)
    );
    s.still_serves().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_dropped_without_unbounded_buffering() {
    let _turn = MEASURING.lock().await;
    let s = server(Config {
        write_timeout: Duration::from_secs(1),
        ..Config::default()
    })
    .await;
    let c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let (_r, mut w) = c.into_split(); // never read
    let mut v = preamble();
    let helo = wire(&[Command::Helo {
        name: "again".into(),
    }]);
    for _ in 0..3_000_000 {
        v.extend_from_slice(&helo); // each owes a 5-byte reply: 15 MB of replies nobody reads
    }
    let before = rss_kib();
    let write = tokio::time::timeout(Duration::from_secs(30), w.write_all(&v)).await;
    assert!(
        matches!(write, Ok(Err(_)) | Err(_)),
        "the milter stops taking input and closes"
    );
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 32 * 1024, "memory grew by {grown} KiB");
    s.still_serves().await;
    s.stop().await;
}
