//! Request bodies and response decoding for the systems the harness drives.
//!
//! Every key gets one pre-serialised *item* at the start of a run: the
//! ringlimit `ValidateRequest` JSON, or a Gubernator `RateLimitReq`. A single
//! check's body is `single_prefix + item + single_suffix`; a batch body is
//! `batch_prefix + item,item,… + batch_suffix`. So building a request is a
//! few memcpys, and the load generator spends its CPU on sending.

use bytes::{BufMut, Bytes, BytesMut};
use hyper::StatusCode;
use ringlimit_protocol::AlgorithmKind;
use ringlimit_protocol::validate::ValidateRequest;
use serde::Deserialize;

use crate::stats::ErrorKind;

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// ringlimit's `/api/v1/validate` and `/api/v1/validate/batch` (also the axum ceiling server).
    Ringlimit,
    /// Gubernator v2's HTTP gateway, `POST /v1/GetRateLimits`.
    Gubernator,
}

/// The answer to one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// Allowed without a limit check (ringlimit's `"fail_open": true`: the
    /// key's owner could not be asked).
    FailOpen,
    Denied,
    Failed(ErrorKind),
}

/// How requests look for one system.
#[derive(Debug, Clone)]
pub struct Wire {
    pub system: System,
    pub single_path: &'static str,
    pub batch_path: &'static str,
    single_prefix: &'static [u8],
    single_suffix: &'static [u8],
    batch_prefix: &'static [u8],
    batch_suffix: &'static [u8],
}

impl Wire {
    pub fn new(system: System) -> Self {
        match system {
            System::Ringlimit => Wire {
                system,
                single_path: "/api/v1/validate",
                batch_path: "/api/v1/validate/batch",
                single_prefix: b"",
                single_suffix: b"",
                batch_prefix: b"{\"checks\":[",
                batch_suffix: b"]}",
            },
            System::Gubernator => Wire {
                system,
                single_path: "/v1/GetRateLimits",
                batch_path: "/v1/GetRateLimits",
                single_prefix: b"{\"requests\":[",
                single_suffix: b"]}",
                batch_prefix: b"{\"requests\":[",
                batch_suffix: b"]}",
            },
        }
    }

    /// Body of a single check.
    pub fn single_body(&self, item: &Bytes) -> Bytes {
        if self.single_prefix.is_empty() && self.single_suffix.is_empty() {
            return item.clone();
        }
        let mut b = BytesMut::with_capacity(
            self.single_prefix.len() + item.len() + self.single_suffix.len(),
        );
        b.put_slice(self.single_prefix);
        b.put_slice(item);
        b.put_slice(self.single_suffix);
        b.freeze()
    }

    /// Body of a batch of checks.
    pub fn batch_body<'a>(&self, items: impl Iterator<Item = &'a Bytes> + Clone) -> Bytes {
        let len: usize = items.clone().map(|i| i.len() + 1).sum();
        let mut b =
            BytesMut::with_capacity(self.batch_prefix.len() + len + self.batch_suffix.len());
        b.put_slice(self.batch_prefix);
        for (n, i) in items.enumerate() {
            if n > 0 {
                b.put_u8(b',');
            }
            b.put_slice(i);
        }
        b.put_slice(self.batch_suffix);
        b.freeze()
    }

    /// Decodes the answer to a single check.
    pub fn single_outcome(&self, status: StatusCode, body: &[u8]) -> Outcome {
        match self.system {
            System::Ringlimit => match status.as_u16() {
                200 if fail_open(body) => Outcome::FailOpen,
                200 => Outcome::Allowed,
                429 => Outcome::Denied,
                s => Outcome::Failed(ErrorKind::Status(s)),
            },
            System::Gubernator => {
                if status != StatusCode::OK {
                    return Outcome::Failed(ErrorKind::Status(status.as_u16()));
                }
                let mut out = [Outcome::Failed(ErrorKind::Parse)];
                match self.batch_outcomes(status, body, &mut out) {
                    Ok(()) => out[0],
                    Err(k) => Outcome::Failed(k),
                }
            }
        }
    }

    /// Decodes the answer to a batch into `out` (one per check, in order).
    /// An error means the whole request failed.
    pub fn batch_outcomes(
        &self,
        status: StatusCode,
        body: &[u8],
        out: &mut [Outcome],
    ) -> Result<(), ErrorKind> {
        if status != StatusCode::OK {
            return Err(ErrorKind::Status(status.as_u16()));
        }
        match self.system {
            System::Ringlimit => {
                let r: RingBatch = serde_json::from_slice(body).map_err(|_| ErrorKind::Parse)?;
                if r.results.len() != out.len() {
                    return Err(ErrorKind::Parse);
                }
                for (o, r) in out.iter_mut().zip(r.results) {
                    *o = match r.status {
                        200 if r.fail_open => Outcome::FailOpen,
                        200 => Outcome::Allowed,
                        429 => Outcome::Denied,
                        s => Outcome::Failed(ErrorKind::CheckStatus(s)),
                    };
                }
            }
            System::Gubernator => {
                let r: GuberBatch = serde_json::from_slice(body).map_err(|_| ErrorKind::Parse)?;
                if r.responses.len() != out.len() {
                    return Err(ErrorKind::Parse);
                }
                for (o, r) in out.iter_mut().zip(r.responses) {
                    *o = if !r.error.is_empty() {
                        Outcome::Failed(ErrorKind::CheckError)
                    } else {
                        match r.status.as_deref() {
                            None | Some("UNDER_LIMIT") => Outcome::Allowed,
                            Some("OVER_LIMIT") => Outcome::Denied,
                            Some(_) => Outcome::Failed(ErrorKind::Parse),
                        }
                    };
                }
            }
        }
        Ok(())
    }
}

/// Only the statuses of a ringlimit batch answer: the rest is skipped unparsed.
#[derive(Deserialize)]
struct RingBatch {
    results: Vec<RingResult>,
}

#[derive(Deserialize)]
struct RingResult {
    status: u16,
    #[serde(default)]
    fail_open: bool,
}

/// Whether a single validate answer is a fail-open one (a search of the
/// body rather than a parse: the run's answers are mostly not).
fn fail_open(body: &[u8]) -> bool {
    const MARK: &[u8] = br#""fail_open":true"#;
    body.windows(MARK.len()).any(|w| w == MARK)
}

#[derive(Deserialize)]
struct GuberBatch {
    #[serde(default)]
    responses: Vec<GuberResult>,
}

#[derive(Deserialize)]
struct GuberResult {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: String,
}

/// The ringlimit item of one key: a `ValidateRequest`.
pub fn ringlimit_item(api_key: &str, cost: u64) -> Bytes {
    let r = ValidateRequest {
        api_key: api_key.to_string(),
        cost: ringlimit_protocol::validate::Cost(cost),
        resource: None,
        client_ip: None,
    };
    match serde_json::to_vec(&r) {
        Ok(v) => Bytes::from(v),
        // A struct of strings and integers always serialises.
        Err(e) => panic!("serialising a ValidateRequest: {e}"),
    }
}

/// Gubernator's algorithm number: 0 token bucket, 1 leaky bucket. Gubernator
/// has no window algorithms; those are driven as token buckets (same limit and
/// duration), which the caller should say.
pub fn gubernator_algorithm(a: AlgorithmKind) -> (u8, bool) {
    match a {
        AlgorithmKind::TokenBucket => (0, true),
        AlgorithmKind::Gcra => (1, true),
        _ => (0, false),
    }
}

/// The Gubernator item of one key: a `RateLimitReq`.
pub fn gubernator_item(
    unique_key: &str,
    cost: u64,
    limit: u64,
    duration_ms: u64,
    algorithm: u8,
    burst: Option<u64>,
) -> Bytes {
    let mut v = serde_json::json!({
        "name": "ringlimit_loadtest",
        "unique_key": unique_key,
        "hits": cost,
        "limit": limit,
        "duration": duration_ms,
        "algorithm": algorithm,
    });
    if let (Some(b), Some(obj)) = (burst, v.as_object_mut()) {
        obj.insert("burst".into(), serde_json::json!(b));
    }
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringlimit_protocol::validate::BatchRequest;

    #[test]
    fn bodies_are_the_protocol_types() {
        let w = Wire::new(System::Ringlimit);
        let a = ringlimit_item("rl_a_secret", 1);
        let b = ringlimit_item("rl_b_secret", 2);
        let single: ValidateRequest = serde_json::from_slice(&w.single_body(&a)).expect("single");
        assert_eq!(single.api_key, "rl_a_secret");
        let batch: BatchRequest =
            serde_json::from_slice(&w.batch_body([&a, &b].into_iter())).expect("batch");
        assert_eq!(batch.checks.len(), 2);
        assert_eq!(batch.checks[1].cost.0, 2);

        let g = Wire::new(System::Gubernator);
        let item = gubernator_item("k1", 1, 100, 60_000, 0, None);
        let v: serde_json::Value = serde_json::from_slice(&g.single_body(&item)).expect("json");
        assert_eq!(v["requests"][0]["unique_key"], "k1");
        assert_eq!(v["requests"][0]["duration"], 60_000);
        let v: serde_json::Value =
            serde_json::from_slice(&g.batch_body([&item, &item].into_iter())).expect("json");
        assert_eq!(v["requests"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn decodes_answers() {
        let w = Wire::new(System::Ringlimit);
        assert_eq!(w.single_outcome(StatusCode::OK, b""), Outcome::Allowed);
        assert_eq!(
            w.single_outcome(
                StatusCode::OK,
                br#"{"allowed":true,"key_id":"a","tier":"free","limits":[],"fail_open":true}"#
            ),
            Outcome::FailOpen
        );
        assert_eq!(
            w.single_outcome(StatusCode::TOO_MANY_REQUESTS, b""),
            Outcome::Denied
        );
        assert_eq!(
            w.single_outcome(StatusCode::UNAUTHORIZED, b""),
            Outcome::Failed(ErrorKind::Status(401))
        );
        let mut out = [Outcome::Allowed; 3];
        let body = br#"{"results":[{"status":200,"allowed":true,"key_id":"a","tier":"free","limits":[]},{"status":429,"allowed":false},{"status":401,"allowed":false}]}"#;
        w.batch_outcomes(StatusCode::OK, body, &mut out)
            .expect("ok");
        assert_eq!(
            out,
            [
                Outcome::Allowed,
                Outcome::Denied,
                Outcome::Failed(ErrorKind::CheckStatus(401))
            ]
        );
        let mut two = [Outcome::Allowed; 2];
        assert_eq!(
            w.batch_outcomes(StatusCode::OK, body, &mut two),
            Err(ErrorKind::Parse)
        );
        assert_eq!(
            w.batch_outcomes(StatusCode::BAD_REQUEST, body, &mut out),
            Err(ErrorKind::Status(400))
        );

        let g = Wire::new(System::Gubernator);
        let body = br#"{"responses":[{"status":"UNDER_LIMIT","limit":"2","remaining":"1","reset_time":"1","error":"","metadata":{}}]}"#;
        assert_eq!(g.single_outcome(StatusCode::OK, body), Outcome::Allowed);
        let body = br#"{"responses":[{"status":"OVER_LIMIT","error":""}]}"#;
        assert_eq!(g.single_outcome(StatusCode::OK, body), Outcome::Denied);
        let body = br#"{"responses":[{"error":"boom"}]}"#;
        assert_eq!(
            g.single_outcome(StatusCode::OK, body),
            Outcome::Failed(ErrorKind::CheckError)
        );
        assert_eq!(
            g.single_outcome(StatusCode::OK, b"nope"),
            Outcome::Failed(ErrorKind::Parse)
        );
    }
}
