//! The S3 listing page by page, so that one object whose key `object_store` cannot
//! represent is reported and stepped over instead of failing the whole listing.

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use object_store::list::{PaginatedListOptions, PaginatedListStore};

use super::{ObjectInfo, StoreError};

/// The key an `object_store` path error is about, if it names one.
pub(super) fn bad_key_of(e: &object_store::path::Error) -> Option<String> {
    match e {
        object_store::path::Error::EmptySegment { path }
        | object_store::path::Error::BadSegment { path, .. } => Some(path.clone()),
        _ => None,
    }
}

/// Why object_store refuses a key, without repeating the key.
pub(super) fn path_error_reason(e: &object_store::path::Error) -> String {
    match e {
        object_store::path::Error::EmptySegment { .. } => "empty path segment".into(),
        object_store::path::Error::BadSegment { source, .. } => source.to_string(),
        e => e.to_string(),
    }
}

pub(super) fn report_bad_key(key: &str, why: &str) {
    tracing::warn!(
        key = %crate::layout::printable(key),
        "skipping an object whose key cannot be used ({}); the rest of the listing goes on",
        crate::layout::printable(why)
    );
}

/// Largest page S3 returns.
const PAGE: usize = 1000;

/// Lists `dir/` page by page. `object_store` refuses a whole page when one key in it cannot
/// be a `Path`; then the same range is listed again with smaller and smaller pages until that
/// key is alone in its page: it is reported, skipped (`start-after` takes the raw key) and the
/// listing goes on with full pages. About 20 extra requests per unusable key.
pub(super) fn paged_list(
    store: Arc<dyn PaginatedListStore>,
    dir: String,
) -> BoxStream<'static, Result<ObjectInfo, StoreError>> {
    let st = Pager {
        store,
        prefix: if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        },
        after: None,
        token: None,
        max: PAGE,
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let batch = st.next_page().await;
        Some((batch, st))
    })
    .flat_map(futures::stream::iter)
    .boxed()
}

/// Where a paged listing stands.
struct Pager {
    store: Arc<dyn PaginatedListStore>,
    prefix: String,
    /// The last key handed out (or skipped): the next page starts after it.
    after: Option<String>,
    token: Option<String>,
    max: usize,
    done: bool,
}

impl Pager {
    /// The objects of the next page (none after a split), or the error that ends it.
    async fn next_page(&mut self) -> Vec<Result<ObjectInfo, StoreError>> {
        let opts = PaginatedListOptions {
            offset: if self.token.is_none() {
                self.after.clone()
            } else {
                None
            },
            page_token: self.token.clone(),
            max_keys: (self.max < PAGE).then_some(self.max),
            ..Default::default()
        };
        let prefix = Some(self.prefix.as_str()).filter(|p| !p.is_empty());
        match self.store.list_paginated(prefix, opts).await {
            Ok(page) => self.on_page(page),
            Err(object_store::Error::InvalidPath { source }) => self.on_bad_key(source),
            Err(source) => {
                self.done = true;
                vec![Err(self.list_error(source))]
            }
        }
    }

    fn on_page(
        &mut self,
        page: object_store::list::PaginatedListResult,
    ) -> Vec<Result<ObjectInfo, StoreError>> {
        let objs = page.result.objects;
        if let Some(last) = objs.last() {
            self.after = Some(last.location.to_string());
        }
        if page.page_token.is_none() {
            self.done = true;
        }
        // Full pages continue with the server's token; after a split, start-after.
        self.token = if self.max == PAGE {
            page.page_token
        } else {
            None
        };
        self.max = (self.max * 2).min(PAGE);
        objs.into_iter()
            .map(|m| {
                Ok(ObjectInfo {
                    key: m.location.to_string(),
                    size: m.size,
                    last_modified: m.last_modified,
                    e_tag: m.e_tag,
                    metadata: HashMap::new(),
                })
            })
            .collect()
    }

    /// A page refused for one key: halve the page until the key is alone, then step over it.
    fn on_bad_key(
        &mut self,
        source: object_store::path::Error,
    ) -> Vec<Result<ObjectInfo, StoreError>> {
        self.token = None;
        match bad_key_of(&source) {
            // Already stepped over it: the server ignores start-after. Stop rather
            // than loop.
            Some(bad) if self.after.as_deref() == Some(bad.as_str()) => {
                self.done = true;
                vec![Err(StoreError::BadKey {
                    key: bad,
                    reason: "the server lists it again after start-after; cannot list past it: rename or delete that object".into(),
                })]
            }
            Some(bad) if self.max == 1 => {
                report_bad_key(&bad, &path_error_reason(&source));
                self.after = Some(bad);
                self.max = PAGE;
                Vec::new()
            }
            Some(_) => {
                self.max /= 2;
                Vec::new()
            }
            None => {
                self.done = true;
                vec![Err(self.list_error(source.into()))]
            }
        }
    }

    fn list_error(&self, source: object_store::Error) -> StoreError {
        StoreError::Op {
            op: "list",
            key: self.prefix.clone(),
            source,
        }
    }
}
