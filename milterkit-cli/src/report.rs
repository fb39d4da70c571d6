//! Showing an [`Outcome`] to a person (text, colour on a terminal) or to a script (JSON).

use std::fmt::Write as _;

use milterkit::mta::{Outcome, Verdict};
use milterkit::proto::Sent;
use milterkit::{Agreement, Decision, Modification, Stage};
use serde_json::{json, Value};

use crate::diff::{diff, Line};

/// ANSI styles, or none when the output is not a terminal.
#[derive(Clone, Copy)]
pub(crate) struct Style {
    pub(crate) colour: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn red(&self, s: &str) -> String {
        self.paint("31", s)
    }
    fn green(&self, s: &str) -> String {
        self.paint("32", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.paint("33", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A decision in words: `continue`, `reject`, `reply 550 5.7.1 …`.
pub(crate) fn decision_text(d: &Decision) -> String {
    match d {
        Decision::Reply(r) => format!("reply {}", r.to_string().replace("\r\n", " / ")),
        other => other.name().to_owned(),
    }
}

/// A modification in words.
pub(crate) fn modification_text(m: &Modification) -> String {
    let args = |a: &Option<bytes::Bytes>| {
        a.as_ref()
            .map(|a| format!(" {}", lossy(a)))
            .unwrap_or_default()
    };
    match m {
        Modification::AddHeader { name, value } => {
            format!("add header {}: {:?}", lossy(name), lossy(value))
        }
        Modification::InsertHeader { index, name, value } => {
            format!(
                "insert header at {index} {}: {:?}",
                lossy(name),
                lossy(value)
            )
        }
        Modification::ChangeHeader { index, name, value } if value.is_empty() => {
            format!("delete header {} #{index}", lossy(name))
        }
        Modification::ChangeHeader { index, name, value } => {
            format!(
                "change header {} #{index} to {:?}",
                lossy(name),
                lossy(value)
            )
        }
        Modification::ChangeFrom { sender, args: a } => {
            format!("change sender to {}{}", lossy(sender), args(a))
        }
        Modification::AddRcpt { rcpt } => format!("add recipient {}", lossy(rcpt)),
        Modification::AddRcptPar { rcpt, args: a } => {
            format!("add recipient {}{}", lossy(rcpt), args(a))
        }
        Modification::DeleteRcpt { rcpt } => format!("delete recipient {}", lossy(rcpt)),
        Modification::ReplaceBody { chunk } => format!("replace body ({} bytes)", chunk.len()),
        Modification::Quarantine { reason } => format!("quarantine: {:?}", lossy(reason)),
        other => format!("{other:?}"),
    }
}

fn verdict_text(v: Option<&Verdict>) -> &'static str {
    match v {
        Some(Verdict::Accept) | None => "accept",
        Some(Verdict::Discard) => "discard",
        Some(Verdict::Reject(_)) => "reject",
        Some(Verdict::Tempfail(_)) => "tempfail",
        Some(_) => "other",
    }
}

fn agreement_text(a: &Agreement) -> String {
    let stages: Vec<&str> = a.sent_stages().iter_stages().map(Stage::name).collect();
    let no_reply: Vec<&str> = Stage::ALL
        .into_iter()
        .filter(|s| a.sends(*s) && !a.expects_reply(*s))
        .map(Stage::name)
        .collect();
    let actions: Vec<&str> = a.actions.iter_names().map(|(n, _)| n).collect();
    format!(
        "version {}, actions {}, stages {}{}",
        a.version,
        if actions.is_empty() {
            "none".into()
        } else {
            actions.join(" ")
        },
        stages.join(" "),
        if no_reply.is_empty() {
            String::new()
        } else {
            format!(", no reply to {}", no_reply.join(" "))
        }
    )
}

/// The outcome of one message, for people.
pub(crate) fn human(out: &Outcome, original: &[u8], style: Style) -> String {
    let mut s = String::new();
    if let Some(a) = &out.agreement {
        let _ = writeln!(s, "{} {}", style.bold("negotiated:"), agreement_text(a));
    }
    let _ = writeln!(s, "{}", style.bold("stages:"));
    let mut bodies = 0;
    let skipped_bodies = |s: &mut String, bodies: &mut u32| {
        if *bodies > 0 {
            let _ = writeln!(
                s,
                "  BODY     {bodies} chunk(s) not sent: the milter skips this stage or asked to skip the rest"
            );
            *bodies = 0;
        }
    };
    for step in &out.steps {
        if step.stage == Stage::Body && step.sent == Sent::Skipped {
            bodies += 1;
            continue;
        }
        // Skipped chunks are summed up in one line, in their place (before EOM).
        skipped_bodies(&mut s, &mut bodies);
        let arg = step.argument.as_deref().map(lossy).unwrap_or_default();
        let answer = match (&step.decision, step.sent) {
            (Some(d @ Decision::Continue), _) => style.dim(&decision_text(d)),
            (Some(d @ (Decision::Accept | Decision::Skip)), _) => style.green(&decision_text(d)),
            (Some(d), _) => style.red(&decision_text(d)),
            (None, Sent::Skipped) => style.dim("(not sent: the milter skips this stage)"),
            (None, Sent::NoReply) => style.dim("(no reply asked)"),
            (None, _) => style.dim("(no answer)"),
        };
        let _ = writeln!(
            s,
            "  {:<8} {:<40} {answer}",
            step.stage.name(),
            truncate(&arg, 40)
        );
    }
    skipped_bodies(&mut s, &mut bodies);
    if out.progress > 0 {
        let _ = writeln!(s, "  progress: {} packet(s)", out.progress);
    }
    let _ = writeln!(s, "{}", style.bold("modifications:"));
    if out.modifications.is_empty() {
        let _ = writeln!(s, "  none");
    }
    let mut body_chunks = 0;
    for m in &out.modifications {
        if let Modification::ReplaceBody { .. } = m {
            body_chunks += 1;
            continue;
        }
        let _ = writeln!(s, "  {}", style.yellow(&modification_text(m)));
    }
    if body_chunks > 0 {
        let size: usize = out
            .modifications
            .iter()
            .map(|m| match m {
                Modification::ReplaceBody { chunk } => chunk.len(),
                _ => 0,
            })
            .sum();
        let _ = writeln!(
            s,
            "  {}",
            style.yellow(&format!(
                "replace body ({size} bytes in {body_chunks} chunk(s))"
            ))
        );
    }
    for (rcpt, d) in &out.refused {
        let _ = writeln!(
            s,
            "{} {} ({})",
            style.bold("refused:"),
            lossy(rcpt),
            decision_text(d)
        );
    }
    let verdict = verdict_text(out.verdict.as_ref());
    let reply = match &out.verdict {
        Some(Verdict::Reject(Some(r)) | Verdict::Tempfail(Some(r))) => format!(" {r}"),
        _ => String::new(),
    };
    let painted = if verdict == "accept" {
        style.green(verdict)
    } else {
        style.red(verdict)
    };
    let _ = writeln!(
        s,
        "{} {}{}",
        style.bold("verdict:"),
        painted,
        reply.replace("\r\n", " / ")
    );
    if let Some(c) = &out.closed {
        let _ = writeln!(s, "{} {c}", style.bold("milter connection closed:"));
    }
    if let Some(d) = &out.delivery {
        let to: Vec<String> = d.recipients.iter().map(|r| lossy(&r.address)).collect();
        let _ = writeln!(
            s,
            "{} from {} to {}",
            style.bold("delivery:"),
            lossy(&d.sender.address),
            to.join(", ")
        );
        if let Some(q) = &d.quarantine {
            let _ = writeln!(s, "  held in quarantine: {}", lossy(q));
        }
        let (old, new) = (lossy(original), lossy(&d.message));
        if old == new {
            let _ = writeln!(s, "{} unchanged", style.bold("message:"));
        } else {
            let _ = writeln!(s, "{}", style.bold("message (- before, + after):"));
            for line in diff(&old, &new) {
                let l = match line {
                    Line::Same(t) => format!("  {t}"),
                    Line::Removed(t) => style.red(&format!("- {t}")),
                    Line::Added(t) => style.green(&format!("+ {t}")),
                    Line::Skipped(n) => style.dim(&format!("  … {n} unchanged line(s)")),
                };
                let _ = writeln!(s, "  {}", truncate(&l, 200));
            }
        }
    }
    s
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let t: String = s.chars().take(max - 1).collect();
        format!("{t}…")
    }
}

/// The outcome of one message, for scripts: milterkit's own serialisation of [`Outcome`] (its
/// `serde` feature): every step with its stage, argument, how it was sent and the decision; every
/// modification with all its fields (replacement body chunks included); refused recipients; the
/// verdict with the milter's reply; the delivery (envelope with ESMTP arguments, quarantine, the
/// whole message); the agreement (version, actions and protocol as flag names, macro lists).
/// Byte strings are text when UTF-8, else arrays of byte values.
pub(crate) fn to_json(out: &Outcome) -> Value {
    // Serialising into a `Value` fails only on a map with non-text keys, and an Outcome has none.
    serde_json::to_value(out).unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use milterkit::mta::Step;

    fn step(stage: Stage, sent: Sent, decision: Option<Decision>) -> Step {
        Step {
            stage,
            argument: None,
            sent,
            decision,
        }
    }

    #[test]
    fn skipped_body_chunks_are_summed_up_in_their_place() {
        let out = Outcome {
            steps: vec![
                step(Stage::Eoh, Sent::Skipped, None),
                step(Stage::Body, Sent::Skipped, None),
                step(Stage::Body, Sent::Skipped, None),
                step(
                    Stage::Eom,
                    Sent::AwaitingReply(Stage::Eom),
                    Some(Decision::Accept),
                ),
            ],
            ..Outcome::default()
        };
        let text = human(&out, b"Subject: x\r\n\r\nhi\r\n", Style { colour: false });
        let body = text
            .find("BODY     2 chunk(s) not sent")
            .expect("the summary line");
        let eom = text.find("  EOM").expect("the EOM line");
        assert!(body < eom, "{text}");
    }
}
