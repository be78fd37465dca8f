//! The bucket layout shared with the original Python tablesnap: key names, the
//! `-listdir.json` index bodies and the `stat`/`md5sum` object metadata.
//!
//! This is the compatibility contract with existing buckets, so it lives in one place and is
//! tested byte for byte against what the original (Python 2, `json.dumps`) writes. Everything
//! else (uploader, restore, retention) goes through here to build or parse a key.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Suffix of an index object: `DATA_KEY + "-listdir.json"`.
pub const INDEX_SUFFIX: &str = "-listdir.json";
/// Content type the original sets on index objects.
pub const INDEX_CONTENT_TYPE: &str = "application/json";
/// User metadata name carrying the file's `stat` JSON (`x-amz-meta-stat`).
pub const META_STAT: &str = "stat";
/// User metadata name carrying the lowercase hex MD5 of the whole file (`x-amz-meta-md5sum`).
pub const META_MD5: &str = "md5sum";
/// Every user metadata name the tools write and read (the `file://` backend keeps them as
/// extended attributes): the original's two, and the marks of a sealed or compressed
/// object ([`crate::seal`], [`crate::compress`]).
pub const META_NAMES: [&str; 6] = [
    META_MD5,
    META_STAT,
    crate::seal::META_SEALED,
    crate::seal::META_PLAIN_SIZE,
    crate::seal::META_SEALED_CRC,
    crate::compress::META_COMPRESSED,
];

/// How keys are named for one host: `PREFIX + NAME + SEPARATOR + ABSOLUTE_PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub prefix: String,
    pub name: String,
    pub separator: String,
}

impl Layout {
    pub fn new(
        prefix: impl Into<String>,
        name: impl Into<String>,
        separator: impl Into<String>,
    ) -> Self {
        Self {
            prefix: prefix.into(),
            name: name.into(),
            separator: separator.into(),
        }
    }

    /// Everything this host ever writes starts with this string.
    pub fn host_prefix(&self) -> String {
        format!("{}{}{}", self.prefix, self.name, self.separator)
    }

    /// The key of a file at `abs_path` (which must be absolute).
    pub fn data_key(&self, abs_path: &str) -> String {
        format!("{}{}", self.host_prefix(), abs_path)
    }

    /// The absolute path a key of this host stands for, or `None` for another host's key.
    pub fn path_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        let rest = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(self.name.as_str())?
            .strip_prefix(self.separator.as_str())?;
        rest.starts_with('/').then_some(rest)
    }
}

/// The index key that goes with a data key.
pub fn index_key(data_key: &str) -> String {
    format!("{data_key}{INDEX_SUFFIX}")
}

/// The data key an index key belongs to, or `None` if `key` is not an index.
pub fn data_key_of_index(key: &str) -> Option<&str> {
    key.strip_suffix(INDEX_SUFFIX)
}

/// The file name whose index key holds a restore point that no new `Data.db` called for
/// (files deleted, a component stored late): `tablesnap-<unix ms>`, so its index key is
/// `DIR/tablesnap-<unix ms>-listdir.json`. No Cassandra file has such a name, so it never
/// overwrites another restore point; readers take indexes by LastModified, whatever the key.
pub fn restore_point_name(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{RESTORE_POINT_PREFIX}{}", at.timestamp_millis())
}

/// See [`restore_point_name`].
pub const RESTORE_POINT_PREFIX: &str = "tablesnap-";

/// The name under which the bytes a reused file name held are kept when this node stores
/// other bytes under it (a generation Cassandra numbered again after a TRUNCATE or a
/// point-in-time restore, a TOC rewritten by an index build): `tablesnap-was-<unix ms>-NAME`,
/// in the same directory. Restore points older than the copy are restored from it (see
/// [`superseded_source`]); no Cassandra file has such a name, and no index names it.
pub fn superseded_name(at: chrono::DateTime<chrono::Utc>, name: &str) -> String {
    format!("{SUPERSEDED_PREFIX}{}-{name}", at.timestamp_millis())
}

/// See [`superseded_name`].
pub const SUPERSEDED_PREFIX: &str = "tablesnap-was-";

/// A sorted set of file names in one allocation: what a directory's last restore point
/// named, held for every directory of the node by the daemon. As a `BTreeSet<String>` the
/// 889,776 names of a million-object node took about 90 MiB of a restart's 152; here a name
/// costs its bytes and four.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Names {
    buf: String,
    /// Where each name ends in `buf`, in name order.
    ends: Vec<u32>,
}

impl Names {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn get(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.buf[start..self.ends[i] as usize]
    }

    /// The names, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &str> + ExactSizeIterator + Clone + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    pub fn contains(&self, name: &str) -> bool {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.get(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }
}

impl Names {
    /// Appends `name` (building): in order, it costs nothing but its bytes and four.
    fn push_built(&mut self, name: &str, unordered: &mut Vec<String>) {
        if !unordered.is_empty() || !self.is_empty() && self.get(self.len() - 1) >= name {
            unordered.push(name.to_string());
            return;
        }
        self.buf.push_str(name);
        self.ends
            .push(u32::try_from(self.buf.len()).expect("names over 4 GiB"));
    }
}

impl<S: AsRef<str>> FromIterator<S> for Names {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut all: Vec<S> = iter.into_iter().collect();
        all.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        all.dedup_by(|a, b| a.as_ref() == b.as_ref());
        let mut n = Names {
            buf: String::with_capacity(all.iter().map(|s| s.as_ref().len()).sum()),
            ends: Vec::with_capacity(all.len()),
        };
        for s in &all {
            n.buf.push_str(s.as_ref());
            n.ends
                .push(u32::try_from(n.buf.len()).expect("names over 4 GiB"));
        }
        n
    }
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The object beside a directory's restore points that says which SSTables they keep
/// naming, gone from disk, because what replaced them on another data directory (JBOD) is
/// not named there yet: `DIR/tablesnap-held.json`. tablesnap writes it before a restore
/// point that relies on it and deletes it when nothing is held, so a restart goes on
/// holding them. No Cassandra file has this name, no index names it, and readers (the
/// original's included) never read it; tablechop keeps it.
pub const HOLDS_NAME: &str = "tablesnap-held.json";

/// The body of [`HOLDS_NAME`]: `{"version": 1, "dir": DIR, "held": {INPUT: [OUTPUT...]}}`,
/// an input an SSTable name of DIR (`nb-1-big`), an output a path (`/d1/ks/t-1/nb-3-big`).
pub fn holds_json(dir: &str, holds: &crate::upload::lineage::Holds) -> String {
    let held: serde_json::Map<String, serde_json::Value> = holds
        .iter()
        .map(|(i, w)| {
            let w: Vec<serde_json::Value> = w
                .iter()
                .filter_map(|p| p.to_str())
                .map(|p| serde_json::Value::String(p.into()))
                .collect();
            (i.clone(), serde_json::Value::Array(w))
        })
        .collect();
    serde_json::json!({"version": 1, "dir": dir, "held": held}).to_string()
}

/// Parses a [`holds_json`] body; `None` if it is not one (a name that is not an SSTable's,
/// another version): then nothing is held, as before this object existed.
pub fn parse_holds(body: &[u8]) -> Option<crate::upload::lineage::Holds> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v.get("version")?.as_u64()? != 1 {
        return None;
    }
    let mut out = crate::upload::lineage::Holds::new();
    for (input, w) in v.get("held")?.as_object()? {
        // An SSTable's name (`nb-1-big`), nothing that could escape its directory.
        crate::cassandra::parse_name(&format!("{input}-Data.db"))?;
        let outs = w
            .as_array()?
            .iter()
            .map(|p| p.as_str().map(std::path::PathBuf::from))
            .collect::<Option<std::collections::BTreeSet<_>>>()?;
        out.insert(input.clone(), outs);
    }
    Some(out)
}

/// The file name whose older bytes `name` keeps, and the time in its name (unix ms), if
/// `name` is a [`superseded_name`].
pub fn parse_superseded(name: &str) -> Option<(i64, &str)> {
    let rest = name.strip_prefix(SUPERSEDED_PREFIX)?;
    let (ms, original) = rest.split_once('-')?;
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) || original.is_empty() {
        return None;
    }
    Some((ms.parse().ok()?, original))
}

/// Which object holds the bytes a restore point made at `index_time` names as `name`:
/// `copies` are the [`superseded_name`] copies of `name` in its directory, as (their
/// LastModified, their key). The bytes a name held when an index was written are the
/// first copy made at or after that index (each copy is made just before other bytes are
/// stored under the name, and the daemon writes no index of the directory in the copy's
/// second: see `Uploader::supersede`); with no such copy, the object under the name itself.
pub fn superseded_source<'a, T: PartialOrd + Copy>(
    copies: impl IntoIterator<Item = (T, &'a str)>,
    index_time: T,
) -> Option<&'a str> {
    let mut best: Option<(T, &'a str)> = None;
    for (t, key) in copies {
        if t >= index_time && best.is_none_or(|(b, _)| t < b) {
            best = Some((t, key));
        }
    }
    best.map(|(_, k)| k)
}

/// Whether an uploaded file gets an index: the original writes one for every file whose
/// name contains `Data.db`.
pub fn wants_index(file_name: &str) -> bool {
    file_name.contains("Data.db")
}

/// Split `/a/b/c` into (`/a/b`, `c`). The directory of a top-level file is `/`.
pub fn split_dir(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// Appends `s` as a JSON string the way Python's `json.dumps` does by default
/// (`ensure_ascii=True`): non-ASCII as `\uXXXX` (surrogate pairs above the BMP), control
/// characters escaped, `/` and DEL left alone.
pub fn push_py_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e && (c as u32) != 0x7f => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The body of an index: `{"DIR": ["name", ...]}` exactly as the original's
/// `json.dumps({dirname: listdir})` prints it.
pub fn listdir_json(dir: &str, names: &[String]) -> String {
    let mut out = String::with_capacity(dir.len() + 32 * names.len() + 8);
    out.push('{');
    push_py_json_str(&mut out, dir);
    out.push_str(": [");
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_py_json_str(&mut out, n);
    }
    out.push_str("]}");
    out
}

/// A parsed index body: the directory it describes and the names it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub dir: String,
    pub names: Vec<String>,
}

/// Why an index body could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("index is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("index must be a JSON object with exactly one member (directory → array of names)")]
    Shape,
    #[error(
        "index names {}, which is not a plain file name (absolute, '..', '/', control characters or empty)",
        Quoted(.0)
    )]
    UnsafeName(String),
    #[error("index body is larger than {limit} bytes; not read (an index lists one directory)")]
    TooLarge { limit: u64 },
    #[error(
        "index names {count} entries that are not plain file names (absolute, '..', '/', control characters or empty), the first {}",
        Quoted(.first)
    )]
    UnsafeNames { count: u64, first: String },
}

/// Shows a name in an error or log line: quoted, control characters escaped, at most 200
/// characters (an index or key can be made of anything).
struct Quoted<'a>(&'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.0;
        let (cut, more) = match s.char_indices().nth(200) {
            Some((i, _)) => (&s[..i], "…"),
            None => (s, ""),
        };
        write!(f, "\"{}{more}\"", printable(cut))
    }
}

/// The most an index body may weigh: a real one lists one table directory (a few hundred
/// bytes per SSTable), so 64 MiB is far beyond any real node and bounds what a bad or hostile
/// object can make the tools allocate.
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// Parses an index body, refusing names that could escape the directory on restore (the
/// first such name is the error). Bodies over [`MAX_INDEX_BYTES`] are refused unread.
/// [`parse_listing`] into [`Names`], without a `String` per name on the way (tablesnap
/// writes its listings sorted: then each name is copied once, into the arena).
pub fn parse_listing_names(body: &[u8]) -> Result<Names, ListingError> {
    let mut names = Names::default();
    let mut unordered = Vec::new();
    let s = parse_index(body, |_, n| names.push_built(n, &mut unordered))?;
    if let Some(first) = s.first_bad {
        return Err(ListingError::UnsafeName(first));
    }
    if !unordered.is_empty() {
        unordered.extend(names.iter().map(str::to_string));
        names = unordered.into_iter().collect();
    }
    Ok(names)
}

pub fn parse_listing(body: &[u8]) -> Result<Listing, ListingError> {
    let mut names = Vec::new();
    let s = parse_index(body, |_, n| names.push(n.to_string()))?;
    if let Some(first) = s.first_bad {
        return Err(ListingError::UnsafeName(first));
    }
    Ok(Listing { dir: s.dir, names })
}

/// What [`parse_index`] saw besides the names it handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexSummary {
    /// The directory the body describes (its only member's name).
    pub dir: String,
    /// Plain names handed to the callback.
    pub names: u64,
    /// Names refused by [`is_plain_name`]; only the first is kept, so that a body of
    /// millions of bad names gives one report, not millions.
    pub bad_names: u64,
    pub first_bad: Option<String>,
}

impl IndexSummary {
    /// The one error to report for this index's bad names, if it had any.
    pub fn bad_names_error(&self) -> Option<ListingError> {
        self.first_bad
            .as_ref()
            .map(|first| ListingError::UnsafeNames {
                count: self.bad_names,
                first: first.clone(),
            })
    }
}

/// Parses an index body `{"DIR": ["name", ...]}` without building it in memory: every plain
/// name is handed to `on_name(dir, name)` as it is read, unsafe names are counted (see
/// [`IndexSummary`]). Bodies over [`MAX_INDEX_BYTES`] are refused unread.
pub fn parse_index(
    body: &[u8],
    on_name: impl FnMut(&str, &str),
) -> Result<IndexSummary, ListingError> {
    if body.len() as u64 > MAX_INDEX_BYTES {
        return Err(ListingError::TooLarge {
            limit: MAX_INDEX_BYTES,
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let s = index_seed::parse(&mut de, on_name)?;
    de.end()?;
    Ok(s)
}

/// [`parse_index`] from a reader (a download, a file), reading at most [`MAX_INDEX_BYTES`]:
/// memory stays bounded by the longest single name, whatever the body's size.
pub fn parse_index_reader(
    r: impl std::io::Read,
    on_name: impl FnMut(&str, &str),
) -> Result<IndexSummary, ListingError> {
    use std::io::Read as _;
    let mut limited = std::io::BufReader::with_capacity(64 * 1024, r).take(MAX_INDEX_BYTES + 1);
    let res = {
        let mut de = serde_json::Deserializer::from_reader(&mut limited);
        index_seed::parse(&mut de, on_name).and_then(|s| {
            de.end()?;
            Ok(s)
        })
    };
    // Whatever the parser made of a truncated body, a body over the cap is the error.
    if limited.limit() == 0 {
        return Err(ListingError::TooLarge {
            limit: MAX_INDEX_BYTES,
        });
    }
    res
}

mod index_seed {
    //! serde visitors that walk `{"DIR": [names]}` handing out each name without keeping it.
    use super::{IndexSummary, ListingError, is_plain_name};
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::fmt;

    pub(super) fn parse<'de, D, F>(de: D, on_name: F) -> Result<IndexSummary, ListingError>
    where
        D: Deserializer<'de, Error = serde_json::Error>,
        F: FnMut(&str, &str),
    {
        let mut shape_ok = true;
        let mut v = Top {
            on_name,
            summary: IndexSummary::default(),
            shape_ok: &mut shape_ok,
        };
        let r = de.deserialize_any(&mut v);
        let summary = std::mem::take(&mut v.summary);
        drop(v);
        match r {
            Ok(()) => Ok(summary),
            Err(_) if !shape_ok => Err(ListingError::Shape),
            Err(e) => Err(ListingError::Json(e)),
        }
    }

    struct Top<'s, F> {
        on_name: F,
        summary: IndexSummary,
        shape_ok: &'s mut bool,
    }

    impl<F> Top<'_, F> {
        fn shape<E: de::Error>(&mut self) -> E {
            *self.shape_ok = false;
            E::custom("index must be a JSON object with exactly one member")
        }
    }

    impl<'de, F: FnMut(&str, &str)> Visitor<'de> for &mut Top<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object {\"DIR\": [names]}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let Some(dir) = map.next_key::<String>()? else {
                return Err(self.shape());
            };
            self.summary.dir = dir;
            let shape_ok = &mut *self.shape_ok;
            map.next_value_seed(Names {
                on_name: &mut self.on_name,
                summary: &mut self.summary,
                shape_ok,
            })?;
            if map.next_key::<de::IgnoredAny>()?.is_some() {
                return Err(self.shape());
            }
            Ok(())
        }
        // Any other JSON value at the top is the wrong shape.
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            Err(self.shape())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            Err(self.shape())
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            Err(self.shape())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            Err(self.shape())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            Err(self.shape())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            Err(self.shape())
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            Err(self.shape())
        }
    }

    struct Names<'a, F> {
        on_name: &'a mut F,
        summary: &'a mut IndexSummary,
        shape_ok: &'a mut bool,
    }

    impl<'de, F: FnMut(&str, &str)> DeserializeSeed<'de> for Names<'_, F> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de, F: FnMut(&str, &str)> Visitor<'de> for Names<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of file names")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            loop {
                let one = One {
                    on_name: &mut *self.on_name,
                    summary: &mut *self.summary,
                    shape_ok: &mut *self.shape_ok,
                };
                if seq.next_element_seed(one)?.is_none() {
                    return Ok(());
                }
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            *self.shape_ok = false;
            Err(de::Error::custom("names must be an array"))
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be an array"))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be an array"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be an array"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be an array"))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be an array"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be an array"))
        }
    }

    struct One<'a, F> {
        on_name: &'a mut F,
        summary: &'a mut IndexSummary,
        shape_ok: &'a mut bool,
    }

    impl<'de, F: FnMut(&str, &str)> DeserializeSeed<'de> for One<'_, F> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de, F: FnMut(&str, &str)> Visitor<'de> for One<'_, F> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a file name")
        }
        fn visit_str<E: de::Error>(self, n: &str) -> Result<(), E> {
            if is_plain_name(n) {
                self.summary.names += 1;
                (self.on_name)(&self.summary.dir, n);
            } else {
                self.summary.bad_names += 1;
                if self.summary.first_bad.is_none() {
                    self.summary.first_bad = Some(n.chars().take(256).collect());
                }
            }
            Ok(())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be strings"))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be strings"))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be strings"))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be strings"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            *self.shape_ok = false;
            Err(E::custom("names must be strings"))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            *self.shape_ok = false;
            Err(de::Error::custom("names must be strings"))
        }
        fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
            *self.shape_ok = false;
            Err(de::Error::custom("names must be strings"))
        }
    }
}

/// A name that stays inside its directory: not empty, not `.`/`..`, no `/`, no control
/// characters (NUL, newline, tab, DEL, C1: they make invalid keys and forge log lines).
pub fn is_plain_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.chars().any(char::is_control)
}

/// `s` with control characters escaped (`\n`, `\t`, `\r`, else `\u{..}`), so that a name
/// from a bucket or an index cannot forge or break log lines. Borrowed when nothing needs
/// escaping (the usual case).
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The file-system facts the original stores in the `stat` metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatMeta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub user: Option<String>,
    pub group: Option<String>,
}

impl StatMeta {
    /// The `stat` metadata value exactly as the original writes it. Python 2 orders a dict
    /// built as `{'uid','gid','mode'}` then `user`, `group` by string hash; the resulting
    /// order is fixed: user, gid, group, uid, mode.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        let mut first = true;
        let mut sep = |out: &mut String| {
            if !first {
                out.push_str(", ");
            }
            first = false;
        };
        if let Some(u) = &self.user {
            sep(&mut out);
            out.push_str("\"user\": ");
            push_py_json_str(&mut out, u);
        }
        sep(&mut out);
        let _ = write!(out, "\"gid\": {}", self.gid);
        if let Some(g) = &self.group {
            sep(&mut out);
            out.push_str("\"group\": ");
            push_py_json_str(&mut out, g);
        }
        sep(&mut out);
        let _ = write!(out, "\"uid\": {}, \"mode\": {}", self.uid, self.mode);
        out.push('}');
        out
    }

    /// Reads a `stat` value in any member order; `None` if it is not the expected shape.
    pub fn parse(s: &str) -> Option<Self> {
        let v: BTreeMap<String, serde_json::Value> = serde_json::from_str(s).ok()?;
        let num = |k: &str| v.get(k)?.as_u64().and_then(|n| u32::try_from(n).ok());
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Some(Self {
            uid: num("uid")?,
            gid: num("gid")?,
            mode: num("mode")?,
            user: text("user"),
            group: text("group"),
        })
    }
}

/// A Cassandra commit log archived as `CommitLog-<version>-<epoch ms>.log`; returns the
/// epoch milliseconds.
pub fn commitlog_millis(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("CommitLog-")?.strip_suffix(".log")?;
    let (_version, ms) = rest.split_once('-')?;
    ms.parse().ok()
}

/// Orderable SSTable generation of a component name, used to break ties between indexes
/// that share a LastModified second: the later generation was written last.
/// Handles `nb-7-big-Data.db`, `ks-tbl-ic-5-Data.db`, `ks-tbl-hf-5-Data.db` and the
/// time-ordered UUID generations of Cassandra 5 (`oa-3gaw_0k6p_..-big-Data.db`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Generation {
    Number(u64),
    /// Base-36 time-UUID identifiers sort by time when compared as strings.
    Uuid(String),
}

pub fn sstable_generation(name: &str) -> Option<Generation> {
    let parts: Vec<&str> = name.split('-').collect();
    if parts.len() < 3 {
        return None;
    }
    // New style: VERSION-GEN-FORMAT-Component (4 parts, e.g. nb-7-big-Data.db).
    if parts.len() == 4 && parts[0].len() == 2 {
        let g = parts[1];
        return Some(match g.parse() {
            Ok(n) => Generation::Number(n),
            Err(_) => Generation::Uuid(g.to_string()),
        });
    }
    // Old style: KS-TABLE-VERSION-GEN-Component: the generation is the next-to-last part.
    let g = parts[parts.len() - 2];
    g.parse().ok().map(Generation::Number)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_superseded_copy_names_its_file_and_time_and_nothing_else_parses() {
        let at = chrono::DateTime::from_timestamp_millis(1_733_280_000_123).unwrap();
        let n = superseded_name(at, "nb-1-big-Data.db");
        assert_eq!(n, "tablesnap-was-1733280000123-nb-1-big-Data.db");
        assert_eq!(
            parse_superseded(&n),
            Some((1_733_280_000_123, "nb-1-big-Data.db"))
        );
        // Not an SSTable's file, not an index, not a restore point's name.
        assert!(crate::cassandra::parse_name(&n).is_none());
        assert!(data_key_of_index(&n).is_none());
        for other in [
            "tablesnap-1733280000123",
            "tablesnap-was--nb-1-big-Data.db",
            "tablesnap-was-12x-nb-1-big-Data.db",
            "tablesnap-was-12-",
            "nb-1-big-Data.db",
        ] {
            assert_eq!(parse_superseded(other), None, "{other}");
        }
    }

    #[test]
    fn a_restore_point_takes_the_first_copy_made_at_or_after_it() {
        let copies = [(10, "k@10"), (30, "k@30"), (20, "k@20")];
        assert_eq!(superseded_source(copies, 5), Some("k@10"));
        assert_eq!(
            superseded_source(copies, 10),
            Some("k@10"),
            "same second: the index saw the old bytes"
        );
        assert_eq!(superseded_source(copies, 11), Some("k@20"));
        assert_eq!(superseded_source(copies, 30), Some("k@30"));
        assert_eq!(
            superseded_source(copies, 31),
            None,
            "newer than every copy: the name itself"
        );
        assert_eq!(
            superseded_source(std::iter::empty::<(i32, &str)>(), 0),
            None
        );
    }

    use super::*;

    #[test]
    fn keys_are_prefix_name_separator_path() {
        let l = Layout::new("", "node1.example.com", ":");
        let k = l.data_key("/var/lib/cassandra/data/ks/events-5b60/nb-7-big-Data.db");
        assert_eq!(
            k,
            "node1.example.com:/var/lib/cassandra/data/ks/events-5b60/nb-7-big-Data.db"
        );
        assert_eq!(
            index_key(&k),
            "node1.example.com:/var/lib/cassandra/data/ks/events-5b60/nb-7-big-Data.db-listdir.json"
        );
        assert_eq!(
            l.path_of(&k),
            Some("/var/lib/cassandra/data/ks/events-5b60/nb-7-big-Data.db")
        );
        let p = Layout::new("backups/", "n2", "|");
        assert_eq!(p.data_key("/d/f"), "backups/n2|/d/f");
        assert_eq!(p.path_of("backups/n2|/d/f"), Some("/d/f"));
        assert_eq!(p.path_of("backups/n22|/d/f"), None);
        assert_eq!(l.path_of("node1.example.com:relative"), None);
    }

    #[test]
    fn a_restore_point_key_is_no_cassandra_file_and_sorts_by_time() {
        let t = chrono::DateTime::from_timestamp_millis(1_733_250_000_123).unwrap();
        let n = restore_point_name(t);
        assert_eq!(n, "tablesnap-1733250000123");
        assert!(crate::cassandra::parse_name(&n).is_none());
        assert!(!wants_index(&n));
        assert_eq!(sstable_generation(&n), None);
        let l = Layout::new("", "h", ":");
        assert_eq!(
            index_key(&l.data_key(&format!("/d/ks/t-1/{n}"))),
            "h:/d/ks/t-1/tablesnap-1733250000123-listdir.json"
        );
    }

    #[test]
    fn listdir_body_matches_python_json_dumps() {
        // python2 -c 'import json; print json.dumps({"/d/ks/t-1": ["nb-1-big-Data.db", "nb-1-big-TOC.txt"]})'
        assert_eq!(
            listdir_json(
                "/d/ks/t-1",
                &["nb-1-big-Data.db".into(), "nb-1-big-TOC.txt".into()]
            ),
            r#"{"/d/ks/t-1": ["nb-1-big-Data.db", "nb-1-big-TOC.txt"]}"#
        );
        assert_eq!(listdir_json("/d", &[]), r#"{"/d": []}"#);
        // json.dumps(u"/d/caf\xe9/\U0001f600\"\\\t\x01\x7f") (ensure_ascii escapes)
        let mut s = String::new();
        push_py_json_str(&mut s, "/d/café/😀\"\\\t\u{1}\u{7f}");
        assert_eq!(
            s,
            "\"/d/caf\\u00e9/\\ud83d\\ude00\\\"\\\\\\t\\u0001\u{7f}\""
        );
    }

    #[test]
    fn stat_metadata_matches_python2_dict_order() {
        // Python 2.7: json.dumps({'uid': 105, 'gid': 107, 'mode': 33188, 'user': 'cassandra',
        // 'group': 'cassandra'}) after inserting user and group in that order.
        let m = StatMeta {
            uid: 105,
            gid: 107,
            mode: 33188,
            user: Some("cassandra".into()),
            group: Some("cassandra".into()),
        };
        assert_eq!(
            m.to_json(),
            r#"{"user": "cassandra", "gid": 107, "group": "cassandra", "uid": 105, "mode": 33188}"#
        );
        let bare = StatMeta {
            user: None,
            group: None,
            ..m.clone()
        };
        assert_eq!(bare.to_json(), r#"{"gid": 107, "uid": 105, "mode": 33188}"#);
        assert_eq!(StatMeta::parse(&m.to_json()), Some(m));
        assert_eq!(StatMeta::parse(&bare.to_json()), Some(bare));
        assert_eq!(StatMeta::parse("not json"), None);
    }

    #[test]
    fn a_listing_parses_into_names_sorted_or_not() {
        for body in [
            r#"{"/d/t": ["a-Data.db", "b", "c"]}"#,
            r#"{"/d/t": ["c", "a-Data.db", "b", "b"]}"#,
            r#"{"/d/t": ["a-Data.db", "c", "b"]}"#,
        ] {
            let n = parse_listing_names(body.as_bytes()).unwrap();
            assert_eq!(
                n.iter().collect::<Vec<_>>(),
                ["a-Data.db", "b", "c"],
                "{body}"
            );
        }
        assert!(parse_listing_names(br#"{"/d": ["a", "../x"]}"#).is_err());
        assert!(parse_listing_names(br#"{"/d": []}"#).unwrap().is_empty());
    }

    #[test]
    fn names_are_a_sorted_set() {
        let n: Names = ["nb-2-big-Data.db", "a", "nb-10-big-TOC.txt", "a", ""]
            .into_iter()
            .collect();
        assert_eq!(
            n.iter().collect::<Vec<_>>(),
            ["", "a", "nb-10-big-TOC.txt", "nb-2-big-Data.db"]
        );
        assert_eq!(n.len(), 4);
        for x in ["", "a", "nb-10-big-TOC.txt", "nb-2-big-Data.db"] {
            assert!(n.contains(x), "{x}");
        }
        for x in ["b", "nb-1", "nb-2-big-Data.dbx", " "] {
            assert!(!n.contains(x), "{x}");
        }
        assert!(!Names::default().contains(""));
        let same: Names = n.iter().rev().collect();
        assert_eq!(same, n);
    }

    #[test]
    fn holds_round_trip_and_refuse_what_is_not_one() {
        let holds = crate::upload::lineage::Holds::from([(
            "nb-1-big".to_string(),
            std::collections::BTreeSet::from([std::path::PathBuf::from("/d1/ks/t-1/nb-3-big")]),
        )]);
        let body = holds_json("/d2/ks/t-1", &holds);
        assert_eq!(
            body,
            r#"{"version":1,"dir":"/d2/ks/t-1","held":{"nb-1-big":["/d1/ks/t-1/nb-3-big"]}}"#
        );
        assert_eq!(parse_holds(body.as_bytes()), Some(holds));
        for bad in [
            r#"{"version":2,"held":{}}"#,
            r#"{"version":1,"held":{"../x":[]}}"#,
            r#"{"version":1,"held":{"nb-1-big":[1]}}"#,
            r#"["nb-1-big"]"#,
        ] {
            assert_eq!(parse_holds(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn parse_listing_refuses_escaping_names() {
        let l = parse_listing(br#"{"/d/t": ["a-Data.db", "b"]}"#).unwrap();
        assert_eq!(l.dir, "/d/t");
        assert_eq!(l.names, vec!["a-Data.db", "b"]);
        for bad in [
            r#"{"/d": ["../x"]}"#,
            r#"{"/d": ["/etc/passwd"]}"#,
            r#"{"/d": ["a/b"]}"#,
            r#"{"/d": [".."]}"#,
            r#"{"/d": [""]}"#,
        ] {
            assert!(
                matches!(
                    parse_listing(bad.as_bytes()),
                    Err(ListingError::UnsafeName(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(parse_listing(b"[1]"), Err(ListingError::Shape)));
        assert!(matches!(
            parse_listing(br#"{"/a": [], "/b": []}"#),
            Err(ListingError::Shape)
        ));
        assert!(matches!(parse_listing(b"{"), Err(ListingError::Json(_))));
    }

    #[test]
    fn control_characters_are_not_plain_names() {
        for bad in ["a\tb", "a\nb", "\r", "x\u{7f}", "x\u{85}y", "\u{1b}[31m"] {
            assert!(!is_plain_name(bad), "{bad:?}");
            assert!(matches!(
                parse_listing(format!("{{\"/d\": [{}]}}", serde_json::json!(bad)).as_bytes()),
                Err(ListingError::UnsafeName(_))
            ));
        }
        assert!(is_plain_name("nb-1-big-Data.db") && is_plain_name("café ü.db"));
    }

    #[test]
    fn printable_escapes_control_characters_only() {
        assert!(matches!(
            printable("h:/d/nb-1-big-Data.db"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            printable("a\nINFO forged\r\tb\u{1b}[0m\u{7f}é"),
            "a\\nINFO forged\\r\\tb\\u{1b}[0m\\u{7f}é"
        );
        assert!(!printable("x\n\u{85}\u{0}").chars().any(char::is_control));
    }

    #[test]
    fn parse_index_hands_out_names_and_reports_bad_ones_once() {
        let body = br#"{"/d/t": ["a", "../x", "b", "/etc/passwd", "c\nd", "e"]}"#;
        let mut got = Vec::new();
        let s = parse_index(body, |d, n| got.push(format!("{d}|{n}"))).unwrap();
        assert_eq!(got, ["/d/t|a", "/d/t|b", "/d/t|e"]);
        assert_eq!((s.dir.as_str(), s.names, s.bad_names), ("/d/t", 3, 3));
        assert_eq!(s.first_bad.as_deref(), Some("../x"));
        let e = s.bad_names_error().unwrap().to_string();
        assert!(e.contains("3 entries") && e.contains("\"../x\""), "{e}");
        // The same from a reader.
        let mut n = 0;
        let r = parse_index_reader(&body[..], |_, _| n += 1).unwrap();
        assert_eq!((r, n), (s, 3));
        // Shapes and JSON errors as parse_listing reports them.
        for (bad, shape) in [
            (&b"[1]"[..], true),
            (br#"{"/a": [], "/b": []}"#, true),
            (br#"{"/a": "x"}"#, true),
            (br#"{"/a": [1]}"#, true),
            (br#"{}"#, true),
            (b"{", false),
            (br#"{"/a": []} x"#, false),
        ] {
            let e = parse_index(bad, |_, _| {}).unwrap_err();
            assert_eq!(matches!(e, ListingError::Shape), shape, "{e}");
            let e = parse_index_reader(bad, |_, _| {}).unwrap_err();
            assert_eq!(matches!(e, ListingError::Shape), shape, "reader: {e}");
        }
    }

    #[test]
    fn huge_index_is_refused_with_one_error_and_bad_names_do_not_pile_up() {
        // Just over the cap: refused unread, one error naming the limit.
        let mut big = br#"{"/d": ["#.to_vec();
        while (big.len() as u64) <= MAX_INDEX_BYTES {
            big.extend_from_slice(br#""../evil-name-0123456789", "#);
        }
        big.extend_from_slice(br#""x"]}"#);
        let e = parse_index(&big, |_, _| panic!("no name from a refused body")).unwrap_err();
        assert!(matches!(e, ListingError::TooLarge { .. }), "{e}");
        assert!(e.to_string().contains("67108864"), "{e}");
        let e = parse_index_reader(&big[..], |_, _| {}).unwrap_err();
        assert!(matches!(e, ListingError::TooLarge { .. }), "{e}");
        assert!(matches!(
            parse_listing(&big),
            Err(ListingError::TooLarge { .. })
        ));
        // Under the cap, 1.5 M bad names: one summary, one first name, bounded error text.
        let n = 1_500_000usize;
        let mut body = br#"{"/d": ["#.to_vec();
        for i in 0..n {
            body.extend_from_slice(format!(r#""../{i}\n", "#).as_bytes());
        }
        body.extend_from_slice(br#""ok"]}"#);
        let mut good = 0;
        let s = parse_index_reader(&body[..], |_, _| good += 1).unwrap();
        assert_eq!((good, s.names, s.bad_names), (1, 1, n as u64));
        let e = s.bad_names_error().unwrap().to_string();
        assert!(e.len() < 400 && !e.contains('\n'), "{e}");
    }

    #[test]
    fn commitlog_and_generation_parsing() {
        assert_eq!(
            commitlog_millis("CommitLog-7-1700000000123.log"),
            Some(1_700_000_000_123)
        );
        assert_eq!(commitlog_millis("CommitLog-7-x.log"), None);
        assert_eq!(commitlog_millis("nb-1-big-Data.db"), None);
        assert_eq!(
            sstable_generation("nb-12-big-Data.db"),
            Some(Generation::Number(12))
        );
        assert_eq!(
            sstable_generation("Keyspace1-Standard1-ic-5-Data.db"),
            Some(Generation::Number(5))
        );
        assert!(sstable_generation("nb-12-big-Data.db") > sstable_generation("nb-9-big-Data.db"));
        assert!(matches!(
            sstable_generation("oa-3gaw_0k6p_3k5l22dr0nxs0lbvxw-big-Data.db"),
            Some(Generation::Uuid(_))
        ));
        assert_eq!(split_dir("/a/b/c"), ("/a/b", "c"));
        assert_eq!(split_dir("/c"), ("/", "c"));
        assert!(wants_index("nb-1-big-Data.db") && !wants_index("nb-1-big-TOC.txt"));
    }
}
