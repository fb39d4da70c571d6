//! Macros: the values the MTA sends before each command, with libmilter's lifetimes, and the
//! macro lists a milter may request (`smfi_setsymlist`).

use bytes::Bytes;

use crate::frame::{count_nul, find_nul};
use crate::stage::Stage;

/// A stage number of the OPTNEG macro-list section (`SMFIM_*`). Unknown numbers are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacroStage(pub u32);

impl MacroStage {
    /// `SMFIM_CONNECT`: macros sent before CONNECT.
    pub const CONNECT: MacroStage = MacroStage(0);
    /// `SMFIM_HELO`: macros sent before HELO.
    pub const HELO: MacroStage = MacroStage(1);
    /// `SMFIM_ENVFROM`: macros sent before MAIL.
    pub const MAIL: MacroStage = MacroStage(2);
    /// `SMFIM_ENVRCPT`: macros sent before RCPT.
    pub const RCPT: MacroStage = MacroStage(3);
    /// `SMFIM_DATA`: macros sent before DATA.
    pub const DATA: MacroStage = MacroStage(4);
    /// `SMFIM_EOM`: macros sent before end of message (numerically before EOH).
    pub const EOM: MacroStage = MacroStage(5);
    /// `SMFIM_EOH`: macros sent before end of headers.
    pub const EOH: MacroStage = MacroStage(6);

    /// The macro-list stage of a reply-bearing stage, for the seven stages that have one.
    pub const fn of(stage: Stage) -> Option<MacroStage> {
        Some(match stage {
            Stage::Connect => Self::CONNECT,
            Stage::Helo => Self::HELO,
            Stage::Mail => Self::MAIL,
            Stage::Rcpt => Self::RCPT,
            Stage::Data => Self::DATA,
            Stage::Eoh => Self::EOH,
            Stage::Eom => Self::EOM,
            _ => return None,
        })
    }

    /// The stage this number belongs to, if it is one of the seven defined.
    pub const fn stage(self) -> Option<Stage> {
        Some(match self.0 {
            0 => Stage::Connect,
            1 => Stage::Helo,
            2 => Stage::Mail,
            3 => Stage::Rcpt,
            4 => Stage::Data,
            5 => Stage::Eom,
            6 => Stage::Eoh,
            _ => return None,
        })
    }
}

/// The macro lists of an OPTNEG reply: for some stages, the names the MTA should send there,
/// replacing its own list for that stage.
///
/// ```
/// # use milterkit_proto::{MacroLists, MacroStage};
/// let mut lists = MacroLists::default();
/// lists.set(MacroStage::CONNECT, ["{client_addr}", "j"]);
/// assert_eq!(lists.get(MacroStage::CONNECT), Some(&b"{client_addr} j"[..]));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[doc(alias = "smfi_setsymlist")]
pub struct MacroLists {
    entries: Vec<(MacroStage, Bytes)>,
}

impl MacroLists {
    /// No lists.
    pub const fn new() -> Self {
        MacroLists {
            entries: Vec::new(),
        }
    }

    /// Sets the list for `stage` (replacing an earlier one). Write one-letter names plain (`j`)
    /// and longer ones in braces (`{daemon_name}`): Sendmail needs the braces.
    pub fn set<I, N>(&mut self, stage: MacroStage, names: I)
    where
        I: IntoIterator<Item = N>,
        N: AsRef<[u8]>,
    {
        let mut joined = Vec::new();
        for name in names {
            if !joined.is_empty() {
                joined.push(b' ');
            }
            joined.extend_from_slice(name.as_ref());
        }
        self.set_raw(stage, Bytes::from(joined));
    }

    /// Sets the list for `stage` as the space-separated string that goes on the wire.
    pub fn set_raw(&mut self, stage: MacroStage, names: Bytes) {
        match self.entries.iter_mut().find(|(s, _)| *s == stage) {
            Some(entry) => entry.1 = names,
            None => self.entries.push((stage, names)),
        }
    }

    /// Appends an entry as it came off the wire, keeping duplicates and order.
    pub(crate) fn push(&mut self, stage: MacroStage, names: Bytes) {
        self.entries.push((stage, names));
    }

    /// The space-separated list for `stage`, if one was set.
    pub fn get(&self, stage: MacroStage) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, n)| &n[..])
    }

    /// The entries, in the order they were set.
    pub fn iter(&self) -> impl Iterator<Item = (MacroStage, &[u8])> {
        self.entries.iter().map(|(s, n)| (*s, &n[..]))
    }

    /// True when no list was set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// With the `serde` feature: the stage's name (`CONNECT`, `EOH`, ...) for the seven stages, the
/// number for another.
#[cfg(feature = "serde")]
impl serde::Serialize for MacroStage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.stage() {
            Some(stage) => s.serialize_str(stage.name()),
            None => s.serialize_u32(self.0),
        }
    }
}

/// With the `serde` feature: a list of `{"stage": ..., "names": ...}` in the order set, `names`
/// the space-separated list (text by the rule of [`crate::serde_text`]).
#[cfg(feature = "serde")]
impl serde::Serialize for MacroLists {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeSeq, SerializeStruct};
        struct Entry<'a>(MacroStage, &'a [u8]);
        impl serde::Serialize for Entry<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut e = s.serialize_struct("MacroList", 2)?;
                e.serialize_field("stage", &self.0)?;
                e.serialize_field("names", &crate::serde_text::Text(self.1))?;
                e.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.entries.len()))?;
        for (stage, names) in self.iter() {
            seq.serialize_element(&Entry(stage, names))?;
        }
        seq.end()
    }
}

/// One stage's slot, seen in the buffer of [`Macros`]: the pairs of the most recent
/// `SMFIC_MACRO` packet for that stage, as their strings in wire form (each followed by a NUL),
/// then the offset of each string's end from the slot's start (native-endian `u32`), so that a
/// lookup steps from pair to pair without scanning.
#[derive(Clone, Copy)]
struct Slot<'a> {
    wire: &'a [u8],
    ends: &'a [u8],
}

const OFFSET: usize = std::mem::size_of::<u32>();

impl<'a> Slot<'a> {
    fn pairs(self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let wire = self.wire;
        let mut start = 0;
        self.ends.chunks_exact(2 * OFFSET).filter_map(move |e| {
            let (name_end, value_end) = offsets(e)?;
            let name = wire.get(start..name_end)?;
            let value = wire.get(name_end + 1..value_end)?;
            start = value_end + 1;
            Some((name, value))
        })
    }

    fn is_empty(self) -> bool {
        self.wire.is_empty()
    }

    /// The value of the first pair whose name, braces removed, is `name`. Names of another
    /// length are passed over on their offsets alone.
    fn get(self, name: &[u8]) -> Option<&'a [u8]> {
        let mut start = 0;
        for e in self.ends.chunks_exact(2 * OFFSET) {
            let (name_end, value_end) = offsets(e)?;
            let len = name_end.wrapping_sub(start);
            if (len == name.len() || len == name.len() + 2)
                && strip_braces(self.wire.get(start..name_end)?) == name
            {
                return self.wire.get(name_end + 1..value_end);
            }
            start = value_end + 1;
        }
        None
    }
}

/// The ends of a pair's name and value, from its two offsets.
fn offsets(e: &[u8]) -> Option<(usize, usize)> {
    let (name_end, value_end) = e.split_at_checked(OFFSET)?;
    let name_end = u32::from_ne_bytes(name_end.try_into().ok()?);
    let value_end = u32::from_ne_bytes(value_end.try_into().ok()?);
    Some((name_end as usize, value_end as usize))
}

/// Appends the end of a string (its offset from the slot's start, `slot_start`).
fn push_end(buf: &mut Vec<u8>, slot_start: usize, end: usize) {
    buf.extend_from_slice(&((end - slot_start) as u32).to_ne_bytes());
}

/// The macros in effect, kept the way libmilter keeps them: one slot per stage (CONNECT, HELO,
/// MAIL, RCPT, DATA, EOH, EOM) holding the latest packet for it; each command clears the slots
/// of later stages; lookup goes from the latest stage back, so later values shadow earlier ones.
///
/// Connection macros therefore last until the next CONNECT, HELO macros until the next HELO, and
/// message macros until the message ends: unlike libmilter, ABORT clears the MAIL…EOM slots, so a
/// message's macros are gone once it is aborted.
///
/// Names are compared with one pair of surrounding braces removed, so `{i}` finds `i` and
/// `daemon_name` finds `{daemon_name}`.
///
/// ```
/// # use milterkit_proto::Macros;
/// # use bytes::Bytes;
/// let mut m = Macros::default();
/// m.set(b'C', vec![(Bytes::from("j"), Bytes::from("mx.example.org"))]);
/// m.set(b'M', vec![(Bytes::from("{mail_addr}"), Bytes::from("a@example.org"))]);
/// assert_eq!(m.get("{j}"), Some(&b"mx.example.org"[..]));
/// m.clear_message();
/// assert_eq!(m.get("mail_addr"), None);
/// assert!(m.get("j").is_some());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[doc(alias = "smfi_getsymval")]
pub struct Macros {
    /// The seven slots (see [`Slot`]), one after the other, CONNECT first: one allocation for
    /// all, and 80 bytes in every session instead of seven vectors (a session is part of every
    /// connection, idle or not). Storing a packet allocates nothing once the connection is warm,
    /// and keeps no reference to the input buffer.
    buf: Vec<u8>,
    /// Where each slot ends in `buf`; a slot starts where the one before it ends.
    ends: [u32; 7],
    /// Where each slot's offsets start, from the slot's start.
    wire: [u32; 7],
}

impl std::fmt::Debug for Macros {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for (i, code) in SLOT_CODES.iter().enumerate() {
            let slot = self.slot(i);
            if !slot.is_empty() {
                let pairs: Vec<(Bytes, Bytes)> = slot
                    .pairs()
                    .map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
                    .collect();
                list.entry(&(char::from(*code), pairs));
            }
        }
        list.finish()
    }
}

/// The `SMFIC_MACRO` stage byte of each slot.
const SLOT_CODES: [u8; 7] = [b'C', b'H', b'M', b'R', b'T', b'N', b'E'];

/// Slot index of a `SMFIC_MACRO` stage byte, for the seven stages libmilter keeps.
fn slot(code: u8) -> Option<usize> {
    Some(match code {
        b'C' => 0,
        b'H' => 1,
        b'M' => 2,
        b'R' => 3,
        b'T' => 4,
        b'N' => 5,
        b'E' => 6,
        _ => return None,
    })
}

fn strip_braces(name: &[u8]) -> &[u8] {
    match name {
        [b'{', inner @ .., b'}'] => inner,
        other => other,
    }
}

/// The number of strings in `pairs`, the body of a macro packet after its stage byte, if it is
/// well formed: NUL-terminated strings, an even number of them. What `Command::decode` accepts.
pub(crate) fn well_formed(pairs: &[u8]) -> Option<usize> {
    let strings = count_nul(pairs);
    (pairs.last().is_none_or(|&c| c == 0) && strings.is_multiple_of(2)).then_some(strings)
}

impl Macros {
    /// Stores a `SMFIC_MACRO` packet for the command `code`: it replaces that stage's slot.
    /// Packets for stages libmilter does not keep (Postfix's `L`, `B`, `U`) and packets without
    /// pairs are ignored, as libmilter ignores them.
    pub fn set(&mut self, code: u8, pairs: Vec<(Bytes, Bytes)>) {
        if pairs.is_empty() {
            return;
        }
        if let Some(i) = slot(code) {
            let strings: usize = pairs.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
            self.replace(i, strings + 2 * pairs.len() * OFFSET, |buf| {
                let start = buf.len();
                let mut ends = Vec::with_capacity(2 * pairs.len());
                for s in pairs.iter().flat_map(|(n, v)| [n, v]) {
                    // The end is recorded, not searched for: a string set by hand may hold NULs.
                    buf.extend_from_slice(s);
                    ends.push(buf.len());
                    buf.push(0);
                }
                let wire = buf.len() - start;
                for end in ends {
                    push_end(buf, start, end);
                }
                wire
            });
        }
    }

    /// Stores a packet as it came off the wire: `pairs` is its payload after the stage byte,
    /// holding `strings` strings, as [`well_formed`] found.
    pub(crate) fn set_wire(&mut self, code: u8, pairs: &[u8], strings: usize) {
        if pairs.is_empty() {
            return;
        }
        if let Some(i) = slot(code) {
            self.replace(i, pairs.len() + strings * OFFSET, |buf| {
                let start = buf.len();
                buf.extend_from_slice(pairs);
                let mut rest = pairs;
                let mut at = start;
                while let Some(end) = find_nul(rest) {
                    push_end(buf, start, at + end);
                    at += end + 1;
                    rest = &rest[end + 1..];
                }
                pairs.len()
            });
        }
    }

    /// Where slot `i` starts and ends in the buffer.
    fn bounds(&self, i: usize) -> (usize, usize) {
        let start = i.checked_sub(1).map_or(0, |before| self.ends[before]);
        (start as usize, self.ends[i] as usize)
    }

    fn slot(&self, i: usize) -> Slot<'_> {
        let (start, end) = self.bounds(i);
        let slot = self.buf.get(start..end).unwrap_or_default();
        let (wire, ends) = slot.split_at(slot.len().min(self.wire[i] as usize));
        Slot { wire, ends }
    }

    fn slots(&self) -> impl DoubleEndedIterator<Item = Slot<'_>> {
        (0..SLOT_CODES.len()).map(|i| self.slot(i))
    }

    /// Replaces slot `i` with `len` bytes, appended by `write` (which gives the length of the
    /// strings), and keeps the slots after it. Ignored if the buffer would not fit `u32`
    /// offsets (over 4 GiB of macros).
    fn replace(&mut self, i: usize, len: usize, write: impl FnOnce(&mut Vec<u8>) -> usize) {
        let (start, end) = self.bounds(i);
        if u32::try_from(self.buf.len() - (end - start) + len).is_err() {
            return;
        }
        // The later slots are usually empty (packets come in the order of the commands, and
        // each command clears the later stages): then nothing moves.
        let later = if end == self.buf.len() {
            Vec::new()
        } else {
            self.buf.split_off(end)
        };
        self.buf.truncate(start);
        self.buf.reserve(len + later.len());
        self.wire[i] = write(&mut self.buf) as u32;
        // Every later slot's end moves by the same amount (modulo 2^32, where they all fit).
        let moved = (self.buf.len() as u32).wrapping_sub(end as u32);
        for e in &mut self.ends[i..] {
            *e = e.wrapping_add(moved);
        }
        self.buf.extend_from_slice(&later);
    }

    /// Empties the slots from `from` on.
    fn clear_from(&mut self, from: usize) {
        let (start, _) = self.bounds(from);
        self.buf.truncate(start);
        self.ends[from..].fill(start as u32);
        self.wire[from..].fill(0);
    }

    /// Applies the clearing a command causes when it arrives: CONNECT clears HELO…EOM, HELO
    /// clears MAIL…EOM, MAIL clears RCPT…EOM, RCPT clears DATA…EOM; others clear nothing.
    pub fn command(&mut self, stage: Stage) {
        let from = match stage {
            Stage::Connect => 1,
            Stage::Helo => 2,
            Stage::Mail => 3,
            Stage::Rcpt => 4,
            _ => return,
        };
        self.clear_from(from);
    }

    /// Forgets the macros of the message (MAIL…EOM slots), as after ABORT.
    pub fn clear_message(&mut self) {
        self.clear_from(2);
    }

    /// Forgets everything, as after OPTNEG, QUIT and QUIT_NC.
    pub fn clear(&mut self) {
        self.clear_from(0);
    }

    /// The value of macro `name` in effect (`smfi_getsymval`).
    pub fn get(&self, name: impl AsRef<[u8]>) -> Option<&[u8]> {
        let name = strip_braces(name.as_ref());
        self.slots()
            .rev()
            .filter(|slot| !slot.is_empty())
            .find_map(|slot| slot.get(name))
    }

    /// Every macro in effect, as (name as sent, value), earliest stage first; a name shadowed by a
    /// later stage appears once, with the later value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.slots().enumerate().flat_map(move |(i, slot)| {
            slot.pairs().filter(move |(n, _)| {
                let name = strip_braces(n);
                !self
                    .slots()
                    .skip(i + 1)
                    .any(|later| later.get(name).is_some())
            })
        })
    }

    /// True when no macro is in effect.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The pairs of the last `SMFIC_MACRO` packet kept for the command `code` (`C H M R T N E`),
    /// as (name as sent, value), in packet order; nothing for other codes. What a milter that
    /// drives other milters forwards before that command.
    ///
    /// ```
    /// # use milterkit_proto::Macros;
    /// # use bytes::Bytes;
    /// let mut m = Macros::default();
    /// m.set(b'C', vec![(Bytes::from("j"), Bytes::from("mx.example.org"))]);
    /// m.set(b'M', vec![(Bytes::from("{mail_addr}"), Bytes::from("a@example.org"))]);
    /// let mail: Vec<_> = m.sent_at(b'M').collect();
    /// assert_eq!(mail, [(&b"{mail_addr}"[..], &b"a@example.org"[..])]);
    /// assert_eq!(m.sent_at(b'L').count(), 0);
    /// ```
    pub fn sent_at(&self, code: u8) -> impl Iterator<Item = (&[u8], &[u8])> {
        slot(code)
            .map(|i| self.slot(i))
            .into_iter()
            .flat_map(Slot::pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&'static str, &'static str)]) -> Vec<(Bytes, Bytes)> {
        p.iter()
            .map(|(n, v)| {
                (
                    Bytes::from_static(n.as_bytes()),
                    Bytes::from_static(v.as_bytes()),
                )
            })
            .collect()
    }

    #[test]
    fn each_command_clears_the_slots_of_later_stages_only() {
        let mut m = Macros::default();
        m.set(b'C', pairs(&[("j", "mx")]));
        m.set(b'H', pairs(&[("{tls_version}", "TLSv1.3")]));
        m.set(b'M', pairs(&[("{mail_addr}", "a@b")]));
        m.set(b'R', pairs(&[("{rcpt_addr}", "c@d")]));
        m.set(b'E', pairs(&[("i", "Q1")]));
        m.command(Stage::Rcpt);
        assert_eq!(m.get("i"), None);
        assert_eq!(m.get("rcpt_addr"), Some(&b"c@d"[..]));
        m.command(Stage::Mail);
        assert_eq!(m.get("rcpt_addr"), None);
        assert_eq!(m.get("mail_addr"), Some(&b"a@b"[..]));
        m.command(Stage::Helo);
        assert_eq!(m.get("mail_addr"), None);
        assert!(m.get("tls_version").is_some());
        m.command(Stage::Connect);
        assert_eq!(m.get("tls_version"), None);
        assert_eq!(m.get("j"), Some(&b"mx"[..]));
    }

    #[test]
    fn a_new_packet_replaces_its_stage_and_later_stages_shadow_earlier_ones() {
        let mut m = Macros::default();
        m.set(b'C', pairs(&[("i", "conn"), ("j", "mx")]));
        m.set(b'M', pairs(&[("i", "Q1")]));
        assert_eq!(m.get("i"), Some(&b"Q1"[..]));
        m.set(b'C', pairs(&[("v", "Postfix")]));
        assert_eq!(m.get("j"), None);
        let names: Vec<&[u8]> = m.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"v"[..], b"i"]);
    }

    #[test]
    fn ignores_empty_packets_and_stages_libmilter_does_not_keep() {
        let mut m = Macros::default();
        m.set(b'C', pairs(&[("j", "mx")]));
        m.set(b'C', Vec::new());
        m.set(b'L', pairs(&[("i", "Q")]));
        m.set(b'B', pairs(&[("i", "Q")]));
        m.set(b'U', pairs(&[("x", "y")]));
        assert_eq!(m.get("j"), Some(&b"mx"[..]));
        assert_eq!(m.get("i"), None);
    }

    #[test]
    fn braces_are_optional_on_lookup_for_any_name() {
        let mut m = Macros::default();
        m.set(
            b'C',
            pairs(&[("{daemon_name}", "mx"), ("_", "host [1.2.3.4]")]),
        );
        assert!(m.get("daemon_name").is_some());
        assert!(m.get("{daemon_name}").is_some());
        assert!(m.get("{_}").is_some());
        assert!(m.get("{daemon}").is_none());
    }

    #[test]
    fn macro_lists_keep_one_entry_per_stage_in_order() {
        let mut l = MacroLists::default();
        l.set(MacroStage::EOM, ["i"]);
        l.set(MacroStage::CONNECT, ["j", "{client_addr}"]);
        l.set(MacroStage::EOM, ["{msg_id}"]);
        let v: Vec<(MacroStage, &[u8])> = l.iter().collect();
        assert_eq!(
            v,
            [
                (MacroStage::EOM, &b"{msg_id}"[..]),
                (MacroStage::CONNECT, b"j {client_addr}")
            ]
        );
        assert_eq!(MacroStage::EOH.stage(), Some(Stage::Eoh));
        assert_eq!(MacroStage(9).stage(), None);
    }

    #[test]
    fn names_and_values_may_hold_nuls_when_set_by_hand() {
        let mut m = Macros::default();
        m.set(
            b'C',
            vec![
                (Bytes::from_static(b"j\0x"), Bytes::from_static(b"mx\0y")),
                (Bytes::from_static(b"v"), Bytes::new()),
            ],
        );
        assert_eq!(m.get("j\0x"), Some(&b"mx\0y"[..]));
        assert_eq!(m.get("j"), None);
        assert_eq!(m.get("v"), Some(&b""[..]));
    }

    proptest::proptest! {
        /// The in-place path of the session stores exactly what decoding the packet as a
        /// `Command` and `set` store, and ignores exactly the packets decoding refuses.
        #[test]
        fn wire_packets_are_stored_as_decoded_ones(
            payload in proptest::collection::vec(proptest::sample::select(vec![0u8, b'a', b'{', b'}']), 0..24),
            code in proptest::sample::select(vec![b'C', b'M', b'E', b'L']),
        ) {
            let mut framed = vec![code];
            framed.extend_from_slice(&payload);
            let frame = crate::frame::Frame { code: b'D', payload: Bytes::from(framed) };
            let mut decoded = Macros::default();
            decoded.set(b'C', pairs(&[("j", "old")]));
            let mut wire = decoded.clone();
            let ok = match crate::Command::decode(frame) {
                Ok(crate::Command::Macro { stage, pairs }) => {
                    decoded.set(stage, pairs);
                    true
                }
                _ => false,
            };
            proptest::prop_assert_eq!(ok, well_formed(&payload).is_some());
            if let Some(strings) = well_formed(&payload) {
                wire.set_wire(code, &payload, strings);
            }
            proptest::prop_assert_eq!(&wire, &decoded);
            proptest::prop_assert_eq!(wire.get("a"), decoded.get("a"));
            proptest::prop_assert_eq!(wire.iter().collect::<Vec<_>>(), decoded.iter().collect::<Vec<_>>());
        }

        #[test]
        fn nuls_are_found_and_counted_right(
            s in proptest::collection::vec(proptest::sample::select(vec![0u8, 1, 0x7f, 0x80, 0xff, b'a']), 0..40),
        ) {
            proptest::prop_assert_eq!(find_nul(&s), s.iter().position(|&c| c == 0));
            proptest::prop_assert_eq!(count_nul(&s), s.iter().filter(|&&c| c == 0).count());
        }
    }
}
