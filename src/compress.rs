//! Optional compression (`tablesnap --compress zstd`, issue #16): a file is stored as
//! independent zstd frames of [`BLOCK`] bytes each, followed by a seek table in a zstd
//! skippable frame (zstd's seekable format). Stock `zstd -d` reads it (it skips the table),
//! and a restore can fetch any range of the file as the frames that hold it, in parallel,
//! as it does for a plain object. Sealing ([`crate::seal`]) applies to this stream.
//!
//! Most `Data.db` files are already compressed by Cassandra (LZ4): an object that does not
//! shrink by a tenth is stored as it is ([`worth_it`]), and small files always are.

use std::ops::Range;

/// Plaintext bytes per frame.
pub const BLOCK: u64 = 1 << 20;
/// zstd level: fast, and most of the gain on SSTable components.
pub const LEVEL: i32 = 3;
/// Smaller files are stored as they are.
pub const MIN_SIZE: u64 = 4096;
/// Metadata: `zstd` when the object is compressed.
pub const META_COMPRESSED: &str = "compressed";
pub const COMPRESSED_ZSTD: &str = "zstd";

const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Footer: number of frames (u32), descriptor (u8), magic (u32).
const FOOTER: usize = 9;

/// Whether `stored` bytes for a file of `plain` are worth keeping compressed.
pub fn worth_it(plain: u64, stored: u64) -> bool {
    stored < plain - plain / 10
}

/// Compressed and plaintext size of each frame, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frames {
    sizes: Vec<(u32, u32)>,
}

/// What a frame table says that cannot be.
#[derive(Debug, thiserror::Error)]
#[error("bad zstd seek table: {0}")]
pub struct TableError(pub String);

impl Frames {
    pub fn push(&mut self, compressed: usize, plain: usize) {
        self.sizes.push((compressed as u32, plain as u32));
    }

    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// The seek table, as a skippable frame.
    pub fn table(&self) -> Vec<u8> {
        let mut t = Vec::with_capacity(8 + self.sizes.len() * 8 + FOOTER);
        t.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        t.extend_from_slice(&((self.sizes.len() * 8 + FOOTER) as u32).to_le_bytes());
        for (c, p) in &self.sizes {
            t.extend_from_slice(&c.to_le_bytes());
            t.extend_from_slice(&p.to_le_bytes());
        }
        t.extend_from_slice(&(self.sizes.len() as u32).to_le_bytes());
        t.push(0);
        t.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        t
    }

    /// The size of the table of `frames` frames.
    pub fn table_len(frames: usize) -> u64 {
        (8 + frames * 8 + FOOTER) as u64
    }

    /// The whole stream: frames and table.
    pub fn stream_len(&self) -> u64 {
        self.sizes.iter().map(|(c, _)| *c as u64).sum::<u64>() + Self::table_len(self.len())
    }

    pub fn plain_len(&self) -> u64 {
        self.sizes.iter().map(|(_, p)| *p as u64).sum()
    }

    /// How many frames the table at the end of `tail` (the stream's last bytes) has, from
    /// its footer.
    pub fn count_in_footer(tail: &[u8]) -> Result<usize, TableError> {
        if tail.len() < FOOTER {
            return Err(TableError("shorter than its footer".into()));
        }
        let f = &tail[tail.len() - FOOTER..];
        if u32::from_le_bytes(f[5..9].try_into().unwrap()) != SEEKABLE_MAGIC {
            return Err(TableError("no seekable magic at the end".into()));
        }
        if f[4] & 0x80 != 0 {
            return Err(TableError("frame checksums are not supported".into()));
        }
        Ok(u32::from_le_bytes(f[0..4].try_into().unwrap()) as usize)
    }

    /// Reads the table at the end of `tail`, which holds at least [`Self::table_len`]
    /// bytes of it; checks it against the stream's and the file's length.
    pub fn parse(tail: &[u8], stream_len: u64, plain_len: u64) -> Result<Self, TableError> {
        let n = Self::count_in_footer(tail)?;
        let tl = Self::table_len(n) as usize;
        if tail.len() < tl {
            return Err(TableError(
                "the tail given is shorter than the table".into(),
            ));
        }
        let t = &tail[tail.len() - tl..];
        let magic = u32::from_le_bytes(t[0..4].try_into().unwrap());
        let size = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
        if magic != SKIPPABLE_MAGIC || size != n * 8 + FOOTER {
            return Err(TableError("not a skippable frame of the right size".into()));
        }
        let mut f = Frames::default();
        for e in t[8..8 + n * 8].chunks(8) {
            f.sizes.push((
                u32::from_le_bytes(e[0..4].try_into().unwrap()),
                u32::from_le_bytes(e[4..8].try_into().unwrap()),
            ));
        }
        if f.stream_len() != stream_len || f.plain_len() != plain_len {
            return Err(TableError(format!(
                "its frames add up to {} stored and {} file bytes, the object has {stream_len} and {plain_len}",
                f.stream_len(),
                f.plain_len()
            )));
        }
        Ok(f)
    }

    /// Groups of whole frames of about `target` file bytes each: (frames, file range,
    /// stream range) per group.
    pub fn groups(&self, target: u64) -> Vec<(Range<usize>, Range<u64>, Range<u64>)> {
        let mut out = Vec::new();
        let (mut i, mut p, mut c) = (0usize, 0u64, 0u64);
        while i < self.sizes.len() {
            let (start, p0, c0) = (i, p, c);
            while i < self.sizes.len() && (i == start || p - p0 < target) {
                p += self.sizes[i].1 as u64;
                c += self.sizes[i].0 as u64;
                i += 1;
            }
            out.push((start..i, p0..p, c0..c));
        }
        out
    }

    /// Compressed size of frame `i`, and its file bytes.
    pub fn frame(&self, i: usize) -> (u64, u64) {
        let (c, p) = self.sizes[i];
        (c as u64, p as u64)
    }
}

/// Compresses one block into a frame.
pub fn compress_block(
    c: &mut zstd::bulk::Compressor<'static>,
    block: &[u8],
) -> std::io::Result<Vec<u8>> {
    c.compress(block)
}

pub fn compressor() -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(LEVEL)?;
    c.include_contentsize(true)?;
    // Each frame checks itself (XXH64): a corrupt frame fails to decode, never decodes to
    // other bytes that only the file's MD5 would catch.
    c.include_checksum(true)?;
    Ok(c)
}

/// The whole stream of `plain` (frames, then table) and its frames.
pub fn compress_all(plain: &[u8]) -> std::io::Result<(Vec<u8>, Frames)> {
    let mut c = compressor()?;
    let mut out = Vec::new();
    let mut f = Frames::default();
    for block in plain.chunks(BLOCK as usize) {
        let z = compress_block(&mut c, block)?;
        f.push(z.len(), block.len());
        out.extend_from_slice(&z);
    }
    out.extend_from_slice(&f.table());
    Ok((out, f))
}

/// Decompresses one frame of `plain` file bytes.
pub fn decompress_frame(frame: &[u8], plain: u64) -> std::io::Result<Vec<u8>> {
    let out = zstd::bulk::decompress(frame, plain as usize)?;
    if out.len() as u64 != plain {
        return Err(std::io::Error::other(format!(
            "a frame gave {} bytes, its table says {plain}",
            out.len()
        )));
    }
    Ok(out)
}

/// Decompresses a whole stream as it arrives (frames, then the table, which zstd skips).
pub struct StreamDecoder {
    d: zstd::stream::raw::Decoder<'static>,
    out: Vec<u8>,
    /// zstd's hint after the last call: 0 when a frame has just ended.
    hint: usize,
    fed: bool,
}

impl StreamDecoder {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            d: zstd::stream::raw::Decoder::new()?,
            out: vec![0; 128 << 10],
            hint: 0,
            fed: false,
        })
    }

    /// Feeds stream bytes; `out` gets the file's bytes in order.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        use zstd::stream::raw::Operation;
        self.fed |= !data.is_empty();
        loop {
            let s = self.d.run_on_buffers(data, &mut self.out)?;
            self.hint = s.remaining;
            if s.bytes_written > 0 {
                out(&self.out[..s.bytes_written])?;
            }
            data = &data[s.bytes_read..];
            if data.is_empty() && s.bytes_written < self.out.len() {
                return Ok(());
            }
        }
    }

    /// Whether the stream ended on a frame boundary (not cut short).
    pub fn finished(&self) -> bool {
        self.fed && self.hint == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        // Compressible: a slowly changing text-like pattern.
        (0..n)
            .map(|i| b"cassandra sstable "[(i / 7) % 18])
            .collect()
    }

    #[test]
    fn a_stream_decodes_whole_and_by_frame_groups() {
        for n in [
            4096usize,
            (BLOCK as usize) - 1,
            BLOCK as usize,
            3 * BLOCK as usize + 17,
        ] {
            let plain = data(n);
            let (stream, frames) = compress_all(&plain).unwrap();
            assert!(worth_it(n as u64, stream.len() as u64), "{n}");
            assert_eq!(frames.stream_len(), stream.len() as u64);
            // Whole, in odd pieces.
            let mut d = StreamDecoder::new().unwrap();
            let mut got = Vec::new();
            for piece in stream.chunks(1000) {
                d.feed(piece, &mut |b| {
                    got.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
            }
            assert!(d.finished());
            assert_eq!(got, plain, "{n}");
            // The table from the tail, then each group by its frames.
            let tail = &stream[stream.len() - Frames::table_len(frames.len()) as usize..];
            let t = Frames::parse(tail, stream.len() as u64, n as u64).unwrap();
            assert_eq!(t, frames);
            let mut back = vec![0u8; n];
            for (fr, p, c) in t.groups(2 * BLOCK) {
                let mut at = c.start as usize;
                let mut pos = p.start as usize;
                for i in fr {
                    let (cl, pl) = t.frame(i);
                    let f = decompress_frame(&stream[at..at + cl as usize], pl).unwrap();
                    back[pos..pos + f.len()].copy_from_slice(&f);
                    at += cl as usize;
                    pos += pl as usize;
                }
                assert_eq!((at as u64, pos as u64), (c.end, p.end));
            }
            assert_eq!(back, plain, "{n} by groups");
            // A table that does not add up is refused.
            assert!(Frames::parse(tail, stream.len() as u64 + 1, n as u64).is_err());
        }
    }

    #[test]
    fn a_flipped_byte_in_a_frame_does_not_decode() {
        let plain = data(BLOCK as usize);
        let (stream, f) = compress_all(&plain).unwrap();
        let (cl, pl) = f.frame(0);
        for at in [cl as usize / 2, cl as usize - 2] {
            let mut bad = stream.clone();
            bad[at] ^= 0x04;
            assert!(
                decompress_frame(&bad[..cl as usize], pl).is_err(),
                "byte {at}"
            );
            let mut d = StreamDecoder::new().unwrap();
            assert!(
                d.feed(&bad, &mut |_| Ok(())).is_err(),
                "byte {at}, streamed"
            );
        }
    }

    #[test]
    fn a_cut_stream_is_not_finished() {
        let (stream, _) = compress_all(&data(2 * BLOCK as usize)).unwrap();
        let mut d = StreamDecoder::new().unwrap();
        d.feed(&stream[..stream.len() / 3], &mut |_| Ok(()))
            .unwrap();
        assert!(!d.finished());
    }

    #[test]
    fn stock_zstd_reads_the_stream() {
        let Ok(out) = std::process::Command::new("zstd").arg("--version").output() else {
            eprintln!("no zstd binary: skipped");
            return;
        };
        assert!(out.status.success());
        let plain = data(2 * BLOCK as usize + 5);
        let (stream, _) = compress_all(&plain).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.zst");
        std::fs::write(&p, &stream).unwrap();
        let out = std::process::Command::new("zstd")
            .args(["-d", "-c"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == plain);
    }
}

/// Compresses a file as it is read in pieces of any size (the first pass of a multipart
/// upload): the frames it would be stored as, and the stream bytes passed on to `out` (the
/// CRC of the sealed stream).
pub struct Squeeze {
    c: zstd::bulk::Compressor<'static>,
    block: Vec<u8>,
    frames: Frames,
    err: Option<std::io::Error>,
}

impl Squeeze {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            c: compressor()?,
            block: Vec::with_capacity(BLOCK as usize),
            frames: Frames::default(),
            err: None,
        })
    }

    pub fn update(&mut self, mut b: &[u8], out: &mut dyn FnMut(&[u8])) {
        while !b.is_empty() {
            let take = (BLOCK as usize - self.block.len()).min(b.len());
            self.block.extend_from_slice(&b[..take]);
            b = &b[take..];
            if self.block.len() == BLOCK as usize {
                self.flush(out);
            }
        }
    }

    fn flush(&mut self, out: &mut dyn FnMut(&[u8])) {
        if self.block.is_empty() || self.err.is_some() {
            return;
        }
        match self.c.compress(&self.block) {
            Ok(z) => {
                self.frames.push(z.len(), self.block.len());
                out(&z);
            }
            Err(e) => self.err = Some(e),
        }
        self.block.clear();
    }

    /// The frames, after the table was passed to `out` too.
    pub fn finish(mut self, out: &mut dyn FnMut(&[u8])) -> std::io::Result<Frames> {
        self.flush(out);
        if let Some(e) = self.err {
            return Err(e);
        }
        out(&self.frames.table());
        Ok(self.frames)
    }
}

/// The compressed stream of a file, produced again part by part in order (the second pass
/// of a multipart upload), checked to be the stream the first pass measured: zstd at one
/// level is deterministic, so other frames mean the file changed.
pub struct FileStream {
    file: std::sync::Arc<std::fs::File>,
    size: u64,
    read: u64,
    pending: Vec<u8>,
    pos: u64,
    c: zstd::bulk::Compressor<'static>,
    frames: Frames,
    expect: Frames,
    table_done: bool,
}

/// The file changed between the two passes (or while read).
#[derive(Debug, thiserror::Error)]
#[error("the file changed while it was compressed")]
pub struct Changed;

impl FileStream {
    pub fn new(
        file: std::sync::Arc<std::fs::File>,
        size: u64,
        expect: Frames,
    ) -> std::io::Result<Self> {
        Ok(Self {
            file,
            size,
            read: 0,
            pending: Vec::new(),
            pos: 0,
            c: compressor()?,
            frames: Frames::default(),
            expect,
            table_done: false,
        })
    }

    /// Fills `out` with the stream's bytes at `at` (the next ones: parts come in order).
    pub fn fill(&mut self, at: u64, out: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let changed = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, Changed);
        if at != self.pos {
            return Err(std::io::Error::other(
                "parts of a compressed stream out of order",
            ));
        }
        while self.pending.len() < out.len() {
            if self.read < self.size {
                let n = BLOCK.min(self.size - self.read) as usize;
                let mut block = vec![0u8; n];
                self.file.read_exact_at(&mut block, self.read)?;
                let z = self.c.compress(&block)?;
                self.frames.push(z.len(), n);
                self.pending.extend_from_slice(&z);
                self.read += n as u64;
            } else if !self.table_done {
                if self.frames != self.expect {
                    return Err(changed());
                }
                self.pending.extend_from_slice(&self.frames.table());
                self.table_done = true;
            } else {
                return Err(changed());
            }
        }
        out.copy_from_slice(&self.pending[..out.len()]);
        self.pending.drain(..out.len());
        self.pos += out.len() as u64;
        Ok(())
    }
}
