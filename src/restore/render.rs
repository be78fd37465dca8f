//! The human-readable plan `tableslurp --dry-run` prints.

use super::plan::Plan;

impl Plan {
    /// The human-readable plan printed by `--dry-run`.
    pub fn render(&self) -> String {
        use crate::restore::escape as esc;
        use std::fmt::Write as _;
        let mut out = String::new();
        for t in &self.tables {
            let present = t.files.iter().filter(|f| f.already_present()).count();
            let _ = writeln!(
                out,
                "{} -> {}\n  index {} ({}, {} index(es) in the directory, {})",
                esc(&t.dir),
                t.target.display(),
                esc(&t.index_key),
                t.index_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                t.indexes_total,
                if t.complete { "complete" } else { "INCOMPLETE" },
            );
            if let Some(to) = &t.mapped_to {
                let _ = writeln!(
                    out,
                    "  mapped: re-created table, restored into the existing {}",
                    esc(to)
                );
            }
            if let Some(r) = &t.renumbered {
                let _ = writeln!(
                    out,
                    "  renumbered: {} restored as {} (the bucket holds generations up to {}: the node goes on above them)",
                    esc(&r.from),
                    esc(&r.to),
                    r.above
                );
            }
            for ch in t.checks.iter().filter(|ch| ch.key != t.index_key) {
                let _ = writeln!(
                    out,
                    "  newer index {} ({}) skipped: {}",
                    esc(&ch.key),
                    ch.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ch.describe()
                );
            }
            let _ = writeln!(
                out,
                "  {} files, {} bytes, {} already present",
                t.files.len(),
                t.bytes(),
                present
            );
            for f in &t.files {
                let state = match f.local_size {
                    Some(s) if s == f.size => "present",
                    Some(_) => "present, DIFFERENT SIZE",
                    None => "fetch",
                };
                let _ = writeln!(out, "    {:>12}  {}  [{}]", f.size, esc(&f.name), state);
            }
        }
        if let Some(c) = &self.commitlogs {
            let _ = writeln!(
                out,
                "commit logs {} -> {} (newer than {} ms): {} files, {} bytes",
                c.dir,
                c.target.display(),
                c.since_ms,
                c.files.len(),
                c.files.iter().map(|f| f.size).sum::<u64>()
            );
            for f in &c.files {
                let _ = writeln!(out, "    {:>12}  {}", f.size, f.name);
            }
        }
        for d in &self.skipped_dirs {
            let _ = writeln!(out, "skipped (snapshot/backup directory): {d}");
        }
        for p in &self.problems {
            let _ = writeln!(out, "PROBLEM: {}", esc(&p.to_string()));
        }
        let _ = writeln!(
            out,
            "total: {} tables, {} files, {} bytes",
            self.tables.len(),
            self.files().count(),
            self.total_bytes()
        );
        out
    }
}
