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
    struct St {
        store: Arc<dyn PaginatedListStore>,
        prefix: String,
        /// The last key handed out (or skipped): the next page starts after it.
        after: Option<String>,
        token: Option<String>,
        max: usize,
        done: bool,
    }
    let st = St {
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
        let opts = PaginatedListOptions {
            offset: if st.token.is_none() {
                st.after.clone()
            } else {
                None
            },
            page_token: st.token.clone(),
            max_keys: (st.max < PAGE).then_some(st.max),
            ..Default::default()
        };
        let batch: Vec<Result<ObjectInfo, StoreError>> = match st
            .store
            .list_paginated(
                Some(&st.prefix)
                    .filter(|p| !p.is_empty())
                    .map(|p| p.as_str()),
                opts,
            )
            .await
        {
            Ok(page) => {
                let objs = page.result.objects;
                if let Some(last) = objs.last() {
                    st.after = Some(last.location.to_string());
                }
                if page.page_token.is_none() {
                    st.done = true;
                }
                // Full pages continue with the server's token; after a split, start-after.
                st.token = if st.max == PAGE {
                    page.page_token
                } else {
                    None
                };
                st.max = (st.max * 2).min(PAGE);
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
            Err(object_store::Error::InvalidPath { source }) => {
                st.token = None;
                match bad_key_of(&source) {
                    // Already stepped over it: the server ignores start-after. Stop rather
                    // than loop.
                    Some(bad) if st.after.as_deref() == Some(bad.as_str()) => {
                        st.done = true;
                        return Some((
                            vec![Err(StoreError::BadKey {
                                key: bad,
                                reason: "the server lists it again after start-after; cannot list past it: rename or delete that object".into(),
                            })],
                            st,
                        ));
                    }
                    Some(bad) if st.max == 1 => {
                        report_bad_key(&bad, &path_error_reason(&source));
                        st.after = Some(bad);
                        st.max = PAGE;
                    }
                    Some(_) => st.max /= 2,
                    None => {
                        st.done = true;
                        return Some((
                            vec![Err(StoreError::Op {
                                op: "list",
                                key: st.prefix.clone(),
                                source: source.into(),
                            })],
                            st,
                        ));
                    }
                }
                Vec::new()
            }
            Err(source) => {
                st.done = true;
                vec![Err(StoreError::Op {
                    op: "list",
                    key: st.prefix.clone(),
                    source,
                })]
            }
        };
        Some((batch, st))
    })
    .flat_map(futures::stream::iter)
    .boxed()
}
