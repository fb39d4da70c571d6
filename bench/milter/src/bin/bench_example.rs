//! The whole-message layer against the raw API (`bench/filter.py`): one filter written both ways.
//! For mail from outside example.com it tags the subject (`[ext] `) and appends a footer to the
//! body; mail from example.com passes untouched. `milterkit bench` sends from example.org, so
//! every message is tagged and gets a footer.
//!
//! - `--raw`: the [`Milter`] trait as a user writes it for this job: MAIL, HEADER, BODY and EOM
//!   handled (and so answered), the subject and the body collected in the message state, CHGHEADER
//!   and REPLBODY at end of message.
//! - `--raw-no-reply`: the same, asking the MTA not to wait for replies to MAIL, HEADER and BODY
//!   (`Request::no_reply`), as the whole-message layer does by itself: the layer's own cost.
//! - `--filter`: [`milterkit::filter`] with its defaults: one `decide` at end of message.
//!
//! Run: `cargo run --release -p milterkit-bench --bin bench_example -- --filter unix:/tmp/ex.sock`;
//! it stops on SIGINT or SIGTERM.

use milterkit::filter::{Filter, Filtered, Options, Transaction};
use milterkit::{
    Actions, Body, Decision, Eom, Header, Mail, Milter, Offer, Request, Result, Stages,
};

const FOOTER: &[u8] = b"\r\n-- \r\nThis message came from outside example.com.\r\n";

/// True for a sender outside example.com.
fn outside(sender: &[u8]) -> bool {
    let s = sender.strip_suffix(b">").unwrap_or(sender);
    let domain = s.rsplit(|&c| c == b'@').next().unwrap_or(b"");
    !domain.eq_ignore_ascii_case(b"example.com")
}

fn tagged(subject: &[u8]) -> Vec<u8> {
    [&b"[ext] "[..], subject].concat()
}

/// The raw API version; with `no_reply` it asks the MTA not to wait for replies to MAIL, HEADER
/// and BODY, as the whole-message layer does.
#[derive(Default)]
struct Raw {
    no_reply: bool,
}

/// What the raw version keeps of a message.
#[derive(Default)]
struct Collected {
    outside: bool,
    subject: Option<Vec<u8>>,
    body: Vec<u8>,
}

impl Milter for Raw {
    type Message = Collected;
    const STAGES: Stages = Stages::MAIL
        .union(Stages::HEADER)
        .union(Stages::BODY)
        .union(Stages::EOM);
    const ACTIONS: Actions = Actions::CHANGE_HEADER.union(Actions::CHANGE_BODY);

    async fn negotiate(&mut self, _: &Offer, request: &mut Request) -> Result<()> {
        if self.no_reply {
            request.no_reply = Stages::MAIL | Stages::HEADER | Stages::BODY;
        }
        Ok(())
    }

    async fn mail(&mut self, m: &mut Collected, mail: Mail<'_>) -> Result<Decision> {
        m.outside = outside(&mail.address());
        Ok(Decision::Continue)
    }

    async fn header(&mut self, m: &mut Collected, h: Header<'_>) -> Result<Decision> {
        if m.subject.is_none() && h.name().eq_ignore_ascii_case(b"Subject") {
            m.subject = Some(h.value().to_vec());
        }
        Ok(Decision::Continue)
    }

    async fn body(&mut self, m: &mut Collected, b: Body<'_>) -> Result<Decision> {
        m.body.extend_from_slice(b.chunk());
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, m: &mut Collected, eom: &mut Eom<'_>) -> Result<Decision> {
        if m.outside {
            if let Some(subject) = &m.subject {
                eom.change_header("Subject", 1, tagged(subject))?;
            }
            let mut body = std::mem::take(&mut m.body);
            body.extend_from_slice(FOOTER);
            eom.replace_body(body)?;
        }
        Ok(Decision::Continue)
    }
}

/// The whole-message version.
struct Tag;

impl Filter for Tag {
    const ACTIONS: Actions = Actions::CHANGE_HEADER.union(Actions::CHANGE_BODY);

    async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
        if !tx.sender().is_some_and(|s| outside(s.raw().as_bytes())) {
            return Ok(Decision::Continue);
        }
        if let Some(subject) = tx.header("Subject").map(|f| tagged(&f.value())) {
            tx.set_header("Subject", subject)?;
        }
        tx.append_body(FOOTER)?;
        Ok(Decision::Continue)
    }
}

/// `bench_example (--raw|--raw-no-reply|--filter) SPEC`, on a multi-thread runtime (what `#[tokio::main]` gives).
fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(spec)) = (args.first(), args.get(1)) else {
        return Err("usage: bench_example (--raw|--raw-no-reply|--filter) SPEC".into());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = milterkit::bind(spec).await?;
        match mode.as_str() {
            "--raw" | "--raw-no-reply" => {
                let no_reply = mode == "--raw-no-reply";
                milterkit::serve(listener, move || Raw { no_reply })
                    .with_graceful_shutdown(milterkit_bench::stopped())
                    .await?
            }
            "--filter" => {
                let milter = Filtered::new(Tag, Options::default());
                milterkit::serve(listener, move || milter.clone())
                    .with_graceful_shutdown(milterkit_bench::stopped())
                    .await?
            }
            other => return Err(format!("unknown mode {other}").into()),
        }
        Ok(())
    })
}
