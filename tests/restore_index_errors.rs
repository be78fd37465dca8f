//! A newest index that cannot be read (issue #15): a transient failure (a 5xx after the
//! client's retries) used to make tableslurp quietly restore an older restore point, exit
//! 0. Now it stops, naming the index; only an index deleted since the listing (404) is
//! stepped over, with a warning. Against the real S3 test server through the fault proxy,
//! which fails exactly the GETs of that index.

mod common;
mod restore_util;

use restore_util::*;
use tablesnap::layout::{self, Layout};
use tablesnap::restore::{self, PrepareError, RestoreOptions, Selection};
use tablesnap::store::{Store, StoreOptions};

#[test]
fn a_newest_index_that_cannot_be_read_stops_the_restore_and_a_deleted_one_is_stepped_over() {
    if std::env::var_os("TABLESNAP_TEST_S3_ENDPOINT").is_none() {
        if std::env::var_os("TABLESNAP_REQUIRE_BACKENDS").is_some() {
            panic!("TABLESNAP_REQUIRE_BACKENDS is set but no S3 test server is configured");
        }
        eprintln!("skipping: no S3 test server (bash scripts/test.sh starts one)");
        return;
    }
    let (opts, c) = dest();
    let w = Writer::new(&opts, &c);
    let dir = "/d/ks/t-0123456789abcdef0123456789abcdef";
    for g in 1..=2 {
        w.put_data(
            &format!("{dir}/nb-{g}-big-Data.db"),
            format!("data {g}").as_bytes(),
            0o100644,
        );
    }
    w.put_index(dir, "nb-1-big-Data.db", &["nb-1-big-Data.db".into()]);
    // The newer index (a later generation; same second or later).
    let newest = w.put_index(
        dir,
        "nb-2-big-Data.db",
        &["nb-1-big-Data.db".into(), "nb-2-big-Data.db".into()],
    );
    assert!(newest.ends_with(layout::INDEX_SUFFIX));
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(check(opts, c.prefix.clone(), dir, newest));
}

async fn check(opts: StoreOptions, prefix: String, dir: &str, newest: String) {
    let proxy = common::proxy::Proxy::start(opts.endpoint.as_deref().unwrap()).await;
    let through = StoreOptions {
        endpoint: Some(proxy.url()),
        max_retries: Some(1),
        retry_timeout: Some(std::time::Duration::from_secs(5)),
        ..opts.clone()
    };
    let store = Store::open(&through).unwrap();
    let ro = RestoreOptions {
        layout: Layout::new(prefix, HOST, ":"),
        origin: dir.into(),
        target: "/nonexistent".into(),
        selection: Selection::Newest,
        as_of: None,
        commitlogs: None,
        commitlog_target: None,
        mapping: Default::default(),
        keep_generations: false,
    };
    let index_name = format!("nb-2-big-Data.db{}", layout::INDEX_SUFFIX);

    // 500 on every GET of the newest index: an error naming it, no plan.
    proxy.fail_gets_of(Some(&index_name), 500);
    match restore::prepare(&store, &ro, 4).await {
        Err(e @ PrepareError::Index { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&newest), "{msg}");
            assert!(
                msg.contains("stopping rather than restoring an older restore point"),
                "{msg}"
            );
        }
        Err(e) => panic!("another error: {e}"),
        Ok(p) => panic!(
            "restored {:?} instead of failing",
            p.tables.iter().map(|t| &t.index_key).collect::<Vec<_>>()
        ),
    }

    // 404 (deleted since the listing): the older complete index is restored, with a warning.
    proxy.fail_gets_of(Some(&index_name), 404);
    let p = restore::prepare(&store, &ro, 4)
        .await
        .expect("fallback to the older index");
    assert_eq!(p.tables.len(), 1);
    assert!(
        p.tables[0]
            .index_key
            .ends_with(&format!("nb-1-big-Data.db{}", layout::INDEX_SUFFIX))
    );

    // Readable again: the newest.
    proxy.fail_gets_of(None, 0);
    let p = restore::prepare(&store, &ro, 4).await.unwrap();
    assert_eq!(p.tables[0].index_key, newest);
}
