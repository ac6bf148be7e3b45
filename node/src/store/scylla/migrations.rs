//! The CQL migration runner.
//!
//! The files of `cql/` (at the workspace root) are embedded in the binary
//! with `include_str!`, so `ringlimit migrate` works from any directory. Each
//! file is one version (`NNNN_name.cql`, applied in increasing order). A file
//! holds CQL statements ended by `;`; `--` starts a comment that runs to the
//! end of the line. Two placeholders are substituted before a statement runs:
//!
//! - `{{keyspace}}`: the keyspace, as a quoted identifier (`"ringlimit"`);
//! - `{{replication}}`: the replication map of `CREATE KEYSPACE`, e.g.
//!   `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}`.
//!
//! [`migrate`] reads the applied versions from `schema_migrations`, runs the
//! statements of every other version in order, and records the version (with
//! the SHA-256 of the file) once all its statements succeeded. Every statement
//! is idempotent (`CREATE … IF NOT EXISTS`, `DROP TABLE IF EXISTS`), so a run
//! interrupted half-way through a file simply runs that file again. An
//! applied file whose text has changed is reported with a warning and not run
//! again: add a new file instead.
//!
//! Concurrent runs: on ScyllaDB (Raft-based schema) concurrent
//! `CREATE … IF NOT EXISTS` are safe. On Cassandra before 5.1, two nodes
//! creating the same table at the same moment can disagree on the table id;
//! run `ringlimit migrate` once before starting several nodes at the same time
//! on a fresh keyspace.

use super::errors;
use ringlimit_actors::storage::StoreError;
use scylla::client::session::Session;
use scylla::statement::Statement;
use scylla::value::CqlTimestamp;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::time::Duration;

/// One migration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    /// File name without `.cql`.
    pub name: &'static str,
    /// The file's text, before substitution.
    pub cql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            cql: include_str!(concat!("../../../../cql/", $name, ".cql")),
        }
    };
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_keyspace"),
    migration!(2, "0002_keys_and_tiers"),
    migration!(3, "0003_snapshots"),
    migration!(4, "0004_usage"),
    migration!(5, "0005_pipelines"),
    migration!(6, "0006_pipeline_tables"),
    migration!(7, "0007_drop_keys_by_hash"),
];

/// Replication of a keyspace created for tests or a single node.
pub const DEFAULT_REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";

/// Client-side timeout of one schema statement (schema changes on Cassandra
/// take far longer than reads and writes; the driver also waits for schema
/// agreement after each one).
pub const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a run of [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run, in order.
    pub applied: Vec<i32>,
    /// Versions found already applied.
    pub already_applied: Vec<i32>,
    /// Applied versions whose file has changed since (see the module docs).
    pub changed_since_applied: Vec<i32>,
}

impl Migration {
    /// SHA-256 (hex) of the file's text.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.cql.as_bytes()))
    }
}

/// The keyspace name as used in CQL text: validated, lower-cased and quoted.
///
/// Accepts 1 to 48 ASCII letters, digits and `_` (the CQL limit). Unquoted
/// CQL identifiers are case-insensitive; lower-casing then quoting keeps that
/// meaning and also allows names starting with a digit.
pub fn keyspace_ident(keyspace: &str) -> Result<String, StoreError> {
    if keyspace.is_empty()
        || keyspace.len() > 48
        || !keyspace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(StoreError::Backend(format!(
            "invalid keyspace name {keyspace:?}: use 1 to 48 ASCII letters, digits and '_'"
        )));
    }
    Ok(format!("\"{}\"", keyspace.to_ascii_lowercase()))
}

/// Checks the replication map: a `{…}` CQL map literal, one statement's worth.
pub fn check_replication(replication: &str) -> Result<(), StoreError> {
    let r = replication.trim();
    if !(r.starts_with('{') && r.ends_with('}'))
        || r.contains(';')
        || r.contains("--")
        || !r.contains("'class'")
    {
        return Err(StoreError::Backend(format!(
            "invalid replication {replication:?}: expected a CQL map such as {DEFAULT_REPLICATION}"
        )));
    }
    Ok(())
}

/// Splits a migration file into statements and substitutes the placeholders.
///
/// Comments (`--` to the end of the line) are removed; `;` ends a statement
/// unless it is inside a `'string'` or a `"quoted identifier"`.
pub fn statements(cql: &str, keyspace_ident: &str, replication: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = cql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    // A comment: skip to the end of the line.
                    for c in chars.by_ref() {
                        if c == '\n' {
                            cur.push('\n');
                            break;
                        }
                    }
                }
                ';' => {
                    push_statement(&mut out, &cur, keyspace_ident, replication);
                    cur.clear();
                }
                c => cur.push(c),
            },
        }
    }
    push_statement(&mut out, &cur, keyspace_ident, replication);
    out
}

fn push_statement(out: &mut Vec<String>, raw: &str, keyspace_ident: &str, replication: &str) {
    let text = raw.trim();
    if text.is_empty() {
        return;
    }
    // Keep statements on one line each for readable logs and errors.
    let text = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    out.push(
        text.replace("{{keyspace}}", keyspace_ident)
            .replace("{{replication}}", replication),
    );
}

/// The applied versions and their recorded checksums; empty when the keyspace
/// or its `schema_migrations` table does not exist yet.
pub async fn applied_versions(
    session: &Session,
    keyspace: &str,
) -> Result<BTreeMap<i32, String>, StoreError> {
    let ident = keyspace_ident(keyspace)?;
    let name = keyspace.to_ascii_lowercase();
    let mut probe = Statement::new(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? AND table_name = 'schema_migrations'",
    );
    probe.set_is_idempotent(true);
    let rows = session
        .query_unpaged(probe, (name.as_str(),))
        .await
        .map_err(|e| errors::execution("read system_schema.tables", e))?;
    let rows = rows
        .into_rows_result()
        .map_err(|e| errors::decode("system_schema.tables", e))?;
    if rows.rows_num() == 0 {
        return Ok(BTreeMap::new());
    }
    let mut q = Statement::new(format!(
        "SELECT version, checksum FROM {ident}.schema_migrations"
    ));
    q.set_is_idempotent(true);
    // Read at the strongest level a single-DC cluster commonly offers, so a
    // version recorded through another coordinator is seen.
    let rows = session
        .query_unpaged(q, ())
        .await
        .map_err(|e| errors::execution("read schema_migrations", e))?;
    let rows = rows
        .into_rows_result()
        .map_err(|e| errors::decode("schema_migrations", e))?;
    let mut out = BTreeMap::new();
    for row in rows
        .rows::<(i32, Option<String>)>()
        .map_err(|e| errors::decode("schema_migrations", e))?
    {
        let (version, checksum) = row.map_err(|e| errors::decode("schema_migrations", e))?;
        out.insert(version, checksum.unwrap_or_default());
    }
    Ok(out)
}

/// Applies every migration not applied yet to `keyspace` (creating it with
/// `replication` if needed) and records it. Idempotent.
pub async fn migrate(
    session: &Session,
    keyspace: &str,
    replication: &str,
) -> Result<MigrationReport, StoreError> {
    migrate_to(session, keyspace, replication, i32::MAX).await
}

/// Like [`migrate`], but only the versions up to `up_to` (inclusive): e.g.
/// the versions a store needs ([`STORE_SCHEMA_VERSION`](super::STORE_SCHEMA_VERSION)).
pub async fn migrate_to(
    session: &Session,
    keyspace: &str,
    replication: &str,
    up_to: i32,
) -> Result<MigrationReport, StoreError> {
    let ident = keyspace_ident(keyspace)?;
    check_replication(replication)?;
    let applied = applied_versions(session, keyspace).await?;
    let mut report = MigrationReport::default();
    for m in MIGRATIONS.iter().filter(|m| m.version <= up_to) {
        if let Some(sum) = applied.get(&m.version) {
            report.already_applied.push(m.version);
            if *sum != m.checksum() {
                tracing::warn!(
                    version = m.version,
                    file = m.name,
                    "applied CQL migration has changed since it was applied; it is not run again (add a new migration file instead)"
                );
                report.changed_since_applied.push(m.version);
            }
            continue;
        }
        for text in statements(m.cql, &ident, replication) {
            let mut st = Statement::new(text.clone());
            st.set_is_idempotent(true);
            st.set_request_timeout(Some(DDL_TIMEOUT));
            session.query_unpaged(st, ()).await.map_err(|e| {
                errors::execution(
                    &format!("migration {} statement `{}`", m.name, first_line(&text)),
                    e,
                )
            })?;
        }
        let mut record = Statement::new(format!(
            "INSERT INTO {ident}.schema_migrations (version, name, checksum, applied_at, applied_by) VALUES (?, ?, ?, ?, ?)"
        ));
        record.set_is_idempotent(true);
        let now_ms = i64::try_from(ringlimit_actors::clock::wall_ms()).unwrap_or(i64::MAX);
        let by = concat!("ringlimit ", env!("CARGO_PKG_VERSION"));
        session
            .query_unpaged(
                record,
                (m.version, m.name, m.checksum(), CqlTimestamp(now_ms), by),
            )
            .await
            .map_err(|e| errors::execution(&format!("record migration {}", m.name), e))?;
        tracing::info!(
            keyspace,
            version = m.version,
            file = m.name,
            "applied CQL migration"
        );
        report.applied.push(m.version);
    }
    Ok(report)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_ordered_and_match_file_names() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "{} out of order", m.name);
            last = m.version;
            assert_eq!(
                m.name[..4].parse::<i32>().ok(),
                Some(m.version),
                "{}: name must start with its version",
                m.name
            );
        }
        assert_eq!(MIGRATIONS.len(), 7);
    }

    #[test]
    fn every_migration_dir_file_is_listed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cql");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("read cql/")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".cql").map(str::to_owned))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS.iter().map(|m| m.name.to_owned()).collect();
        assert_eq!(
            files, listed,
            "every cql/*.cql file must be listed in MIGRATIONS"
        );
    }

    #[test]
    fn statements_are_split_substituted_and_idempotent() {
        let ident = keyspace_ident("RL_Test").expect("ident");
        assert_eq!(ident, "\"rl_test\"");
        for m in MIGRATIONS {
            let st = statements(m.cql, &ident, DEFAULT_REPLICATION);
            assert!(!st.is_empty(), "{} has no statement", m.name);
            for s in &st {
                assert!(
                    !s.contains("{{") && !s.contains("}}"),
                    "{}: placeholder left in {s}",
                    m.name
                );
                assert!(!s.contains("--"), "{}: comment left in {s}", m.name);
                // Creating if absent and dropping if present are both idempotent.
                let idempotent = s.contains("IF NOT EXISTS")
                    || (s.starts_with("DROP TABLE IF EXISTS ") && !s.contains(';'));
                assert!(idempotent, "{}: not idempotent: {s}", m.name);
                assert!(
                    s.contains("\"rl_test\""),
                    "{}: not qualified by the keyspace: {s}",
                    m.name
                );
                let upper = s.to_ascii_uppercase();
                // ScyllaDB-only syntax and CQL counters stay out of the shared schema.
                for banned in [
                    "TABLETS",
                    "TOMBSTONE_GC",
                    "USING TIMEOUT",
                    "SYNCHRONOUS_UPDATES",
                    "CDC =",
                ] {
                    assert!(!upper.contains(banned), "{}: {banned} in {s}", m.name);
                }
                let words: Vec<&str> = upper
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .collect();
                assert!(
                    !words.contains(&"COUNTER"),
                    "{}: CQL counter column in {s}",
                    m.name
                );
            }
        }
        let first = statements(MIGRATIONS[0].cql, &ident, DEFAULT_REPLICATION);
        assert!(
            first[0].starts_with("CREATE KEYSPACE IF NOT EXISTS \"rl_test\""),
            "{}",
            first[0]
        );
        assert!(first[0].contains(DEFAULT_REPLICATION));
    }

    #[test]
    fn splitting_respects_quotes_and_comments() {
        let cql = "-- head; comment\nCREATE TABLE IF NOT EXISTS {{keyspace}}.t (a text); -- tail;\nINSERT INTO x (a) VALUES ('a;b -- c');\n\n";
        let st = statements(cql, "\"k\"", DEFAULT_REPLICATION);
        assert_eq!(
            st,
            vec![
                "CREATE TABLE IF NOT EXISTS \"k\".t (a text)".to_owned(),
                "INSERT INTO x (a) VALUES ('a;b -- c')".to_owned()
            ]
        );
    }

    #[test]
    fn bad_names_and_replication_are_refused() {
        for bad in ["", "a-b", "a b", "x\"y", &"k".repeat(49)] {
            assert!(keyspace_ident(bad).is_err(), "{bad:?}");
        }
        assert!(keyspace_ident("1abc").is_ok());
        check_replication(DEFAULT_REPLICATION).expect("default");
        check_replication("{'class': 'NetworkTopologyStrategy', 'dc1': 3}").expect("nts");
        for bad in [
            "",
            "SimpleStrategy",
            "{'class':'x'}; DROP KEYSPACE k",
            "{'replication_factor': 1}",
        ] {
            assert!(check_replication(bad).is_err(), "{bad:?}");
        }
    }
}
