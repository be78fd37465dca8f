//! tablechop end to end on a bucket in the original's layout with several tables whose
//! indexes have different ages: exactly the expected keys remain, nothing outside NAME:PATH/
//! is touched, and every remaining index still restores byte for byte with tableslurp.

mod restore_util;

use std::collections::BTreeSet;
use std::path::Path;

use restore_util::*;
use tablesnap::layout;

const CHOP: &str = env!("CARGO_BIN_EXE_tablechop");
const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");
const DAY: u64 = 86_400;

struct Fixture {
    _c: Cleanup,
    opts: tablesnap::store::StoreOptions,
    /// Every key, and the keys expected to survive `tablechop ... DATA 7`.
    all: BTreeSet<String>,
    survivors: BTreeSet<String>,
    /// Surviving indexes → (table dir rel, names) to restore-check.
    indexes: Vec<(String, String, Vec<String>)>,
}

/// Three tables from the corpus plus keys outside the scope:
/// * `busy` (hello/foo): index gen 1 at 30 days, gen 2 at 1 day → gen-1 index goes; the
///   gen-1 files stay because the gen-2 index names them too;
/// * `idle` (hello/bar, upstream #79): gen 1 index at 40 days, gen 2 at 30 days, nothing
///   newer → the gen-2 index (the newest) and every file it names stay; gen-1-only files
///   and the gen-1 index go;
/// * `legacy` (Keyspace1/legacyleveled): three indexes at 20, 10 and 2 days, each naming only
///   its own generation (as after compactions) → only the 2-day index and its files stay;
///   generations 0 and 1 are older than 7 days and named by no kept index, so they go;
/// * outside: another host's keys and a sibling path, old, untouched.
fn fixture(corpus: &Path) -> Fixture {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let mut survivors = BTreeSet::new();
    let mut indexes = Vec::new();
    let tables = corpus_tables(corpus);
    let put = |rel: &str, names: &[String], age_days: u64| {
        let dir = format!("{DATA}/{rel}");
        let mut keys = Vec::new();
        for n in names {
            let k = w.put_file(&format!("{dir}/{n}"), &corpus.join(rel).join(n));
            backdate(&c, &k, age_days * DAY);
            keys.push(k);
        }
        keys
    };
    let idx = |rel: &str, data: &str, names: &[String], age_days: u64| {
        let k = w.put_index(&format!("{DATA}/{rel}"), data, names);
        backdate(&c, &k, age_days * DAY);
        k
    };
    let pick = |rel: &str, p: &str| -> Vec<String> {
        tables[rel]
            .iter()
            .filter(|n| n.starts_with(p))
            .cloned()
            .collect()
    };

    // busy
    let busy = "hello/foo-c2cebe20d60d11ebab539116fc548b6b";
    let (b1, b_all) = (pick(busy, "md-1-"), pick(busy, "md-"));
    survivors.extend(put(busy, &b1, 30));
    survivors.extend(put(busy, &pick(busy, "md-2-"), 1));
    idx(busy, "md-1-big-Data.db", &b1, 30);
    let k = idx(busy, "md-2-big-Data.db", &b_all, 1);
    survivors.insert(k.clone());
    indexes.push((k, busy.to_string(), b_all.clone()));

    // idle (#79)
    let idle = "hello/bar-fee8cdb0d7e311ebab539116fc548b6b";
    let (i1, i2) = (pick(idle, "md-1-"), pick(idle, "md-2-"));
    put(idle, &i1, 40);
    idx(idle, "md-1-big-Data.db", &i1, 40);
    survivors.extend(put(idle, &i2, 30));
    let k = idx(idle, "md-2-big-Data.db", &i2, 30);
    survivors.insert(k.clone());
    indexes.push((k, idle.to_string(), i2.clone()));

    // legacy: compaction, each index names only its generation
    let legacy = "Keyspace1/legacyleveled-705a7289d1f8384095e5b5e02fb2df7f";
    for (g, age) in [(0u32, 20u64), (1, 10), (2, 2)] {
        let names = pick(legacy, &format!("Keyspace1-legacyleveled-ic-{g}-"));
        let files = put(legacy, &names, age);
        let data = format!("Keyspace1-legacyleveled-ic-{g}-Data.db");
        let k = idx(legacy, &data, &names, age);
        if g == 2 {
            survivors.extend(files);
            survivors.insert(k.clone());
            indexes.push((k, legacy.to_string(), names));
        }
    }

    // Outside the scope: untouched whatever their age.
    let other = Writer::with_layout(
        &opts,
        layout::Layout::new(c.prefix.clone(), "node2.example.com", ":"),
    );
    let k = other.put_data(&format!("{DATA}/ks/t/nb-1-big-Data.db"), b"x", 0o100644);
    backdate(&c, &k, 100 * DAY);
    survivors.insert(k);
    let k = w.put_data(
        "/var/lib/cassandra/data2/ks/t/nb-1-big-Data.db",
        b"x",
        0o100644,
    );
    backdate(&c, &k, 100 * DAY);
    survivors.insert(k);

    let all: BTreeSet<String> = all_keys(&opts, &c).into_iter().collect();
    Fixture {
        _c: c,
        opts,
        all,
        survivors,
        indexes,
    }
}

fn chop(f: &Fixture, extra: &[&str]) -> std::process::Output {
    let mut a = s(&["-n", HOST]);
    a.extend(s(extra));
    a.extend(bucket_args(&f.opts, &f._c));
    a.push(DATA.into());
    a.push("7".into());
    run(CHOP, &a)
}

#[test]
fn chop_keeps_exactly_what_restores_need() {
    let Some(corpus) = corpus() else { return };
    let f = fixture(&corpus);

    // Dry run (-d, the original's flag) with -l: lists, deletes nothing.
    let o = chop(&f, &["-d", "-l"]);
    assert_eq!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    let doomed: Vec<&String> = f.all.difference(&f.survivors).collect();
    assert!(!doomed.is_empty());
    for k in &doomed {
        assert!(err.contains(&format!("would delete {k}")), "{k} not listed");
    }
    let after: BTreeSet<String> = all_keys(&f.opts, &f._c).into_iter().collect();
    assert_eq!(after, f.all, "dry run deleted something");

    let o = chop(&f, &["-l", "-j", "2"]);
    assert_eq!(o.status.code(), Some(0));
    let after: BTreeSet<String> = all_keys(&f.opts, &f._c).into_iter().collect();
    assert_eq!(after, f.survivors);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("delete {} objects", doomed.len())),
        "{err}"
    );

    // Every remaining index still restores, byte for byte.
    for (index_key, rel, names) in &f.indexes {
        let data_name = layout::split_dir(layout::data_key_of_index(index_key).unwrap()).1;
        let t = tempfile::tempdir().unwrap();
        let mut a = s(&["-n", HOST, "-f", data_name]);
        a.extend(bucket_args(&f.opts, &f._c));
        a.push(format!("{DATA}/{rel}"));
        a.push(t.path().display().to_string());
        let o = run(SLURP, &a);
        assert_eq!(o.status.code(), Some(0), "{index_key}");
        let got = tree(t.path());
        assert_eq!(got.len(), names.len());
        for n in names {
            assert_eq!(got[n], sha256_file(&corpus.join(rel).join(n)), "{n}");
        }
    }

    // A second run has nothing left to delete.
    let o = chop(&f, &[]);
    assert_eq!(o.status.code(), Some(0));
    let after: BTreeSet<String> = all_keys(&f.opts, &f._c).into_iter().collect();
    assert_eq!(after, f.survivors);
}

#[test]
fn unreadable_index_keeps_its_directory() {
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let dir = format!("{DATA}/ks/t-1");
    let old = w.put_data(&format!("{dir}/nb-1-big-Data.db"), b"d", 0o100644);
    let idx = w.put_index_body(
        &layout::index_key(&w.layout.data_key(&format!("{dir}/nb-1-big-Data.db"))),
        b"{not json".to_vec(),
    );
    backdate(&c, &old, 50 * DAY);
    backdate(&c, &idx, 50 * DAY);
    let before = all_keys(&opts, &c);
    let mut a = s(&["-n", HOST]);
    a.extend(bucket_args(&opts, &c));
    a.push(DATA.into());
    a.push("7".into());
    let o = run(CHOP, &a);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read index"));
    assert_eq!(all_keys(&opts, &c), before);
}

#[test]
fn bad_usage_and_missing_bucket_exit_codes() {
    let o = run(CHOP, &s(&["b", "/d", "not-a-number"]));
    assert_eq!(o.status.code(), Some(2));
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("file"), b"").unwrap();
    let o = run(
        CHOP,
        &s(&[
            "-n",
            HOST,
            &format!("file://{}/file/bucket", t.path().display()),
            "/d",
            "7",
        ]),
    );
    assert_eq!(o.status.code(), Some(3));
}
