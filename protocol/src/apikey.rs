//! The api_key format: `rl_<key_id>_<secret>`.
//!
//! The key_id travels in clear so any node can route a check to the key's
//! owner without a lookup; a rotation keeps the key_id and changes the secret.
//! key_ids are 20 characters of `[a-z0-9]`; secrets 43 characters of
//! `[A-Za-z0-9]` (about 256 bits).

/// The prefix every api_key starts with.
pub const PREFIX: &str = "rl_";
/// Length of a key_id.
pub const KEY_ID_LEN: usize = 20;
/// Length of a secret.
pub const SECRET_LEN: usize = 43;
/// Longest api_key accepted by parsers before any work is done.
pub const MAX_API_KEY_LEN: usize = PREFIX.len() + KEY_ID_LEN + 1 + SECRET_LEN;

/// Whether `s` is a well-formed key_id.
pub fn is_key_id(s: &str) -> bool {
    s.len() == KEY_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Splits an api_key into `(key_id, secret)`; `None` when malformed.
pub fn parse(api_key: &str) -> Option<(&str, &str)> {
    // Only ASCII is ever valid, and only ASCII may be split by byte offset:
    // a multi-byte character straddling an offset would panic.
    if api_key.len() != MAX_API_KEY_LEN || !api_key.is_ascii() {
        return None;
    }
    let rest = api_key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(KEY_ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    if !is_key_id(id) || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some((id, secret))
}

/// Builds an api_key from its parts.
pub fn format(key_id: &str, secret: &str) -> String {
    format!("{PREFIX}{key_id}_{secret}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_byte_character_anywhere_is_malformed_never_a_panic() {
        let id = "abcdefghij0123456789";
        let good = format(id, &"A".repeat(SECRET_LEN));
        assert!(parse(&good).is_some());
        for ch in ['é', '€', '𝄞'] {
            let w = ch.len_utf8();
            // Replace the bytes at every position with the character (the
            // string keeps its byte length, so only the check on characters
            // stands between it and a split inside the character).
            for at in 0..=good.len() - w {
                if !good.is_char_boundary(at) {
                    continue;
                }
                let k = format!("{}{}{}", &good[..at], ch, &good[at + w..]);
                assert_eq!(k.len(), good.len());
                assert_eq!(parse(&k), None, "{ch} at byte {at}");
            }
        }
        // The reviewer's key: 19 letters, then 'é' straddling byte 20.
        let k = format!("rl_{}é_{}", "a".repeat(19), "A".repeat(42));
        assert_eq!(k.len(), 67);
        assert_eq!(parse(&k), None);
    }

    #[test]
    fn round_trip() {
        let id = "abcdefghij0123456789";
        let secret = "A".repeat(SECRET_LEN);
        let k = format(id, &secret);
        assert_eq!(parse(&k), Some((id, secret.as_str())));
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("rl_short_x"), None);
        let id = "ABCDEFGHIJ0123456789";
        assert_eq!(parse(&format(id, &"A".repeat(SECRET_LEN))), None);
        let id = "abcdefghij0123456789";
        assert_eq!(parse(&format(id, &"_".repeat(SECRET_LEN))), None);
        assert_eq!(parse(&"x".repeat(10_000)), None);
    }
}
