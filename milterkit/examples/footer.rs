//! A whole-message filter (`milterkit::filter`): mail from outside the local domains gets
//! `[EXTERNAL]` in front of its subject and a footer at the end of each text part (plain and
//! HTML, also inside multipart messages); local mail passes untouched.
//!
//! Run: `cargo run -p milterkit --example footer -- --socket unix:/run/milter/footer.sock`
//! (`--help` lists the flags of `milterkit::run!`). Its tests run with `cargo test -p milterkit
//! --example footer`.

use milterkit::filter::mail_parser::{Encoding, MimeHeaders, PartType};
use milterkit::filter::{Filter, Filtered, Options, Transaction};
use milterkit::{Actions, Decision, Result};

/// The filter: which domains are local, and what to add.
struct Footer {
    local_domains: Vec<String>,
    tag: &'static str,
    footer: &'static str,
}

impl Footer {
    fn new() -> Footer {
        Footer {
            local_domains: vec!["example.org".into(), "example.net".into()],
            tag: "[EXTERNAL]",
            footer: "This message came from outside the organisation. Be careful with links.",
        }
    }
}

impl Filter for Footer {
    const ACTIONS: Actions = Actions::CHANGE_HEADER
        .union(Actions::ADD_HEADER)
        .union(Actions::CHANGE_BODY);

    async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
        let local = tx
            .sender()
            .is_some_and(|s| self.local_domains.iter().any(|d| s.domain_in(d)));
        if local {
            return Ok(Decision::Continue);
        }
        let subject = tx
            .header("Subject")
            .map(|f| f.value().to_string_lossy().into_owned());
        match subject {
            Some(s) if s.trim_start().starts_with(self.tag) => {}
            Some(s) => tx.set_header("Subject", format!("{} {}", self.tag, s.trim_start()))?,
            None => tx.add_header("Subject", self.tag)?,
        }
        self.add_footers(tx)?;
        Ok(Decision::Continue)
    }
}

impl Footer {
    /// Puts the footer at the end of each plain-text and HTML body part. Parts in base64 are
    /// left as they are (re-encoding them is possible, but not this example's point).
    fn add_footers(&self, tx: &mut Transaction<'_>) -> Result<()> {
        let Some(mime) = tx.mime()? else {
            return Ok(());
        };
        let raw = mime.raw_message();
        let body_start = mime.root_part().offset_body as usize;
        // (where in `raw`, what to insert), in order.
        let mut inserts: Vec<(usize, String)> = Vec::new();
        let shown = mime.text_body.iter().chain(&mime.html_body);
        let mut ids: Vec<usize> = shown.map(|&id| id as usize).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let Some(part) = mime.parts.get(id) else {
                continue;
            };
            if part.encoding == Encoding::Base64 || part.is_content_type("multipart", "") {
                continue;
            }
            let (start, end) = (part.offset_body as usize, part.offset_end as usize);
            let content = &raw[start..end];
            let qp = part.encoding == Encoding::QuotedPrintable;
            let insert = match &part.body {
                PartType::Text(_) => {
                    // In a multipart message the CRLF before the boundary belongs to the
                    // boundary: the footer goes on lines of its own either way.
                    let footer = encode(self.footer, qp);
                    let text = if content.ends_with(b"\r\n") {
                        format!("-- \r\n{footer}\r\n")
                    } else {
                        format!("\r\n-- \r\n{footer}")
                    };
                    (end, text)
                }
                PartType::Html(_) => {
                    let at = find_ignore_case(content, b"</body>").map_or(end, |i| start + i);
                    (at, format!("<p>{}</p>", encode(self.footer, qp)))
                }
                _ => continue,
            };
            inserts.push(insert);
        }
        if inserts.is_empty() {
            return Ok(());
        }
        inserts.sort_by_key(|(at, _)| *at);
        let mut body = Vec::with_capacity(raw.len() - body_start + inserts.len() * 128);
        let mut from = body_start;
        for (at, text) in inserts {
            body.extend_from_slice(&raw[from..at]);
            body.extend_from_slice(text.as_bytes());
            from = at;
        }
        body.extend_from_slice(&raw[from..]);
        tx.replace_body(body)?;
        Ok(())
    }
}

/// The footer as it goes into a part: `=` escaped for quoted-printable.
fn encode(footer: &str, quoted_printable: bool) -> String {
    if quoted_printable {
        footer.replace('=', "=3D")
    } else {
        footer.to_owned()
    }
}

fn find_ignore_case(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len())
        .rposition(|w| w.eq_ignore_ascii_case(needle))
}

fn main() -> std::process::ExitCode {
    let milter = Filtered::new(Footer::new(), Options::default());
    milterkit::run!(move || milter.clone())
}

#[cfg(test)]
mod tests {
    use milterkit::mta::{Transaction as Message, Verdict};
    use milterkit::testing::Harness;

    use super::*;

    fn delivered(sender: &str, raw: &str) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let message = Message::new()
            .from(sender)
            .to("<bob@example.org>")
            .message(raw.to_owned());
        let mut postfix = Harness::postfix(Filtered::new(Footer::new(), Options::default()));
        let mut sendmail = Harness::sendmail(Filtered::new(Footer::new(), Options::default()));
        let p = rt.block_on(postfix.run(&message)).unwrap();
        let s = rt.block_on(sendmail.run(&message)).unwrap();
        assert_eq!(p.verdict, Some(Verdict::Accept));
        let (p, s) = (p.delivery.unwrap().message, s.delivery.unwrap().message);
        assert_eq!(p, s, "Postfix and Sendmail deliver the same");
        String::from_utf8(p.to_vec()).unwrap()
    }

    #[test]
    fn outside_mail_gets_the_tag_and_the_footer() {
        let out = delivered(
            "<eve@elsewhere.example>",
            "Subject: Hello\r\nFrom: eve@elsewhere.example\r\n\r\nHi Bob\r\n",
        );
        assert_eq!(
            out,
            "Subject: [EXTERNAL] Hello\r\nFrom: eve@elsewhere.example\r\n\r\nHi Bob\r\n-- \r\n\
             This message came from outside the organisation. Be careful with links.\r\n"
        );
    }

    #[test]
    fn local_mail_and_tagged_subjects_are_left_alone() {
        let raw = "Subject: Hello\r\n\r\nHi\r\n";
        assert_eq!(delivered("<alice@mail.example.org>", raw), raw);
        let out = delivered(
            "<eve@elsewhere.example>",
            "Subject: [EXTERNAL] Re: x\r\n\r\nHi\r\n",
        );
        assert!(
            out.starts_with("Subject: [EXTERNAL] Re: x\r\n\r\nHi\r\n-- \r\n"),
            "{out}"
        );
    }

    #[test]
    fn each_text_part_of_a_multipart_message_gets_the_footer_and_attachments_do_not() {
        let raw = "Subject: Report\r\n\
            MIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
            \r\n\
            --outer\r\n\
            Content-Type: multipart/alternative; boundary=\"alt\"\r\n\
            \r\n\
            --alt\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\
            \r\n\
            Caf=C3=A9 at 10\r\n\
            --alt\r\n\
            Content-Type: text/html\r\n\
            \r\n\
            <html><body><p>Caf\u{e9} at 10</p></body></html>\r\n\
            --alt--\r\n\
            --outer\r\n\
            Content-Type: application/pdf\r\n\
            Content-Disposition: attachment; filename=\"r.pdf\"\r\n\
            Content-Transfer-Encoding: base64\r\n\
            \r\n\
            JVBERi0=\r\n\
            --outer--\r\n";
        let out = delivered("<eve@elsewhere.example>", raw);
        let footer = "This message came from outside the organisation. Be careful with links.";
        assert!(out.starts_with("Subject: [EXTERNAL] Report\r\n"), "{out}");
        assert!(
            out.contains(&format!("Caf=C3=A9 at 10\r\n-- \r\n{footer}\r\n--alt\r\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "<p>Caf\u{e9} at 10</p><p>{footer}</p></body></html>"
            )),
            "{out}"
        );
        assert!(out.contains("\r\n\r\nJVBERi0=\r\n--outer--\r\n"), "{out}");
        assert_eq!(out.matches(footer).count(), 2);
    }
}
