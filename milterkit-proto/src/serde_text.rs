//! How byte strings are serialised with the `serde` feature.
//!
//! Everything the protocol carries is bytes ([`Bytes`]): header names and values, addresses,
//! ESMTP parameters, reply text, body chunks, whole messages. With the `serde` feature they are
//! serialised as **text when they are valid UTF-8**, which is nearly always, and otherwise **as
//! bytes** ([`Serializer::serialize_bytes`]): serde_json writes those as an array of numbers
//! (`[72, 105, 255]`), binary formats as their byte string. A reader tells the two apart by type
//! (string or array); nothing is lost either way.
//!
//! ```
//! # use milterkit_proto::serde_text::Text;
//! assert_eq!(serde_json::to_string(&Text(b"X-Spam: yes")).unwrap(), r#""X-Spam: yes""#);
//! assert_eq!(serde_json::to_string(&Text(b"caf\xe9")).unwrap(), "[99,97,102,233]");
//! ```

use bytes::Bytes;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

/// A byte string serialised by the rule of this module: text when it is UTF-8, else bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text<'a>(pub &'a [u8]);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.serialize_bytes(self.0),
        }
    }
}

/// For `#[serde(serialize_with)]` on a byte-string field.
pub fn bytes<T, S>(b: &T, s: S) -> Result<S::Ok, S::Error>
where
    T: AsRef<[u8]> + ?Sized,
    S: Serializer,
{
    Text(b.as_ref()).serialize(s)
}

/// For `#[serde(serialize_with)]` on an optional byte-string field: `None` is serialised as none
/// (`null` in JSON).
pub fn option<S: Serializer>(b: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.serialize_some(&Text(b)),
        None => s.serialize_none(),
    }
}

/// For `#[serde(serialize_with)]` on a list of byte strings.
pub fn list<S: Serializer>(v: &[Bytes], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for b in v {
        seq.serialize_element(&Text(b))?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use crate::{MacroLists, MacroStage, Sent, Stage};

    #[test]
    fn macro_lists_and_sent_read_as_names() {
        let mut lists = MacroLists::default();
        lists.set(MacroStage::EOH, ["{daemon_name}", "j"]);
        lists.set(MacroStage(9), ["x"]);
        assert_eq!(
            serde_json::to_value(&lists).unwrap(),
            json!([{"stage": "EOH", "names": "{daemon_name} j"}, {"stage": 9, "names": "x"}])
        );
        assert_eq!(
            serde_json::to_value(Sent::NoReply).unwrap(),
            json!({"kind": "no_reply"})
        );
        assert_eq!(serde_json::to_value(Stage::Eom).unwrap(), json!("EOM"));
    }
}
