//! The keys of a run: created through the admin API before the load starts,
//! deleted afterwards with `--cleanup`.

use crate::http::{Conn, HttpError, Target};
use bytes::Bytes;
use hyper::Method;
use ringlimit_protocol::LimitSpec;
use ringlimit_protocol::admin::{CreateKeyRequest, KeyWithSecret, Metadata};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// One key of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunKey {
    /// The admin id (empty for keys the harness made up).
    pub key_id: String,
    /// What goes into a check: the api_key, or Gubernator's unique_key.
    pub secret: String,
}

/// How to reach the admin plane.
#[derive(Debug, Clone)]
pub struct Admin {
    pub target: Target,
    pub token: String,
    pub timeout: Duration,
    pub concurrency: usize,
}

async fn with_retries<T, F, Fut>(
    admin: &Admin,
    conn: &mut Option<Conn>,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut(Conn) -> Fut,
    Fut: std::future::Future<Output = (Conn, Result<T, String>)>,
{
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
        }
        let c = match conn.take() {
            Some(c) if c.is_open() => c,
            _ => match Conn::connect(&admin.target, admin.timeout).await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("admin {}: {e}", admin.target.url);
                    continue;
                }
            },
        };
        let (c, r) = f(c).await;
        match r {
            Ok(v) => {
                *conn = Some(c);
                return Ok(v);
            }
            Err(e) if e.starts_with("retry:") => last = e.trim_start_matches("retry:").to_string(),
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Creates `n` keys carrying `limit`, `concurrency` at a time. Stops at the first key that cannot be made.
pub async fn create_keys(
    admin: &Admin,
    n: usize,
    tier: &str,
    limit: &LimitSpec,
    run_tag: &str,
    progress: bool,
) -> Result<Vec<RunKey>, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut metadata = Metadata::new();
    metadata.insert(
        "loadtest_run".into(),
        serde_json::Value::String(run_tag.to_string()),
    );
    let body = CreateKeyRequest {
        owner: format!("loadtest-{run_tag}"),
        tier: tier.to_string(),
        limits: Some(vec![limit.clone()]),
        metadata: Some(metadata),
    };
    let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    let started = std::time::Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..admin.concurrency.clamp(1, n.max(1)) {
        let (admin, next, failed, body, done) = (
            admin.clone(),
            next.clone(),
            failed.clone(),
            body.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.load(Ordering::Relaxed) {
                    return Ok(made);
                }
                let path = admin.target.path("/api/v1/keys");
                let r = with_retries(&admin, &mut conn, |mut c| {
                    let (path, body, token, timeout) = (
                        path.clone(),
                        body.clone(),
                        admin.token.clone(),
                        admin.timeout,
                    );
                    async move {
                        let r = c
                            .send_timeout(timeout, Method::POST, &path, Some(&token), body)
                            .await;
                        let r = match r {
                            Ok((s, b)) if s.as_u16() == 201 => serde_json::from_slice::<
                                KeyWithSecret,
                            >(&b)
                            .map_err(|e| {
                                format!("admin create answer: {e}: {}", String::from_utf8_lossy(&b))
                            }),
                            Ok((s, b)) if s.is_server_error() => Err(format!(
                                "retry:admin create: {s}: {}",
                                String::from_utf8_lossy(&b)
                            )),
                            Ok((s, b)) => Err(format!(
                                "admin create: {s}: {}",
                                String::from_utf8_lossy(&b)
                            )),
                            Err(
                                e @ (HttpError::Io(_) | HttpError::Timeout | HttpError::Connect(_)),
                            ) => Err(format!("retry:admin create: {e}")),
                        };
                        (c, r)
                    }
                })
                .await;
                match r {
                    Ok(k) => {
                        made.push((
                            i,
                            RunKey {
                                key_id: k.key.key_id,
                                secret: k.api_key,
                            },
                        ));
                        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if progress && d % 2_000 == 0 {
                            eprintln!(
                                "loadtest: created {d}/{n} keys ({:.1}s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
        }));
    }
    let mut all: Vec<Option<RunKey>> = vec![None; n];
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(v)) => {
                for (i, k) in v {
                    all[i] = Some(k);
                }
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(format!("key creation task: {e}"));
            }
        }
    }
    let made: Vec<RunKey> = all.iter().flatten().cloned().collect();
    if let Some(e) = first_err {
        // Do not leave half a run's keys behind.
        let ids: Vec<String> = made.iter().map(|k| k.key_id.clone()).collect();
        let _ = delete_keys(admin, &ids).await;
        return Err(e);
    }
    if made.len() != n {
        return Err(format!("created {} of {n} keys", made.len()));
    }
    Ok(made)
}

/// Deletes keys; returns how many could not be deleted (a 404 counts as deleted).
pub async fn delete_keys(admin: &Admin, ids: &[String]) -> usize {
    let ids: Arc<Vec<String>> = Arc::new(ids.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..admin.concurrency.clamp(1, ids.len().max(1)) {
        let (admin, ids, next) = (admin.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { return failed };
                let path = admin.target.path(&format!("/api/v1/keys/{id}"));
                let r = with_retries(&admin, &mut conn, |mut c| {
                    let (path, token, timeout) = (path.clone(), admin.token.clone(), admin.timeout);
                    async move {
                        let r = match c
                            .send_timeout(
                                timeout,
                                Method::DELETE,
                                &path,
                                Some(&token),
                                Bytes::new(),
                            )
                            .await
                        {
                            Ok((s, _))
                                if s.as_u16() == 204 || s.as_u16() == 404 || s.is_success() =>
                            {
                                Ok(())
                            }
                            Ok((s, _)) if s.is_server_error() => Err(format!("retry:{s}")),
                            Ok((s, b)) => Err(format!("{s}: {}", String::from_utf8_lossy(&b))),
                            Err(e) => Err(format!("retry:{e}")),
                        };
                        (c, r)
                    }
                })
                .await;
                if r.is_err() {
                    failed += 1;
                }
            }
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(0);
    }
    failed
}
