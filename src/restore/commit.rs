//! Durability of restored files as a group commit: one `syncfs` covers every file finished
//! meanwhile, then each file's own `fsync` reports its write-back errors.

use std::fs::File;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// reports a write-back error of that file (and does the work if `syncfs` failed).
pub(super) struct GroupCommit {
    tx: mpsc::UnboundedSender<(Arc<File>, oneshot::Sender<std::io::Result<()>>)>,
}

impl GroupCommit {
    /// The handle, and the committer to run beside the downloads; it ends once the handle
    /// is dropped and every request has been answered.
    pub(super) fn new() -> (Self, impl std::future::Future<Output = ()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Arc<File>, oneshot::Sender<_>)>();
        let committer = async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let files: Vec<Arc<File>> = batch.iter().map(|(f, _)| f.clone()).collect();
                let results = tokio::task::spawn_blocking(move || sync_batch(&files))
                    .await
                    .unwrap_or_else(|e| {
                        (0..batch.len())
                            .map(|_| Err(std::io::Error::other(e.to_string())))
                            .collect()
                    });
                for ((_, reply), r) in batch.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
        };
        (Self { tx }, committer)
    }

    /// Returns once `file` (data and inode) is on stable storage.
    pub(super) async fn durable(&self, file: Arc<File>) -> std::io::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((file, reply))
            .map_err(|_| std::io::Error::other("committer stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("committer stopped")))
    }
}

pub(super) fn sync_batch(files: &[Arc<File>]) -> Vec<std::io::Result<()>> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;
    let mut synced = std::collections::HashSet::new();
    for f in files {
        if let Ok(m) = f.metadata() {
            if synced.insert(m.dev()) {
                // SAFETY: syncfs only reads the descriptor, which `f` keeps open.
                if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
                    tracing::debug!("syncfs: {}", std::io::Error::last_os_error());
                }
            }
        }
    }
    files.iter().map(|f| f.sync_all()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_answers_every_file_and_ends_with_its_handle() {
        let dir = tempfile::tempdir().unwrap();
        let (commit, committer) = GroupCommit::new();
        let files = async move {
            let commit = &commit;
            futures::future::join_all((0..50).map(|i| {
                let p = dir.path().join(format!("f{i}"));
                async move {
                    let f = File::create(&p).unwrap();
                    f.write_all_at(&[i as u8; 4096], 0).unwrap();
                    commit.durable(Arc::new(f)).await
                }
            }))
            .await
        };
        let (results, ()) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(files, committer)
        })
        .await
        .expect("committer did not end after its handle was dropped");
        assert_eq!(results.len(), 50);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    }
}
