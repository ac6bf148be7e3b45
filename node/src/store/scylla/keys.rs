//! Keys on ScyllaDB: `keys` and the `keys_by_page` listing (see the module
//! documentation for how they are written and read).

use super::common::to_i64;
use super::errors;
use super::session::ScyllaStore;
use crate::store::shared::{decode_json, encode_json};
use async_trait::async_trait;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use ringlimit_actors::keys::KeyRecord;
use ringlimit_actors::storage::{KeyFilter, KeyStore, StoreError};

/// The listing partition of a key id: its first byte.
fn shard_of(key_id: &str) -> i32 {
    key_id.as_bytes().first().map_or(0, |&b| i32::from(b))
}

fn decode_key(id: &str, json: &str) -> Result<KeyRecord, StoreError> {
    decode_json("key", id, json.as_bytes())
}

impl ScyllaStore {
    async fn read_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        if key_id.is_empty() {
            return Ok(None);
        }
        let row: Option<(Option<String>,)> = self
            .row("get_key", &self.inner.st.get_key, (key_id,))
            .await?;
        match row {
            Some((Some(json),)) => decode_key(key_id, &json).map(Some),
            Some((None,)) => Err(StoreError::Corrupt(format!("key {key_id:?}: no record"))),
            None => Ok(None),
        }
    }

    /// The listing shards, in increasing order.
    async fn shards(&self) -> Result<Vec<i32>, StoreError> {
        let pager = self
            .inner
            .session
            .execute_iter(self.inner.st.shards.clone(), ())
            .await
            .map_err(|e| errors::pager("list_keys (shards)", e))?;
        let mut rows = pager
            .rows_stream::<(i32,)>()
            .map_err(|e| errors::decode("list_keys (shards)", e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().await {
            out.push(r.map_err(|e| errors::next_row("list_keys (shards)", e))?.0);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Reads the records of `ids` (in order) and appends those that exist and
    /// still match to `out`, up to `limit`.
    async fn fill_page(
        &self,
        ids: &mut Vec<String>,
        filter: &KeyFilter,
        out: &mut Vec<KeyRecord>,
        limit: usize,
    ) -> Result<(), StoreError> {
        let mut reads: Vec<BoxFuture<'_, Result<Option<KeyRecord>, StoreError>>> =
            Vec::with_capacity(ids.len());
        for id in ids.drain(..) {
            reads.push(async move { self.read_key(&id).await }.boxed());
        }
        let mut records = stream::iter(reads).buffered(self.inner.opts.concurrency.max(1));
        while let Some(r) = records.next().await {
            if let Some(rec) = r?
                && out.len() < limit
                && filter.matches(&rec)
            {
                out.push(rec);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl KeyStore for ScyllaStore {
    async fn put_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let id = key.key_id.as_str();
        if id.is_empty() {
            return Err(StoreError::Backend("put_key: empty key_id".into()));
        }
        let record = encode_json("key", id, key)?;
        let work = Box::pin(async {
            let st = &self.inner.st;
            // The record and its listing row.
            let (owner, tier, status) =
                (key.owner.as_str(), key.tier.as_str(), key.status.as_str());
            let updated = to_i64(key.updated_at_ms);
            let (a, b) = tokio::join!(
                self.exec(
                    "put_key",
                    &st.put_key,
                    (id, owner, tier, status, updated, record.as_str())
                ),
                self.exec(
                    "put_key (listing)",
                    &st.put_page,
                    (shard_of(id), id, owner, tier, status)
                ),
            );
            a?;
            b
        });
        self.bounded("put_key", self.inner.opts.operation_timeout, work)
            .await
    }

    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.bounded(
            "get_key",
            self.inner.opts.operation_timeout,
            self.read_key(key_id),
        )
        .await
    }

    async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.bounded("list_keys", self.inner.opts.scan_timeout, async {
            let st = &self.inner.st;
            let after = after.filter(|a| !a.is_empty());
            let first = after.map_or(i32::MIN, shard_of);
            let index_matches =
                |owner: &Option<String>, tier: &Option<String>, status: &Option<String>| {
                    filter
                        .owner
                        .as_ref()
                        .is_none_or(|o| owner.as_ref() == Some(o))
                        && filter
                            .tier
                            .as_ref()
                            .is_none_or(|t| tier.as_ref() == Some(t))
                        && filter
                            .status
                            .is_none_or(|s| status.as_deref() == Some(s.as_str()))
                };
            let mut out: Vec<KeyRecord> = Vec::new();
            let mut candidates: Vec<String> = Vec::new();
            for shard in self.shards().await?.into_iter().filter(|&s| s >= first) {
                let pager = match after {
                    Some(a) if shard == first => {
                        self.inner
                            .session
                            .execute_iter(st.page_after.clone(), (shard, a))
                            .await
                    }
                    _ => {
                        self.inner
                            .session
                            .execute_iter(st.page_all.clone(), (shard,))
                            .await
                    }
                }
                .map_err(|e| errors::pager("list_keys", e))?;
                let mut rows = pager
                    .rows_stream::<(String, Option<String>, Option<String>, Option<String>)>()
                    .map_err(|e| errors::decode("list_keys", e))?;
                while let Some(row) = rows.next().await {
                    let (id, owner, tier, status) =
                        row.map_err(|e| errors::next_row("list_keys", e))?;
                    if !index_matches(&owner, &tier, &status) {
                        continue;
                    }
                    candidates.push(id);
                    if out.len() + candidates.len() >= limit {
                        self.fill_page(&mut candidates, filter, &mut out, limit)
                            .await?;
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
            }
            self.fill_page(&mut candidates, filter, &mut out, limit)
                .await?;
            Ok(out)
        })
        .await
    }

    async fn load_all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.bounded("load_all_keys", self.inner.opts.scan_timeout, async {
            let pager = self
                .inner
                .session
                .execute_iter(self.inner.st.all_keys.clone(), ())
                .await
                .map_err(|e| errors::pager("load_all_keys", e))?;
            let mut rows = pager
                .rows_stream::<(String, Option<String>)>()
                .map_err(|e| errors::decode("load_all_keys", e))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().await {
                let (id, json) = row.map_err(|e| errors::next_row("load_all_keys", e))?;
                let json =
                    json.ok_or_else(|| StoreError::Corrupt(format!("key {id:?}: no record")))?;
                out.push(decode_key(&id, &json)?);
            }
            out.sort_by(|a, b| a.key_id.cmp(&b.key_id));
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_follow_key_id_order() {
        let mut ids = ["b", "a9", "a", "key-01", "Z", "0", "\u{e9}t\u{e9}", "k"];
        ids.sort_unstable();
        let shards: Vec<i32> = ids.iter().map(|i| shard_of(i)).collect();
        let mut sorted = shards.clone();
        sorted.sort_unstable();
        assert_eq!(shards, sorted, "shard order must agree with key_id order");
    }
}
