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
    #[error("index names {0:?}, which is not a plain file name (absolute, '..', '/' or empty)")]
    UnsafeName(String),
}

/// Parses an index body, refusing names that could escape the directory on restore.
pub fn parse_listing(body: &[u8]) -> Result<Listing, ListingError> {
    let v: serde_json::Value = serde_json::from_slice(body)?;
    let obj = v.as_object().ok_or(ListingError::Shape)?;
    if obj.len() != 1 {
        return Err(ListingError::Shape);
    }
    let (dir, arr) = obj.iter().next().ok_or(ListingError::Shape)?;
    let arr = arr.as_array().ok_or(ListingError::Shape)?;
    let mut names = Vec::with_capacity(arr.len());
    for n in arr {
        let n = n.as_str().ok_or(ListingError::Shape)?;
        if !is_plain_name(n) {
            return Err(ListingError::UnsafeName(n.to_string()));
        }
        names.push(n.to_string());
    }
    Ok(Listing {
        dir: dir.clone(),
        names,
    })
}

/// A name that stays inside its directory: not empty, not `.`/`..`, no `/` or NUL.
pub fn is_plain_name(n: &str) -> bool {
    !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0')
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
