//! Two listings of one directory never share a LastModified second (issue #15, item 14).
//! Readers (tableslurp, the original's too) take the newest index by LastModified, which
//! listings give to the second; within a second they fall back to the SSTable generation,
//! which picks the older listing when a compaction (whose output id is taken when it starts)
//! finishes in the same second as a flush. tablesnap now spaces a directory's index writes
//! by more than a second, so the order is the order they were written.

use std::path::Path;

use tablesnap::layout::{self, Layout};
use tablesnap::store::{Store, StoreOptions};
use tablesnap::upload::{UploadConfig, Uploader};

fn sstable(dir: &Path, g: u32) -> std::path::PathBuf {
    let data = dir.join(format!("nb-{g}-big-Data.db"));
    std::fs::write(&data, format!("data {g}")).unwrap();
    std::fs::write(
        dir.join(format!("nb-{g}-big-TOC.txt")),
        b"Data.db\nTOC.txt\n",
    )
    .unwrap();
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_indexes_of_a_directory_are_a_second_apart() {
    let data = tempfile::tempdir().unwrap();
    let bucket = tempfile::tempdir().unwrap();
    let dir = data.path().join("ks/t-0123456789abcdef0123456789abcdef");
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&StoreOptions {
        destination: format!("file://{}", bucket.path().display()),
        ..Default::default()
    })
    .unwrap();
    let layout = Layout::new("", "h1", ":");
    let up = Uploader::new(store.clone(), layout.clone(), UploadConfig::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    // A compaction's output (low generation, taken at its start) lands right after a flush
    // (higher generation): three listings in quick succession.
    let mut keys = vec![];
    for g in [7, 8, 5] {
        let d = sstable(&dir, g);
        let w = up
            .write_index(&dir, std::slice::from_ref(&d), None, &cancel)
            .await
            .unwrap();
        assert_eq!(w.indexed, vec![d.clone()]);
        keys.push(layout::index_key(&layout.data_key(d.to_str().unwrap())));
    }
    let mut secs = vec![];
    for k in &keys {
        let info = store.head(k).await.unwrap().expect("index stored");
        secs.push(info.last_modified.timestamp());
    }
    assert!(
        secs.windows(2).all(|w| w[1] > w[0]),
        "LastModified seconds {secs:?} of {keys:?}"
    );
}
