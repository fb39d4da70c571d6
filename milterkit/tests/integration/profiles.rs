//! `Profile::postfix()` and `Profile::sendmail()` against the captures: the same SMTP sessions,
//! driven through `mta::Connection`, must give the MTA's command stream byte for byte.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use milterkit::mta::{Connection, Profile, Transaction};
use milterkit::proto::{Command, Family, FrameDecoder, Response};
use milterkit::{
    Body, Connect, Data, Decision, Eoh, Eom, Header, Helo, Mail, Milter, Modification, Offer, Rcpt,
    Request, Result, Stage, Stages, Unknown,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

fn captures() -> PathBuf {
    std::env::var("MILTERKIT_FIXTURES").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../milterkit-proto/testdata/captures"),
        PathBuf::from,
    )
}

fn frames(b: &[u8]) -> Vec<milterkit::proto::Frame> {
    let dec = FrameDecoder::default();
    let mut buf = BytesMut::from(b);
    std::iter::from_fn(|| dec.decode(&mut buf).unwrap()).collect()
}

/// A stream that records everything written through it.
struct Tee {
    inner: DuplexStream,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tee {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tee {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A milter that answers exactly what the capture's libmilter answered.
struct Replay {
    reply: milterkit::Agreement,
    script: VecDeque<Response>,
}

impl Replay {
    async fn next(&mut self, mut eom: Option<&mut Eom<'_>>) -> Result<Decision> {
        loop {
            match self.script.pop_front() {
                Some(Response::Decision(d)) => return Ok(d),
                Some(Response::Progress) => {
                    if let Some(e) = eom.as_deref_mut() {
                        e.progress().await;
                    }
                }
                Some(Response::Modification(m)) => {
                    let e = eom.as_deref_mut().ok_or("modification outside EOM")?;
                    match m {
                        Modification::AddHeader { name, value } => e.add_header(name, value)?,
                        Modification::InsertHeader { index, name, value } => {
                            e.insert_header(index, name, value)?
                        }
                        Modification::ChangeHeader { index, name, value } if value.is_empty() => {
                            e.delete_header(name, index)?
                        }
                        Modification::ChangeHeader { index, name, value } => {
                            e.change_header(name, index, value)?
                        }
                        Modification::ChangeFrom { sender, args: None } => e.change_from(sender)?,
                        Modification::ChangeFrom {
                            sender,
                            args: Some(a),
                        } => e.change_from_with_args(sender, a)?,
                        Modification::AddRcpt { rcpt } => e.add_rcpt(rcpt)?,
                        Modification::AddRcptPar { rcpt, args } => {
                            e.add_rcpt_with_args(rcpt, args.unwrap_or_default())?
                        }
                        Modification::DeleteRcpt { rcpt } => e.delete_rcpt(rcpt)?,
                        Modification::ReplaceBody { chunk } => e.replace_body(chunk)?,
                        Modification::Quarantine { reason } => e.quarantine(reason)?,
                        other => return Err(format!("{other:?}").into()),
                    }
                }
                other => return Err(format!("script: {other:?}").into()),
            }
        }
    }
}

impl Milter for Replay {
    type Message = ();
    const ACTIONS: milterkit::Actions = milterkit::Actions::CURRENT;
    async fn negotiate(&mut self, _: &Offer, r: &mut Request) -> Result<()> {
        r.actions = self.reply.actions;
        r.options = self.reply.protocol & milterkit::ProtocolFlags::CAPABILITIES;
        r.macros = self.reply.macros.clone();
        r.stages = Stages::all();
        Ok(())
    }
    async fn connect(&mut self, _: Connect<'_>) -> Result<Decision> {
        self.next(None).await
    }
    async fn helo(&mut self, _: Helo<'_>) -> Result<Decision> {
        self.next(None).await
    }
    async fn mail(&mut self, _: &mut (), _: Mail<'_>) -> Result<Decision> {
        self.next(None).await
    }
    async fn rcpt(&mut self, _: &mut (), _: Rcpt<'_>) -> Result<Decision> {
        self.next(None).await
    }
    async fn data(&mut self, _: &mut (), _: Data<'_>) -> Result<Decision> {
        self.next(None).await
    }
    async fn header(&mut self, _: &mut (), _: Header<'_>) -> Result<Decision> {
        self.next(None).await
    }
    async fn eoh(&mut self, _: &mut (), _: Eoh<'_>) -> Result<Decision> {
        self.next(None).await
    }
    async fn body(&mut self, _: &mut (), _: Body<'_>) -> Result<Decision> {
        self.next(None).await
    }
    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        self.next(Some(eom)).await
    }
    async fn unknown(&mut self, _: Unknown<'_>) -> Result<Decision> {
        self.next(None).await
    }
}

/// The SMTP session of a capture, as transactions: client, HELO, envelope, macro values, message.
fn transactions(cmds: &[Command], leading_space: bool) -> Vec<Transaction> {
    let mut out: Vec<Transaction> = Vec::new();
    let mut cur = Transaction::new();
    cur.recipients.clear();
    let mut headers = Vec::new();
    let mut body = Vec::new();
    let mut started = false;
    let flush = |cur: &mut Transaction,
                 headers: &mut Vec<u8>,
                 body: &mut Vec<u8>,
                 out: &mut Vec<Transaction>| {
        let mut raw = std::mem::take(headers);
        raw.extend_from_slice(b"\r\n");
        raw.append(body);
        cur.message = raw.into();
        let next = Transaction {
            client: cur.client.clone(),
            helo: cur.helo.clone(),
            recipients: Vec::new(),
            ..Transaction::new()
        };
        out.push(std::mem::replace(cur, next));
    };
    for c in cmds {
        match c {
            Command::Macro { stage, pairs } => {
                if *stage == b'M' && started {
                    flush(&mut cur, &mut headers, &mut body, &mut out);
                }
                for (n, v) in pairs {
                    // The queue id and the recipient address are computed; other recipient
                    // macros are the same for every recipient of these captures.
                    if n == "i" {
                        cur.queue_id = Some(v.clone());
                    } else if *stage != b'R'
                        || (n != "{rcpt_addr}"
                            && !cur
                                .macros
                                .iter()
                                .any(|(s, m, _)| *s == Stage::Rcpt && m == n))
                    {
                        let stage = Stage::from_code(*stage).expect("a macro packet of a stage");
                        cur.macros.push((stage, n.clone(), v.clone()));
                    }
                }
            }
            Command::Connect(c) => {
                let text = String::from_utf8_lossy(&c.address);
                let ip = text.trim_start_matches("IPv6:").parse().ok();
                cur.client = milterkit::mta::Client {
                    hostname: Some(c.hostname.clone()),
                    address: if c.family == Family::Unknown {
                        None
                    } else {
                        ip
                    },
                    port: c.port,
                };
            }
            Command::Helo { name } => cur.helo = name.clone(),
            Command::Unknown { line } => {
                if started {
                    // After a refused MAIL: that transaction is over; the command opens the next.
                    flush(&mut cur, &mut headers, &mut body, &mut out);
                    started = false;
                }
                cur.unknown.push(line.clone());
            }
            Command::Mail(e) => {
                if started && !cur.macros.iter().any(|(s, _, _)| *s == Stage::Mail) {
                    flush(&mut cur, &mut headers, &mut body, &mut out);
                }
                started = true;
                cur.sender = e.clone();
            }
            Command::Rcpt(e) => cur.recipients.push(e.clone()),
            Command::Header { name, value } => {
                headers.extend_from_slice(name);
                headers.push(b':');
                if !leading_space {
                    headers.push(b' ');
                }
                let value: Vec<u8> = value
                    .iter()
                    .flat_map(|&b| {
                        if b == b'\n' {
                            vec![b'\r', b'\n']
                        } else {
                            vec![b]
                        }
                    })
                    .collect();
                headers.extend_from_slice(&value);
                headers.extend_from_slice(b"\r\n");
            }
            Command::Body(chunk) => body.extend_from_slice(chunk),
            Command::Eom { .. } => {
                flush(&mut cur, &mut headers, &mut body, &mut out);
                started = false;
            }
            _ => {}
        }
    }
    if started {
        flush(&mut cur, &mut headers, &mut body, &mut out);
    }
    out
}

#[tokio::test]
async fn each_profile_sends_what_its_mta_sent_in_every_capture() {
    let mut checked = 0;
    for (folder, profile) in [
        ("postfix", Profile::postfix()),
        ("sendmail", Profile::sendmail()),
        ("postfix-variant", Profile::postfix()),
        ("sendmail-variant", Profile::sendmail()),
    ] {
        let dir = captures().join(folder);
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".mta.bin"))
            .collect();
        names.sort();
        for path in names {
            let id = format!("{folder}/{}", path.file_name().unwrap().to_string_lossy());
            let mta_bytes = std::fs::read(&path).unwrap();
            let milter_bytes =
                std::fs::read(path.to_string_lossy().replace(".mta.bin", ".milter.bin")).unwrap();
            let cmds: Vec<Command> = frames(&mta_bytes)
                .into_iter()
                .map(|f| Command::decode(f).unwrap())
                .collect();
            let mut script: VecDeque<Response> = frames(&milter_bytes)
                .into_iter()
                .map(|f| Response::decode(f).unwrap())
                .collect();
            let Some(Response::Optneg(reply)) = script.pop_front() else {
                panic!("{id}")
            };
            let leading_space = reply.leading_space();
            let (mta_end, milter_end) = tokio::io::duplex(1 << 20);
            let milter = Replay { reply, script };
            let served = tokio::spawn(async move {
                milterkit::serve_connection(milter_end, milter, &milterkit::Config::default()).await
            });
            let written = Arc::new(Mutex::new(Vec::new()));
            let tee = Tee {
                inner: mta_end,
                written: written.clone(),
            };
            let mut conn = Connection::negotiate(tee, profile.clone()).await.unwrap();
            for tx in transactions(&cmds, leading_space) {
                conn.run(&tx).await.unwrap_or_else(|e| panic!("{id}: {e}"));
            }
            conn.quit().await.unwrap();
            served
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{id}: milter side: {e}"));
            let ours: Vec<Command> = frames(&written.lock().unwrap())
                .into_iter()
                .map(|f| Command::decode(f).unwrap())
                .collect();
            for (i, (a, b)) in ours.iter().zip(&cmds).enumerate() {
                assert_eq!(a, b, "{id}: command {i} differs");
            }
            assert_eq!(
                ours.len(),
                cmds.len(),
                "{id}: command count; ours ends {:?}",
                ours.last()
            );
            assert_eq!(
                &written.lock().unwrap()[..],
                &mta_bytes[..],
                "{id}: bytes differ"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 56, "every capture with streams was compared");
    let _ = (Stage::Eom, Bytes::new());
}
