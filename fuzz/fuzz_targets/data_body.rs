//! The data plane's bodies (`/api/v1/validate`, `/api/v1/validate/batch`)
//! as the node parses them: JSON into the protocol types, then the api_key
//! split. Both bodies are read from the same bytes. Decoding never panics,
//! the field-path re-parse the node does on failure agrees with the plain
//! one, and whatever decodes survives a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlimit_protocol::apikey;
use ringlimit_protocol::validate::{BatchRequest, MAX_COST, ValidateRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn body<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) -> Option<T> {
    let plain = serde_json::from_slice::<T>(data);
    let de = &mut serde_json::Deserializer::from_slice(data);
    // The node's second pass (node/src/http/extract.rs): field paths, then
    // trailing characters.
    let pathed = serde_path_to_error::deserialize::<_, T>(&mut *de)
        .ok()
        .filter(|_| de.end().is_ok());
    match (&plain, &pathed) {
        (Ok(a), Some(b)) => assert_eq!(a, b),
        (Err(_), None) => {}
        _ => panic!("plain {plain:?} and field-path parse {pathed:?} disagree"),
    }
    let v = plain.ok()?;
    let json = serde_json::to_vec(&v).expect("a decoded body encodes");
    let back: T = serde_json::from_slice(&json).expect("an encoded body decodes");
    assert_eq!(back, v);
    Some(v)
}

fn check(r: &ValidateRequest) {
    assert!((1..=MAX_COST).contains(&r.cost.0), "cost {}", r.cost.0);
    let _ = apikey::parse(&r.api_key);
    if let Some(ip) = &r.client_ip {
        let _ = ip.parse::<std::net::IpAddr>();
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(r) = body::<ValidateRequest>(data) {
        check(&r);
    }
    if let Some(b) = body::<BatchRequest>(data) {
        b.checks.iter().for_each(check);
    }
});
