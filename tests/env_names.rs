//! Issue #19 item 7: one spelling of the credential variables for all three tools.
//! `TABLESNAP_AWS_KEY` / `TABLESNAP_AWS_SECRET` work for tablesnap, tableslurp and
//! tablechop alike (one `/etc/default/tablesnap` or one Kubernetes Secret for all), each
//! tool's own `<TOOL>_AWS_KEY` too, and the older `TABLECHOP_KEY` / `TABLECHOP_SECRET`
//! still do. Against the real S3 server: `AWS_ACCESS_KEY_ID` is set to a wrong key, so a
//! run only succeeds if the variable under test was read; a wrong key in it fails, naming
//! no secret.

mod common;

const SNAP: &str = env!("CARGO_BIN_EXE_tablesnap");
const SLURP: &str = env!("CARGO_BIN_EXE_tableslurp");
const CHOP: &str = env!("CARGO_BIN_EXE_tablechop");

/// The test server's environment with the standard credentials replaced by wrong ones and
/// `vars` (name, "good" or "bad") set.
fn env(s3: &common::S3, vars: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut e: Vec<(String, String)> = s3
        .cli_env()
        .into_iter()
        .filter(|(k, _)| k != "AWS_ACCESS_KEY_ID" && k != "AWS_SECRET_ACCESS_KEY")
        .collect();
    e.push((
        "AWS_ACCESS_KEY_ID".into(),
        "GKwrongwrongwrongwrongwrong".into(),
    ));
    e.push(("AWS_SECRET_ACCESS_KEY".into(), "wrong-secret-0000".into()));
    for (k, v) in vars {
        let value = match (k.ends_with("KEY"), *v) {
            (true, "good") => s3.access_key.clone(),
            (false, "good") => s3.secret_key.clone(),
            (true, _) => "GKbadbadbadbadbadbadbadbad00".into(),
            (false, _) => "bad-secret-1111".into(),
        };
        e.push((k.to_string(), value));
    }
    e
}

#[test]
fn every_tool_reads_the_package_wide_and_its_own_credential_variables() {
    let s3 = common::s3();
    let prefix = s3.unique_prefix("envnames");
    let data = tempfile::tempdir().unwrap();
    let t = data.path().join("ks/t-0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join("nb-1-big-Data.db"), b"data").unwrap();
    std::fs::write(t.join("nb-1-big-TOC.txt"), b"Data.db\nTOC.txt\n").unwrap();
    let root = data.path().to_str().unwrap();
    let dest = s3.dest();
    let snap = |vars: &[(&str, &str)]| {
        common::run_bin(
            SNAP,
            &["--once", "-r", "-n", "envhost", "-p", &prefix, &dest, root],
            &env(&s3, vars),
        )
    };
    let slurp = |vars: &[(&str, &str)]| {
        common::run_bin(
            SLURP,
            &["--list", "-n", "envhost", "--prefix", &prefix, &dest, root],
            &env(&s3, vars),
        )
    };
    let chop = |vars: &[(&str, &str)]| {
        common::run_bin(
            CHOP,
            &["-d", "-n", "envhost", "--prefix", &prefix, &dest, root, "7"],
            &env(&s3, vars),
        )
    };
    let shared = [
        ("TABLESNAP_AWS_KEY", "good"),
        ("TABLESNAP_AWS_SECRET", "good"),
    ];
    let (code, out) = snap(&shared);
    assert_eq!(code, 0, "tablesnap with TABLESNAP_AWS_*: {out}");
    for (name, run, saw) in [
        (
            "tableslurp",
            &slurp as &dyn Fn(&[(&str, &str)]) -> (i32, String),
            "t-0123456789abcdef",
        ),
        ("tablechop", &chop, "keep 3 objects"),
    ] {
        let (code, out) = run(&shared);
        assert_eq!(code, 0, "{name} with TABLESNAP_AWS_*: {out}");
        assert!(out.contains(saw), "{name} did not see the backup: {out}");
    }
    for (name, run, own) in [
        (
            "tableslurp",
            &slurp as &dyn Fn(&[(&str, &str)]) -> (i32, String),
            ["TABLESLURP_AWS_KEY", "TABLESLURP_AWS_SECRET"],
        ),
        (
            "tablechop",
            &chop,
            ["TABLECHOP_AWS_KEY", "TABLECHOP_AWS_SECRET"],
        ),
        (
            "tablechop (old names)",
            &chop,
            ["TABLECHOP_KEY", "TABLECHOP_SECRET"],
        ),
    ] {
        let (code, out) = run(&[(own[0], "good"), (own[1], "good")]);
        assert_eq!(code, 0, "{name} with {own:?}: {out}");
        // The tool's own variable wins over the package-wide one.
        let (code, out) = run(&[
            (own[0], "good"),
            (own[1], "good"),
            ("TABLESNAP_AWS_KEY", "bad"),
            ("TABLESNAP_AWS_SECRET", "bad"),
        ]);
        assert_eq!(
            code, 0,
            "{name}: {own:?} must win over TABLESNAP_AWS_*: {out}"
        );
        // A wrong key in the variable under test is a failure that names no secret.
        let (code, out) = run(&[(own[0], "bad"), (own[1], "bad")]);
        assert_ne!(code, 0, "{name} with wrong {own:?} succeeded: {out}");
        assert!(
            !out.contains("bad-secret-1111"),
            "{name} printed the secret: {out}"
        );
        assert!(
            !out.contains("wrong-secret-0000"),
            "{name} printed the secret: {out}"
        );
    }
    let (code, out) = snap(&[
        ("TABLESNAP_AWS_KEY", "bad"),
        ("TABLESNAP_AWS_SECRET", "bad"),
    ]);
    assert_ne!(code, 0, "tablesnap with wrong TABLESNAP_AWS_*: {out}");
    assert!(!out.contains("bad-secret-1111"), "{out}");
}
