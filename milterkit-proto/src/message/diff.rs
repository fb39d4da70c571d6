//! From an edited header list back to milter modifications: the fewest CHGHEADER, ADDHEADER and
//! INSHEADER that turn the header list the milter was shown into the edited one, by the rules of
//! the MTA in front ([`Mta`]), which [`Message::apply`](super::Message::apply) follows too.

use bytes::Bytes;

use super::{Mta, SENDMAIL_DEFAULTS};
use crate::response::Modification;

/// One field of an edited header list: its name and value (as the milter sees values: without
/// the leading space, folded lines joined with LF), and which field of the original list it is,
/// if it is one (kept, possibly with a new value); `None` for a field the milter adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field name.
    pub name: Bytes,
    /// The value.
    pub value: Bytes,
    /// The index of the original field this one is, if any.
    pub origin: Option<usize>,
}

/// The modifications that turn `original` (the header fields the MTA showed the milter, in order,
/// as `(name, value)`) into `edited`, for `rules`' MTA, without `SMFIP_HDR_LEADSPC`:
///
/// - a kept field with a new value: one CHGHEADER (by its index among the original fields of its
///   name, counted before anything is deleted);
/// - a field left out: one CHGHEADER with an empty value, from the last to the first, so that
///   Postfix (which renumbers after a delete) and Sendmail (which does not) read the same indexes;
/// - a new field: ADDHEADER where it goes last and the MTA appends it there, otherwise INSHEADER
///   right after the field before it, counted the MTA's way (its own `Received:`, and for
///   Sendmail its default headers, stand ahead of the message's and count; Sendmail ignores
///   ADDHEADER of its default headers and puts a `Received:` on top). A new field at the top goes
///   above the MTA's own `Received:`.
///
/// Kept fields must keep their order (an `origin` that does not follow the one before it makes
/// that field a new one); an unchanged list gives nothing. A new field with an empty value would
/// be a delete for CHGHEADER, so it is always added or inserted.
///
/// ```
/// use bytes::Bytes;
/// use milterkit_proto::message::{header_modifications, Field, Mta};
/// use milterkit_proto::Modification;
///
/// let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
/// let original = [(b("Subject"), b("Hi")), (b("X-Old"), b("1"))];
/// let edited = [
///     Field { name: b("X-Tag"), value: b("yes"), origin: None },
///     Field { name: b("Subject"), value: b("[ext] Hi"), origin: Some(0) },
/// ];
/// let mods = header_modifications(&original, &edited, Mta::Postfix);
/// assert_eq!(mods, [
///     Modification::ChangeHeader { index: 1, name: b("Subject"), value: b("[ext] Hi") },
///     Modification::ChangeHeader { index: 1, name: b("X-Old"), value: Bytes::new() },
///     Modification::InsertHeader { index: 0, name: b("X-Tag"), value: b("yes") },
/// ]);
/// ```
pub fn header_modifications(
    original: &[(Bytes, Bytes)],
    edited: &[Field],
    rules: Mta,
) -> Vec<Modification> {
    // Which original field each edited one is, keeping only origins in increasing order.
    let mut kept: Vec<Option<usize>> = Vec::with_capacity(edited.len());
    let mut last = None;
    for f in edited {
        let origin = f
            .origin
            .filter(|&o| o < original.len() && last.is_none_or(|l| o > l));
        if origin.is_some() {
            last = origin;
        }
        kept.push(origin);
    }
    let occurrence = |i: usize| {
        let name = &original[i].0;
        1 + original[..i]
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count() as u32
    };
    let mut mods = Vec::new();
    // New values of kept fields.
    let mut retained = vec![false; original.len()];
    for (f, origin) in edited.iter().zip(&kept) {
        let Some(o) = *origin else { continue };
        retained[o] = true;
        if f.value != original[o].1 {
            mods.push(Modification::ChangeHeader {
                index: occurrence(o),
                name: original[o].0.clone(),
                value: f.value.clone(),
            });
        }
    }
    // Deletes, last first.
    for o in (0..original.len()).rev().filter(|&o| !retained[o]) {
        mods.push(Modification::ChangeHeader {
            index: occurrence(o),
            name: original[o].0.clone(),
            value: Bytes::new(),
        });
    }
    // The MTA's list as INSHEADER counts it: its own entries first, then the original fields
    // (Sendmail keeps deleted ones, marked); each entry is the original index it stands for.
    // Built at the first new field: most edits add none.
    let mut model: Vec<Option<usize>> = Vec::new();
    let mut prev = Before::Top;
    let tail = kept.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
    for (i, (f, origin)) in edited.iter().zip(&kept).enumerate() {
        if let Some(o) = *origin {
            prev = Before::Kept(o);
            continue;
        }
        if model.is_empty() {
            model.resize(rules.hidden_fields(), None);
            model.extend(
                (0..original.len())
                    .filter(|&o| retained[o] || rules == Mta::Sendmail)
                    .map(Some),
            );
        }
        let appends = i >= tail && appends_at_end(rules, &f.name);
        let at = if appends {
            model.len()
        } else {
            match prev {
                Before::Top => 0,
                Before::Kept(o) => model
                    .iter()
                    .position(|&m| m == Some(o))
                    .map_or(0, |p| p + 1),
                Before::New(p) => p + 1,
            }
        };
        mods.push(if appends {
            Modification::AddHeader {
                name: f.name.clone(),
                value: f.value.clone(),
            }
        } else {
            Modification::InsertHeader {
                index: at as u32,
                name: f.name.clone(),
                value: f.value.clone(),
            }
        });
        model.insert(at, None);
        prev = Before::New(at);
    }
    mods
}

/// What stands before a new field in the edited list.
enum Before {
    /// Nothing: it goes on top.
    Top,
    /// The original field of this index (its place in the MTA's list is looked up when needed).
    Kept(usize),
    /// A new field, at this place in the MTA's list.
    New(usize),
}

/// True if ADDHEADER of `name` appends it at the end of the header block under `rules`.
fn appends_at_end(rules: Mta, name: &[u8]) -> bool {
    match rules {
        Mta::Postfix => true,
        Mta::Sendmail => {
            !name.eq_ignore_ascii_case(b"Received")
                && !SENDMAIL_DEFAULTS
                    .iter()
                    .any(|d| name.eq_ignore_ascii_case(d.as_bytes()))
        }
    }
}
