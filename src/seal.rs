//! Sealed backups (issue #16): every data object a standard [age] v1 file, encrypted on the
//! node to X25519 public keys whose identities (secret keys) the node never holds.
//!
//! Why our own payload layer beside the `age` crate: age's payload is STREAM, 64 KiB chunks
//! each sealed by ChaCha20-Poly1305 under a key derived from the file key and a nonce, so
//! any range of plaintext is a range of chunks. A large `Data.db` is restored as parallel
//! byte ranges and uploaded as parallel parts; the crate only offers a sequential writer
//! and a `Read + Seek` reader, and keeps the payload key to itself. So the crate does what
//! it is for (parsing keys, wrapping and unwrapping the file key to each recipient,
//! reading stanzas) and this module does the framing the age spec fixes
//! (<https://age-encryption.org/v1>): the header and its HMAC, the payload key, and the
//! chunks, each sealed or opened on its own. Tests check both directions against the
//! crate's own encryptor and decryptor, and CI decrypts an uploaded object with the stock
//! `age` tool.
//!
//! What is sealed: data objects. Indexes (`-listdir.json`) and metadata stay in clear, so
//! that tablechop, `--list` and the original tableslurp need no key. The metadata of a
//! sealed object says so ([`META_SEALED`]), and records the plaintext size and the
//! ciphertext's CRC-32 (`--verify` without an identity checks the stored bytes by it);
//! `md5sum` keeps its meaning, the MD5 of the file (the plaintext).
//!
//! [age]: https://age-encryption.org

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Plaintext bytes per payload chunk (the age spec).
pub const CHUNK: u64 = 64 * 1024;
/// Poly1305 tag after each chunk.
pub const TAG: u64 = 16;
/// A sealed full chunk.
pub const SEALED_CHUNK: u64 = CHUNK + TAG;
/// The payload nonce after the header.
const NONCE: usize = 16;
const MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// The most header bytes read before giving up (a header names every recipient; a few
/// hundred recipients fit).
pub const MAX_HEADER: usize = 64 * 1024;

/// Metadata of a sealed object: `age` (the only format so far).
pub const META_SEALED: &str = "sealed";
/// Metadata: the plaintext's size in bytes.
pub const META_PLAIN_SIZE: &str = "plainsize";
/// Metadata: the CRC-32 (IEEE, hex) of the stored (sealed) bytes.
pub const META_SEALED_CRC: &str = "sealedcrc32";
/// The value of [`META_SEALED`].
pub const SEALED_AGE: &str = "age";

/// Bad keys, bad headers and bad chunks. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "recipient {arg:?} is not an age X25519 public key (age1...); generate one with age-keygen"
    )]
    BadRecipient { arg: String },
    #[error("recipients file {path}: {why}")]
    RecipientsFile { path: PathBuf, why: String },
    #[error("identity file {path}: {why}")]
    IdentityFile { path: PathBuf, why: String },
    #[error("{why}")]
    Header { why: String },
    #[error("none of the identities given opens it (it is sealed to other keys)")]
    WrongIdentity,
    #[error("sealed chunk {index} does not authenticate (tampered or corrupted)")]
    Tampered { index: u64 },
    #[error("the sealed object is {sealed} bytes, which no age payload is")]
    BadLength { sealed: u64 },
}

/// The public keys new objects are sealed to (`--recipient`, `--recipients-file`).
#[derive(Clone, Default)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| r.to_string()))
            .finish()
    }
}

impl Recipients {
    /// From `-r` arguments and `-R` files, as the `age` tool reads them: one key a line,
    /// `#` comments and blank lines ignored. Only X25519 keys (`age1...`).
    pub fn parse(args: &[String], files: &[PathBuf]) -> Result<Self, SealError> {
        let mut out = Vec::new();
        for a in args {
            out.push(
                age::x25519::Recipient::from_str(a.trim())
                    .map_err(|_| SealError::BadRecipient { arg: a.clone() })?,
            );
        }
        for p in files {
            let text = std::fs::read_to_string(p).map_err(|e| SealError::RecipientsFile {
                path: p.clone(),
                why: e.to_string(),
            })?;
            let before = out.len();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                out.push(age::x25519::Recipient::from_str(line).map_err(|_| {
                    SealError::RecipientsFile {
                        path: p.clone(),
                        why: format!("line {} is not an age X25519 public key (age1...)", n + 1),
                    }
                })?);
            }
            if out.len() == before {
                return Err(SealError::RecipientsFile {
                    path: p.clone(),
                    why: "names no recipient".into(),
                });
            }
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The secret keys a restore opens objects with (`--identity`, an age identity file).
#[derive(Default)]
pub struct Identities(Vec<age::x25519::Identity>);

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({} keys)", self.0.len())
    }
}

impl Identities {
    /// Reads identity files as `age -i` does: `AGE-SECRET-KEY-1...` lines, `#` comments and
    /// blank lines ignored. A line that is not a key is named by number, never quoted.
    pub fn read(files: &[PathBuf]) -> Result<Self, SealError> {
        let mut out = Vec::new();
        for p in files {
            let bad = |why: String| SealError::IdentityFile {
                path: p.clone(),
                why,
            };
            let text = std::fs::read_to_string(p).map_err(|e| bad(e.to_string()))?;
            let before = out.len();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                out.push(age::x25519::Identity::from_str(line).map_err(|_| {
                    bad(format!(
                        "line {} is not an age X25519 identity (AGE-SECRET-KEY-1...; \
                         passphrase, SSH and plugin identities are not supported)",
                        n + 1
                    ))
                })?);
            }
            if out.len() == before {
                return Err(bad("holds no identity".into()));
            }
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn hkdf(salt: &[u8], label: &[u8], ikm: &[u8]) -> [u8; 32] {
    age_core::primitives::hkdf(salt, label, ikm)
}

fn header_mac(file_key: &FileKey, header: &[u8]) -> [u8; 32] {
    let key = hkdf(&[], b"header", file_key.expose_secret());
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key");
    m.update(header);
    m.finalize().into_bytes().into()
}

fn payload_cipher(file_key: &FileKey, nonce: &[u8]) -> ChaCha20Poly1305 {
    let k = hkdf(nonce, b"payload", file_key.expose_secret());
    ChaCha20Poly1305::new(Key::from_slice(&k))
}

fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = last as u8;
    *Nonce::from_slice(&n)
}

/// Chunks of a payload of `plain` bytes (an empty payload is one empty chunk).
pub fn chunks_of(plain: u64) -> u64 {
    plain.div_ceil(CHUNK).max(1)
}

/// One object being sealed: its header (with the payload nonce) and payload key.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    header: Vec<u8>,
}

impl Sealer {
    /// A fresh file key wrapped to every recipient.
    pub fn new(to: &Recipients) -> Self {
        let file_key = FileKey::init_with_mut(|k| rand::fill(&mut k[..]));
        let mut header = MAGIC.to_vec();
        for r in &to.0 {
            let (stanzas, _) =
                age::Recipient::wrap_file_key(r, &file_key).expect("X25519 wrapping cannot fail");
            for s in stanzas {
                write_stanza(&mut header, &s);
            }
        }
        header.extend_from_slice(b"---");
        let mac = header_mac(&file_key, &header);
        header.push(b' ');
        header.extend_from_slice(B64.encode(mac).as_bytes());
        header.push(b'\n');
        let mut nonce = [0u8; NONCE];
        rand::fill(&mut nonce);
        header.extend_from_slice(&nonce);
        Self {
            cipher: payload_cipher(&file_key, &nonce),
            header,
        }
    }

    /// The header and payload nonce: the object's first bytes.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// The stored size of `plain` bytes.
    pub fn sealed_len(&self, plain: u64) -> u64 {
        self.header.len() as u64 + plain + TAG * chunks_of(plain)
    }

    /// Seals, in place, the plaintext of chunks `first..` held contiguously at the start of
    /// `buf` (`plain` bytes, whole chunks but for the payload's last), spreading them to
    /// their sealed positions. `buf` is [`sealed_part_len`]`(plain)` bytes; `total` is the
    /// whole payload's plaintext size (which chunk is last).
    pub fn seal_in_place(&self, first: u64, plain: usize, total: u64, buf: &mut [u8]) {
        let last_chunk = chunks_of(total) - 1;
        let n = chunks_of(plain as u64) as usize;
        assert_eq!(
            buf.len(),
            sealed_part_len(plain),
            "buffer of the sealed size"
        );
        // From the last chunk back, so that no chunk is overwritten before it is moved.
        for j in (0..n).rev() {
            let from = j * CHUNK as usize;
            let len = (plain - from).min(CHUNK as usize);
            let to = j * SEALED_CHUNK as usize;
            buf.copy_within(from..from + len, to);
            let index = first + j as u64;
            self.seal_chunk(
                index,
                index == last_chunk,
                &mut buf[to..to + len + TAG as usize],
            );
        }
    }

    /// Seals one chunk in place: `buf` is its plaintext and room for the tag.
    fn seal_chunk(&self, index: u64, last: bool, buf: &mut [u8]) {
        let len = buf.len() - TAG as usize;
        let tag = self
            .cipher
            .encrypt_in_place_detached(&chunk_nonce(index, last), &[], &mut buf[..len])
            .expect("a chunk is far below ChaCha20's limit");
        buf[len..].copy_from_slice(&tag);
    }
}

/// The header of an object sealed by [`Sealer`] to `k` X25519 recipients: the version
/// line, a stanza of 98 bytes each, the MAC line and the payload nonce.
pub fn x25519_header_len(k: u64) -> u64 {
    MAGIC.len() as u64 + 98 * k + 48 + NONCE as u64
}

/// Whether a listed object of `stored` bytes may be a file of `plain` bytes sealed to any
/// number of X25519 recipients (a LIST gives sizes only; a restart after a key rotation
/// must not take every object sealed to the old keys for another file).
pub fn could_be_sealed(stored: u64, plain: u64) -> bool {
    let base = x25519_header_len(0) + plain + TAG * chunks_of(plain);
    stored > base && (stored - base) % 98 == 0
}

/// The sealed size of `plain` bytes of payload (a part of whole chunks, or the last).
pub fn sealed_part_len(plain: usize) -> usize {
    plain + TAG as usize * chunks_of(plain as u64) as usize
}

/// The CRC-32 of a payload's sealed bytes, computed by sealing as the plaintext streams by
/// (the first pass of a multipart upload, which must name the checksum before any part).
pub struct SealedCrc<'a> {
    sealer: &'a Sealer,
    /// `None`: not known until [`SealedCrc::finish`] (a compressed stream).
    total: Option<u64>,
    crc: crc32fast::Hasher,
    buf: Vec<u8>,
    index: u64,
}

impl<'a> SealedCrc<'a> {
    pub fn new(sealer: &'a Sealer, total: Option<u64>) -> Self {
        let mut crc = crc32fast::Hasher::new();
        crc.update(sealer.header());
        Self {
            sealer,
            total,
            crc,
            buf: Vec::with_capacity(SEALED_CHUNK as usize),
            index: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            // A full chunk is not the last one when more bytes follow.
            if self.buf.len() == CHUNK as usize {
                self.flush(false);
            }
            let take = (CHUNK as usize - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == CHUNK as usize
                && self.total.is_some_and(|t| (self.index + 1) * CHUNK < t)
            {
                self.flush(false);
            }
        }
    }

    fn flush(&mut self, last: bool) {
        let n = self.buf.len();
        self.buf.resize(n + TAG as usize, 0);
        self.sealer.seal_chunk(self.index, last, &mut self.buf);
        self.crc.update(&self.buf);
        self.buf.clear();
        self.index += 1;
    }

    /// The CRC, once all bytes (exactly `total`, when it was given) were given.
    pub fn finish(mut self) -> u32 {
        self.flush(true);
        self.crc.finalize()
    }
}

fn write_stanza(out: &mut Vec<u8>, s: &Stanza) {
    out.extend_from_slice(b"->");
    for a in std::iter::once(&s.tag).chain(&s.args) {
        out.push(b' ');
        out.extend_from_slice(a.as_bytes());
    }
    out.push(b'\n');
    let body = B64.encode(&s.body);
    let mut rest = body.as_bytes();
    // Wrapped at 64 columns; the last line is short (empty if need be).
    loop {
        let (line, next) = rest.split_at(rest.len().min(64));
        out.extend_from_slice(line);
        out.push(b'\n');
        if line.len() < 64 {
            break;
        }
        rest = next;
    }
}

/// An opened object: where its payload starts and the key to its chunks.
pub struct Opener {
    cipher: ChaCha20Poly1305,
    payload_start: u64,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opener(payload at {})", self.payload_start)
    }
}

impl Opener {
    /// Reads the header at the start of `head` (the object's first bytes) and unwraps its
    /// file key with one of `ids`. `Ok(None)`: `head` ends before the header does.
    pub fn open(head: &[u8], ids: &Identities) -> Result<Option<Self>, SealError> {
        let bad = |why: &str| SealError::Header {
            why: format!("not an age v1 file: {why}"),
        };
        if head.len() < MAGIC.len() {
            return if MAGIC.starts_with(head) {
                Ok(None)
            } else {
                Err(bad("no age-encryption.org/v1 line"))
            };
        }
        if !head.starts_with(MAGIC) {
            return Err(bad("no age-encryption.org/v1 line"));
        }
        // The header ends at the MAC line, the first line starting "--- " (stanza bodies
        // are base64, which never starts with '-').
        let Some(mac_at) = head.windows(5).position(|w| w == b"\n--- ").map(|p| p + 1) else {
            return if head.len() >= MAX_HEADER {
                Err(bad("no header end"))
            } else {
                Ok(None)
            };
        };
        let mut at = MAGIC.len();
        let mut stanzas = Vec::new();
        while at < mac_at {
            let rest = &head[at..mac_at];
            if !rest.starts_with(b"->") {
                return Err(bad("a line that is neither a stanza nor the MAC"));
            }
            match age_core::format::read::age_stanza(rest) {
                Ok((left, s)) => {
                    at = mac_at - left.len();
                    stanzas.push(Stanza::from(s));
                }
                Err(_) => return Err(bad("a malformed stanza")),
            }
        }
        let mac_line = at + 4;
        let Some(nl) = head[mac_line..].iter().position(|&b| b == b'\n') else {
            return if head.len() - mac_line > 64 {
                Err(bad("a malformed MAC line"))
            } else {
                Ok(None)
            };
        };
        let mac = B64
            .decode(&head[mac_line..mac_line + nl])
            .map_err(|_| bad("a malformed MAC"))?;
        let payload_start = mac_line + nl + 1 + NONCE;
        if head.len() < payload_start {
            return Ok(None);
        }
        let nonce = &head[mac_line + nl + 1..payload_start];
        // Unwrap the file key with whichever identity can; a stanza that is ours but does
        // not unwrap is tampered with.
        let mut file_key = None;
        'ids: for id in &ids.0 {
            for s in &stanzas {
                match age::Identity::unwrap_stanza(id, s) {
                    Some(Ok(k)) => {
                        file_key = Some(k);
                        break 'ids;
                    }
                    Some(Err(_)) => {
                        return Err(SealError::Header {
                            why: "a stanza for the identity given does not unwrap (tampered)"
                                .into(),
                        });
                    }
                    None => {}
                }
            }
        }
        let Some(file_key) = file_key else {
            return Err(SealError::WrongIdentity);
        };
        let want = header_mac(&file_key, &head[..at + 3]);
        use subtle_eq::ct_eq;
        if !ct_eq(&want, &mac) {
            return Err(SealError::Header {
                why: "the header's MAC does not match (tampered)".into(),
            });
        }
        Ok(Some(Self {
            cipher: payload_cipher(&file_key, nonce),
            payload_start: payload_start as u64,
        }))
    }

    /// Where the first chunk starts (header and nonce before it).
    pub fn payload_start(&self) -> u64 {
        self.payload_start
    }

    /// The plaintext size of an object of `sealed` bytes.
    pub fn plain_len(&self, sealed: u64) -> Result<u64, SealError> {
        plain_len(self.payload_start, sealed)
    }

    /// Opens one sealed chunk in place (`buf`: its ciphertext and tag), leaving its
    /// plaintext.
    pub fn open_chunk(&self, index: u64, last: bool, buf: &mut Vec<u8>) -> Result<(), SealError> {
        if buf.len() < TAG as usize {
            return Err(SealError::Tampered { index });
        }
        let at = buf.len() - TAG as usize;
        let tag = *Tag::from_slice(&buf[at..]);
        buf.truncate(at);
        self.cipher
            .decrypt_in_place_detached(&chunk_nonce(index, last), &[], buf, &tag)
            .map_err(|_| SealError::Tampered { index })?;
        if last && buf.is_empty() && index > 0 {
            return Err(SealError::Tampered { index });
        }
        Ok(())
    }
}

/// The plaintext size of a payload starting at `payload_start` in an object of `sealed`
/// bytes.
pub fn plain_len(payload_start: u64, sealed: u64) -> Result<u64, SealError> {
    let payload = sealed
        .checked_sub(payload_start)
        .filter(|&p| p >= TAG)
        .ok_or(SealError::BadLength { sealed })?;
    let n = payload.div_ceil(SEALED_CHUNK);
    // A last chunk of only a tag is allowed only as the whole (empty) payload.
    let tail = payload - (n - 1) * SEALED_CHUNK;
    if tail < TAG || (tail == TAG && n > 1) {
        return Err(SealError::BadLength { sealed });
    }
    Ok(payload - n * TAG)
}

/// The chunks holding plaintext bytes `plain` of a payload of `total` bytes, and the
/// sealed byte range they occupy in the object.
pub fn sealed_range(payload_start: u64, plain: Range<u64>, total: u64) -> (Range<u64>, Range<u64>) {
    let first = plain.start / CHUNK;
    let end = if total == 0 {
        1
    } else {
        plain.end.div_ceil(CHUNK).max(first + 1)
    };
    let last_chunk = chunks_of(total) - 1;
    let end = end.min(last_chunk + 1);
    let from = payload_start + first * SEALED_CHUNK;
    let to = if end > last_chunk {
        payload_start + total + TAG * chunks_of(total)
    } else {
        payload_start + end * SEALED_CHUNK
    };
    (first..end, from..to)
}

/// Reads a whole sealed payload as it streams in: feed it bytes, take plaintext chunks out.
pub struct StreamOpener {
    opener: Option<Opener>,
    sealed_total: u64,
    total: u64,
    head: Vec<u8>,
    chunks: Chunks,
}

impl StreamOpener {
    /// For an object of `sealed_total` bytes.
    pub fn new(sealed_total: u64) -> Self {
        Self {
            opener: None,
            sealed_total,
            total: 0,
            head: Vec::new(),
            chunks: Chunks::new(0..0, 0),
        }
    }

    /// The plaintext size, once the header is read.
    pub fn plain_len(&self) -> Option<u64> {
        self.opener.as_ref().map(|_| self.total)
    }

    /// Feeds `data`; `out` is called with each plaintext chunk opened.
    pub fn feed(
        &mut self,
        ids: &Identities,
        mut data: &[u8],
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), FeedError> {
        if self.opener.is_none() {
            let room = MAX_HEADER + NONCE - self.head.len();
            let take = data.len().min(room);
            self.head.extend_from_slice(&data[..take]);
            match Opener::open(&self.head, ids)? {
                None if self.head.len() >= MAX_HEADER + NONCE => {
                    return Err(SealError::Header {
                        why: format!("no header end within {MAX_HEADER} bytes"),
                    }
                    .into());
                }
                None => return Ok(()),
                Some(o) => {
                    let start = o.payload_start() as usize;
                    self.total = o.plain_len(self.sealed_total)?;
                    self.chunks = Chunks::new(0..chunks_of(self.total), self.total);
                    self.opener = Some(o);
                    // What came after the header is payload; re-feed it below.
                    let after = self.head.split_off(start);
                    data = &data[take..];
                    self.feed_payload(&after, out)?;
                }
            }
        }
        self.feed_payload(data, out)
    }

    fn feed_payload(
        &mut self,
        data: &[u8],
        out: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), FeedError> {
        let o = self.opener.as_ref().expect("opened");
        let too_long = SealError::BadLength {
            sealed: self.sealed_total,
        };
        self.chunks.feed(o, data, too_long, &mut |_, p| out(p))
    }

    /// Whether every chunk has been opened.
    pub fn finished(&self) -> bool {
        self.opener.is_some() && self.chunks.finished()
    }
}

/// Chunks `index..end` of a payload of `total` bytes, assembled from sealed bytes as they
/// arrive and opened one by one.
struct Chunks {
    total: u64,
    chunk: Vec<u8>,
    index: u64,
    end: u64,
}

impl Chunks {
    fn new(range: Range<u64>, total: u64) -> Self {
        Self {
            total,
            chunk: Vec::with_capacity(SEALED_CHUNK as usize),
            index: range.start,
            end: range.end,
        }
    }

    /// Feeds sealed bytes; `out(plain_offset, plaintext)` for each chunk opened; bytes
    /// past the last chunk are `too_long`.
    fn feed(
        &mut self,
        o: &Opener,
        mut data: &[u8],
        too_long: SealError,
        out: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), FeedError> {
        let last = chunks_of(self.total) - 1;
        while !data.is_empty() {
            if self.index >= self.end {
                return Err(too_long.into());
            }
            let want = if self.index == last {
                (self.total - last * CHUNK + TAG) as usize
            } else {
                SEALED_CHUNK as usize
            };
            let take = (want - self.chunk.len()).min(data.len());
            self.chunk.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.chunk.len() == want {
                o.open_chunk(self.index, self.index == last, &mut self.chunk)?;
                out(self.index * CHUNK, &self.chunk).map_err(FeedError::Out)?;
                self.chunk.clear();
                self.index += 1;
            }
        }
        Ok(())
    }

    fn finished(&self) -> bool {
        self.index == self.end && self.chunk.is_empty()
    }
}

/// What feeding a [`StreamOpener`] can fail with: the object, or the sink.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("{0}")]
    Out(std::io::Error),
}

/// Opens the chunks `chunks` of a ranged download as they stream in.
pub struct RangeOpener<'a> {
    opener: &'a Opener,
    chunks: Chunks,
}

impl<'a> RangeOpener<'a> {
    pub fn new(opener: &'a Opener, chunks: Range<u64>, total: u64) -> Self {
        Self {
            opener,
            chunks: Chunks::new(chunks, total),
        }
    }

    /// Feeds sealed bytes; `out(plain_offset, plaintext)` for each chunk opened.
    pub fn feed(
        &mut self,
        data: &[u8],
        out: &mut dyn FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), FeedError> {
        let too_long = SealError::BadLength { sealed: 0 };
        self.chunks.feed(self.opener, data, too_long, out)
    }

    pub fn finished(&self) -> bool {
        self.chunks.finished()
    }
}

/// What a HEAD or GET says of how an object holds its file: sealed ([`META_SEALED`]),
/// compressed ([`crate::compress::META_COMPRESSED`]), or both (compressed, then sealed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    pub sealed: bool,
    pub compressed: bool,
    /// The file's size.
    pub plain_size: u64,
    /// CRC-32 of the stored bytes (sealed objects).
    pub sealed_crc32: Option<u32>,
}

impl Encoding {
    /// `Some` for an object marked sealed or compressed; `Err` for a mark we cannot read
    /// (a newer format), naming it.
    pub fn of(meta: &std::collections::HashMap<String, String>) -> Result<Option<Self>, String> {
        let sealed = match meta.get(META_SEALED).map(String::as_str) {
            None => false,
            Some(SEALED_AGE) => true,
            Some(kind) => {
                return Err(format!(
                    "sealed as {kind:?}, which this version does not know (a newer one wrote it?)"
                ));
            }
        };
        let compressed = match meta
            .get(crate::compress::META_COMPRESSED)
            .map(String::as_str)
        {
            None => false,
            Some(crate::compress::COMPRESSED_ZSTD) => true,
            Some(kind) => {
                return Err(format!(
                    "compressed as {kind:?}, which this version does not know (a newer one wrote it?)"
                ));
            }
        };
        if !sealed && !compressed {
            return Ok(None);
        }
        let plain_size = meta
            .get(META_PLAIN_SIZE)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("its {META_PLAIN_SIZE} metadata is missing"))?;
        let sealed_crc32 = meta
            .get(META_SEALED_CRC)
            .and_then(|s| u32::from_str_radix(s, 16).ok());
        Ok(Some(Self {
            sealed,
            compressed,
            plain_size,
            sealed_crc32,
        }))
    }
}

/// Constant-time comparison of MACs.
mod subtle_eq {
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Whether `path` looks like a file of identities rather than recipients (for messages).
pub fn looks_like_identity_file(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains("AGE-SECRET-KEY-1"))
}

#[cfg(test)]
mod tests;
