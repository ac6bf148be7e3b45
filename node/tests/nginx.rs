//! The shipped nginx configuration (deploy/nginx/) in front of a live node,
//! with Debian's nginx: `auth_request` asks `/api/v1/authorize`, the backend
//! behind it learns the key, and the client sees 200, 429 with Retry-After,
//! 401, and 503 when the limiter cannot be asked, each with the RateLimit
//! headers where a check ran.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn nginx_binary() -> Option<PathBuf> {
    let found = [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        assert!(
            !servers_required(),
            "nginx is not installed: scripts/test.sh installs it (Debian: nginx)"
        );
        eprintln!("skipping: nginx is not installed (scripts/test.sh installs it)");
    }
    found
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx on `port`, with the shipped snippets in front of `data` and a
/// backend on `app_port` that echoes the key it was told about.
fn start_nginx(bin: &Path, dir: &Path, port: u16, app_port: u16, data: &str) -> Nginx {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx");
    let upstream = data.trim_start_matches("http://");
    let user = if rustix::process::geteuid().is_root() {
        "user root root;"
    } else {
        ""
    };
    let conf = format!(
        r#"
{user}
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream ringlimit {{ server {upstream}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{app_port};
        location / {{ return 200 "backend saw key $http_x_ratelimit_key_id tier $http_x_ratelimit_tier\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        include {deploy}/ratelimit.conf;
        location / {{
            include {deploy}/ratelimit-check.conf;
            proxy_pass http://127.0.0.1:{app_port};
        }}
    }}
}}
"#,
        dir = dir.display(),
        deploy = deploy.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let check = Command::new(bin)
        .args(["-t", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Nginx(child)
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client.get(url);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let r = req.send().await.unwrap();
    (
        r.status().as_u16(),
        r.headers().clone(),
        r.text().await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_in_front_of_ringlimit() {
    let Some(bin) = nginx_binary() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(&dir.path().join("node"), &[]);
    let (key_id, key) = node
        .create_key(json!([limit("hour", "fixed_window", 2, 3_600_000)]))
        .await;
    let ngx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&ngx_dir).unwrap();
    let (port, app_port) = (free_port(), free_port());
    let _nginx = start_nginx(&bin, &ngx_dir, port, app_port, &node.data);
    let url = format!("http://127.0.0.1:{port}/orders");
    let client = reqwest::Client::new();
    assert!(
        eventually(10, async || client.get(&url).send().await.is_ok()).await,
        "nginx did not start listening"
    );

    // Allowed: the backend answers, told which key and tier; the client
    // sees the RateLimit headers.
    let (s, h, body) = get(&client, &url, Some(&key)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body, format!("backend saw key {key_id} tier free\n"));
    assert!(
        h["ratelimit-policy"]
            .to_str()
            .unwrap()
            .starts_with("\"hour\";q=2;w=3600")
    );
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"hour\";r=1;"),
        "{h:?}"
    );
    // Another method, with a body: the check is the same.
    let r = client
        .post(&url)
        .header("authorization", format!("Bearer {key}"))
        .body("{\"item\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Over the limit: 429 with Retry-After, from nginx's error location.
    let (s, h, body) = get(&client, &url, Some(&key)).await;
    assert_eq!(s, 429, "{body}");
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(
        h["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"hour\";r=0;")
    );
    assert!(body.contains("rate_limited"), "{body}");

    // No key, or a wrong one: 401, and the backend is never asked.
    let (s, _, body) = get(&client, &url, None).await;
    assert_eq!(s, 401, "{body}");
    assert!(!body.contains("backend saw"));
    let (s, _, _) = get(&client, &url, Some("rl_nosuchkey_nosecret")).await;
    assert_eq!(s, 401);

    // The limiter gone: nginx fails closed with 503.
    node.signal_and_wait(15); // SIGTERM
    let (s, _, body) = get(&client, &url, Some(&key)).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");
}
