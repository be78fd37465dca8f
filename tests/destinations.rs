//! `file://` destinations that are not there (issue #19, item 3). A missing backup volume
//! must never look like an empty backup or silently become a directory on the node's own
//! disk: tablesnap creates only the last directory of a destination whose parent exists
//! (the README's demo), and an unmounted parent is "bucket missing", exit 3, with nothing
//! created; tableslurp never creates a bucket, and says "bucket missing" (exit 3) instead of
//! "nothing to restore".

mod common;

const SNAP: &str = env!("CARGO_BIN_EXE_tablesnap");
const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");

#[test]
fn tablesnap_never_creates_the_parents_of_a_file_destination() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.txt"), b"x").unwrap();
    let t = tempfile::tempdir().unwrap();
    // /mnt/backups (the mount point) is gone: /mnt/backups/tablesnap must not be made.
    let unmounted = t.path().join("backups");
    let dest = unmounted.join("tablesnap");
    let url = format!("file://{}", dest.display());
    let (code, out) = common::run_bin(
        SNAP,
        &["--once", "-n", "h1", &url, data.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 3, "{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(
        errors[0].contains(&format!("bucket missing: {url} does not exist")),
        "{out}"
    );
    assert!(errors[0].contains("mount the volume"), "{out}");
    assert!(
        !unmounted.exists(),
        "tablesnap created {}",
        unmounted.display()
    );

    // The parent is there: the destination itself is created and filled (the demo).
    std::fs::create_dir(&unmounted).unwrap();
    let (code, out) = common::run_bin(
        SNAP,
        &["--once", "-n", "h1", &url, data.path().to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let key = format!("h1:{}/a.txt", data.path().display());
    assert_eq!(std::fs::read(dest.join(key)).unwrap(), b"x");
}

#[test]
fn tableslurp_says_bucket_missing_and_creates_nothing() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("typo");
    let url = format!("file://{}", missing.display());
    let target = t.path().join("target");
    std::fs::create_dir(&target).unwrap();
    for args in [
        vec!["-n", "h1", "--list", url.as_str()],
        vec![
            "-n",
            "h1",
            url.as_str(),
            "/var/lib/cassandra/data/ks/t-0123456789abcdef0123456789abcdef",
            target.to_str().unwrap(),
        ],
    ] {
        let (code, out) = common::run_bin(SLURP, &args, &[]);
        assert_eq!(code, 3, "{args:?}: {out}");
        assert!(
            out.contains(&format!("bucket missing: {url} does not exist")),
            "{args:?}: {out}"
        );
        assert!(!out.contains("nothing to restore"), "{args:?}: {out}");
        assert!(!missing.exists(), "{args:?} created the bucket");
    }
}

/// After the README's demo (`-n demo`), the next thing a user types is `tableslurp --list`
/// without `-n`: it must say which hosts the bucket has, not just "nothing found" for this
/// machine's name (issue #19, item 4). The same for a restore on a node with another name.
#[test]
fn nothing_found_for_this_host_names_the_hosts_the_bucket_has() {
    let data = tempfile::tempdir().unwrap();
    let table = data.path().join("ks/t-0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&table).unwrap();
    std::fs::write(table.join("nb-1-big-Data.db"), b"data").unwrap();
    std::fs::write(table.join("nb-1-big-TOC.txt"), b"Data.db\nTOC.txt\n").unwrap();
    let t = tempfile::tempdir().unwrap();
    let url = format!("file://{}", t.path().join("demo").display());
    for host in ["demo", "node2.example.com"] {
        let (code, out) = common::run_bin(
            SNAP,
            &[
                "--once",
                "-r",
                "-n",
                host,
                &url,
                data.path().to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}");
    }
    // This machine's own name (the default) has no backup there.
    let (code, out) = common::run_bin(SLURP, &["--list", &url], &[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("nothing found under "), "{out}");
    assert!(
        out.contains("the bucket has backups of other hosts: demo, node2.example.com (pass -n HOST, or -n '*' to list them all)"),
        "{out}"
    );
    let origin = table.to_str().unwrap();
    let target = t.path().join("restore");
    let (code, out) = common::run_bin(
        SLURP,
        &["-n", "vm", &url, origin, target.to_str().unwrap()],
        &[],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("nothing to restore"), "{out}");
    assert!(
        out.contains("other hosts: demo, node2.example.com"),
        "{out}"
    );
    // As the hint says: -n demo lists the table, and restores it.
    let (code, out) = common::run_bin(SLURP, &["-n", "demo", "--list", &url], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(origin), "{out}");
    let (code, out) = common::run_bin(
        SLURP,
        &["-n", "demo", &url, origin, target.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        std::fs::read(target.join("nb-1-big-Data.db")).unwrap(),
        b"data"
    );
}
