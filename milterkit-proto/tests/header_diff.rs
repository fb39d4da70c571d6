//! `message::header_modifications` against `Message::apply`: for random header lists and random
//! edits, the modifications it emits, applied by Postfix's and by Sendmail's rules, give exactly
//! the edited list, and it emits one modification per changed, deleted or new field.

use bytes::Bytes;
use milterkit_proto::message::{header_modifications, Field, Message, Mta};
use milterkit_proto::{Envelope, Modification};
use proptest::prelude::*;

const NAMES: &[&str] = &[
    "Subject",
    "subject",
    "X-A",
    "x-a",
    "Received",
    "Date",
    "From",
    "Message-Id",
    "To",
    "X-B",
];
const VALUES: &[&str] = &["v1", "v2", "a b", "x\n\ty", "[tag] v1"];

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Change(usize, &'static str),
    Insert(usize, &'static str, &'static str),
}

fn field() -> impl Strategy<Value = (&'static str, &'static str)> {
    (prop::sample::select(NAMES), prop::sample::select(VALUES))
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(|i| Edit::Delete(i.index(1 << 16))),
        (any::<prop::sample::Index>(), prop::sample::select(VALUES))
            .prop_map(|(i, v)| Edit::Change(i.index(1 << 16), v)),
        (any::<prop::sample::Index>(), field()).prop_map(|(i, (n, v))| Edit::Insert(
            i.index(1 << 16),
            n,
            v
        )),
    ]
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A header field as it stands in a message, CRLF line ends.
fn line(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = name.to_vec();
    out.extend_from_slice(b": ");
    for &c in value {
        if c == b'\n' {
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(c);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn edited_list(original: &[(Bytes, Bytes)], edits: &[Edit]) -> Vec<Field> {
    let mut list: Vec<Field> = original
        .iter()
        .enumerate()
        .map(|(i, (name, value))| Field {
            name: name.clone(),
            value: value.clone(),
            origin: Some(i),
        })
        .collect();
    for e in edits {
        match *e {
            Edit::Delete(i) if !list.is_empty() => {
                list.remove(i % list.len());
            }
            Edit::Change(i, v) if !list.is_empty() => {
                let n = list.len();
                list[i % n].value = b(v);
            }
            Edit::Insert(i, n, v) => {
                let at = i % (list.len() + 1);
                list.insert(
                    at,
                    Field {
                        name: b(n),
                        value: b(v),
                        origin: None,
                    },
                );
            }
            _ => {}
        }
    }
    list
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn emitted_modifications_give_the_edited_list_under_both_mtas(
        fields in prop::collection::vec(field(), 0..8),
        edits in prop::collection::vec(edit(), 0..6),
    ) {
        let mut raw = Vec::new();
        for (n, v) in &fields {
            raw.extend_from_slice(&line(n.as_bytes(), v.as_bytes()));
        }
        raw.extend_from_slice(b"\r\nbody\r\n");
        let message = Message::parse(raw.into());
        let original: Vec<(Bytes, Bytes)> = message
            .headers
            .iter()
            .map(|h| (h.name.clone(), h.value_for_milter(false)))
            .collect();
        prop_assert_eq!(original.len(), fields.len());
        let edited = edited_list(&original, &edits);
        let mut expected = Vec::new();
        for f in &edited {
            expected.extend_from_slice(&line(&f.name, &f.value));
        }
        expected.extend_from_slice(b"\r\nbody\r\n");
        let kept: Vec<usize> = edited.iter().filter_map(|f| f.origin).collect();
        let changed = edited
            .iter()
            .filter(|f| f.origin.is_some_and(|o| original[o].1 != f.value))
            .count();
        let wanted = changed + (original.len() - kept.len()) + (edited.len() - kept.len());
        for rules in [Mta::Postfix, Mta::Sendmail] {
            let mods = header_modifications(&original, &edited, rules);
            prop_assert_eq!(mods.len(), wanted, "{:?}: {:?}", rules, mods);
            let delivery = message.apply(&Envelope::new("<a@x>"), &[], &mods, rules, false);
            prop_assert_eq!(
                String::from_utf8_lossy(&delivery.message),
                String::from_utf8_lossy(&expected),
                "{:?}: {:?}",
                rules,
                mods
            );
        }
    }
}

#[test]
fn an_unchanged_list_gives_nothing_and_appends_use_addheader_where_the_mta_appends() {
    let original = [(b("Subject"), b("Hi")), (b("Date"), b("today"))];
    let kept: Vec<Field> = original
        .iter()
        .enumerate()
        .map(|(i, (n, v))| Field {
            name: n.clone(),
            value: v.clone(),
            origin: Some(i),
        })
        .collect();
    assert!(header_modifications(&original, &kept, Mta::Sendmail).is_empty());
    let mut more = kept.clone();
    for name in ["X-Spam", "Message-Id"] {
        more.push(Field {
            name: b(name),
            value: b("1"),
            origin: None,
        });
    }
    let add = |name: &str| Modification::AddHeader {
        name: b(name),
        value: b("1"),
    };
    assert_eq!(
        header_modifications(&original, &more, Mta::Postfix),
        [add("X-Spam"), add("Message-Id")]
    );
    // Sendmail ignores ADDHEADER of its default headers: INSHEADER at the end instead, counted
    // with its eight own entries.
    assert_eq!(
        header_modifications(&original, &more, Mta::Sendmail),
        [
            add("X-Spam"),
            Modification::InsertHeader {
                index: 11,
                name: b("Message-Id"),
                value: b("1"),
            },
        ]
    );
}
