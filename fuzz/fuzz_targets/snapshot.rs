//! Stored counter snapshots (`actors::cell::Snapshot`, MessagePack) as a
//! KeyLimiter loads them: decode, adopt the current limits, check and peek.
//! Stored bytes may be corrupt or written by another version: decoding and
//! everything done with a decoded snapshot must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlimit_actors::cell::Snapshot;
use ringlimit_actors::limitset::LimitSet;

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
    u64::from_le_bytes(w)
}

fn exercise(set: &mut LimitSet, now: u64, cost: u64) {
    for step in 0..4u64 {
        let t = now.saturating_add(step * 250_000);
        let _ = set.check(t, cost);
        let _ = set.peek(t);
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (head, bytes) = data.split_at(16);
    let now = word(&head[..8]);
    let cost = word(&head[8..]) % 1_000 + 1;
    let Ok(mut snap) = Snapshot::decode(bytes) else {
        return;
    };
    let enc = snap.encode().expect("a decoded snapshot encodes");
    assert_eq!(Snapshot::decode(&enc).expect("an encoded snapshot decodes"), snap);

    snap.usage.adopt_writer("fuzz");
    snap.usage.add(now / 1_000, cost);
    let _ = snap.usage.rows();

    // Unchanged specs (the usual load), then changed quotas of the same
    // limits (a tier edited while the key was passivated).
    let specs: Vec<_> = snap.limits.entries.iter().map(|e| e.spec.clone()).collect();
    let mut set = snap.limits.clone();
    set.reconcile(&specs);
    exercise(&mut set, now, cost);
    let changed: Vec<_> = specs
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.limit = s.limit / 2 + 1;
            s
        })
        .collect();
    let mut set = snap.limits.clone();
    set.reconcile(&changed);
    exercise(&mut set, now, cost);
});
