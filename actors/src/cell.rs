//! The state one KeyLimiter owns, shared with the write-behind so dirty
//! state can be snapshotted without a message round trip per key.
//!
//! A [`KeyCell`] outlives its actor: when an actor is passivated (or fails and
//! is restarted) the next actor for the key takes the same cell if it is
//! still waiting to be written, so no admitted unit is forgotten.

use crate::algo::Micros;
use crate::limitset::LimitSet;
use parking_lot::Mutex;
use ringlimit_protocol::admin::Granularity;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One usage bucket as counted by one writer.
pub type UsageCell = (Granularity, u64, u64);

/// Admitted units of one key in the current minute, hour and day, as counted
/// by one writer (one process incarnation). Closed buckets, and buckets of an
/// earlier writer found in a loaded snapshot, wait in `closed` until written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageCounters {
    pub writer: String,
    /// `(granularity, bucket_start_ms, units)` of the open buckets.
    pub open: Vec<UsageCell>,
    /// `(writer, bucket)` of closed buckets not yet written.
    pub closed: Vec<(String, UsageCell)>,
}

impl UsageCounters {
    /// Switches to `writer`: the buckets of an earlier writer are closed
    /// under that writer's name, so its absolute values are still written.
    pub fn adopt_writer(&mut self, writer: &str) {
        if self.writer != writer {
            let old = std::mem::replace(&mut self.writer, writer.to_string());
            for b in self.open.drain(..) {
                self.closed.push((old.clone(), b));
            }
        }
    }

    /// Takes the counters of a loaded snapshot over for this process,
    /// whose writers are named `{base}.{n}`. When one of them wrote the
    /// snapshot, it was that writer's last state (a cell is dropped only
    /// once written), so counting goes on under its name. Otherwise a new
    /// writer starts, named with `next()`: every writer's rows only ever
    /// grow (stores keep a writer's larger total), so a writer must never
    /// count again from zero under a name whose rows already hold units.
    /// That happens when ownership of a key moves away and back within a
    /// bucket: the snapshot then comes from the other owner and no longer
    /// holds this process's earlier counts.
    pub fn resume(&mut self, base: &str, next: impl FnOnce() -> u64) {
        let ours = self
            .writer
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !ours {
            self.adopt_writer(&format!("{base}.{}", next()));
        }
    }

    /// Adds `units` admitted at `now_ms`.
    pub fn add(&mut self, now_ms: u64, units: u64) {
        for g in Granularity::all() {
            let start = now_ms - now_ms % g.millis();
            match self.open.iter_mut().find(|(og, _, _)| *og == g) {
                Some(b) if b.1 == start => b.2 += units,
                Some(b) if b.1 < start => {
                    self.closed.push((self.writer.clone(), *b));
                    *b = (g, start, units);
                }
                // A clock step backwards into an older bucket counts in the open one.
                Some(b) => b.2 += units,
                None => self.open.push((g, start, units)),
            }
        }
    }

    /// Every bucket to write, with its writer: closed and open.
    pub fn rows(&self) -> Vec<(String, UsageCell)> {
        self.closed
            .iter()
            .cloned()
            .chain(self.open.iter().map(|b| (self.writer.clone(), *b)))
            .collect()
    }

    /// Forgets closed buckets that were written with these values.
    pub fn written(&mut self, rows: &[(String, UsageCell)]) {
        self.closed.retain(|c| !rows.contains(c));
    }

    /// Whether a `g` bucket starting before `end_ms` waits to be written:
    /// a closed one, or an open one when the open buckets are not written
    /// (`open_written` false).
    pub fn unwritten_before(&self, g: Granularity, end_ms: u64, open_written: bool) -> bool {
        let before = |c: &UsageCell| c.0 == g && c.1 < end_ms;
        self.closed.iter().any(|(_, c)| before(c))
            || (!open_written && self.open.iter().any(before))
    }
}

/// What a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub limits: LimitSet,
    #[serde(default)]
    pub usage: UsageCounters,
}

impl Snapshot {
    /// The snapshot as compact MessagePack: fields by position, not by
    /// name. An error is never turned into an empty blob: the write-behind
    /// keeps the cell pending instead.
    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        // Sized for the common snapshot up front: growing from empty took
        // five reallocations per key and flush.
        let mut out = Vec::with_capacity(192);
        rmp_serde::encode::write(&mut out, self)?;
        Ok(out)
    }

    /// Decodes a snapshot, compact or in the named form earlier versions
    /// wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

/// The mutable part of a cell.
#[derive(Debug)]
pub struct CellInner {
    /// Whether the stored snapshot (if any) has been loaded.
    pub loaded: bool,
    /// Catalog epoch the limits were resolved at; `None` before the first resolution.
    pub epoch: Option<u64>,
    pub snap: Snapshot,
    /// Bumped on every change; the write-behind compares it to know what it wrote.
    pub version: u64,
    /// Version the first snapshot sink last stored (the write-behind's
    /// bookkeeping: each sink progresses on its own).
    pub(crate) stored: u64,
    /// Versions the other snapshot sinks last stored (usually none).
    pub(crate) stored_more: Vec<u64>,
    /// Version whose usage rows the usage store last took.
    pub(crate) usage_stored: u64,
    /// Set by the cell's actor as it passivates: from then on no check may
    /// change the cell directly (it goes through a new activation, which
    /// clears the flag when it takes the cell over).
    pub retired: bool,
}

impl CellInner {
    /// The version snapshot sink `sink` last stored.
    pub(crate) fn stored(&self, sink: usize) -> u64 {
        match sink {
            0 => self.stored,
            n => self.stored_more.get(n - 1).copied().unwrap_or(0),
        }
    }

    /// Records that snapshot sink `sink` stored `version`.
    pub(crate) fn set_stored(&mut self, sink: usize, version: u64) {
        match sink {
            0 => self.stored = version,
            n => {
                if self.stored_more.len() < n {
                    self.stored_more.resize(n, 0);
                }
                self.stored_more[n - 1] = version;
            }
        }
    }
}

/// Starts the pending-map name of a usage-only cell (key ids are printable).
pub(crate) const USAGE_ONLY_MARK: char = '\u{1}';

/// One key's limiter state.
#[derive(Debug)]
pub struct KeyCell {
    pub key_id: String,
    inner: Mutex<CellInner>,
    /// Whether the cell is in the write-behind's pending map.
    pub(crate) in_pending: AtomicBool,
    /// Last use, ms since the epoch, for idle passivation and LRU eviction.
    last_used_ms: AtomicU64,
    /// A cell that only counts usage: units this node admitted for a key it
    /// does not own (a fail-open answer). It has no limits and no snapshot;
    /// only its usage rows are written.
    pub(crate) usage_only: bool,
}

impl KeyCell {
    pub fn new(key_id: String, now_ms: u64) -> Self {
        KeyCell {
            key_id,
            inner: Mutex::new(CellInner {
                loaded: false,
                epoch: None,
                snap: Snapshot::default(),
                version: 0,
                stored: 0,
                stored_more: Vec::new(),
                usage_stored: 0,
                retired: false,
            }),
            in_pending: AtomicBool::new(false),
            last_used_ms: AtomicU64::new(now_ms),
            usage_only: false,
        }
    }

    pub fn lock(&self) -> parking_lot::MutexGuard<'_, CellInner> {
        self.inner.lock()
    }

    pub fn touch(&self, now: Micros) {
        self.last_used_ms.store(now / 1_000, Ordering::Relaxed);
    }

    pub fn last_used_ms(&self) -> u64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    /// Marks the cell changed. Call with the lock held; returns whether the
    /// caller must add the cell to the pending map after releasing the lock.
    /// A usage-only cell counting under `writer` (see [`KeyCell::usage_only`]).
    pub(crate) fn usage_only(key_id: String, writer: String, now_ms: u64) -> Self {
        let mut c = KeyCell::new(key_id, now_ms);
        c.usage_only = true;
        let g = c.inner.get_mut();
        g.loaded = true;
        g.snap.usage.writer = writer;
        c
    }

    /// The cell's name in the write-behind's pending map: its key id, or for
    /// a usage-only cell a name no key id can have, so it never meets the
    /// key's own cell.
    pub(crate) fn pending_key(&self) -> compact_str::CompactString {
        if self.usage_only {
            compact_str::format_compact!("{USAGE_ONLY_MARK}{}", self.key_id)
        } else {
            self.key_id.as_str().into()
        }
    }

    pub fn mark_changed(&self, inner: &mut CellInner) -> bool {
        inner.version = inner.version.wrapping_add(1);
        !self.in_pending.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlimit_protocol::{AlgorithmKind, LimitSpec};
    use std::collections::BTreeMap;

    fn busy_snapshot() -> Snapshot {
        let specs: Vec<LimitSpec> = [
            ("per-minute", AlgorithmKind::SlidingWindow, 60_000),
            ("per-hour", AlgorithmKind::TokenBucket, 3_600_000),
            ("per-day", AlgorithmKind::FixedWindow, 86_400_000),
            ("burst", AlgorithmKind::Gcra, 1_000),
            ("exact", AlgorithmKind::SlidingLog, 10_000),
        ]
        .into_iter()
        .map(|(name, algorithm, window_ms)| LimitSpec {
            name: name.into(),
            algorithm,
            limit: 50,
            window_ms,
            burst: None,
        })
        .collect();
        let mut limits = LimitSet::new(&specs);
        for i in 0..5 {
            limits.check(1_000_000 + i * 1_000, 1).expect("checks");
        }
        let mut usage = UsageCounters::default();
        usage.adopt_writer("node-a#1764000000000");
        usage.add(1_000, 5);
        usage.adopt_writer("node-b#1764000000001");
        usage.add(61_000, 2);
        Snapshot { limits, usage }
    }

    #[test]
    fn snapshots_are_compact_and_round_trip() {
        let s = busy_snapshot();
        let compact = s.encode().expect("encodes");
        let named = rmp_serde::to_vec_named(&s).expect("encodes");
        assert_eq!(Snapshot::decode(&compact).expect("decodes"), s);
        // Field names are not written: one sliding-window limit and its
        // usage took about 270 bytes in the named form.
        assert!(
            compact.len() * 10 < named.len() * 7,
            "compact {} bytes against named {}",
            compact.len(),
            named.len()
        );
    }

    #[test]
    fn snapshots_in_the_named_form_of_earlier_versions_still_load() {
        let s = busy_snapshot();
        let named = rmp_serde::to_vec_named(&s).expect("encodes");
        assert_eq!(Snapshot::decode(&named).expect("decodes"), s);
        // Written before usage counters existed: the field defaults.
        let old = rmp_serde::to_vec_named(&LimitsOnly { limits: &s.limits }).expect("encodes");
        let back = Snapshot::decode(&old).expect("decodes");
        assert_eq!(back.limits, s.limits);
        assert_eq!(back.usage, UsageCounters::default());
    }

    #[derive(serde::Serialize)]
    struct LimitsOnly<'a> {
        limits: &'a LimitSet,
    }

    #[test]
    fn one_sliding_window_key_snapshots_in_few_bytes() {
        let spec = LimitSpec {
            name: "per-minute".into(),
            algorithm: AlgorithmKind::SlidingWindow,
            limit: 1_000,
            window_ms: 60_000,
            burst: None,
        };
        let mut limits = LimitSet::new(&[spec]);
        limits.check(1_764_000_000_000_000, 1).expect("checks");
        let mut usage = UsageCounters::default();
        usage.adopt_writer("node-a#1764000000000");
        usage.add(1_764_000_000_000, 1);
        let s = Snapshot { limits, usage };
        let n = s.encode().expect("encodes").len();
        eprintln!(
            "one sliding_window key: {n} bytes compact, {} named",
            rmp_serde::to_vec_named(&s).expect("encodes").len()
        );
        assert!(n < 160, "{n} bytes");
    }

    #[test]
    fn usage_rolls_buckets_and_keeps_closed_ones_until_written() {
        let mut u = UsageCounters::default();
        u.adopt_writer("w");
        u.add(60_000, 2);
        u.add(60_500, 3);
        u.add(120_000, 1);
        let rows = u.rows();
        let has = |g, s, n| rows.contains(&("w".to_string(), (g, s, n)));
        assert!(has(Granularity::Minute, 60_000, 5));
        assert!(has(Granularity::Minute, 120_000, 1));
        assert!(has(Granularity::Hour, 0, 6));
        assert!(has(Granularity::Day, 0, 6));
        u.written(&rows);
        assert!(u.closed.is_empty());
        assert_eq!(u.rows().len(), 3);
        u.adopt_writer("w2");
        assert!(u.open.is_empty());
        assert_eq!(u.closed.len(), 3);
        assert!(u.rows().iter().all(|(w, _)| w == "w"));
    }

    /// Rows as a store keeps them: per (writer, bucket), the larger total.
    fn store(rows: &mut BTreeMap<(String, UsageCell), u64>, u: &UsageCounters) {
        for (w, (g, start, n)) in u.rows() {
            let e = rows.entry((w, (g, start, 0))).or_default();
            *e = (*e).max(n);
        }
    }

    fn minute_total(rows: &BTreeMap<(String, UsageCell), u64>) -> u64 {
        rows.iter()
            .filter(|((_, (g, _, _)), _)| *g == Granularity::Minute)
            .map(|(_, n)| n)
            .sum()
    }

    #[test]
    fn ownership_moving_away_and_back_within_a_bucket_loses_no_unit() {
        let mut rows = BTreeMap::new();
        let mut stint = 0;
        let mut next = || {
            stint += 1;
            stint
        };
        // Node a owns the key and counts 10.
        let mut a = UsageCounters::default();
        a.resume("a#1", &mut next);
        a.add(1_000, 10);
        store(&mut rows, &a);
        // A partition: b takes the key over from a's snapshot and counts 5.
        let mut b = a.clone();
        b.resume("b#2", &mut next);
        b.add(2_000, 5);
        store(&mut rows, &b);
        // a keeps counting (3) and its snapshot is the last one written;
        // b drops its cell.
        a.add(3_000, 3);
        store(&mut rows, &a);
        // Ownership comes back to b within the same minute: b loads a's
        // snapshot, which does not hold b's 5, and counts 4 more.
        let mut b2 = a.clone();
        b2.resume("b#2", &mut next);
        assert_ne!(b2.writer, b.writer, "a writer never counts again from zero");
        b2.add(4_000, 4);
        store(&mut rows, &b2);
        assert_eq!(minute_total(&rows), 10 + 5 + 3 + 4);
    }

    #[test]
    fn a_process_goes_on_counting_under_its_own_writer() {
        let mut n = 0;
        let mut u = UsageCounters::default();
        u.resume("a#1", || {
            n += 1;
            n
        });
        u.add(1_000, 7);
        let mut rows = BTreeMap::new();
        store(&mut rows, &u);
        // Passivated once written, loaded again from its own snapshot.
        let mut again = u.clone();
        again.resume("a#1", || unreachable!("no new writer"));
        assert_eq!(again.writer, u.writer);
        again.add(2_000, 1);
        store(&mut rows, &again);
        assert_eq!(minute_total(&rows), 8);
        // A writer of another process with a name that begins alike is not ours.
        let mut other = UsageCounters {
            writer: "a#10.1".into(),
            ..UsageCounters::default()
        };
        other.resume("a#1", || 9);
        assert_eq!(other.writer, "a#1.9");
    }
}
