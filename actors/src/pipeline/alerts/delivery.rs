//! Webhook delivery: the HTTP poster the node implements, signatures,
//! payloads, and retries with back-off and jitter.

use super::{DeliveryPolicy, WebhookFormat};
use crate::keys::KeyRecord;
use async_trait::async_trait;
use ringlimit_protocol::pipeline::Alert;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// Why one HTTP POST got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// No answer within the timeout.
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The connection could not be made.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Any other failure of the request (its description).
    #[error("{0}")]
    Other(String),
}

/// Sends one HTTP POST (implemented by the node with its HTTP client).
#[async_trait]
pub trait HttpPoster: Send + Sync + 'static {
    /// The status code, or an error (transport, timeout).
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<u16, PostError>;
}
/// The poster of a node (or test) without webhooks: every POST fails, so an
/// alert that has somewhere to go is dead-lettered, never lost silently.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWebhooks;

#[async_trait]
impl HttpPoster for NoWebhooks {
    async fn post(
        &self,
        _: &str,
        _: &[(&'static str, String)],
        _: Vec<u8>,
        _: Duration,
    ) -> Result<u16, PostError> {
        Err(PostError::Other("webhooks are disabled".into()))
    }
}

/// The key owner's webhook from the key's metadata.
pub fn owner_webhook(key: &KeyRecord) -> Option<(String, Option<String>)> {
    let url = key.metadata.get("webhook_url")?.as_str()?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return None;
    }
    let secret = key
        .metadata
        .get("webhook_secret")
        .and_then(|s| s.as_str())
        .map(str::to_owned);
    Some((url.to_owned(), secret))
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const B: usize = 64;
    let mut k = [0u8; B];
    if key.len() > B {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; B];
    let mut opad = [0x5cu8; B];
    for i in 0..B {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// The signature header's value for `body` sent at `t` (unix seconds).
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let mut msg = Vec::with_capacity(body.len() + 12);
    msg.extend_from_slice(t.to_string().as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    format!(
        "t={t},v1={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &msg))
    )
}

/// The body sent for `alert` in `format`.
pub fn render(alert: &Alert, format: WebhookFormat) -> Result<Vec<u8>, serde_json::Error> {
    let v = match format {
        WebhookFormat::Generic => serde_json::json!({ "type": "ringlimit.alert", "alert": alert }),
        WebhookFormat::Slack => {
            let text = format!(
                "[{}] {}: {}",
                alert.severity.to_uppercase(),
                alert.kind,
                alert.message
            );
            serde_json::json!({
                "text": text,
                "blocks": [
                    { "type": "section", "text": { "type": "mrkdwn", "text": format!("*{}* `{}`\n{}", alert.severity.to_uppercase(), alert.kind, alert.message) } },
                    { "type": "context", "elements": [ { "type": "mrkdwn", "text": format!("alert `{}`{}", alert.id, alert.key_id.as_deref().map(|k| format!(" · key `{k}`")).unwrap_or_default()) } ] }
                ]
            })
        }
    };
    serde_json::to_vec(&v)
}

fn unix_s() -> u64 {
    crate::clock::wall_ms() / 1_000
}

fn jitter_seed(id: &str, attempt: u32) -> u64 {
    // The sub-second part of the wall clock, in ns (µs resolution).
    let nanos = (crate::clock::wall_us() % 1_000_000) as u32 * 1_000;
    let h = Sha256::new()
        .chain_update(id.as_bytes())
        .chain_update(attempt.to_le_bytes())
        .chain_update(nanos.to_le_bytes())
        .finalize();
    u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]))
}

/// Posts `body` to `url` until a 2xx answer or `max_attempts` attempts.
/// `Ok(attempts)` or `Err((attempts, last error))`.
pub async fn deliver(
    poster: &dyn HttpPoster,
    policy: &DeliveryPolicy,
    url: &str,
    secret: Option<&str>,
    alert_id: &str,
    body: &[u8],
) -> Result<u32, (u32, String)> {
    let mut last = String::new();
    let attempts = policy.max_attempts.max(1);
    for n in 1..=attempts {
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("x-ringlimit-alert-id", alert_id.to_string()),
            ("x-ringlimit-attempt", n.to_string()),
        ];
        if let Some(s) = secret {
            headers.push(("x-ringlimit-signature", signature(s, unix_s(), body)));
        }
        match poster
            .post(url, &headers, body.to_vec(), policy.timeout)
            .await
        {
            Ok(code) if (200..300).contains(&code) => {
                metrics::counter!("ringlimit_webhook_deliveries_total", "result" => "delivered")
                    .increment(1);
                return Ok(n);
            }
            Ok(code) => last = format!("answered HTTP {code}"),
            Err(e) => last = e.to_string(),
        }
        metrics::counter!("ringlimit_webhook_attempt_failures_total").increment(1);
        // Only the origin: a webhook's path or query often holds its token.
        tracing::debug!(url = %crate::redact::origin(url), alert_id, attempt = n, error = %last, "webhook attempt failed");
        if n < attempts {
            tokio::time::sleep(policy.backoff(n, jitter_seed(alert_id, n))).await;
        }
    }
    metrics::counter!("ringlimit_webhook_deliveries_total", "result" => "dead_lettered")
        .increment(1);
    Err((attempts, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlimit_protocol::pipeline::DeliveryState;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Case 6: a key longer than the block size is hashed first.
        let key = [0xaau8; 131];
        assert_eq!(
            hex::encode(hmac_sha256(
                &key,
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = DeliveryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1_000),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(p.backoff(1, 0), Duration::from_millis(50));
        assert_eq!(p.backoff(1, 50), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 0), Duration::from_millis(100));
        assert_eq!(p.backoff(3, 0), Duration::from_millis(200));
        assert_eq!(
            p.backoff(9, u64::MAX),
            Duration::from_millis(500 + (u64::MAX % 501))
        );
        assert!(p.backoff(30, 7) <= Duration::from_millis(1_000));
    }

    struct Flaky {
        fail_first: u32,
        calls: std::sync::atomic::AtomicU32,
    }

    #[async_trait]
    impl HttpPoster for Flaky {
        async fn post(
            &self,
            _: &str,
            h: &[(&'static str, String)],
            _: Vec<u8>,
            _: Duration,
        ) -> Result<u16, PostError> {
            assert!(h.iter().any(|(k, _)| *k == "x-ringlimit-signature"));
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(if n < self.fail_first { 500 } else { 200 })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_or_gives_up() {
        let p = DeliveryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
        };
        let f = Flaky {
            fail_first: 3,
            calls: 0.into(),
        };
        assert_eq!(
            deliver(&f, &p, "http://x", Some("s"), "a", b"{}").await,
            Ok(4)
        );
        let f = Flaky {
            fail_first: 9,
            calls: 0.into(),
        };
        let e = deliver(&f, &p, "http://x", Some("s"), "a", b"{}")
            .await
            .unwrap_err();
        assert_eq!(e.0, 4);
        assert!(e.1.contains("500"), "{}", e.1);
    }

    #[test]
    fn payloads_in_both_formats() {
        let a = Alert {
            id: "a1".into(),
            raised_at_ms: 5,
            key_id: Some("k1".into()),
            kind: "overage".into(),
            severity: "warning".into(),
            message: "key k1 crossed".into(),
            details: serde_json::json!({"units": 3}),
            delivery: DeliveryState::Pending,
            attempts: 0,
            last_attempt_at_ms: None,
        };
        let g: serde_json::Value =
            serde_json::from_slice(&render(&a, WebhookFormat::Generic).expect("renders")).unwrap();
        assert_eq!(g["type"], "ringlimit.alert");
        assert_eq!(g["alert"]["details"]["units"], 3);
        let s: serde_json::Value =
            serde_json::from_slice(&render(&a, WebhookFormat::Slack).expect("renders")).unwrap();
        assert_eq!(s["text"], "[WARNING] overage: key k1 crossed");
        assert!(
            s["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .contains("key k1 crossed")
        );
    }

    #[test]
    fn signature_verifies_with_the_shared_secret() {
        let s = signature("k", 1_700_000_000, b"{\"a\":1}");
        let (t, v1) = s.split_once(",v1=").unwrap();
        assert_eq!(t, "t=1700000000");
        assert_eq!(v1, hex::encode(hmac_sha256(b"k", b"1700000000.{\"a\":1}")));
    }
}
