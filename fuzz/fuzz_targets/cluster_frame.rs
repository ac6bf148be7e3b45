//! Cluster payloads as a node decodes them (node/src/cluster/wire.rs: the
//! frame check, then MessagePack into each payload type), plus the abuse
//! rules an admin event carries as JSON. Nothing panics, and every payload
//! that decodes survives an encode/decode round trip with named fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlimit_actors::pipeline::AbuseRule;
use ringlimit_protocol::cluster::{
    AdminEvent, Ack, ForwardBatch, ForwardReply, Handoff, Heartbeat, Hello, Leave,
    MAX_FRAME_BYTES, check_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn decode<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(b: &[u8]) -> Option<T> {
    let v: T = rmp_serde::from_slice(b).ok()?;
    let named = rmp_serde::to_vec_named(&v).expect("a decoded payload encodes");
    assert!(check_frame(&named, usize::MAX).is_ok());
    let back: T = rmp_serde::from_slice(&named).expect("an encoded payload decodes");
    assert_eq!(back, v);
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    if check_frame(data, MAX_FRAME_BYTES).is_err() {
        return;
    }
    let _ = decode::<Hello>(data);
    let _ = decode::<Heartbeat>(data);
    let _ = decode::<Leave>(data);
    let _ = decode::<Ack>(data);
    let _ = decode::<ForwardBatch>(data);
    let _ = decode::<ForwardReply>(data);
    let _ = decode::<Handoff>(data);
    if let Some(AdminEvent::AbuseRulesChanged { rules }) = decode::<AdminEvent>(data)
        && let Ok(rules) = serde_json::from_str::<Vec<AbuseRule>>(&rules)
    {
        for r in &rules {
            let _ = r.validate();
        }
    }
});
