//! Cassandra's own checksum of an SSTable's `Data.db`: the `Digest` component.
//!
//! MD5 in the object metadata proves that restored bytes equal stored bytes, but the stored
//! MD5 was computed from whatever was on the node's disk. Cassandra writes its own checksum of
//! every `Data.db` when it writes the SSTable, so a `Data.db` that does not match its
//! `Digest` was corrupt on disk (or in the bucket). This module knows, from the file name
//! alone, which component holds that checksum and with which algorithm, parses it, and hashes
//! `Data.db` bytes in a streaming fashion so that callers can check while they read.
//!
//! | formats | component | content |
//! |---|---|---|
//! | `ic`, `jb` (and older) | `Digest.sha1` | SHA-1 hex, as `sha1sum` prints it |
//! | `ka` | `Digest.sha1` | Adler-32, decimal |
//! | `la` | `Digest.adler32` | Adler-32, decimal |
//! | `ma` and later, every `bti` | `Digest.crc32` | CRC-32, decimal |

use std::fmt;

/// A checksum algorithm Cassandra uses for its `Digest` component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha1,
    Adler32,
    Crc32,
}

/// A checksum of a whole `Data.db`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    Sha1([u8; 20]),
    Adler32(u32),
    Crc32(u32),
}

impl fmt::Display for Value {
    /// SHA-1 in lowercase hex, Adler-32 and CRC-32 in decimal (as Cassandra writes them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Sha1(b) => {
                for x in b {
                    write!(f, "{x:02x}")?;
                }
                Ok(())
            }
            Value::Adler32(v) | Value::Crc32(v) => write!(f, "{v}"),
        }
    }
}

/// Why a `Digest` file's content could not be read as a checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest file is empty")]
    Empty,
    #[error("digest file is not UTF-8 text")]
    NotText,
    #[error("digest file should start with 40 hex digits of SHA-1, found {0:?}")]
    BadSha1(String),
    #[error("digest file should hold a decimal number below 2^32, found {0:?}")]
    BadDecimal(String),
}

const DATA: &str = "Data.db";

/// For a `Data.db` file name (any format `ic`..`da`, old `ks-table-ka-1-Data.db` style and new
/// `nb-7-big-Data.db` / `da-1-bti-Data.db` / UUID ids): the file name of its Digest component
/// and the algorithm to read it with (ic/jb: `Digest.sha1` = SHA-1 hex; ka: `Digest.sha1`
/// holding Adler-32 decimal; la: `Digest.adler32`; ma and later: `Digest.crc32`). `None` if
/// not a `Data.db`.
///
/// A path is accepted too; only its last component is looked at and returned.
pub fn digest_for_data(data_file_name: &str) -> Option<(String, Algorithm)> {
    use crate::cassandra::{Format, parse_name};
    let name = data_file_name.rsplit('/').next().unwrap_or(data_file_name);
    let f = parse_name(name).filter(|f| f.component == DATA)?;
    let (alg, file) = match f.format {
        // The trie-indexed format (5.0, versions `da`..) has always written CRC-32.
        Format::Bti => (Algorithm::Crc32, "Digest.crc32"),
        Format::Big if f.version < "ka" => (Algorithm::Sha1, "Digest.sha1"),
        Format::Big if f.version < "la" => (Algorithm::Adler32, "Digest.sha1"),
        Format::Big if f.version < "ma" => (Algorithm::Adler32, "Digest.adler32"),
        Format::Big => (Algorithm::Crc32, "Digest.crc32"),
    };
    Some((format!("{}-{file}", f.sstable), alg))
}

/// Parses the Digest file's bytes (sha1sum-style `"hex  name"` or a bare decimal, trailing
/// whitespace allowed). `Err` names what is wrong.
pub fn parse(alg: Algorithm, content: &[u8]) -> Result<Value, DigestError> {
    let text = std::str::from_utf8(content).map_err(|_| DigestError::NotText)?;
    let first = text
        .split_ascii_whitespace()
        .next()
        .ok_or(DigestError::Empty)?;
    let shown = || first.chars().take(64).collect::<String>();
    match alg {
        Algorithm::Sha1 => {
            let mut out = [0u8; 20];
            hex::decode_to_slice(first, &mut out).map_err(|_| DigestError::BadSha1(shown()))?;
            Ok(Value::Sha1(out))
        }
        Algorithm::Adler32 | Algorithm::Crc32 => {
            // A decimal is the whole content: "123 name" is not a valid Adler/CRC digest.
            if text.split_ascii_whitespace().nth(1).is_some()
                || !first.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(DigestError::BadDecimal(
                    text.trim().chars().take(64).collect(),
                ));
            }
            let v: u32 = first
                .parse()
                .map_err(|_| DigestError::BadDecimal(shown()))?;
            Ok(if alg == Algorithm::Adler32 {
                Value::Adler32(v)
            } else {
                Value::Crc32(v)
            })
        }
    }
}

/// Streaming checksum of a `Data.db`: feed its bytes in order, then [`Hasher::finish`].
#[derive(Clone)]
pub struct Hasher {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Sha1(sha1::Sha1),
    Adler32(adler2::Adler32),
    Crc32(crc32fast::Hasher),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alg = match self.inner {
            Inner::Sha1(_) => Algorithm::Sha1,
            Inner::Adler32(_) => Algorithm::Adler32,
            Inner::Crc32(_) => Algorithm::Crc32,
        };
        write!(f, "Hasher({alg:?})")
    }
}

impl Hasher {
    pub fn new(alg: Algorithm) -> Self {
        let inner = match alg {
            Algorithm::Sha1 => Inner::Sha1(<sha1::Sha1 as sha1::Digest>::new()),
            Algorithm::Adler32 => Inner::Adler32(adler2::Adler32::new()),
            Algorithm::Crc32 => Inner::Crc32(crc32fast::Hasher::new()),
        };
        Self { inner }
    }

    pub fn update(&mut self, b: &[u8]) {
        match &mut self.inner {
            Inner::Sha1(h) => sha1::Digest::update(h, b),
            Inner::Adler32(h) => h.write_slice(b),
            Inner::Crc32(h) => h.update(b),
        }
    }

    pub fn finish(self) -> Value {
        match self.inner {
            Inner::Sha1(h) => Value::Sha1(sha1::Digest::finalize(h).into()),
            Inner::Adler32(h) => Value::Adler32(h.checksum()),
            Inner::Crc32(h) => Value::Crc32(h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn names_map_to_their_digest_component() {
        let cases = [
            (
                "Keyspace1-Standard1-jb-0-Data.db",
                Some(("Keyspace1-Standard1-jb-0-Digest.sha1", Algorithm::Sha1)),
            ),
            (
                "Keyspace1-legacyleveled-ic-2-Data.db",
                Some(("Keyspace1-legacyleveled-ic-2-Digest.sha1", Algorithm::Sha1)),
            ),
            (
                "legacy_tables-legacy_ka_clust-ka-1-Data.db",
                Some((
                    "legacy_tables-legacy_ka_clust-ka-1-Digest.sha1",
                    Algorithm::Adler32,
                )),
            ),
            (
                "ks-t-tmp-ka-3-Data.db",
                Some(("ks-t-tmp-ka-3-Digest.sha1", Algorithm::Adler32)),
            ),
            (
                "la-1-big-Data.db",
                Some(("la-1-big-Digest.adler32", Algorithm::Adler32)),
            ),
            (
                "tmp-la-1-big-Data.db",
                Some(("tmp-la-1-big-Digest.adler32", Algorithm::Adler32)),
            ),
            (
                "ma-1-big-Data.db",
                Some(("ma-1-big-Digest.crc32", Algorithm::Crc32)),
            ),
            (
                "nb-7-big-Data.db",
                Some(("nb-7-big-Digest.crc32", Algorithm::Crc32)),
            ),
            (
                "oa-3gaw_0k6p_3k5l22dr0nxs0lbvxw-big-Data.db",
                Some((
                    "oa-3gaw_0k6p_3k5l22dr0nxs0lbvxw-big-Digest.crc32",
                    Algorithm::Crc32,
                )),
            ),
            (
                "da-1-bti-Data.db",
                Some(("da-1-bti-Digest.crc32", Algorithm::Crc32)),
            ),
            (
                "/var/lib/cassandra/data/ks/t-1/nb-7-big-Data.db",
                Some(("nb-7-big-Digest.crc32", Algorithm::Crc32)),
            ),
            ("nb-7-big-Index.db", None),
            ("nb-7-big-Data.db-listdir.json", None),
            ("Data.db", None),
            ("-Data.db", None),
            ("x-Data.db", None),
            ("nb-7-zzz-Data.db", None),
            ("ks-t-ka-x1-Data.db", None),
            ("ks-t-KA-1-Data.db", None),
        ];
        for (name, want) in cases {
            let got = digest_for_data(name);
            let want = want.map(|(f, a)| (f.to_string(), a));
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn parse_accepts_cassandra_forms_and_names_what_is_wrong() {
        let sha = "9ee805b905aa147afe14d4f37f5ed3be3af53c72";
        let v = parse(
            Algorithm::Sha1,
            format!("{sha}  Keyspace1-legacyleveled-ic-1-Data.db").as_bytes(),
        )
        .unwrap();
        assert_eq!(v.to_string(), sha);
        assert_eq!(parse(Algorithm::Sha1, format!("{sha}\n").as_bytes()), Ok(v));
        assert_eq!(
            parse(Algorithm::Crc32, b"980512696"),
            Ok(Value::Crc32(980_512_696))
        );
        assert_eq!(
            parse(Algorithm::Crc32, b"4294967295\n"),
            Ok(Value::Crc32(u32::MAX))
        );
        assert_eq!(
            parse(Algorithm::Adler32, b"12 \r\n"),
            Ok(Value::Adler32(12))
        );
        assert_eq!(Value::Adler32(12).to_string(), "12");
        assert_eq!(parse(Algorithm::Crc32, b""), Err(DigestError::Empty));
        assert_eq!(parse(Algorithm::Crc32, b"  \n"), Err(DigestError::Empty));
        assert_eq!(parse(Algorithm::Crc32, b"\xff"), Err(DigestError::NotText));
        for bad in ["4294967296", "-1", "+5", "12a", "0x10", "1 2"] {
            assert!(
                matches!(
                    parse(Algorithm::Crc32, bad.as_bytes()),
                    Err(DigestError::BadDecimal(_))
                ),
                "{bad}"
            );
        }
        for bad in [
            "abc",
            &sha[..39],
            &format!("{sha}0"),
            &sha.replace('9', "g"),
        ] {
            assert!(
                matches!(
                    parse(Algorithm::Sha1, bad.as_bytes()),
                    Err(DigestError::BadSha1(_))
                ),
                "{bad}"
            );
        }
        // Error text is bounded even for a huge garbage file.
        let huge = "7".repeat(10_000);
        let e = parse(Algorithm::Crc32, huge.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn hashers_match_known_vectors_and_are_streaming() {
        let data = b"The quick brown fox jumps over the lazy dog";
        let one = |alg| {
            let mut h = Hasher::new(alg);
            h.update(data);
            h.finish()
        };
        let split = |alg| {
            let mut h = Hasher::new(alg);
            for c in data.chunks(5) {
                h.update(c);
            }
            h.finish()
        };
        assert_eq!(
            one(Algorithm::Sha1).to_string(),
            "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"
        );
        assert_eq!(one(Algorithm::Crc32), Value::Crc32(0x414f_a339));
        assert_eq!(one(Algorithm::Adler32), Value::Adler32(0x5bdc_0fda));
        for alg in [Algorithm::Sha1, Algorithm::Adler32, Algorithm::Crc32] {
            assert_eq!(one(alg), split(alg), "{alg:?}");
        }
    }

    /// `cargo test --release --lib digest::tests::throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check: run it in release"]
    fn throughput() {
        let buf: Vec<u8> = (0..(256usize << 20)).map(|i| (i * 31 + 7) as u8).collect();
        for alg in [Algorithm::Crc32, Algorithm::Adler32, Algorithm::Sha1] {
            let t = std::time::Instant::now();
            let mut h = Hasher::new(alg);
            for c in buf.chunks(1 << 20) {
                h.update(c);
            }
            let v = h.finish();
            let gbs = buf.len() as f64 / 1e9 / t.elapsed().as_secs_f64();
            eprintln!("{alg:?}: {gbs:.2} GB/s ({v})");
        }
    }

    fn corpus() -> Option<PathBuf> {
        let dir = std::env::var_os("TABLESNAP_SSTABLES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/sstables"));
        if dir.is_dir() {
            return Some(dir);
        }
        assert!(
            std::env::var("TABLESNAP_REQUIRE_SSTABLES").as_deref() != Ok("1"),
            "TABLESNAP_REQUIRE_SSTABLES=1 but the corpus {} is missing",
            dir.display()
        );
        eprintln!(
            "skipped: SSTable corpus {} not found (set TABLESNAP_SSTABLES)",
            dir.display()
        );
        None
    }

    fn data_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
            if ft.is_dir() {
                data_files(&p, out);
            } else if ft.is_file() && p.to_string_lossy().ends_with("-Data.db") {
                out.push(p);
            }
        }
    }

    fn hash(alg: Algorithm, b: &[u8]) -> Value {
        let mut h = Hasher::new(alg);
        // Odd chunk sizes exercise the streaming path.
        for c in b.chunks(4093) {
            h.update(c);
        }
        h.finish()
    }

    #[test]
    fn every_digest_in_the_corpus_verifies_and_a_flipped_byte_is_caught() {
        let Some(dir) = corpus() else { return };
        let mut files = Vec::new();
        data_files(&dir, &mut files);
        let (mut verified, mut missing) = (0, Vec::new());
        let mut flipped = std::collections::HashSet::new();
        for data in &files {
            let name = data.file_name().unwrap().to_str().unwrap();
            let (dname, alg) =
                digest_for_data(name).unwrap_or_else(|| panic!("not recognised: {name}"));
            let dpath = data.with_file_name(&dname);
            let Ok(dbytes) = std::fs::read(&dpath) else {
                missing.push(name.to_string());
                continue;
            };
            let want = parse(alg, &dbytes).unwrap_or_else(|e| panic!("{}: {e}", dpath.display()));
            let mut bytes = std::fs::read(data).unwrap();
            assert_eq!(hash(alg, &bytes), want, "{}", data.display());
            verified += 1;
            if !bytes.is_empty() {
                let i = bytes.len() / 2;
                bytes[i] ^= 0x01;
                assert_ne!(hash(alg, &bytes), want, "flip in {}", data.display());
                flipped.insert(alg);
            }
        }
        assert_eq!(verified, 99, "verified digests");
        missing.sort();
        assert_eq!(missing.len(), 8, "Data.db without Digest: {missing:?}");
        assert!(
            missing.iter().all(|m| m.contains("-jb-")),
            "only the legacy jb tables lack a Digest: {missing:?}"
        );
        assert_eq!(flipped.len(), 3, "a flip was tested for every algorithm");
    }
}
