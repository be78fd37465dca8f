//! tableslurp -r into a re-created schema: TARGET already has `KS/TABLE-<new id>` and the
//! backup has `KS/TABLE-<old id>`. The files must land in the existing directories, byte for
//! byte, with `--dry-run` showing the mapping; `--no-id-mapping` turns it off and
//! `--map-table OLD=NEW` maps explicitly. Real SSTables on file:// buckets.

mod restore_util;

use std::collections::BTreeMap;
use std::path::Path;

use restore_util::*;
use tablesnap::layout::Layout;

const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");

fn slurp(
    opts: &tablesnap::store::StoreOptions,
    c: &Cleanup,
    host: &str,
    extra: &[&str],
    origin: &str,
    target: &Path,
) -> std::process::Output {
    let mut a = s(&["-n", host]);
    a.extend(s(extra));
    a.extend(bucket_args(opts, c));
    a.push(origin.into());
    a.push(target.display().to_string());
    run(SLURP, &a)
}

/// `TABLE-<32 hex>` → `TABLE`.
fn table_name(dir: &str) -> Option<&str> {
    let (t, id) = dir.rsplit_once('-')?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(t)
}

#[test]
fn whole_node_restore_lands_in_recreated_table_directories_byte_identical() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let tables = corpus_tables(&corpus);
    for (rel, names) in &tables {
        w.put_table(&corpus, rel, names);
    }
    // The schema re-created in TARGET: every table with an id gets a new one. A keyspace
    // holding the same table name twice would be ambiguous; the corpus is checked for it.
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("data");
    let mut renamed = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for (i, rel) in tables.keys().enumerate() {
        let (ks, dir) = rel.split_once('/').unwrap();
        let Some(name) = table_name(dir) else {
            continue;
        };
        assert!(seen.insert((ks, name)), "{ks}/{name} twice in the corpus");
        let new = format!("{ks}/{name}-{:032x}", 0xabc0 + i);
        std::fs::create_dir_all(target.join(&new)).unwrap();
        renamed.insert(rel.clone(), new);
    }
    assert!(renamed.len() >= 5, "{renamed:?}");

    let o = slurp(&opts, &c, HOST, &["-r", "--dry-run"], DATA, &target);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    for new in renamed.values() {
        assert!(
            out.contains(&format!("restored into the existing {new}")),
            "{new}: {out}"
        );
    }

    let o = slurp(&opts, &c, HOST, &["-r"], DATA, &target);
    assert_eq!(o.status.code(), Some(0));
    let mut want = BTreeMap::new();
    for (rel, names) in &tables {
        let dest = renamed.get(rel).unwrap_or(rel);
        for n in names {
            want.insert(
                format!("{dest}/{n}"),
                sha256_file(&corpus.join(rel).join(n)),
            );
        }
    }
    assert_eq!(tree(&target), want);
    // No directory with an old id was created.
    for old in renamed.keys() {
        assert!(!target.join(old).exists(), "{old}");
    }

    // --no-id-mapping: the backup's own directories.
    let t2 = tempfile::tempdir().unwrap();
    let target2 = t2.path().join("data");
    for new in renamed.values() {
        std::fs::create_dir_all(target2.join(new)).unwrap();
    }
    let o = slurp(&opts, &c, HOST, &["-r", "--no-id-mapping"], DATA, &target2);
    assert_eq!(o.status.code(), Some(0));
    let mut want2 = BTreeMap::new();
    for (rel, names) in &tables {
        for n in names {
            want2.insert(format!("{rel}/{n}"), sha256_file(&corpus.join(rel).join(n)));
        }
    }
    assert_eq!(tree(&target2), want2);
}

/// One host's backup restored onto another host's root (other ORIGIN and TARGET roots,
/// `-n` of the backed-up host), with an explicit mapping and an ambiguous one left alone.
#[test]
fn another_hosts_backup_onto_another_root_with_explicit_mapping() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let other = "node2.example.com";
    let w = Writer::with_layout(&opts, Layout::new(c.prefix.clone(), other, ":"));
    let hello = "hello/foo-c2cebe20d60d11ebab539116fc548b6b";
    let names = corpus_tables(&corpus)[hello].clone();
    let root = "/srv/cassandra2/data";
    let dir = format!("{root}/{hello}");
    for n in &names {
        w.put_file(&format!("{dir}/{n}"), &corpus.join(hello).join(n));
    }
    for n in names.iter().filter(|n| n.ends_with("Data.db")) {
        w.put_index(&dir, n, &names);
    }
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("mnt/data");
    // Two re-created candidates: ambiguous, so only the explicit mapping moves it.
    let a = format!("hello/foo-{}", "1".repeat(32));
    let b = format!("hello/foo-{}", "2".repeat(32));
    std::fs::create_dir_all(target.join(&a)).unwrap();
    std::fs::create_dir_all(target.join(&b)).unwrap();
    let o = slurp(&opts, &c, other, &["-r", "--dry-run"], root, &target);
    assert_eq!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ambiguous"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let map = format!("{hello}={b}");
    let o = slurp(
        &opts,
        &c,
        other,
        &["-r", "--map-table", &map],
        root,
        &target,
    );
    assert_eq!(o.status.code(), Some(0));
    let want: BTreeMap<String, String> = names
        .iter()
        .map(|n| (format!("{b}/{n}"), sha256_file(&corpus.join(hello).join(n))))
        .collect();
    assert_eq!(tree(&target), want);
    // A malformed mapping is bad usage.
    let o = slurp(
        &opts,
        &c,
        other,
        &["-r", "--map-table", "x=y"],
        root,
        &target,
    );
    assert_eq!(o.status.code(), Some(2));
}
