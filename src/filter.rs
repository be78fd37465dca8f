//! Which files are backed up: the original's rules, unchanged. With neither `-e` nor `-i`,
//! any path containing `-tmp` (Cassandra's temporary files) is skipped; `-e RE...` skips
//! paths where any regex matches (a search, not a full match); `-i RE...` uploads only paths
//! where some regex matches. Events and scans test the full path; index listings test the
//! bare file name, exactly as the original did.
//!
//! These rules are the operator's; Cassandra's own temporary names (`tmp-`, `-tmp-`, and
//! the `.tmp` of a component being rewritten, which `-tmp` does not match) are never
//! uploaded nor named whatever the rules say: [`crate::cassandra::is_temporary`] decides.

use regex::Regex;

#[derive(Debug, Clone, Default)]
pub enum Filter {
    /// The original's default: skip anything containing `-tmp`.
    #[default]
    DefaultTmp,
    Exclude(Vec<Regex>),
    Include(Vec<Regex>),
}

impl Filter {
    /// Builds the filter from the command line; `-e` and `-i` are mutually exclusive there.
    pub fn new(exclude: &[String], include: &[String]) -> Result<Self, regex::Error> {
        let compile = |v: &[String]| {
            v.iter()
                .map(|s| Regex::new(s))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(if !include.is_empty() {
            Filter::Include(compile(include)?)
        } else if !exclude.is_empty() {
            Filter::Exclude(compile(exclude)?)
        } else {
            Filter::DefaultTmp
        })
    }

    pub fn accepts(&self, s: &str) -> bool {
        match self {
            Filter::DefaultTmp => !s.contains("-tmp"),
            Filter::Exclude(res) => !res.iter().any(|r| r.is_match(s)),
            Filter::Include(res) => res.iter().any(|r| r.is_match(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_skips_tmp_anywhere_in_the_path() {
        let f = Filter::new(&[], &[]).unwrap();
        assert!(f.accepts("/d/ks/t/nb-1-big-Data.db"));
        assert!(!f.accepts("/d/ks/t/ks-t-tmp-ic-1-Data.db"));
        assert!(!f.accepts("/d/ks/t/tmplink-... -tmp"));
        assert!(f.accepts("/d/ks/t/tmplink-ic-1-Data.db"));
    }

    #[test]
    fn exclude_and_include_search_anywhere() {
        let e = Filter::new(&["Index\\.db$".into(), "^/skip".into()], &[]).unwrap();
        assert!(!e.accepts("/d/nb-1-big-Index.db"));
        assert!(!e.accepts("/skip/x"));
        assert!(e.accepts("/d/nb-1-big-Data.db"));
        // With -e given, -tmp files are no longer skipped by default (as in the original).
        assert!(e.accepts("/d/x-tmp-Data.db"));
        let i = Filter::new(&[], &["Data\\.db".into()]).unwrap();
        assert!(i.accepts("/d/nb-1-big-Data.db"));
        assert!(!i.accepts("/d/nb-1-big-TOC.txt"));
        assert!(Filter::new(&["(".into()], &[]).is_err());
    }
}
