//! Mapping driver errors to [`StoreError`].
//!
//! Transient failures, which a later retry may cure, become
//! [`StoreError::Unavailable`]: client-side timeouts, no reachable node or
//! broken connections, and the server's own "try again" errors (unavailable
//! replicas, read/write timeouts and failures, overload, bootstrapping, rate
//! limit). Undecodable rows are [`StoreError::Corrupt`]. Everything else (bad
//! statements, missing tables, authentication) is [`StoreError::Backend`].

use ringlimit_actors::storage::StoreError;
use scylla::errors::{
    ConnectionPoolError, DbError, ExecutionError, MetadataError, NewSessionError, NextPageError,
    NextRowError, PagerExecutionError, PrepareError, RequestAttemptError, RequestError,
    SchemaAgreementError, UseKeyspaceError,
};
use std::fmt::Display;

fn classify(what: &str, transient: bool, e: impl Display) -> StoreError {
    if transient {
        StoreError::Unavailable(format!("ScyllaDB {what}: {e}"))
    } else {
        StoreError::Backend(format!("ScyllaDB {what}: {e}"))
    }
}

/// A row or result that could not be decoded.
pub(crate) fn decode(what: &str, e: impl Display) -> StoreError {
    StoreError::Corrupt(format!("ScyllaDB {what}: {e}"))
}

pub(crate) fn db_transient(e: &DbError) -> bool {
    matches!(
        e,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::ReadFailure { .. }
            | DbError::WriteFailure { .. }
            | DbError::TruncateError
            | DbError::RateLimitReached { .. }
    )
}

fn attempt_transient(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        RequestAttemptError::DbError(db, _) => db_transient(db),
        _ => false,
    }
}

fn pool_transient(e: &ConnectionPoolError) -> bool {
    !matches!(e, ConnectionPoolError::NodeDisabledByHostFilter)
}

fn prepare_transient(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(p) => pool_transient(p),
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_transient(first_attempt),
        _ => false,
    }
}

fn schema_transient(e: &SchemaAgreementError) -> bool {
    match e {
        SchemaAgreementError::ConnectionPoolError(p) => pool_transient(p),
        SchemaAgreementError::PrepareError(p) => prepare_transient(p),
        SchemaAgreementError::RequestError(a) => attempt_transient(a),
        SchemaAgreementError::Timeout(_) => true,
        _ => false,
    }
}

fn use_keyspace_transient(e: &UseKeyspaceError) -> bool {
    match e {
        UseKeyspaceError::RequestError(a) => attempt_transient(a),
        UseKeyspaceError::RequestTimeout(_) => true,
        _ => false,
    }
}

fn metadata_transient(e: &MetadataError) -> bool {
    // No node answered the metadata queries, or it answered garbage; the
    // former is by far the common case (the cluster is down or unreachable).
    matches!(
        e,
        MetadataError::ConnectionPoolError(_) | MetadataError::FetchError(_)
    )
}

fn request_transient(e: &RequestError) -> bool {
    match e {
        RequestError::EmptyPlan | RequestError::RequestTimeout(_) => true,
        RequestError::ConnectionPoolError(p) => pool_transient(p),
        RequestError::LastAttemptError(a) => attempt_transient(a),
        _ => false,
    }
}

fn next_page_transient(e: &NextPageError) -> bool {
    match e {
        NextPageError::RequestFailure(r) => request_transient(r),
        _ => false,
    }
}

/// Whether an execution error is transient.
pub(crate) fn execution_transient(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::EmptyPlan | ExecutionError::RequestTimeout(_) => true,
        ExecutionError::ConnectionPoolError(p) => pool_transient(p),
        ExecutionError::LastAttemptError(a) => attempt_transient(a),
        ExecutionError::PrepareError(p) => prepare_transient(p),
        ExecutionError::UseKeyspaceError(u) => use_keyspace_transient(u),
        ExecutionError::SchemaAgreementError(s) => schema_transient(s),
        ExecutionError::MetadataError(m) => metadata_transient(m),
        _ => false,
    }
}

pub(crate) fn execution(what: &str, e: ExecutionError) -> StoreError {
    classify(what, execution_transient(&e), e)
}

pub(crate) fn prepare(what: &str, e: PrepareError) -> StoreError {
    let hint = match &e {
        PrepareError::AllAttemptsFailed {
            first_attempt: RequestAttemptError::DbError(DbError::Invalid, _),
        } => " (is the schema migrated? run `ringlimit migrate`)",
        _ => "",
    };
    classify(what, prepare_transient(&e), format!("{e}{hint}"))
}

pub(crate) fn pager(what: &str, e: PagerExecutionError) -> StoreError {
    let transient = match &e {
        PagerExecutionError::PrepareError(p) => prepare_transient(p),
        PagerExecutionError::NextPageError(n) => next_page_transient(n),
        PagerExecutionError::UseKeyspaceError(u) => use_keyspace_transient(u),
        PagerExecutionError::SchemaAgreementError(s) => schema_transient(s),
        PagerExecutionError::MetadataError(m) => metadata_transient(m),
        _ => false,
    };
    classify(what, transient, e)
}

pub(crate) fn next_row(what: &str, e: NextRowError) -> StoreError {
    match e {
        NextRowError::NextPageError(n) => classify(what, next_page_transient(&n), n),
        NextRowError::RowDeserializationError(d) => decode(what, d),
        e => StoreError::Backend(format!("ScyllaDB {what}: {e}")),
    }
}

pub(crate) fn new_session(e: NewSessionError) -> StoreError {
    let transient = match &e {
        NewSessionError::FailedToResolveAnyHostname(_) => true,
        NewSessionError::MetadataError(m) => metadata_transient(m),
        NewSessionError::UseKeyspaceError(u) => use_keyspace_transient(u),
        _ => false,
    };
    classify("connect", transient, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::statement::Consistency;

    #[test]
    fn timeouts_and_unreachable_are_transient() {
        let t = execution(
            "x",
            ExecutionError::RequestTimeout(std::time::Duration::from_secs(2)),
        );
        assert!(t.is_transient(), "{t:?}");
        assert!(execution("x", ExecutionError::EmptyPlan).is_transient());
        assert!(
            execution(
                "x",
                ExecutionError::ConnectionPoolError(ConnectionPoolError::Initializing)
            )
            .is_transient()
        );
        let wt = RequestAttemptError::DbError(
            DbError::Unavailable {
                consistency: Consistency::Quorum,
                required: 2,
                alive: 1,
            },
            "down".into(),
        );
        assert!(execution("x", ExecutionError::LastAttemptError(wt)).is_transient());
        assert!(
            execution(
                "x",
                ExecutionError::LastAttemptError(RequestAttemptError::UnableToAllocStreamId)
            )
            .is_transient()
        );
    }

    #[test]
    fn bad_statements_are_not_transient() {
        let e = execution(
            "x",
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::Invalid,
                "no table".into(),
            )),
        );
        assert!(
            matches!(e, StoreError::Backend(ref m) if m.contains("no table")),
            "{e:?}"
        );
        let e = execution(
            "x",
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::SyntaxError,
                "bad".into(),
            )),
        );
        assert!(!e.is_transient());
        let e = new_session(NewSessionError::EmptyKnownNodesList);
        assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    }
}
