//! What a store call can fail with, by kind: the operator API answers from
//! the kind, never from the message. A [`StoreError`] is cloned whole to
//! every write of a group whose commit failed ([`StoreError::of`]).

/// What went wrong in the store, by kind: the operator API answers from
/// the kind (409, 404, 500), never from the message. Store calls return
/// `anyhow::Error`; these travel inside it (`downcast_ref`), and so does a
/// `rusqlite::Error` reading a value this listener cannot understand
/// ([`StoreError::classify`] names it corrupt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// What was to be created exists already (a key name, a job id).
    #[error("{0}")]
    Conflict(String),
    /// What was asked for is not there.
    #[error("{0}")]
    NotFound(String),
    /// The database holds something this listener cannot read.
    #[error("the database holds something this listener cannot read: {0}")]
    Corrupt(String),
    /// Another listener holds this host's agent now (it reconnected
    /// there): this listener's connection to it is stale.
    #[error("the agent of {0} is connected to another listener now")]
    Moved(String),
    /// The database itself failed (I/O, locked, full, gone), with what it
    /// said: what a grouped write gets when its group failed.
    #[error("{0}")]
    Backend(String),
}

/// The kind of a store failure, for answering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Conflict,
    NotFound,
    Corrupt,
    /// The database itself failed (I/O, locked, full).
    Backend,
}

impl StoreError {
    /// The kind of `e`, an error a store call returned.
    pub fn classify(e: &anyhow::Error) -> ErrorKind {
        if let Some(s) = e.downcast_ref::<StoreError>() {
            return match s {
                StoreError::Conflict(_) => ErrorKind::Conflict,
                StoreError::NotFound(_) => ErrorKind::NotFound,
                StoreError::Corrupt(_) => ErrorKind::Corrupt,
                StoreError::Moved(_) => ErrorKind::Conflict,
                StoreError::Backend(_) => ErrorKind::Backend,
            };
        }
        if e.downcast_ref::<crate::sql::Unreadable>().is_some() {
            return ErrorKind::Corrupt;
        }
        match e.downcast_ref::<rusqlite::Error>() {
            Some(
                rusqlite::Error::FromSqlConversionFailure(..)
                | rusqlite::Error::InvalidColumnType(..)
                | rusqlite::Error::IntegralValueOutOfRange(..),
            ) => ErrorKind::Corrupt,
            _ => ErrorKind::Backend,
        }
    }
}

impl StoreError {
    /// `e`, an error a store call returned, as a `StoreError` of the same
    /// kind ([`StoreError::classify`]) and message, to be handed on (to
    /// each write of a failed group).
    pub fn of(e: &anyhow::Error) -> Self {
        if let Some(s) = e.downcast_ref::<StoreError>() {
            return s.clone();
        }
        let text = format!("{e:#}");
        match Self::classify(e) {
            ErrorKind::Conflict => Self::Conflict(text),
            ErrorKind::NotFound => Self::NotFound(text),
            ErrorKind::Corrupt => Self::Corrupt(text),
            ErrorKind::Backend => Self::Backend(text),
        }
    }
}

/// A unique constraint refused the insert: `what` exists already.
pub(super) fn conflict_on_constraint(
    e: anyhow::Error,
    what: impl FnOnce() -> String,
) -> anyhow::Error {
    if crate::sql::is_constraint(&e) {
        StoreError::Conflict(what()).into()
    } else {
        e
    }
}
