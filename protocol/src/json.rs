//! The data plane's answers written as JSON by hand, into a caller's buffer.
//!
//! A validate answer is written on every check, a batch answer carries up
//! to a thousand of them, and going through serde's generic machinery
//! (`#[serde(flatten)]` in particular, which buffers every field of a
//! [`BatchResult`] as a map entry) cost more than the check itself. These
//! writers know the fields: they write the same bytes `serde_json` writes
//! for the same value — same field order, same fields skipped, same string
//! escapes — which the tests check against `serde_json` on generated values.

use crate::validate::{BatchResponse, BatchResult, LimitStatus, ValidateResponse};

/// Appends `s` as a JSON string, escaped the way `serde_json` escapes it:
/// `"` and `\` with a backslash, the control characters below U+0020 as
/// `\b \t \n \f \r` or `\u00XX`; everything else (non-ASCII too) as is.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_limit(out: &mut Vec<u8>, l: &LimitStatus) {
    out.extend_from_slice(b"{\"name\":");
    push_str(out, &l.name);
    out.extend_from_slice(b",\"limit\":");
    push_u64(out, l.limit);
    out.extend_from_slice(b",\"remaining\":");
    push_u64(out, l.remaining);
    out.extend_from_slice(b",\"reset_after_ms\":");
    push_u64(out, l.reset_after_ms);
    out.extend_from_slice(b",\"window_ms\":");
    push_u64(out, l.window_ms);
    out.push(b'}');
}

/// The fields of a [`ValidateResponse`], without the braces around them.
fn push_fields(out: &mut Vec<u8>, r: &ValidateResponse) {
    out.extend_from_slice(if r.allowed {
        b"\"allowed\":true,\"key_id\":"
    } else {
        b"\"allowed\":false,\"key_id\":"
    });
    push_opt_str(out, r.key_id.as_deref());
    out.extend_from_slice(b",\"tier\":");
    push_opt_str(out, r.tier.as_deref());
    out.extend_from_slice(b",\"limits\":[");
    for (i, l) in r.limits.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_limit(out, l);
    }
    out.push(b']');
    if let Some(ms) = r.retry_after_ms {
        out.extend_from_slice(b",\"retry_after_ms\":");
        push_u64(out, ms);
    }
    if let Some(d) = &r.denied_by {
        out.extend_from_slice(b",\"denied_by\":");
        push_str(out, d);
    }
    if let Some(e) = &r.error {
        out.extend_from_slice(b",\"error\":{\"code\":");
        push_str(out, e.code.as_str());
        out.extend_from_slice(b",\"message\":");
        push_str(out, &e.message);
        out.push(b'}');
    }
    if let Some(ms) = r.suspended_until_ms {
        out.extend_from_slice(b",\"suspended_until_ms\":");
        push_u64(out, ms);
    }
    if r.fail_open {
        out.extend_from_slice(b",\"fail_open\":true");
    }
}

/// Appends a validate answer's body.
pub fn write_validate(out: &mut Vec<u8>, r: &ValidateResponse) {
    out.push(b'{');
    push_fields(out, r);
    out.push(b'}');
}

/// Appends one result of a batch: `status`, then the answer's fields.
pub fn write_batch_result(out: &mut Vec<u8>, r: &BatchResult) {
    out.extend_from_slice(b"{\"status\":");
    push_u64(out, u64::from(r.status));
    out.push(b',');
    push_fields(out, &r.body);
    out.push(b'}');
}

/// Appends a batch answer's body.
pub fn write_batch(out: &mut Vec<u8>, r: &BatchResponse) {
    out.extend_from_slice(b"{\"results\":[");
    for (i, res) in r.results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_batch_result(out, res);
    }
    out.extend_from_slice(b"]}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, ErrorDetail};
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Every escape class: quotes, backslashes, control characters,
        // non-ASCII, and plain names.
        prop_oneof![
            "[a-z0-9_-]{0,24}",
            any::<String>(),
            "[\"\\\\\u{0}-\u{1f}\u{7f}é€😀a]{0,12}",
        ]
    }

    fn limit() -> impl Strategy<Value = LimitStatus> {
        (
            text(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(name, limit, remaining, reset_after_ms, window_ms)| LimitStatus {
                    name: name.into(),
                    limit,
                    remaining,
                    reset_after_ms,
                    window_ms,
                },
            )
    }

    prop_compose! {
        fn response()(
            allowed in any::<bool>(),
            key_id in proptest::option::of(text()),
            tier in proptest::option::of(text()),
            limits in proptest::collection::vec(limit(), 0..4),
            retry_after_ms in proptest::option::of(any::<u64>()),
            denied_by in proptest::option::of(text()),
            error in proptest::option::of((0usize..4, text())),
            suspended_until_ms in proptest::option::of(any::<u64>()),
            fail_open in any::<bool>(),
        ) -> ValidateResponse {
            let codes = [ErrorCode::RateLimited, ErrorCode::Unauthorized, ErrorCode::Suspended, ErrorCode::Unavailable];
            ValidateResponse {
                allowed,
                key_id: key_id.map(Into::into),
                tier: tier.map(Into::into),
                limits,
                retry_after_ms,
                denied_by: denied_by.map(Into::into),
                error: error.map(|(c, message)| ErrorDetail { code: codes[c], message }),
                suspended_until_ms,
                fail_open,
            }
        }
    }

    proptest! {
        #[test]
        fn a_validate_answer_is_written_as_serde_json_writes_it(r in response()) {
            let mut out = Vec::new();
            write_validate(&mut out, &r);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&r).unwrap());
        }

        #[test]
        fn a_batch_answer_is_written_as_serde_json_writes_it(
            results in proptest::collection::vec((any::<u16>(), response()), 0..5)
        ) {
            let r = BatchResponse {
                results: results.into_iter().map(|(status, body)| BatchResult { status, body }).collect(),
            };
            let mut out = Vec::new();
            write_batch(&mut out, &r);
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&r).unwrap());
        }
    }

    #[test]
    fn numbers_are_written_whole() {
        for n in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
