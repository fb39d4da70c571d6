//! How a given MTA talks to a milter: [`Profile`].

use bytes::Bytes;
use milterkit_proto::{Agreement, MacroStage, Mta, Offer, Stage};

/// How an MTA talks to a milter: what it offers, which macros it sends at which stage, and its
/// habits ([`Mta`]). `Profile::postfix()` and `Profile::sendmail()` reproduce the captures in
/// the project's captures.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Whose habits.
    pub mta: Mta,
    /// The OPTNEG offer.
    pub offer: Offer,
    /// The macro names sent at each stage (by command code: `C H M R T N E`, and for Postfix `L`
    /// before headers, `B` before body chunks, `U` before UNKNOWN); a milter's own list replaces
    /// its stage's.
    pub macros: Vec<(Stage, Vec<&'static str>)>,
    /// Fixed macro values: the MTA's name, version and the like.
    pub values: Vec<(&'static str, Bytes)>,
}

/// The TLS macros both MTAs send at HELO by default.
const TLS_MACROS: &str = "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}";

/// Macro lists as the MTAs' configurations write them: names separated by spaces.
fn lists(lists: &[(Stage, &'static str)]) -> Vec<(Stage, Vec<&'static str>)> {
    lists
        .iter()
        .map(|&(stage, names)| (stage, names.split_whitespace().collect()))
        .collect()
}

fn values(pairs: &[(&'static str, &'static str)]) -> Vec<(&'static str, Bytes)> {
    pairs
        .iter()
        .map(|&(name, value)| (name, Bytes::from_static(value.as_bytes())))
        .collect()
}

impl Profile {
    /// Postfix 3.7 with its default macro lists (`postconf milter_*_macros`).
    pub fn postfix() -> Profile {
        let mail =
            "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}";
        Profile {
            mta: Mta::Postfix,
            offer: Offer::default(),
            macros: lists(&[
                (Stage::Connect, "j {daemon_name} {daemon_addr} v _"),
                (Stage::Helo, TLS_MACROS),
                (Stage::Mail, mail),
                (Stage::Rcpt, "i {rcpt_addr} {rcpt_host} {rcpt_mailer}"),
                (Stage::Data, "i"),
                (Stage::Header, "i"),
                (Stage::Eoh, "i"),
                (Stage::Body, "i"),
                (Stage::Eom, "i"),
                (Stage::Unknown, ""),
            ]),
            values: values(&[
                ("j", "mx.example.org"),
                ("{daemon_name}", "mx.example.org"),
                ("{daemon_addr}", "127.0.0.1"),
                ("v", "Postfix 3.7.11"),
                ("{mail_mailer}", "smtp"),
                ("{rcpt_mailer}", "smtp"),
            ]),
        }
    }

    /// Sendmail 8.17 with the default lists of `cf/m4/cfhead.m4`.
    pub fn sendmail() -> Profile {
        let mail =
            "i {auth_type} {auth_authen} {auth_ssf} {auth_author} {mail_mailer} {mail_host} {mail_addr}";
        Profile {
            mta: Mta::Sendmail,
            offer: Offer::default(),
            macros: lists(&[
                (Stage::Connect, "j _ {daemon_name} {if_name} {if_addr}"),
                (Stage::Helo, TLS_MACROS),
                (Stage::Mail, mail),
                (Stage::Rcpt, "{rcpt_mailer} {rcpt_host} {rcpt_addr}"),
                (Stage::Eom, "{msg_id}"),
            ]),
            values: values(&[
                ("j", "mx.example.org"),
                ("{daemon_name}", "MTA"),
                ("{if_name}", "localhost"),
                ("v", "8.17.1.9"),
                ("{mail_mailer}", "esmtp"),
                ("{rcpt_mailer}", "esmtp"),
            ]),
        }
    }

    /// The names this profile sends at `stage` under `agreement` (the milter's list wins).
    pub(super) fn names(&self, stage: Stage, agreement: &Agreement) -> Option<Vec<Bytes>> {
        let own = MacroStage::of(stage).and_then(|s| agreement.macros.get(s));
        // Sendmail honours an EOM list only if an EOH list came too.
        let own = match (self.mta, stage, own) {
            (Mta::Sendmail, Stage::Eom, Some(_))
                if agreement.macros.get(MacroStage::EOH).is_none() =>
            {
                None
            }
            (_, _, own) => own,
        };
        if let Some(list) = own {
            if !list.is_empty() || self.mta == Mta::Sendmail {
                return Some(
                    list.split(|&c| c == b' ')
                        .filter(|n| !n.is_empty())
                        .map(Bytes::copy_from_slice)
                        .collect(),
                );
            }
        }
        self.macros
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, names)| {
                names
                    .iter()
                    .map(|n| Bytes::from_static(n.as_bytes()))
                    .collect()
            })
    }
}
