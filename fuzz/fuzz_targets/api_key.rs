//! `protocol::apikey::parse` on any string: never panics, and what it
//! accepts is exactly a well-formed key that `format` gives back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlimit_protocol::apikey::{self, KEY_ID_LEN, MAX_API_KEY_LEN, SECRET_LEN};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = apikey::is_key_id(&s);
    if let Some((id, secret)) = apikey::parse(&s) {
        assert_eq!(s.len(), MAX_API_KEY_LEN);
        assert_eq!(id.len(), KEY_ID_LEN);
        assert_eq!(secret.len(), SECRET_LEN);
        assert!(apikey::is_key_id(id));
        assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(apikey::format(id, secret), s);
    }
});
