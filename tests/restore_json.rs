//! `tableslurp --json` for --list, --dry-run and --verify: one JSON object per line on
//! stdout, fields as README.md documents them; and the human summary's units.

mod restore_util;

use restore_util::*;
use serde_json::Value;
use tablesnap::layout::Layout;

const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");
const HELLO_FOO: &str = "hello/foo-c2cebe20d60d11ebab539116fc548b6b";

fn lines(o: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn of_type<'a>(v: &'a [Value], t: &str) -> Vec<&'a Value> {
    v.iter().filter(|x| x["type"] == t).collect()
}

#[test]
fn list_json_gives_every_hosts_tables_with_the_age_of_their_newest_index() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let names = corpus_tables(&corpus)[HELLO_FOO].clone();
    for host in ["a.example.com", "b.example.com"] {
        let w = Writer::with_layout(&opts, Layout::new(c.prefix.clone(), host, ":"));
        w.put_table(&corpus, HELLO_FOO, &names);
        let idx = w
            .layout
            .data_key(&format!("{DATA}/{HELLO_FOO}/md-2-big-Data.db-listdir.json"));
        let age = if host.starts_with('a') { 7200 } else { 60 };
        // Every index of this host backdated: the newest is `age` old.
        for n in names.iter().filter(|n| n.ends_with("Data.db")) {
            let k = w
                .layout
                .data_key(&format!("{DATA}/{HELLO_FOO}/{n}-listdir.json"));
            assert!(backdate(&c, &k, age));
        }
        assert!(backdate(&c, &idx, age));
    }
    let mut a = s(&["-n", "*", "--list", "--json"]);
    a.extend(bucket_args(&opts, &c));
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0));
    let v = lines(&o);
    let dirs = of_type(&v, "dir");
    assert_eq!(dirs.len(), 2, "{v:?}");
    for (d, age) in dirs.iter().zip([7200i64, 60]) {
        assert_eq!(d["dir"], format!("{DATA}/{HELLO_FOO}"));
        assert_eq!(d["indexes"], 2);
        assert_eq!(d["objects"], names.len() as u64 + 2);
        let got = d["newest_age_seconds"].as_i64().unwrap();
        assert!((age..age + 30).contains(&got), "{got} vs {age}");
        assert!(d["newest"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(dirs[0]["host"], "a.example.com");
    // The text form has the age as its last column.
    let mut a = s(&["-n", "*", "--list"]);
    a.extend(bucket_args(&opts, &c));
    let o = run(SLURP, &a);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("HOST\tDIRECTORY\tINDEXES\tOLDEST\tNEWEST\tOBJECTS\tBYTES\tNEWEST_AGE")
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("a.example.com\t") && l.ends_with("\t2h0m")),
        "{out}"
    );
}

#[test]
fn dry_run_json_describes_tables_files_room_and_total() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let names = corpus_tables(&corpus)[HELLO_FOO].clone();
    w.put_table(&corpus, HELLO_FOO, &names);
    let t = tempfile::tempdir().unwrap();
    let mut a = s(&["-n", HOST, "--dry-run", "--json"]);
    a.extend(bucket_args(&opts, &c));
    a.push(format!("{DATA}/{HELLO_FOO}"));
    a.push(t.path().display().to_string());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0));
    let v = lines(&o);
    let tables = of_type(&v, "table");
    assert_eq!(tables.len(), 1);
    assert_eq!(tables[0]["complete"], true);
    assert_eq!(tables[0]["files"], names.len());
    assert!(
        tables[0]["index"]
            .as_str()
            .unwrap()
            .ends_with("-listdir.json")
    );
    let files = of_type(&v, "file");
    assert_eq!(files.len(), names.len());
    let data = files
        .iter()
        .find(|f| f["name"] == "md-1-big-Data.db")
        .unwrap();
    assert_eq!(data["state"], "fetch");
    assert_eq!(data["verified_by"], "digest");
    let size: u64 = files.iter().map(|f| f["size"].as_u64().unwrap()).sum();
    let room = of_type(&v, "room");
    assert_eq!(room.len(), 1);
    assert_eq!(room[0]["need_bytes"], size);
    assert!(room[0]["free_bytes"].as_u64().unwrap() > size);
    let total = of_type(&v, "total");
    assert_eq!(total[0]["bytes"], size);
    assert_eq!(total[0]["ok"], true);
    assert!(tree(t.path()).is_empty());
}

#[test]
fn verify_json_names_each_object_and_the_bad_one() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let names: Vec<String> = corpus_tables(&corpus)[HELLO_FOO]
        .iter()
        .filter(|n| n.starts_with("md-1-"))
        .cloned()
        .collect();
    let dir = format!("{DATA}/{HELLO_FOO}");
    for n in &names {
        let mut body = std::fs::read(corpus.join(HELLO_FOO).join(n)).unwrap();
        if n == "md-1-big-Data.db" {
            body[10] ^= 0x80;
        }
        w.put_data(&format!("{dir}/{n}"), &body, 0o100644);
    }
    w.put_index(&dir, "md-1-big-Data.db", &names);
    let mut a = s(&["-n", HOST, "--verify", "--json"]);
    a.extend(bucket_args(&opts, &c));
    a.push(dir.clone());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(1));
    let v = lines(&o);
    let checked = of_type(&v, "verified");
    assert_eq!(checked.len(), names.len());
    let bad: Vec<_> = checked.iter().filter(|x| x["ok"] == false).collect();
    assert_eq!(bad.len(), 1, "{v:?}");
    assert!(
        bad[0]["key"]
            .as_str()
            .unwrap()
            .ends_with("md-1-big-Data.db")
    );
    assert!(
        bad[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not match its Digest")
    );
    assert_eq!(of_type(&v, "table")[0]["complete"], true);
    let sum = of_type(&v, "summary");
    assert_eq!(sum[0]["ok"], false);
    assert_eq!(sum[0]["failed"], 1);
}

#[test]
fn the_summary_rate_is_in_a_unit_that_shows_something() {
    let Some(corpus) = corpus() else { return };
    let (opts, c) = file_dest();
    let w = Writer::new(&opts, &c);
    let names = corpus_tables(&corpus)[HELLO_FOO].clone();
    w.put_table(&corpus, HELLO_FOO, &names);
    let t = tempfile::tempdir().unwrap();
    let mut a = s(&["-n", HOST]);
    a.extend(bucket_args(&opts, &c));
    a.push(format!("{DATA}/{HELLO_FOO}"));
    a.push(t.path().display().to_string());
    let o = run(SLURP, &a);
    assert_eq!(o.status.code(), Some(0));
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("restored") && l.contains("files ("))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(!line.contains("0.0 MB/s"), "{line}");
    assert!(
        ["B/s", "KiB/s", "MiB/s", "GiB/s"]
            .iter()
            .any(|u| line.contains(u)),
        "{line}"
    );
    assert!(!line.contains(" 0.0 "), "{line}");
}
