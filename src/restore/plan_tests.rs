//! Unit tests of [`super`]: index choice, mapping into TARGET, commit logs.

use super::*;
use chrono::TimeZone;

fn obj(key: &str, size: u64, t: i64) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size,
        last_modified: Utc.timestamp_opt(t, 0).unwrap(),
        e_tag: None,
        metadata: HashMap::new(),
    }
}

/// [`super::plan`] on a listing given as objects.
fn plan(
    l: &[ObjectInfo],
    b: &HashMap<String, Bytes>,
    cl: Option<&[ObjectInfo]>,
    o: &RestoreOptions,
) -> Result<Plan, PlanError> {
    super::plan(&Listing::of(l), b, cl.map(Listing::of).as_ref(), o)
}

/// [`super::needed_bodies`] on a listing given as objects.
fn needed_bodies(
    l: &[ObjectInfo],
    b: &HashMap<String, Bytes>,
    o: &RestoreOptions,
) -> Result<Vec<String>, PlanError> {
    super::needed_bodies(&Listing::of(l), b, o)
}

fn opts(sel: Selection) -> RestoreOptions {
    RestoreOptions {
        layout: Layout::new("", "h", ":"),
        origin: "/d".into(),
        target: "/restore".into(),
        selection: sel,
        as_of: None,
        commitlogs: None,
        commitlog_target: None,
        mapping: Default::default(),
        keep_generations: false,
    }
}

/// A table dir with an index per generation `gens` at times `ts`, each naming its own
/// Data.db and a shared TOC.
fn table(dir: &str, gens: &[(u32, i64)]) -> (Vec<ObjectInfo>, HashMap<String, Bytes>) {
    let mut l = vec![obj(&format!("h:{dir}/toc.txt"), 3, 0)];
    let mut b = HashMap::new();
    for (g, t) in gens {
        let data = format!("h:{dir}/nb-{g}-big-Data.db");
        l.push(obj(&data, 100 + *g as u64, *t));
        let ik = layout::index_key(&data);
        l.push(obj(&ik, 10, *t));
        b.insert(
            ik,
            Bytes::from(layout::listdir_json(
                dir,
                &[format!("nb-{g}-big-Data.db"), "toc.txt".into()],
            )),
        );
    }
    (l, b)
}

fn chosen(p: &Plan) -> Vec<String> {
    p.tables.iter().map(|t| t.index_key.clone()).collect()
}

#[test]
fn newest_picks_latest_index_directly_in_origin() {
    let (mut l, mut b) = table("/d", &[(1, 100), (2, 200)]);
    // A deeper directory's newer index is not considered without -r.
    let (l2, b2) = table("/d/sub", &[(9, 900)]);
    l.extend(l2);
    b.extend(b2);
    let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
    assert_eq!(chosen(&p), ["h:/d/nb-2-big-Data.db-listdir.json"]);
    let t = &p.tables[0];
    assert_eq!(t.files.len(), 2);
    assert_eq!(
        t.files[0].dest(),
        PathBuf::from("/restore/nb-2-big-Data.db")
    );
    assert_eq!(t.files[0].key(), "h:/d/nb-2-big-Data.db");
    assert_eq!(t.bytes(), 102 + 3);
    assert!(p.problems.is_empty());
}

#[test]
fn equal_last_modified_breaks_ties_by_generation_then_key() {
    // Generation 10 sorts after 9 numerically, not as a string.
    let (l, b) = table("/d", &[(9, 100), (10, 100), (2, 100)]);
    let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
    assert_eq!(chosen(&p), ["h:/d/nb-10-big-Data.db-listdir.json"]);
    // The listing order does not matter.
    let mut r = l.clone();
    r.reverse();
    let p = plan(&r, &b, None, &opts(Selection::Newest)).unwrap();
    assert_eq!(chosen(&p), ["h:/d/nb-10-big-Data.db-listdir.json"]);
    // Sub-second differences are ignored (S3 lists whole seconds).
    let mut l2 = l.clone();
    for o in &mut l2 {
        if o.key.contains("nb-2-") {
            o.last_modified += chrono::Duration::milliseconds(500);
        }
    }
    let p = plan(&l2, &b, None, &opts(Selection::Newest)).unwrap();
    assert_eq!(chosen(&p), ["h:/d/nb-10-big-Data.db-listdir.json"]);
}

#[test]
fn as_of_picks_newest_at_or_before() {
    let (l, b) = table("/d", &[(1, 100), (2, 200), (3, 300)]);
    let mut o = opts(Selection::Newest);
    o.as_of = Some(Utc.timestamp_opt(200, 0).unwrap());
    assert_eq!(
        chosen(&plan(&l, &b, None, &o).unwrap()),
        ["h:/d/nb-2-big-Data.db-listdir.json"]
    );
    o.as_of = Some(Utc.timestamp_opt(299, 0).unwrap());
    assert_eq!(
        chosen(&plan(&l, &b, None, &o).unwrap()),
        ["h:/d/nb-2-big-Data.db-listdir.json"]
    );
    o.as_of = Some(Utc.timestamp_opt(99, 0).unwrap());
    assert!(matches!(
        plan(&l, &b, None, &o),
        Err(PlanError::NothingToRestore { .. })
    ));
}

#[test]
fn file_selects_that_index() {
    let (l, b) = table("/d", &[(1, 100), (2, 200)]);
    let p = plan(
        &l,
        &b,
        None,
        &opts(Selection::File("nb-1-big-Data.db".into())),
    )
    .unwrap();
    assert_eq!(chosen(&p), ["h:/d/nb-1-big-Data.db-listdir.json"]);
    assert!(matches!(
        plan(
            &l,
            &b,
            None,
            &opts(Selection::File("nb-5-big-Data.db".into()))
        ),
        Err(PlanError::NoSuchIndex { .. })
    ));
    assert!(matches!(
        plan(&l, &b, None, &opts(Selection::File("../x".into()))),
        Err(PlanError::BadFileArg(_))
    ));
}

#[test]
fn recursive_maps_every_table_under_target_and_skips_snapshots() {
    let mut l = Vec::new();
    let mut b = HashMap::new();
    for (dir, gens) in [
        ("/d/ks1/t1-aa", vec![(1, 100), (2, 200)]),
        ("/d/ks1/t2-bb", vec![(5, 50)]),
        ("/d/ks2/t3-cc/.idx", vec![(1, 10)]),
        ("/d/ks1/t1-aa/snapshots/tag", vec![(1, 10)]),
    ] {
        let (l2, b2) = table(dir, &gens);
        l.extend(l2);
        b.extend(b2);
    }
    let mut o = opts(Selection::Recursive);
    o.as_of = Some(Utc.timestamp_opt(150, 0).unwrap());
    let p = plan(&l, &b, None, &o).unwrap();
    let got: Vec<(String, PathBuf)> = p
        .tables
        .iter()
        .map(|t| (t.index_key.clone(), t.target.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "h:/d/ks1/t1-aa/nb-1-big-Data.db-listdir.json".to_string(),
                PathBuf::from("/restore/ks1/t1-aa")
            ),
            (
                "h:/d/ks1/t2-bb/nb-5-big-Data.db-listdir.json".to_string(),
                PathBuf::from("/restore/ks1/t2-bb")
            ),
            (
                "h:/d/ks2/t3-cc/.idx/nb-1-big-Data.db-listdir.json".to_string(),
                PathBuf::from("/restore/ks2/t3-cc/.idx")
            ),
        ]
    );
    assert_eq!(p.skipped_dirs, ["/d/ks1/t1-aa/snapshots/tag"]);
}

#[test]
fn unsafe_names_and_missing_objects_are_problems_not_files() {
    let mut l = vec![obj("h:/d/nb-1-big-Data.db", 5, 10)];
    let ik = "h:/d/nb-1-big-Data.db-listdir.json".to_string();
    l.push(obj(&ik, 5, 10));
    let mut b = HashMap::new();
    b.insert(
        ik.clone(),
        Bytes::from(r#"{"/d": ["../x", "nb-1-big-Data.db"]}"#),
    );
    let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
    assert!(p.tables.is_empty());
    assert!(matches!(
        &p.problems[..],
        [TableProblem::BadIndex { why, .. }] if why.contains("\"../x\"")
    ));
    b.insert(
        ik,
        Bytes::from(r#"{"/d": ["nb-1-big-Data.db", "gone.db"]}"#),
    );
    let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
    assert_eq!(p.tables[0].files.len(), 1);
    assert!(matches!(
        &p.problems[..],
        [TableProblem::MissingObject { key, .. }] if key == "h:/d/gone.db"
    ));
    // No index at all.
    assert!(matches!(
        plan(&[], &HashMap::new(), None, &opts(Selection::Newest)),
        Err(PlanError::NothingToRestore { .. })
    ));
}

#[test]
fn target_mapping_refuses_escapes() {
    let t = Path::new("/restore");
    assert_eq!(target_for("/d", "/d", t), Some("/restore".into()));
    assert_eq!(target_for("/d", "/d/a/b", t), Some("/restore/a/b".into()));
    assert_eq!(target_for("/d", "/d/../x", t), None);
    assert_eq!(target_for("/d", "/d/a/./b", t), None);
    assert_eq!(target_for("/d", "/dx/a", t), None);
}

#[test]
fn commitlogs_newer_than_oldest_chosen_index_compare_as_integers() {
    let mut l = Vec::new();
    let mut b = HashMap::new();
    for (dir, t) in [("/d/ks/a", 1_000), ("/d/ks/b", 2_000)] {
        let (l2, b2) = table(dir, &[(1, t)]);
        l.extend(l2);
        b.extend(b2);
    }
    let cl = vec![
        obj("h:/cl/CommitLog-7-999000.log", 1, 0),
        obj("h:/cl/CommitLog-7-1000000.log", 1, 0),
        obj("h:/cl/CommitLog-7-1000001.log", 1, 0),
        // 10 digits vs 7: a string comparison would get this wrong.
        obj("h:/cl/CommitLog-7-9999999999.log", 1, 0),
        obj("h:/cl/sub/CommitLog-7-5000000.log", 1, 0),
        obj("h:/cl/notes.txt", 1, 0),
    ];
    let mut o = opts(Selection::Recursive);
    o.commitlogs = Some("/cl/".into());
    let p = plan(&l, &b, Some(&cl), &o).unwrap();
    let c = p.commitlogs.unwrap();
    assert_eq!(c.since_ms, 1_000_000);
    let names: Vec<&str> = c.files.iter().map(|f| f.name()).collect();
    assert_eq!(
        names,
        ["CommitLog-7-1000001.log", "CommitLog-7-9999999999.log"]
    );
    assert_eq!(c.target, PathBuf::from("/restore/commitlogs"));
}

/// Builds the plan the way `prepare` does: fetch what [`needed_bodies`] asks for, again
/// until it asks for nothing. Returns the plan and the order bodies were asked for.
fn plan_fetching(
    l: &[ObjectInfo],
    all: &HashMap<String, Bytes>,
    o: &RestoreOptions,
) -> (Plan, Vec<String>) {
    let mut got = HashMap::new();
    let mut asked = Vec::new();
    loop {
        let want = needed_bodies(l, &got, o).unwrap();
        if want.is_empty() {
            break;
        }
        for k in want {
            asked.push(k.clone());
            got.insert(k.clone(), all.get(&k).cloned().unwrap_or_default());
        }
    }
    (plan(l, &got, None, o).unwrap(), asked)
}

#[test]
fn incomplete_newest_index_falls_back_to_the_newest_complete_one() {
    let (mut l, b) = table("/d", &[(1, 100), (2, 200), (3, 300)]);
    // Generation 3's Data.db is gone, and so is generation 2's.
    l.retain(|o| o.key != "h:/d/nb-3-big-Data.db" && o.key != "h:/d/nb-2-big-Data.db");
    let (p, asked) = plan_fetching(&l, &b, &opts(Selection::Newest));
    assert_eq!(chosen(&p), ["h:/d/nb-1-big-Data.db-listdir.json"]);
    // Newest first, one at a time, and no further than needed.
    assert_eq!(
        asked,
        [
            "h:/d/nb-3-big-Data.db-listdir.json",
            "h:/d/nb-2-big-Data.db-listdir.json",
            "h:/d/nb-1-big-Data.db-listdir.json"
        ]
    );
    let t = &p.tables[0];
    assert!(t.complete);
    assert_eq!(t.checks.len(), 3);
    assert_eq!(t.checks[0].missing, ["nb-3-big-Data.db"]);
    assert!(p.problems.is_empty(), "{:?}", p.problems);
    let r = p.render();
    assert!(
        r.contains("newer index h:/d/nb-3-big-Data.db-listdir.json")
            && r.contains("incomplete: 1 object(s) missing (nb-3-big-Data.db)"),
        "{r}"
    );
    // An unfetchable newest index is stepped over too.
    let (l, mut b) = table("/d", &[(1, 100), (2, 200)]);
    b.remove("h:/d/nb-2-big-Data.db-listdir.json");
    let (p, _) = plan_fetching(&l, &b, &opts(Selection::Newest));
    assert_eq!(chosen(&p), ["h:/d/nb-1-big-Data.db-listdir.json"]);
}

#[test]
fn no_complete_index_restores_the_newest_and_names_every_gap() {
    let (mut l, b) = table("/d", &[(1, 100), (2, 200)]);
    l.retain(|o| o.key != "h:/d/toc.txt");
    let (p, _) = plan_fetching(&l, &b, &opts(Selection::Newest));
    assert_eq!(chosen(&p), ["h:/d/nb-2-big-Data.db-listdir.json"]);
    assert!(!p.tables[0].complete);
    assert!(matches!(
        &p.problems[..],
        [TableProblem::MissingObject { key, .. }] if key == "h:/d/toc.txt"
    ));
    assert!(p.render().contains("INCOMPLETE"));
}

#[test]
fn as_of_and_file_never_step_back_and_name_what_is_missing() {
    let (mut l, b) = table("/d", &[(1, 100), (2, 200)]);
    l.retain(|o| o.key != "h:/d/nb-2-big-Data.db");
    let mut o = opts(Selection::Newest);
    o.as_of = Some(Utc.timestamp_opt(250, 0).unwrap());
    let (p, _) = plan_fetching(&l, &b, &o);
    assert!(p.tables.is_empty());
    assert!(matches!(
        &p.problems[..],
        [TableProblem::Incomplete { index, missing }]
            if index == "h:/d/nb-2-big-Data.db-listdir.json" && missing == &["nb-2-big-Data.db"]
    ));
    assert!(p.problems[0].to_string().contains("nb-2-big-Data.db"));
    let (p, _) = plan_fetching(&l, &b, &opts(Selection::File("nb-2-big-Data.db".into())));
    assert!(p.tables.is_empty());
    assert!(matches!(&p.problems[..], [TableProblem::Incomplete { .. }]));
}

#[test]
fn recreated_tables_map_into_the_existing_directory() {
    let id = |c: char| c.to_string().repeat(32);
    let mut l = Vec::new();
    let mut b = HashMap::new();
    for dir in [
        format!("/d/ks/t1-{}", id('a')),
        format!("/d/ks/t1-{}/.idx", id('a')),
        format!("/d/ks/t2-{}", id('b')),
        format!("/d/ks/t3-{}", id('c')),
    ] {
        let (l2, b2) = table(&dir, &[(1, 100)]);
        l.extend(l2);
        b.extend(b2);
    }
    let mut o = opts(Selection::Recursive);
    o.mapping = TableMapping {
        auto: true,
        explicit: vec![(format!("ks/t3-{}", id('c')), format!("ks/x-{}", id('f')))],
        existing: vec![
            format!("ks/t1-{}", id('1')),
            format!("ks/t2-{}", id('b')),
            format!("ks/t2-{}", id('2')),
        ],
    };
    let p = plan(&l, &b, None, &o).unwrap();
    let got: Vec<(String, Option<String>)> = p
        .tables
        .iter()
        .map(|t| (t.target.display().to_string(), t.mapped_to.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                format!("/restore/ks/t1-{}", id('1')),
                Some(format!("ks/t1-{}", id('1')))
            ),
            (
                format!("/restore/ks/t1-{}/.idx", id('1')),
                Some(format!("ks/t1-{}", id('1')))
            ),
            // Its own id exists in TARGET: no mapping.
            (format!("/restore/ks/t2-{}", id('b')), None),
            (
                format!("/restore/ks/x-{}", id('f')),
                Some(format!("ks/x-{}", id('f')))
            ),
        ]
    );
    assert!(p.render().contains("restored into the existing ks/t1-"));
    o.mapping.auto = false;
    o.mapping.explicit.clear();
    let p = plan(&l, &b, None, &o).unwrap();
    assert!(p.tables.iter().all(|t| t.mapped_to.is_none()));
}

/// Issue #15, item 5: a dropped table (`users-<old>`) and its re-created successor
/// (`users-<new>`) are both in the backup; the new node has only `users-<new>`. The dropped
/// one's data is not mapped into the successor: it keeps its own (ignored) directory.
#[test]
fn a_dropped_table_is_not_mapped_into_its_recreated_successor() {
    let id = |c: char| c.to_string().repeat(32);
    let mut l = Vec::new();
    let mut b = HashMap::new();
    for (dir, t) in [
        (format!("/d/ks/users-{}", id('a')), 100),
        (format!("/d/ks/users-{}", id('b')), 200),
    ] {
        let (l2, b2) = table(&dir, &[(1, t)]);
        l.extend(l2);
        b.extend(b2);
    }
    let mut o = opts(Selection::Recursive);
    o.mapping = TableMapping {
        auto: true,
        explicit: vec![],
        existing: vec![format!("ks/users-{}", id('b'))],
    };
    let p = plan(&l, &b, None, &o).unwrap();
    let got: Vec<(String, Option<String>)> = p
        .tables
        .iter()
        .map(|t| (t.target.display().to_string(), t.mapped_to.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (format!("/restore/ks/users-{}", id('a')), None),
            (format!("/restore/ks/users-{}", id('b')), None),
        ]
    );
    assert!(p.problems.is_empty(), "{:?}", p.problems);
}

/// Two backup directories planned into one TARGET directory (here by an explicit mapping
/// onto a directory that has its own backup): never a race for the same names; both are
/// refused, naming each other and the path.
#[test]
fn two_tables_planned_to_one_destination_are_both_refused() {
    let id = |c: char| c.to_string().repeat(32);
    let mut l = Vec::new();
    let mut b = HashMap::new();
    for dir in [
        format!("/d/ks/t-{}", id('a')),
        format!("/d/ks/t-{}", id('b')),
    ] {
        let (l2, b2) = table(&dir, &[(1, 100)]);
        l.extend(l2);
        b.extend(b2);
    }
    let (l3, b3) = table(&format!("/d/ks/u-{}", id('c')), &[(1, 100)]);
    l.extend(l3);
    b.extend(b3);
    let mut o = opts(Selection::Recursive);
    o.mapping = TableMapping {
        auto: true,
        explicit: vec![(format!("ks/t-{}", id('a')), format!("ks/t-{}", id('b')))],
        existing: vec![format!("ks/t-{}", id('b'))],
    };
    let p = plan(&l, &b, None, &o).unwrap();
    assert_eq!(
        p.tables.iter().map(|t| t.dir.clone()).collect::<Vec<_>>(),
        [format!("/d/ks/u-{}", id('c'))],
        "only the table with a destination of its own is restored"
    );
    match &p.problems[..] {
        [
            TableProblem::SameDestination {
                first,
                second,
                dest,
            },
        ] => {
            assert_eq!(first, &format!("/d/ks/t-{}", id('a')));
            assert_eq!(second, &format!("/d/ks/t-{}", id('b')));
            assert_eq!(
                dest,
                &PathBuf::from(format!("/restore/ks/t-{}/nb-1-big-Data.db", id('b')))
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Issue #15, item 10: the one-table restore brings the table's secondary indexes
/// (`.<index>/` right below it) along, into the same place below TARGET; snapshots and
/// other subdirectories stay out.
#[test]
fn the_one_table_restore_includes_its_secondary_index_directories() {
    let mut l = Vec::new();
    let mut b = HashMap::new();
    for dir in ["/d", "/d/.t_idx", "/d/snapshots/s1", "/d/.t_idx/deeper"] {
        let (l2, b2) = table(dir, &[(1, 100)]);
        l.extend(l2);
        b.extend(b2);
    }
    let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
    let got: Vec<(String, String)> = p
        .tables
        .iter()
        .map(|t| (t.dir.clone(), t.target.display().to_string()))
        .collect();
    assert_eq!(
        got,
        [
            ("/d".to_string(), "/restore".to_string()),
            ("/d/.t_idx".to_string(), "/restore/.t_idx".to_string()),
        ]
    );
    assert!(
        p.tables[1]
            .files
            .iter()
            .any(|f| f.dest() == std::path::Path::new("/restore/.t_idx/nb-1-big-Data.db"))
    );
}

/// Issue #15 item 4: restored `--as-of` an earlier point, every restored generation is below
/// what the bucket holds of the table (the abandoned timeline); Cassandra would number its
/// next flush into those names. One SSTable (the smallest) is restored above them; every
/// other file keeps its name (and so is found stored by the next backup).
#[test]
fn an_older_restore_point_goes_on_above_every_stored_generation() {
    let id = "0123456789abcdef0123456789abcdef";
    let dir = format!("/d/ks/t-{id}");
    let mut l = Vec::new();
    let mut b = HashMap::new();
    // Two SSTables live at t=200 (nb-2 small, nb-3 big), then gens up to 7 later.
    for (g, size, t) in [
        (2u64, 10u64, 150i64),
        (3, 500, 200),
        (6, 70, 300),
        (7, 80, 400),
    ] {
        let data = format!("h:{dir}/nb-{g}-big-Data.db");
        l.push(obj(&data, size, t));
        l.push(obj(&format!("h:{dir}/nb-{g}-big-TOC.txt"), 5, t));
    }
    let mut point = |name: &str, t: i64, names: &[&str]| {
        let ik = layout::index_key(&format!("h:{dir}/{name}"));
        l.push(obj(&ik, 10, t));
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        b.insert(ik, Bytes::from(layout::listdir_json(&dir, &names)));
    };
    let two = [
        "nb-2-big-Data.db",
        "nb-2-big-TOC.txt",
        "nb-3-big-Data.db",
        "nb-3-big-TOC.txt",
    ];
    point("nb-3-big-Data.db", 200, &two);
    point(
        "nb-7-big-Data.db",
        400,
        &["nb-7-big-Data.db", "nb-7-big-TOC.txt"],
    );
    let mut o = opts(Selection::Recursive);
    o.as_of = Some(Utc.timestamp_opt(250, 0).unwrap());
    let p = plan(&l, &b, None, &o).unwrap();
    let t = &p.tables[0];
    let files: Vec<(String, String, PathBuf)> = t
        .files
        .iter()
        .map(|f| (f.key(), f.name().to_string(), f.dest()))
        .collect();
    let target = PathBuf::from(format!("/restore/ks/t-{id}"));
    let row = |g: u64, c: &str, to: u64| {
        (
            format!("h:{dir}/nb-{g}-big-{c}"),
            format!("nb-{to}-big-{c}"),
            target.join(format!("nb-{to}-big-{c}")),
        )
    };
    assert_eq!(
        files,
        [
            row(2, "Data.db", 8),
            row(2, "TOC.txt", 8),
            row(3, "Data.db", 3),
            row(3, "TOC.txt", 3)
        ]
    );
    assert_eq!(
        t.renumbered,
        Some(super::super::generations::Renumbered {
            from: "nb-2-big".into(),
            to: "nb-8-big".into(),
            above: 7
        })
    );
    // The Digest check still reads the stored object of the SSTable it belongs to.
    // The newest restore point holds the highest generation: nothing is renamed.
    o.as_of = None;
    let p = plan(&l, &b, None, &o).unwrap();
    assert!(p.tables[0].renumbered.is_none());
    assert!(
        p.tables[0]
            .files
            .iter()
            .all(|f| f.key().ends_with(&f.name()))
    );
    // --keep-generations: every name kept.
    o.as_of = Some(Utc.timestamp_opt(250, 0).unwrap());
    o.keep_generations = true;
    let p = plan(&l, &b, None, &o).unwrap();
    assert!(p.tables[0].renumbered.is_none());
    assert!(
        p.tables[0]
            .files
            .iter()
            .all(|f| f.key().ends_with(&f.name()))
    );
}

/// What keeps a node's plan small (issue #18: 939 MiB for a million objects before): a
/// planned file is 64 bytes and points into its table's listing; its key, name and
/// destination are derived, and only a renamed file owns a name.
#[test]
fn a_planned_file_costs_64_bytes_and_owns_no_string() {
    assert!(std::mem::size_of::<PlannedFile>() <= 64);
    let (l, b) = table("/d", &[(1, 100), (2, 200)]);
    let mut l = l;
    l.push(obj("h:/d/nb-1-big-Digest.crc32", 8, 0));
    let mut b = b;
    let ik = layout::index_key("h:/d/nb-2-big-Data.db");
    let names: Vec<String> = [
        "nb-1-big-Data.db",
        "nb-1-big-Digest.crc32",
        "nb-2-big-Data.db",
        "toc.txt",
    ]
    .map(String::from)
    .into();
    b.insert(ik, Bytes::from(layout::listdir_json("/d", &names)));
    let p = plan(&l, &b, None, &opts(Selection::Newest)).unwrap();
    let files = &p.tables[0].files;
    assert_eq!(files.len(), 4);
    for f in files {
        assert!(Arc::ptr_eq(&f.set, &files[0].set), "one FileSet per table");
        assert!(f.renamed.is_none(), "{} owns its name", f.name());
        assert_eq!(f.dest(), Path::new("/restore").join(f.name()));
        assert_eq!(f.key(), format!("h:/d/{}", f.name()));
    }
    let data = files
        .iter()
        .find(|f| f.name() == "nb-1-big-Data.db")
        .unwrap();
    let d = data.digest().expect("the Digest the index names");
    assert_eq!(d.key, "h:/d/nb-1-big-Digest.crc32");
    assert_eq!(d.sstable, "nb-1-big-");
    assert_eq!(d.index, "h:/d/nb-2-big-Data.db-listdir.json");
    assert!(
        files
            .iter()
            .find(|f| f.name() == "nb-2-big-Data.db")
            .unwrap()
            .digest()
            .is_none(),
        "no Digest listed for nb-2"
    );
}
