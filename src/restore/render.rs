//! The human-readable plan `tableslurp --dry-run` prints.

use super::plan::Plan;

impl Plan {
    /// The human-readable plan printed by `--dry-run`.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        self.write_to(&mut out).expect("a Vec takes every write");
        String::from_utf8(out).expect("the plan is written from strings")
    }

    /// [`Plan::render`] written as it is made (a node's plan is a line per file: printed,
    /// not held).
    pub fn write_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        use crate::restore::escape as esc;
        for t in &self.tables {
            let present = t.files.iter().filter(|f| f.already_present()).count();
            writeln!(
                out,
                "{} -> {}\n  index {} ({}, {} index(es) in the directory, {})",
                esc(&t.dir),
                t.target.display(),
                esc(&t.index_key),
                t.index_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                t.indexes_total,
                if t.complete { "complete" } else { "INCOMPLETE" },
            )?;
            if let Some(to) = &t.mapped_to {
                writeln!(
                    out,
                    "  mapped: re-created table, restored into the existing {}",
                    esc(to)
                )?;
            }
            if let Some(r) = &t.renumbered {
                writeln!(
                    out,
                    "  renumbered: {} restored as {} (the bucket holds generations up to {}: the node goes on above them)",
                    esc(&r.from),
                    esc(&r.to),
                    r.above
                )?;
            }
            for ch in t.checks.iter().filter(|ch| ch.key != t.index_key) {
                writeln!(
                    out,
                    "  newer index {} ({}) skipped: {}",
                    esc(&ch.key),
                    ch.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    ch.describe()
                )?;
            }
            writeln!(
                out,
                "  {} files, {} bytes, {} already present",
                t.files.len(),
                t.bytes(),
                present
            )?;
            for f in &t.files {
                let state = match f.local_size {
                    Some(s) if s == f.size => "present",
                    Some(_) => "present, DIFFERENT SIZE",
                    None => "fetch",
                };
                writeln!(out, "    {:>12}  {}  [{}]", f.size, esc(f.name()), state)?;
            }
        }
        if let Some(c) = &self.commitlogs {
            writeln!(
                out,
                "commit logs {} -> {} (newer than {} ms): {} files, {} bytes",
                c.dir,
                c.target.display(),
                c.since_ms,
                c.files.len(),
                c.files.iter().map(|f| f.size).sum::<u64>()
            )?;
            for f in &c.files {
                writeln!(out, "    {:>12}  {}", f.size, f.name())?;
            }
        }
        for d in &self.skipped_dirs {
            writeln!(out, "skipped (snapshot/backup directory): {d}")?;
        }
        for p in &self.problems {
            writeln!(out, "PROBLEM: {}", esc(&p.to_string()))?;
        }
        writeln!(
            out,
            "total: {} tables, {} files, {} bytes",
            self.tables.len(),
            self.files().count(),
            self.total_bytes()
        )?;
        Ok(())
    }
}
