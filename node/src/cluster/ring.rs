//! The hash ring: which node owns a key.
//!
//! Every node builds the same ring from the same member names: hashring
//! (a sorted vector searched by binary search) with [`VNODES_PER_MEMBER`]
//! virtual nodes `(name, i)` per member. The hash is ours, not the standard
//! library's: FNV-1a over the raw bytes followed by the 64-bit finaliser of
//! MurmurHash3, so every build of every version hashes a key the same way
//! (`std`'s `Hash for str` and `DefaultHasher` are allowed to change between
//! Rust releases, and a rolling upgrade must not move keys).
//!
//! A ring has a [`Ring::version`]: the same hash of its sorted member names,
//! so two nodes with the same membership report the same version whatever the
//! order they learned it in.

use hashring::HashRing;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

/// Virtual nodes per member: with 128, going from 3 to 4 members moves about
/// a quarter of the keys and shares stay within a few percent.
pub const VNODES_PER_MEMBER: u32 = 128;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a with a MurmurHash3 `fmix64` finish: stable and well mixed.
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(FNV_OFFSET)
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }
}

/// Builds [`StableHasher`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct StableHashBuilder;

impl BuildHasher for StableHashBuilder {
    type Hasher = StableHasher;
    fn build_hasher(&self) -> StableHasher {
        StableHasher::default()
    }
}

/// The stable hash of some bytes.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::default();
    h.write(bytes);
    h.finish()
}

/// A key as the ring hashes it: its raw bytes, nothing else.
struct KeyBytes<'a>(&'a str);

impl Hash for KeyBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// One virtual node: member `idx` (into the sorted member list), copy `i`.
#[derive(Debug, Clone)]
struct VNode {
    name: Arc<str>,
    idx: u32,
    i: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.name.as_bytes());
        state.write(&[0]);
        state.write(&self.i.to_le_bytes());
    }
}

/// The ring of one membership. Immutable: a membership change builds a new one.
pub struct Ring {
    members: Vec<String>,
    version: u64,
    ring: HashRing<VNode, StableHashBuilder>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("version", &self.version)
            .field("members", &self.members)
            .finish()
    }
}

impl Ring {
    /// The ring of `local` and `peers` (duplicates and order do not matter).
    /// It always contains `local`, so every key has an owner.
    pub fn new<I, S>(local: &str, peers: I) -> Ring
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut members: Vec<String> = peers.into_iter().map(Into::into).collect();
        members.push(local.to_string());
        members.sort();
        members.dedup();
        let version = ring_version(&members);
        let mut ring = HashRing::with_hasher(StableHashBuilder);
        let mut vnodes = Vec::with_capacity(members.len() * VNODES_PER_MEMBER as usize);
        for (idx, m) in members.iter().enumerate() {
            let name: Arc<str> = Arc::from(m.as_str());
            for i in 0..VNODES_PER_MEMBER {
                vnodes.push(VNode {
                    name: name.clone(),
                    idx: idx as u32,
                    i,
                });
            }
        }
        ring.batch_add(vnodes);
        Ring {
            members,
            version,
            ring,
        }
    }

    /// The ring of a non-empty member list; `None` when it is empty.
    pub fn from_members<I, S>(members: I) -> Option<Ring>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut it = members.into_iter().map(Into::into);
        let first: String = it.next()?;
        Some(Ring::new(&first, it))
    }

    /// This ring without `name`; `None` if nothing would be left.
    pub fn without(&self, name: &str) -> Option<Ring> {
        Ring::from_members(self.members.iter().filter(|m| *m != name).cloned())
    }

    /// The node that owns `key_id`.
    pub fn owner(&self, key_id: &str) -> &str {
        match self.ring.get(&KeyBytes(key_id)) {
            Some(v) => &self.members[v.idx as usize],
            // Unreachable: a ring always has at least one member.
            None => &self.members[0],
        }
    }

    /// The sorted member names.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    pub fn contains(&self, name: &str) -> bool {
        self.members
            .binary_search_by(|m| m.as_str().cmp(name))
            .is_ok()
    }

    /// The hash of the sorted member names: equal on every node with the same membership.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// `ring version=V members=a,b,c`, the line the cluster logs and the probe prints.
    pub fn describe(&self) -> String {
        format!(
            "version={} members={}",
            self.version,
            self.members.join(",")
        )
    }
}

/// The version of a membership: the stable hash of the sorted, deduplicated
/// names, each followed by a newline.
pub fn ring_version(sorted_members: &[String]) -> u64 {
    let mut h = StableHasher::default();
    for m in sorted_members {
        h.write(m.as_bytes());
        h.write(b"\n");
    }
    h.finish()
}

/// What changed between two rings, computed from their memberships.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub old_version: u64,
    pub new_version: u64,
}

impl RingChange {
    /// The change from `old` to `new`; `None` when the membership is the same.
    pub fn between(old: &Ring, new: &Ring) -> Option<RingChange> {
        if old.members == new.members {
            return None;
        }
        let added = new
            .members
            .iter()
            .filter(|m| !old.contains(m))
            .cloned()
            .collect();
        let removed = old
            .members
            .iter()
            .filter(|m| !new.contains(m))
            .cloned()
            .collect();
        Some(RingChange {
            added,
            removed,
            old_version: old.version,
            new_version: new.version,
        })
    }
}

impl std::fmt::Display for RingChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ring {} -> {} added=[{}] removed=[{}]",
            self.old_version,
            self.new_version,
            self.added.join(","),
            self.removed.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Deterministic random-looking key ids (xorshift), no extra dependency.
    fn keys(n: usize, seed: u64) -> Vec<String> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{:016x}", x)
            })
            .collect()
    }

    #[test]
    fn three_members_share_keys_within_15_percent() {
        let ring = Ring::new("node-a", ["node-b", "node-c"]);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let ks = keys(10_000, 42);
        for k in &ks {
            *counts.entry(ring.owner(k)).or_default() += 1;
        }
        assert_eq!(counts.len(), 3);
        let third = 10_000.0 / 3.0;
        for (n, c) in &counts {
            let share = *c as f64 / third;
            assert!((0.85..=1.15).contains(&share), "{n} owns {c} keys of 10000");
        }
    }

    #[test]
    fn order_and_duplicates_do_not_matter() {
        let a = Ring::new("a", ["b", "c"]);
        let b = Ring::new("c", ["b", "a", "a"]);
        let c = Ring::from_members(["b", "c", "a"]).expect("non-empty");
        assert_eq!(a.version(), b.version());
        assert_eq!(a.version(), c.version());
        assert_eq!(a.members(), ["a", "b", "c"]);
        for k in keys(2_000, 7) {
            assert_eq!(a.owner(&k), b.owner(&k));
            assert_eq!(a.owner(&k), c.owner(&k));
        }
        assert_ne!(a.version(), Ring::new("a", ["b"]).version());
        // The version hashes names with a separator: ["ab"] is not ["a","b"].
        assert_ne!(
            Ring::new("ab", Vec::<String>::new()).version(),
            Ring::new("a", ["b"]).version()
        );
    }

    #[test]
    fn the_hash_is_stable_across_builds() {
        // Pinned values: if these change, keys move between versions.
        assert_eq!(
            stable_hash(b"key-1"),
            PINNED_KEY_1,
            "{:#x}",
            stable_hash(b"key-1")
        );
        let v = Ring::new("a", ["b", "c"]).version();
        assert_eq!(
            v,
            ring_version(&["a".to_string(), "b".to_string(), "c".to_string()])
        );
        assert_eq!(
            v, PINNED_ABC_VERSION,
            "ring version of a,b,c changed: {v:#x}"
        );
        let r = Ring::new("a", ["b", "c"]);
        let owners: Vec<&str> = ["k0", "k1", "k2", "k3", "k4", "k5"]
            .iter()
            .map(|k| r.owner(k))
            .collect();
        assert_eq!(owners.join(","), PINNED_OWNERS, "owners moved");
    }

    const PINNED_ABC_VERSION: u64 = 0x8dd5_1eb9_c270_07a8;
    const PINNED_OWNERS: &str = "b,c,c,a,a,a";
    const PINNED_KEY_1: u64 = 0xa002_e14b_20bb_64ec;

    #[test]
    fn going_from_three_to_four_moves_about_a_quarter() {
        let three = Ring::new("a", ["b", "c"]);
        let four = Ring::new("a", ["b", "c", "d"]);
        let ks = keys(10_000, 99);
        let moved = ks
            .iter()
            .filter(|k| three.owner(k) != four.owner(k))
            .count();
        let frac = moved as f64 / ks.len() as f64;
        assert!((0.18..=0.32).contains(&frac), "moved {frac}");
        // Only keys that go to the new member move.
        for k in &ks {
            if three.owner(k) != four.owner(k) {
                assert_eq!(four.owner(k), "d");
            }
        }
    }

    #[test]
    fn ring_change_is_computed_from_memberships() {
        let old = Ring::new("a", ["b", "c"]);
        let new = Ring::new("a", ["c", "d"]);
        let ch = RingChange::between(&old, &new).expect("changed");
        assert_eq!(ch.added, ["d"]);
        assert_eq!(ch.removed, ["b"]);
        assert_eq!(ch.old_version, old.version());
        assert_eq!(ch.new_version, new.version());
        assert!(RingChange::between(&old, &Ring::new("c", ["b", "a"])).is_none());
        assert!(ch.to_string().contains("added=[d] removed=[b]"));
    }

    #[test]
    fn without_and_single_member() {
        let r = Ring::new("a", ["b"]);
        let w = r.without("b").expect("a left");
        assert_eq!(w.members(), ["a"]);
        assert_eq!(w.owner("anything"), "a");
        assert!(w.without("a").is_none());
        assert!(Ring::from_members(Vec::<String>::new()).is_none());
    }
}
