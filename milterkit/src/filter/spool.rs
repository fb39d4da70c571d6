//! The message body as it arrives: in memory up to a limit, then in an anonymous temporary file.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use bytes::{Bytes, BytesMut};

/// The body of a message, with CRLF line ends as the MTA sends it: kept in memory up to
/// [`Options::memory_limit`](super::Options::memory_limit), past it in an anonymous temporary
/// file (gone when the body is dropped, even after a crash), so a large message costs a bounded
/// amount of memory.
///
/// Read it as many times as you like: each [`Body::reader`] has its own position.
///
/// Writes to the file are plain blocking writes of at most one 64 KiB chunk each, into the page
/// cache: cheaper than handing each chunk to a blocking thread.
#[derive(Debug, Default)]
pub struct Body {
    /// The body while it comes.
    filling: BytesMut,
    /// The body once it has all come ([`Body::finish`]): shared without a copy.
    memory: Bytes,
    file: Option<File>,
    len: u64,
    truncated: bool,
}

impl Body {
    /// Appends `chunk`, moving everything to a temporary file once `memory_limit` is passed.
    pub(crate) fn push(&mut self, chunk: &[u8], memory_limit: usize) -> io::Result<()> {
        if let Some(file) = &mut self.file {
            file.write_all(chunk)?;
        } else if self.filling.len() + chunk.len() > memory_limit {
            let mut file = tempfile::tempfile()?;
            file.write_all(&self.filling)?;
            file.write_all(chunk)?;
            self.filling = BytesMut::new();
            self.file = Some(file);
        } else {
            self.filling.extend_from_slice(chunk);
        }
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// The body has all come: what is in memory becomes shareable.
    pub(crate) fn finish(&mut self) {
        if !self.filling.is_empty() {
            self.memory = std::mem::take(&mut self.filling).freeze();
        }
    }

    /// What is in memory.
    fn data(&self) -> &[u8] {
        if self.filling.is_empty() {
            &self.memory
        } else {
            &self.filling
        }
    }

    /// Marks the body as cut short at a size limit.
    pub(crate) fn truncate(&mut self) {
        self.truncated = true;
    }

    /// Its size in bytes (what was kept, if [`Body::truncated`]).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty body.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once the body went to a temporary file.
    pub fn is_spooled(&self) -> bool {
        self.file.is_some()
    }

    /// True if the body was longer than [`Options::max_body`](super::Options::max_body) and
    /// only its beginning was kept.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// A reader over the whole body, from its start.
    pub fn reader(&self) -> BodyReader<'_> {
        BodyReader { body: self, pos: 0 }
    }

    /// The whole body in memory: without a copy once it has all come and stayed in memory, read
    /// from the file when it was spooled.
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        if self.file.is_none() {
            return Ok(if self.filling.is_empty() {
                self.memory.clone()
            } else {
                Bytes::copy_from_slice(&self.filling)
            });
        }
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        self.reader().read_to_end(&mut out)?;
        Ok(out.into())
    }
}

/// Reads a [`Body`] (`Read + Seek`), independently of any other reader of it.
#[derive(Debug)]
pub struct BodyReader<'a> {
    body: &'a Body,
    pos: u64,
}

impl Read for BodyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &self.body.file {
            // Positioned reads: readers share the file but not an offset.
            Some(file) => file.read_at(buf, self.pos)?,
            None => {
                let data = self.body.data();
                let start = usize::try_from(self.pos)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BodyReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            SeekFrom::Start(n) => {
                self.pos = n;
                return Ok(n);
            }
            SeekFrom::End(d) => (self.body.len, d),
            SeekFrom::Current(d) => (self.pos, d),
        };
        self.pos = base
            .checked_add_signed(delta)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_past_the_memory_limit_moves_to_a_file_and_reads_back_whole_and_from_anywhere() {
        for limit in [0, 5, 1 << 20] {
            let mut body = Body::default();
            for chunk in [&b"hello "[..], b"big ", b"world\r\n"] {
                body.push(chunk, limit).unwrap();
            }
            assert_eq!(body.is_spooled(), limit < 17, "limit {limit}");
            assert_eq!(body.len(), 17);
            assert_eq!(body.to_bytes().unwrap(), &b"hello big world\r\n"[..]);
            let mut r1 = body.reader();
            let mut r2 = body.reader();
            let mut s = String::new();
            r1.seek(SeekFrom::Start(6)).unwrap();
            r1.read_to_string(&mut s).unwrap();
            assert_eq!(s, "big world\r\n");
            s.clear();
            r2.seek(SeekFrom::End(-7)).unwrap();
            r2.read_to_string(&mut s).unwrap();
            assert_eq!(s, "world\r\n");
            assert!(r2.seek(SeekFrom::Current(-100)).is_err());
        }
    }
}
