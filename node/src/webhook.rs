//! The HTTP client that delivers alert webhooks (HTTPS with the operating
//! system's trust roots). Retries, back-off and signing live in the alert
//! pipeline; this only sends one POST.

use async_trait::async_trait;
use ringlimit_actors::pipeline::{HttpPoster, PostError};
use std::time::Duration;

/// A pooled HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
}

impl WebhookClient {
    pub fn new() -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("ringlimit/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(4)
            .build()?;
        Ok(WebhookClient { client })
    }
}

#[async_trait]
impl HttpPoster for WebhookClient {
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<u16, PostError> {
        let mut req = self.client.post(url).timeout(timeout).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.send().await.map_err(reqwest::Error::without_url) {
            // The error's text leaves the URL out: it is logged and kept in
            // dead letters, and a webhook's path often holds its token.
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) if e.is_timeout() => Err(PostError::Timeout(timeout)),
            Err(e) if e.is_connect() => Err(PostError::Connect(e.to_string())),
            Err(e) => Err(PostError::Other(e.to_string())),
        }
    }
}
