//! Messages between nodes of a cluster.
//!
//! Every payload that crosses the cluster connection is one of these plain
//! serde types, encoded as MessagePack with named fields
//! (`rmp_serde::to_vec_named`), so a field added later with
//! `#[serde(default)]` does not break a node of the previous version.
//! Encoding and decoding live with the transport (`node/src/cluster/wire.rs`);
//! this module holds the types and [`check_frame`], a cheap look at a buffer
//! before anyone parses it (the idea of mini-redis's `Frame::check`).
//!
//! | payload | direction | reply |
//! |---|---|---|
//! | [`Hello`] | identify RPC, both ways | [`Hello`] |
//! | [`Heartbeat`] | cast, every heartbeat interval | — |
//! | [`Leave`] | RPC on a graceful leave | [`Ack`] |
//! | [`ForwardBatch`] | RPC to a key's owner | [`ForwardReply`], one outcome per check, in order |
//! | [`AdminEvent`] | RPC broadcast to every live peer | [`Ack`] |
//! | [`Handoff`] | RPC to a member that gained keys | [`Ack`] |

use crate::validate::ValidateOutcome;
use serde::{Deserialize, Serialize};

/// Largest cluster payload a node accepts. Below ractor_cluster's own 16 MiB
/// frame limit (a bigger frame there drops the whole session), so a
/// too-large payload is refused as a value instead.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Why a buffer was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// No bytes at all.
    Empty,
    /// More than the cap.
    TooLarge { len: usize, max: usize },
    /// The first byte is not a MessagePack map, which every payload here is
    /// (structs are encoded with named fields, enums externally tagged).
    NotAMap { first_byte: u8 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Empty => f.write_str("empty cluster frame"),
            FrameError::TooLarge { len, max } => {
                write!(f, "cluster frame of {len} bytes is over the cap of {max}")
            }
            FrameError::NotAMap { first_byte } => {
                write!(
                    f,
                    "cluster frame does not start with a MessagePack map (first byte 0x{first_byte:02x})"
                )
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Checks a buffer cheaply (length and first byte) before it is decoded.
pub fn check_frame(buf: &[u8], max: usize) -> Result<(), FrameError> {
    let Some(&first) = buf.first() else {
        return Err(FrameError::Empty);
    };
    if buf.len() > max {
        return Err(FrameError::TooLarge {
            len: buf.len(),
            max,
        });
    }
    // fixmap 0x80..=0x8f, map16 0xde, map32 0xdf.
    if (0x80..=0x8f).contains(&first) || first == 0xde || first == 0xdf {
        Ok(())
    } else {
        Err(FrameError::NotAMap { first_byte: first })
    }
}

/// Who a node is: its configured name, the address peers dial to reach it,
/// and its incarnation (a number that grows with every process start, so a
/// restarted node is told apart from a stale copy of its previous life).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub name: String,
    pub addr: String,
    pub incarnation: u64,
}

/// A peer's configured name and cluster address, as gossiped in heartbeats
/// so a node that was given only one seed finds the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddr {
    pub name: String,
    pub addr: String,
}

/// A node's liveness and view, pulled by every peer every heartbeat
/// interval through the session to that node (so it is always the session's
/// authenticated peer that answers, never a claim in a payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub from: String,
    pub incarnation: u64,
    /// The sender's ring members (sorted), for logging disagreements.
    pub members: Vec<String>,
    pub ring_version: u64,
    /// The sender's cluster address.
    #[serde(default)]
    pub addr: String,
    /// Peers the sender knows, with their addresses.
    #[serde(default)]
    pub peers: Vec<PeerAddr>,
    /// The sender is leaving the cluster (a graceful leave).
    #[serde(default)]
    pub leaving: bool,
}

/// A graceful leave's nudge: the receiver asks the named node itself (its
/// [`Heartbeat`] through that node's own session) and drops it from the ring
/// once it answers that it is leaving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leave {
    pub from: String,
    pub incarnation: u64,
}

/// An acknowledgement with an optional error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One check forwarded to the key's owner. The secret never leaves the node
/// that received it: only its SHA-256 is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardCheck {
    /// Correlation id chosen by the sender (for tracing; answers are positional).
    pub id: u64,
    pub key_id: String,
    pub secret_hash: [u8; 32],
    pub cost: u64,
    /// The sender's clock when the request arrived, µs since the Unix epoch.
    pub now_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
}

/// Checks for one owner, sent together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardBatch {
    pub from: String,
    /// The sender's ring version when it routed these checks.
    pub ring_version: u64,
    pub checks: Vec<ForwardCheck>,
}

/// The owner's answer to one forwarded check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardOutcome {
    /// The owner decided.
    Decided(ValidateOutcome),
    /// The receiver does not own the key by its ring (of this version); the
    /// sender re-routes once with its own, possibly newer, ring.
    NotOwner { ring_version: u64 },
}

/// One outcome per check of a [`ForwardBatch`], in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardReply {
    pub results: Vec<ForwardOutcome>,
}

/// An admin change that every node must apply (cache invalidation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminEvent {
    /// A key was created, rotated, revoked or updated.
    KeyChanged { key_id: String },
    /// A tier's limits changed.
    TierChanged { name: String },
    /// The IP block list changed (re-read it from the store). A struct
    /// variant with no fields, not a unit variant: MessagePack writes a unit
    /// variant as a bare string, which [`check_frame`] refuses (every
    /// payload is a map), so the event never reached a peer.
    BlocksChanged {},
    /// The abuse rules changed; `rules` is their JSON.
    AbuseRulesChanged { rules: String },
}

/// A handoff marker: the sender has flushed, to the shared snapshot store,
/// the state of every key it handed over to the receiver (counter state never
/// travels in messages), and stopped answering for those keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub from: String,
    pub ring_version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{Checked, LimitStatus};
    use serde::de::DeserializeOwned;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
        let bytes = rmp_serde::to_vec_named(v).expect("encode");
        check_frame(&bytes, MAX_FRAME_BYTES).expect("every payload is a map");
        let back: T = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(&back, v);
    }

    fn check(i: u64) -> ForwardCheck {
        ForwardCheck {
            id: i,
            key_id: format!("key-{i}"),
            secret_hash: [i as u8; 32],
            cost: i + 1,
            now_us: 1_700_000_000_000_000 + i,
            resource: i.is_multiple_of(2).then(|| "/r".to_string()),
            client_ip: None,
        }
    }

    fn denied() -> ValidateOutcome {
        ValidateOutcome::Denied(Checked {
            key_id: "k".into(),
            tier: "free".into(),
            limits: vec![LimitStatus {
                name: "per-minute".into(),
                limit: 100,
                remaining: 0,
                reset_after_ms: 17,
                window_ms: 60_000,
            }],
            retry_after_ms: Some(17),
            denied_by: Some("per-minute".into()),
        })
    }

    #[test]
    fn every_payload_round_trips() {
        round_trip(&Hello {
            name: "a".into(),
            addr: "127.0.0.1:7000".into(),
            incarnation: 7,
        });
        round_trip(&Heartbeat {
            from: "a".into(),
            incarnation: 3,
            members: vec!["a".into(), "b".into()],
            ring_version: u64::MAX,
            addr: "127.0.0.1:7000".into(),
            peers: vec![PeerAddr {
                name: "b".into(),
                addr: "127.0.0.1:7001".into(),
            }],
            leaving: true,
        });
        round_trip(&Leave {
            from: "a".into(),
            incarnation: 1,
        });
        round_trip(&Ack {
            ok: true,
            error: None,
        });
        round_trip(&Ack {
            ok: false,
            error: Some("no".into()),
        });
        round_trip(&check(1));
        round_trip(&ForwardBatch {
            from: "a".into(),
            ring_version: 42,
            checks: (0..5).map(check).collect(),
        });
        round_trip(&ForwardOutcome::Decided(denied()));
        round_trip(&ForwardOutcome::NotOwner { ring_version: 9 });
        round_trip(&ForwardReply {
            results: vec![
                ForwardOutcome::Decided(denied()),
                ForwardOutcome::Decided(ValidateOutcome::Unauthorized),
                ForwardOutcome::NotOwner { ring_version: 1 },
            ],
        });
        round_trip(&AdminEvent::KeyChanged {
            key_id: "k1".into(),
        });
        round_trip(&AdminEvent::TierChanged { name: "pro".into() });
        round_trip(&AdminEvent::BlocksChanged {});
        round_trip(&AdminEvent::AbuseRulesChanged { rules: "[]".into() });
        round_trip(&Handoff {
            from: "a".into(),
            ring_version: 5,
        });
    }

    #[test]
    fn every_admin_event_passes_the_frame_check() {
        // Found by the cluster_frame fuzzer: `BlocksChanged` was a unit
        // variant, encoded as the string "BlocksChanged", and every receiver
        // refused it as not a map.
        for ev in [
            AdminEvent::KeyChanged { key_id: "k".into() },
            AdminEvent::TierChanged { name: "t".into() },
            AdminEvent::BlocksChanged {},
            AdminEvent::AbuseRulesChanged { rules: "[]".into() },
        ] {
            let bytes = rmp_serde::to_vec_named(&ev).expect("encode");
            assert_eq!(check_frame(&bytes, MAX_FRAME_BYTES), Ok(()), "{ev:?}");
        }
    }

    #[test]
    fn an_older_heartbeat_without_gossip_fields_still_decodes() {
        #[derive(Serialize)]
        struct OldHeartbeat {
            from: String,
            incarnation: u64,
            members: Vec<String>,
            ring_version: u64,
        }
        let old = OldHeartbeat {
            from: "a".into(),
            incarnation: 1,
            members: vec!["a".into()],
            ring_version: 2,
        };
        let bytes = rmp_serde::to_vec_named(&old).expect("encode");
        let hb: Heartbeat = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(hb.addr, "");
        assert!(hb.peers.is_empty());
    }

    #[test]
    fn frame_check_refuses_cheaply() {
        assert_eq!(check_frame(&[], 10), Err(FrameError::Empty));
        assert_eq!(
            check_frame(&[0x80; 11], 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(
            check_frame(&[0x01, 0x02], 10),
            Err(FrameError::NotAMap { first_byte: 0x01 })
        );
        assert_eq!(
            check_frame(&[0x93, 1, 2, 3], 10),
            Err(FrameError::NotAMap { first_byte: 0x93 })
        );
        assert!(check_frame(&[0x80], 10).is_ok());
        assert!(check_frame(&[0xde, 0, 0], 10).is_ok());
        assert!(check_frame(&[0xdf, 0, 0, 0, 0], 10).is_ok());
        assert!(
            !FrameError::TooLarge { len: 11, max: 10 }
                .to_string()
                .is_empty()
        );
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_panics() {
        let bytes = rmp_serde::to_vec_named(&ForwardBatch {
            from: "a".into(),
            ring_version: 1,
            checks: (0..3).map(check).collect(),
        })
        .expect("encode");
        for cut in 0..bytes.len() {
            assert!(
                rmp_serde::from_slice::<ForwardBatch>(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // A valid map of the wrong type.
        let hb = rmp_serde::to_vec_named(&Leave {
            from: "a".into(),
            incarnation: 1,
        })
        .expect("encode");
        assert!(rmp_serde::from_slice::<ForwardBatch>(&hb).is_err());
        // Random bytes.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2_000 {
            let mut buf = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = rmp_serde::from_slice::<ForwardBatch>(&buf);
            let _ = rmp_serde::from_slice::<Heartbeat>(&buf);
            let _ = rmp_serde::from_slice::<ForwardReply>(&buf);
        }
    }
}
