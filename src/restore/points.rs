//! Complete restore points: per table, the candidate indexes are examined newest first
//! against the one listing, and the first whose every named object exists is chosen.
//! [`needed_bodies`] says which index bodies to fetch next, so older ones are fetched only
//! while the newer are incomplete.

use std::collections::HashMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::PlanError;
use super::listing::Listing;
use super::plan::{Choice, RestoreOptions, choose};
use crate::layout;
use crate::store::ObjectInfo;

/// What is known about one candidate index of a directory.
#[derive(Debug, Clone)]
pub struct IndexCheck {
    pub key: String,
    pub time: DateTime<Utc>,
    /// The names it lists (deduplicated, in order).
    pub names: Vec<String>,
    /// Names whose object is not in the listing.
    pub missing: Vec<String>,
    /// Why the index cannot be used at all (not fetched, not valid).
    pub unusable: Option<String>,
}

impl IndexCheck {
    pub fn complete(&self) -> bool {
        self.unusable.is_none() && self.missing.is_empty()
    }

    /// "complete", "incomplete: 2 objects missing (a, b)" or "unusable: why".
    pub fn describe(&self) -> String {
        if let Some(why) = &self.unusable {
            return format!("unusable: {why}");
        }
        if self.missing.is_empty() {
            return "complete".into();
        }
        const SHOWN: usize = 5;
        let mut names: Vec<String> = self
            .missing
            .iter()
            .take(SHOWN)
            .map(|n| crate::restore::escape(n))
            .collect();
        if self.missing.len() > SHOWN {
            names.push(format!("and {} more", self.missing.len() - SHOWN));
        }
        format!(
            "incomplete: {} object(s) missing ({})",
            self.missing.len(),
            names.join(", ")
        )
    }
}

/// Examines one index body against the listing.
fn check_index(
    dir: &str,
    index: &ObjectInfo,
    body: &[u8],
    listing: &Listing,
    opts: &RestoreOptions,
) -> IndexCheck {
    let mut ch = IndexCheck {
        key: index.key.clone(),
        time: index.last_modified,
        names: Vec::new(),
        missing: Vec::new(),
        unusable: None,
    };
    // Capped and parsed name by name; bad names are one error for the index.
    let mut names = Vec::new();
    let summary = match layout::parse_index(body, |_, n| names.push(n.to_string())) {
        Ok(s) => s,
        Err(e) => {
            ch.unusable = Some(e.to_string());
            return ch;
        }
    };
    if let Some(e) = summary.bad_names_error() {
        ch.unusable = Some(e.to_string());
        return ch;
    }
    let json_dir = summary.dir;
    if json_dir.trim_end_matches('/') != dir {
        tracing::warn!(
            index = %crate::restore::escape(&index.key),
            listed = %crate::restore::escape(&json_dir),
            "index describes another directory than the one it is stored in; using the stored directory"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if !seen.insert(name.clone()) {
            continue;
        }
        let data_key = opts.layout.data_key(&format!("{dir}/{name}"));
        if !listing.contains(&data_key) {
            ch.missing.push(name.clone());
        }
        ch.names.push(name);
    }
    ch
}

/// Where the walk over a directory's candidates stands.
pub(super) enum Walk {
    /// This index body is needed to go on.
    Need(String),
    /// Every candidate examined so far, and which one (if any) is complete.
    Done {
        checks: Vec<IndexCheck>,
        chosen: Option<usize>,
    },
}

/// Walks the candidates of `c` newest first until a complete one (or, when strict, after
/// the first). A candidate whose body is absent from `bodies` (and not known to be
/// unfetchable: an empty body stands for that) stops the walk with [`Walk::Need`].
pub(super) fn walk(
    c: &Choice,
    bodies: &HashMap<String, Bytes>,
    listing: &Listing,
    opts: &RestoreOptions,
) -> Walk {
    let mut checks = Vec::new();
    for cand in &c.candidates {
        if cand.size > layout::MAX_INDEX_BYTES {
            checks.push(IndexCheck {
                key: cand.key.clone(),
                time: cand.last_modified,
                names: Vec::new(),
                missing: Vec::new(),
                unusable: Some(format!(
                    "{} bytes, over the {} byte limit of an index; not read",
                    cand.size,
                    layout::MAX_INDEX_BYTES
                )),
            });
            if c.strict {
                break;
            }
            continue;
        }
        let Some(body) = bodies.get(&cand.key) else {
            return Walk::Need(cand.key.clone());
        };
        let ch = if body.is_empty() {
            IndexCheck {
                key: cand.key.clone(),
                time: cand.last_modified,
                names: Vec::new(),
                missing: Vec::new(),
                unusable: Some("could not be fetched (empty, or gone since the listing)".into()),
            }
        } else {
            check_index(&c.dir, cand, body, listing, opts)
        };
        let complete = ch.complete();
        checks.push(ch);
        if complete {
            let i = checks.len() - 1;
            return Walk::Done {
                checks,
                chosen: Some(i),
            };
        }
        if c.strict {
            break;
        }
    }
    Walk::Done {
        checks,
        chosen: None,
    }
}

/// The index bodies [`plan`] still needs to decide (at most one per directory): fetch them,
/// add them to `bodies` and ask again until this is empty.
pub fn needed_bodies(
    listing: &Listing,
    bodies: &HashMap<String, Bytes>,
    opts: &RestoreOptions,
) -> Result<Vec<String>, PlanError> {
    let choices = choose(listing, opts)?;
    Ok(choices
        .iter()
        .filter_map(|c| match walk(c, bodies, listing, opts) {
            Walk::Need(k) => Some(k),
            Walk::Done { .. } => None,
        })
        .collect())
}
