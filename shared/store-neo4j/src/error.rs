//! How a Bolt failure reads to the core: conflict, unavailable, or permanent.

use aop_core::StoreError;

/// What the retry loop does with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The server or the connection had a passing problem: try again after a pause.
    Transient,
    /// The credentials were refused: fetch them again (they may have rotated), then retry once.
    Authentication,
    /// Trying again cannot help.
    Never,
}

pub(crate) fn classify(e: &neo4rs::Error) -> Retry {
    use neo4rs::Error as E;
    match e {
        E::IOError { .. }
        | E::ConnectionError
        | E::ConnectionTimedOut
        | E::IncompleteBoltExchange
        | E::ServerUnavailableError(_)
        | E::RequestIgnoredError
        | E::Ignored(_) => Retry::Transient,
        E::AuthenticationError(_) => Retry::Authentication,
        E::Neo4j(n) => {
            let code = n.code();
            if code.starts_with("Neo.ClientError.Security.Unauthorized")
                || code.starts_with("Neo.ClientError.Security.AuthenticationRateLimit")
                || code.starts_with("Neo.ClientError.Security.CredentialsExpired")
            {
                Retry::Authentication
            } else if code.starts_with("Neo.TransientError.")
                || code == "Neo.ClientError.Cluster.NotALeader"
                || code == "Neo.ClientError.General.ForbiddenOnReadOnlyDatabase"
                || is_concurrent_modification(n.message())
            {
                Retry::Transient
            } else {
                Retry::Never
            }
        }
        _ => Retry::Never,
    }
}

/// Optimistic (MVCC) servers report a lost write race as a failure of the commit; it is worth
/// running the whole transaction again.
fn is_concurrent_modification(message: &str) -> bool {
    message.contains("ConcurrentModification") || message.contains("concurrent modification")
}

/// A uniqueness rule refused the write: someone else stored the same key first.
pub(crate) fn is_constraint_violation(e: &neo4rs::Error) -> bool {
    match e {
        neo4rs::Error::Neo4j(n) => {
            n.code() == "Neo.ClientError.Schema.ConstraintValidationFailed"
                || n.message().contains("DuplicatedKey")
                || n.message().contains("Duplicated key")
        }
        _ => false,
    }
}

/// The final error of an operation, after retries. `target` is the server's URI without
/// credentials; it goes into the message so an operator knows which Neo4j is meant.
pub(crate) fn to_store_error(e: neo4rs::Error, target: &str, what: &str) -> StoreError {
    if is_constraint_violation(&e) {
        return StoreError::Conflict(format!("{what}: the key already exists"));
    }
    match classify(&e) {
        Retry::Transient => {
            StoreError::unavailable(format!("{what}: Neo4j at {target} is unavailable"), e)
        }
        Retry::Authentication => StoreError::unavailable(
            format!("{what}: Neo4j at {target} refused the credentials"),
            e,
        ),
        Retry::Never => StoreError::permanent(format!("{what}: Neo4j at {target} failed"), e),
    }
}

/// A stored value this build cannot read.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Permanent {
        message: format!("stored {what} is unreadable: {detail}"),
        source: None,
    }
}
