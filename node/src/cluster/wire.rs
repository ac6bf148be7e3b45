//! MessagePack encoding of the cluster payloads of
//! [`ringlimit_protocol::cluster`]: named fields, a cheap frame check before
//! decoding, and errors as values.

use ringlimit_protocol::cluster::{FrameError, MAX_FRAME_BYTES, check_frame};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("bad cluster frame: {0}")]
    Frame(#[from] FrameError),
    #[error("cannot decode cluster payload: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cannot encode cluster payload: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cluster payload of {len} bytes is over the cap of {max}")]
    TooLarge { len: usize, max: usize },
}

/// Encodes a payload with named fields; refuses one over [`MAX_FRAME_BYTES`].
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    let b = rmp_serde::to_vec_named(v)?;
    if b.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            len: b.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(b)
}

/// Checks the frame, then decodes it.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    check_frame(b, MAX_FRAME_BYTES)?;
    Ok(rmp_serde::from_slice(b)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlimit_protocol::cluster::{AdminEvent, Leave};

    #[test]
    fn round_trip_and_errors() {
        let l = Leave {
            from: "a".into(),
            incarnation: 3,
        };
        let b = encode(&l).expect("encode");
        assert_eq!(decode::<Leave>(&b).expect("decode"), l);
        assert!(matches!(
            decode::<Leave>(&[]),
            Err(WireError::Frame(FrameError::Empty))
        ));
        assert!(matches!(
            decode::<Leave>(&[1, 2, 3]),
            Err(WireError::Frame(_))
        ));
        assert!(matches!(
            decode::<Leave>(&b[..b.len() - 1]),
            Err(WireError::Decode(_))
        ));
        let big = AdminEvent::AbuseRulesChanged {
            rules: "x".repeat(MAX_FRAME_BYTES),
        };
        assert!(matches!(encode(&big), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn every_admin_event_crosses_the_wire() {
        // A block-list change used to be encoded as a bare string, which
        // `decode` refused before parsing: no peer ever reloaded its blocks.
        for ev in [
            AdminEvent::KeyChanged { key_id: "k".into() },
            AdminEvent::TierChanged { name: "pro".into() },
            AdminEvent::BlocksChanged {},
            AdminEvent::AbuseRulesChanged { rules: "[]".into() },
        ] {
            let b = encode(&ev).expect("encode");
            assert_eq!(decode::<AdminEvent>(&b).expect("decode"), ev);
        }
    }
}
