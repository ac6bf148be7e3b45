//! Logic both the embedded and the ScyllaDB store use: the code of a
//! granularity, JSON records, and the paging of newest-first lists (skip
//! `offset`, keep at most `limit`).

use ringlimit_actors::storage::{Range, StoreError};
use ringlimit_protocol::admin::Granularity;

/// The code of a granularity (minute 0, hour 1, day 2): its place in stored
/// keys and its index in per-granularity arrays.
pub(crate) fn granularity_code(g: Granularity) -> u8 {
    match g {
        Granularity::Minute => 0,
        Granularity::Hour => 1,
        Granularity::Day => 2,
    }
}

/// A record as JSON; a failure is a [`StoreError::Backend`] naming the record.
pub(crate) fn encode_json<T: serde::Serialize + ?Sized>(
    what: &str,
    id: &str,
    v: &T,
) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encode {what} {id:?}: {e}")))
}

/// A record from JSON; a failure is a [`StoreError::Corrupt`] naming the record.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    what: &str,
    id: &str,
    b: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(format!("{what} {id:?}: {e}")))
}

/// Whether a list over `range` can have rows at all.
pub(crate) fn empty_range(range: &Range) -> bool {
    range.from_ms >= range.to_ms || range.limit == 0
}

/// Skips `offset` and takes `limit` of a newest-first iterator.
pub(crate) fn page<T, I: Iterator<Item = Result<T, StoreError>>>(
    it: I,
    range: Range,
) -> Result<Vec<T>, StoreError> {
    it.skip(range.offset).take(range.limit).collect()
}

/// Rows of a newest-first list offered one at a time (where rows arrive in
/// a callback rather than an iterator): skips `offset`, keeps at most `limit`.
#[derive(Debug)]
pub(crate) struct Page<T> {
    skip: usize,
    limit: usize,
    pub(crate) rows: Vec<T>,
}

impl<T> Page<T> {
    pub(crate) fn new(range: &Range) -> Self {
        Page {
            skip: range.offset,
            limit: range.limit,
            rows: Vec::new(),
        }
    }

    pub(crate) fn full(&self) -> bool {
        self.rows.len() >= self.limit
    }

    /// Offers the next row in list order.
    pub(crate) fn offer(&mut self, row: T) {
        if self.skip > 0 {
            self.skip -= 1;
        } else if !self.full() {
            self.rows.push(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(offset: usize, limit: usize) -> Range {
        Range {
            from_ms: 0,
            to_ms: u64::MAX,
            offset,
            limit,
        }
    }

    #[test]
    fn page_skips_then_keeps_up_to_the_limit() {
        let mut p = Page::new(&range(2, 3));
        for i in 0..10 {
            p.offer(i);
        }
        assert_eq!(p.rows, [2, 3, 4]);
        assert!(p.full());
        let mut p = Page::new(&range(usize::MAX, usize::MAX));
        p.offer(1);
        assert!(p.rows.is_empty() && !p.full());
    }

    #[test]
    fn both_page_forms_agree() {
        for (offset, limit) in [(0, 0), (0, 3), (2, 3), (9, 5), (20, 1)] {
            let mut p = Page::new(&range(offset, limit));
            for i in 0..10 {
                p.offer(i);
            }
            let pulled = page((0..10).map(Ok), range(offset, limit)).expect("page");
            assert_eq!(p.rows, pulled, "offset {offset}, limit {limit}");
        }
    }

    #[test]
    fn empty_ranges() {
        let r = range(0, 10);
        assert!(!empty_range(&r));
        assert!(empty_range(&Range { limit: 0, ..r }));
        assert!(empty_range(&Range {
            from_ms: 5,
            to_ms: 5,
            ..r
        }));
    }

    #[test]
    fn granularity_codes_are_distinct_and_ordered() {
        let codes: Vec<u8> = Granularity::all()
            .into_iter()
            .map(granularity_code)
            .collect();
        assert_eq!(codes, [0, 1, 2]);
    }

    #[test]
    fn json_errors_name_the_record() {
        let e = decode_json::<u32>("tier", "t", b"{").expect_err("bad json");
        assert!(
            matches!(e, StoreError::Corrupt(ref m) if m.starts_with("tier \"t\": ")),
            "{e:?}"
        );
        assert_eq!(
            encode_json("tier", "t", &[1, 2]).ok().as_deref(),
            Some("[1,2]")
        );
    }
}
