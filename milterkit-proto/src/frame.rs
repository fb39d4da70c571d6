//! Framing: a 4-byte big-endian length (counting the code byte), one code byte, the payload.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{FrameError, ProtocolError};

/// Largest payload libmilter reads or writes, and Sendmail writes, by default (`MILTER_MAX_DATA_SIZE`
/// in libmilter's `mfdef.h`). Keep every payload you **send** at or below it.
pub const MILTER_MAX_DATA_SIZE: usize = 65_535;

/// Largest body chunk per `SMFIC_BODY` and `SMFIR_REPLBODY` packet (`MILTER_CHUNK_SIZE` in
/// `mfdef.h`; Postfix's `milter8.c` uses the same value).
pub const MILTER_CHUNK_SIZE: usize = 65_535;

/// Payload limit selected by `SMFIP_MDS_256K` (`MILTER_MDS_256K` in `mfdef.h`).
pub const MILTER_MDS_256K: usize = 262_143;

/// Payload limit selected by `SMFIP_MDS_1M` (`MILTER_MDS_1M` in `mfdef.h`).
pub const MILTER_MDS_1M: usize = 1_048_575;

/// Default limit for payloads we **receive**: 1 MiB − 1, libmilter's largest negotiable size
/// (`MILTER_MDS_1M`), the value indymilter uses. Postfix writes headers and UNKNOWN lines as
/// large as they are, so the strict 64 KiB of libmilter would drop sessions it need not drop.
pub const DEFAULT_MAX_PAYLOAD: usize = MILTER_MDS_1M;

/// Size of the length prefix (`MILTER_LEN_BYTES` in `mfdef.h`).
pub const LEN_BYTES: usize = 4;

/// One packet: a code byte and its payload (which excludes the code byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command (`SMFIC_*`) or response (`SMFIR_*`) code.
    pub code: u8,
    /// The bytes after the code.
    pub payload: Bytes,
}

impl Frame {
    /// Appends this frame to `dst` in wire form.
    ///
    /// ```
    /// # use milterkit_proto::frame::Frame;
    /// let mut out = bytes::BytesMut::new();
    /// Frame { code: b'c', payload: bytes::Bytes::new() }.encode(&mut out);
    /// assert_eq!(&out[..], b"\0\0\0\x01c");
    /// ```
    pub fn encode(&self, dst: &mut BytesMut) {
        let mut w = FrameWriter::start(dst, self.code);
        w.put(&self.payload);
        w.finish();
    }
}

/// Splits a byte stream into [`Frame`]s, checking each length prefix against a limit before
/// buffering the payload.
///
/// Any split of the input gives the same frames: call [`FrameDecoder::decode`] after each read.
///
/// ```
/// # use milterkit_proto::frame::FrameDecoder;
/// let mut dec = FrameDecoder::default();
/// let mut buf = bytes::BytesMut::from(&b"\0\0\0\x02DH\0\0"[..]);
/// let frame = dec.decode(&mut buf).unwrap().unwrap();
/// assert_eq!((frame.code, &frame.payload[..]), (b'D', &b"H"[..]));
/// assert_eq!(dec.decode(&mut buf).unwrap(), None); // 2 bytes of the next prefix wait for more
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameDecoder {
    max_payload: usize,
}

impl Default for FrameDecoder {
    /// A decoder with [`DEFAULT_MAX_PAYLOAD`].
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameDecoder {
    /// A decoder that refuses payloads longer than `max_payload` bytes.
    pub fn new(max_payload: usize) -> Self {
        Self { max_payload }
    }

    /// The payload limit in force.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Takes one whole frame off the front of `src`, or returns `Ok(None)` when more bytes are
    /// needed. After an error the stream is unusable and the connection should be closed.
    ///
    /// When a frame is announced but not complete, `src` is reserved to hold it (never more than
    /// the limit allows), so reads land in place.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        Ok(self
            .complete(src)?
            .map(|(code, payload_len)| take(src, code, payload_len)))
    }

    /// The code and payload length of the frame at the front of `src` once it is complete
    /// (nothing is consumed); `Ok(None)` when more bytes are needed, with `src` reserved to hold
    /// the announced frame.
    pub(crate) fn complete(&self, src: &mut BytesMut) -> Result<Option<(u8, usize)>, FrameError> {
        let Some(&prefix) = src.first_chunk::<LEN_BYTES>() else {
            return Ok(None);
        };
        let payload_len = self.check(u32::from_be_bytes(prefix))?;
        let total = LEN_BYTES + 1 + payload_len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        Ok(Some((src[LEN_BYTES], payload_len)))
    }

    /// The payload length a length prefix announces, if allowed.
    fn check(&self, len: u32) -> Result<usize, FrameError> {
        if len == 0 {
            return Err(FrameError::ZeroLength);
        }
        let payload_len = len as usize - 1;
        if payload_len > self.max_payload {
            return Err(FrameError::TooLarge {
                len: u64::from(len) - 1,
                max: self.max_payload,
            });
        }
        Ok(payload_len)
    }
}

/// Takes the complete frame [`FrameDecoder::complete`] found off the front of `src`.
pub(crate) fn take(src: &mut BytesMut, code: u8, payload_len: usize) -> Frame {
    src.advance(LEN_BYTES + 1);
    let payload = if payload_len == 0 {
        Bytes::new()
    } else {
        src.split_to(payload_len).freeze()
    };
    Frame { code, payload }
}

/// Moves the bytes of `out` to the end of `dst` (swapping buffers when `dst` is empty, so that
/// nothing is copied); true if there were any.
pub(crate) fn transmit(out: &mut BytesMut, dst: &mut BytesMut) -> bool {
    if out.is_empty() {
        return false;
    }
    if dst.is_empty() {
        std::mem::swap(dst, out);
    } else {
        dst.extend_from_slice(out);
        out.clear();
    }
    true
}

/// Writes one frame whose length is only known at the end: reserves the prefix, lets the caller
/// append the payload, then patches the length in.
pub(crate) struct FrameWriter<'a> {
    dst: &'a mut BytesMut,
    start: usize,
}

impl<'a> FrameWriter<'a> {
    pub(crate) fn start(dst: &'a mut BytesMut, code: u8) -> Self {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u8(code);
        Self { dst, start }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) {
        self.dst.extend_from_slice(bytes);
    }

    pub(crate) fn put_u32(&mut self, v: u32) {
        self.dst.put_u32(v);
    }

    pub(crate) fn put_u16(&mut self, v: u16) {
        self.dst.put_u16(v);
    }

    pub(crate) fn put_u8(&mut self, v: u8) {
        self.dst.put_u8(v);
    }

    /// A string followed by its NUL.
    pub(crate) fn put_str(&mut self, s: &[u8]) {
        self.dst.extend_from_slice(s);
        self.dst.put_u8(0);
    }

    pub(crate) fn finish(self) {
        // Payloads are bounded by the sessions (≤ 65,535 or the negotiated size); a frame too large
        // for the 32-bit prefix can only come from a direct caller, and saturating keeps us from
        // panicking while still producing a frame every peer refuses as too large.
        let len = u32::try_from(self.dst.len() - self.start - LEN_BYTES).unwrap_or(u32::MAX);
        self.dst[self.start..self.start + LEN_BYTES].copy_from_slice(&len.to_be_bytes());
    }
}

/// Reads the fields of one payload. Every method fails with [`ProtocolError::Malformed`] naming
/// what was missing.
pub(crate) struct Reader {
    code: u8,
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(frame: Frame) -> Self {
        Self {
            code: frame.code,
            buf: frame.payload,
        }
    }

    fn malformed(&self, reason: &'static str) -> ProtocolError {
        ProtocolError::Malformed {
            code: self.code,
            reason,
        }
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        if self.buf.len() < 4 {
            return Err(self.malformed(what));
        }
        Ok(self.buf.get_u32())
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        if self.buf.len() < 2 {
            return Err(self.malformed(what));
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        if self.buf.is_empty() {
            return Err(self.malformed(what));
        }
        Ok(self.buf.get_u8())
    }

    /// A NUL-terminated string, without its NUL.
    pub(crate) fn str(&mut self, what: &'static str) -> Result<Bytes, ProtocolError> {
        match memchr0(&self.buf) {
            Some(i) => {
                let s = self.buf.split_to(i);
                self.buf.advance(1);
                Ok(s)
            }
            None => Err(self.malformed(what)),
        }
    }

    /// The NUL-terminated strings of the rest; bytes after the last NUL are dropped, as
    /// libmilter's `dec_argv()` drops them.
    pub(crate) fn strs_terminated(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(i) = memchr0(&self.buf) {
            out.push(self.buf.split_to(i));
            self.buf.advance(1);
        }
        self.buf.clear();
        out
    }

    /// How many NULs the rest holds (to size a vector of strings once).
    pub(crate) fn nul_count(&self) -> usize {
        count_nul(&self.buf)
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless the whole payload was consumed (Postfix: "left-over data").
    pub(crate) fn end(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("data after the last field"))
        }
    }
}

fn memchr0(b: &[u8]) -> Option<usize> {
    find_nul(b)
}

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
const LOWS: u64 = u64::from_le_bytes([0x7f; 8]);

fn word(chunk: &[u8]) -> u64 {
    let mut w = [0; 8];
    w.copy_from_slice(chunk);
    u64::from_le_bytes(w)
}

/// The index of the first NUL in `s`, eight bytes at a time.
pub(crate) fn find_nul(s: &[u8]) -> Option<usize> {
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let v = word(chunk);
        // The lowest flagged byte is the first zero byte (flags above it may be false).
        let zero = v.wrapping_sub(ONES) & !v & HIGHS;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&c| c == 0)
        .map(|i| at + i)
}

/// How many NULs `s` holds, eight bytes at a time.
pub(crate) fn count_nul(s: &[u8]) -> usize {
    let mut chunks = s.chunks_exact(8);
    let mut n = 0;
    for chunk in &mut chunks {
        let v = word(chunk);
        // Bit 7 of each byte set exactly when the byte is not zero.
        let nonzero = ((v & LOWS).wrapping_add(LOWS) | v) & HIGHS;
        n += 8 - nonzero.count_ones() as usize;
    }
    n + chunks.remainder().iter().filter(|&&c| c == 0).count()
}

/// True when `s` can go on the wire as a NUL-terminated string.
pub(crate) fn has_nul(s: &[u8]) -> bool {
    memchr0(s).is_some()
}
