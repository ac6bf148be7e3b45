//! The cluster's settings that the configuration checks: the shortest
//! cookie and the TLS files. Plain data with no dependencies, so the
//! config fuzz target compiles it with the config module.

use std::path::PathBuf;

/// The shortest magic cookie a node accepts (`RINGLIMIT_COOKIE`): a shorter
/// one is guessable, and the cookie is what admits a process to the cluster.
pub const MIN_COOKIE_LEN: usize = 32;

/// The environment names of the TLS settings.
pub const ENV_CERT: &str = "RINGLIMIT_CLUSTER_TLS_CERT";
pub const ENV_KEY: &str = "RINGLIMIT_CLUSTER_TLS_KEY";
pub const ENV_CA: &str = "RINGLIMIT_CLUSTER_TLS_CA";
pub const ENV_SERVER_NAME: &str = "RINGLIMIT_CLUSTER_TLS_SERVER_NAME";

/// Where a node's TLS material is: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain (leaf first), signed by the CA.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
    /// The CA certificate(s) every node's certificate is signed by.
    pub ca: PathBuf,
    /// The name every node's certificate carries, checked when dialing a
    /// peer; without it, the host of the address dialed is checked.
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// The TLS settings: all three files or none. With only some set, the
    /// error names the first missing one (its field name and environment
    /// name). A server name without the files is refused too.
    pub fn from_settings(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        ca: Option<PathBuf>,
        server_name: Option<String>,
    ) -> Result<Option<TlsFiles>, (&'static str, String)> {
        let nonempty = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let server_name = server_name.filter(|s| !s.is_empty());
        match (nonempty(cert), nonempty(key), nonempty(ca)) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles {
                cert,
                key,
                ca,
                server_name,
            })),
            (None, None, None) => match server_name {
                None => Ok(None),
                Some(_) => Err((
                    "cluster_tls_server_name",
                    format!("{ENV_SERVER_NAME} needs {ENV_CERT}, {ENV_KEY} and {ENV_CA}"),
                )),
            },
            (cert, key, _) => {
                let (field, env) = if cert.is_none() {
                    ("cluster_tls_cert", ENV_CERT)
                } else if key.is_none() {
                    ("cluster_tls_key", ENV_KEY)
                } else {
                    ("cluster_tls_ca", ENV_CA)
                };
                Err((
                    field,
                    format!(
                        "{env} is not set: cluster TLS needs all of {ENV_CERT}, {ENV_KEY} and {ENV_CA}"
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<PathBuf> {
        Some(PathBuf::from(s))
    }

    #[test]
    fn all_or_none_of_the_files() {
        assert_eq!(TlsFiles::from_settings(None, None, None, None), Ok(None));
        let full = TlsFiles::from_settings(p("c"), p("k"), p("a"), Some("n".into()))
            .expect("all set")
            .map(|f| (f.cert, f.server_name));
        assert_eq!(full, Some((PathBuf::from("c"), Some("n".into()))));
        let missing = |c, k, a| TlsFiles::from_settings(c, k, a, None).err().map(|e| e.0);
        assert_eq!(missing(None, p("k"), p("a")), Some("cluster_tls_cert"));
        assert_eq!(missing(p("c"), None, p("a")), Some("cluster_tls_key"));
        assert_eq!(missing(p("c"), p("k"), None), Some("cluster_tls_ca"));
        assert_eq!(missing(p("c"), None, None), Some("cluster_tls_key"));
        let e = TlsFiles::from_settings(p("c"), None, None, None).expect_err("partial");
        assert!(e.1.contains(ENV_KEY), "{}", e.1);
        assert_eq!(
            TlsFiles::from_settings(None, None, None, Some("n".into()))
                .err()
                .map(|e| e.0),
            Some("cluster_tls_server_name")
        );
    }
}
