//! Maps SQLite errors onto the port's transient/permanent split.

use aop_core::StoreError;
use rusqlite::ErrorCode;

pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(e.to_string()),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::unavailable("the database is busy", e)
        }
        // Conditions that can clear up: a full disk, an I/O hiccup, memory pressure.
        Some(
            ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::OutOfMemory
            | ErrorCode::OperationInterrupted
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen,
        ) => StoreError::unavailable("the database cannot be written right now", e),
        _ => StoreError::permanent("SQLite query failed", e),
    }
}

/// A stored value that does not decode: the file was written by something else.
pub(crate) fn corrupt(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::permanent(format!("stored {what} does not decode"), e)
}
