//! Keeping secrets out of logs and printed configuration.
//!
//! - [`Redacted`] wraps a secret (a token, a cookie) so that `Debug` and
//!   `Display` show `<redacted>` whatever it holds.
//! - [`url`] hides the password of a URL (`redis://user:pw@host` →
//!   `redis://user:<redacted>@host`), for connection strings whose host and
//!   database are worth showing.
//! - [`origin`] keeps only a URL's scheme, host and port, for webhook URLs,
//!   whose path or query often is the credential.

use std::fmt;

/// What a hidden value shows.
pub const REDACTED: &str = "<redacted>";

/// A value that never shows itself in `Debug` or `Display`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Redacted<T>(pub T);

impl<T> fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl<T> fmt::Display for Redacted<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// An optional secret as `Debug` shows it: `None`, or `Some(<redacted>)`.
pub fn secret<T>(v: &Option<T>) -> Option<Redacted<()>> {
    v.as_ref().map(|_| Redacted(()))
}

/// `(scheme "://", authority, rest)` of an absolute URL.
fn split(u: &str) -> Option<(&str, &str, &str)> {
    let i = u.find("://")?;
    let (scheme, after) = (&u[..i + 3], &u[i + 3..]);
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some((scheme, &after[..end], &after[end..]))
}

/// The URL with the password of its user information hidden. A user
/// information without a password (`scheme://token@host`, where the token is
/// the credential) is hidden whole. Text that is no `scheme://` URL is hidden
/// whole too: it cannot be told apart from a secret.
pub fn url(u: &str) -> String {
    let Some((scheme, authority, rest)) = split(u) else {
        return REDACTED.to_string();
    };
    match authority.rsplit_once('@') {
        None => u.to_string(),
        Some((userinfo, host)) => {
            let user = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:{REDACTED}"),
                None => REDACTED.to_string(),
            };
            format!("{scheme}{user}@{host}{rest}")
        }
    }
}

/// Only the scheme, host and port of a URL: no user information, path,
/// query or fragment (`https://hooks.example.com/T0/B1/s3cr3t` →
/// `https://hooks.example.com`).
pub fn origin(u: &str) -> String {
    let Some((scheme, authority, _)) = split(u) else {
        return REDACTED.to_string();
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_hides_its_value() {
        let r = Redacted("s3cr3t".to_string());
        assert_eq!(format!("{r:?} {r}"), "<redacted> <redacted>");
        assert_eq!(format!("{:?}", secret(&Some("s3cr3t"))), "Some(<redacted>)");
        assert_eq!(format!("{:?}", secret::<String>(&None)), "None");
    }

    #[test]
    fn url_hides_the_password_only() {
        assert_eq!(
            url("redis://user:pw@cache:6379/0"),
            "redis://user:<redacted>@cache:6379/0"
        );
        assert_eq!(
            url("redis://:pw@cache:6379"),
            "redis://:<redacted>@cache:6379"
        );
        assert_eq!(url("rediss://tok@cache"), "rediss://<redacted>@cache");
        assert_eq!(url("redis://cache:6379/1"), "redis://cache:6379/1");
        // An '@' in the password, and one in the path, which is no user information.
        assert_eq!(
            url("redis://u:p@ss@cache/x@y"),
            "redis://u:<redacted>@cache/x@y"
        );
        assert_eq!(url("redis://cache/x@y"), "redis://cache/x@y");
        assert_eq!(url("not a url"), "<redacted>");
    }

    #[test]
    fn origin_keeps_scheme_host_and_port() {
        assert_eq!(
            origin("https://hooks.example.com/services/T0/B1/s3cr3t?token=x#f"),
            "https://hooks.example.com"
        );
        assert_eq!(
            origin("http://u:p@127.0.0.1:9000/hook"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(origin("https://h.example?k=v"), "https://h.example");
        assert_eq!(origin("garbage"), "<redacted>");
    }
}
