//! The facade error: one enum for everything a user of `LaminarDB` can see, each variant with
//! a stable [`DbError::code`] used by the CLI and bindings.

use laminar_connectors::ConnectorError;
use laminar_sql::SqlError;

/// An error returned by [`crate::LaminarDB`].
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The SQL does not parse; positions are 1-based over the whole text given to `execute`.
    #[error("SQL syntax error at line {line}, column {column}: {message}")]
    SqlParse {
        /// What was expected and found.
        message: String,
        /// Line.
        line: u64,
        /// Column.
        column: u64,
    },
    /// The SQL is invalid or unsupported (planning, validation, unknown column, ...).
    #[error("{0}")]
    Sql(#[source] Box<SqlError>),
    /// `${NAME}` without a configured value.
    #[error("unresolved config variable ${{{0}}}")]
    UnresolvedConfigVar(String),
    /// No object of that kind and name.
    #[error("{kind} '{name}' not found{}", suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default())]
    NotFound {
        /// Object kind ("source", "stream", "sink", "query", ...).
        kind: &'static str,
        /// The name used.
        name: String,
        /// A close existing name.
        suggestion: Option<String>,
    },
    /// An object with that name exists.
    #[error("{kind} '{name}' already exists{}", if existing_kind != kind { format!(" (as a {existing_kind})") } else { String::new() })]
    AlreadyExists {
        /// Kind being created.
        kind: &'static str,
        /// Name.
        name: String,
        /// Kind of the existing object.
        existing_kind: &'static str,
    },
    /// The object has dependants and cannot be dropped or replaced.
    #[error("cannot drop {kind} '{name}': {} depend{} on it ({})", dependents.len(), if dependents.len() == 1 { "s" } else { "" }, dependents.join(", "))]
    HasDependents {
        /// Kind.
        kind: &'static str,
        /// Name.
        name: String,
        /// Names of the dependants.
        dependents: Vec<String>,
    },
    /// A pushed batch or typed handle does not match the declared schema. Nothing was enqueued.
    #[error("schema mismatch for '{object}': {detail}")]
    SchemaMismatch {
        /// Source (or subscription target) name.
        object: String,
        /// What differs, naming the column and both types.
        detail: String,
    },
    /// Rows violate the declared schema (NULL into NOT NULL, NULL event time, ...). Nothing
    /// was enqueued.
    #[error("invalid rows for '{object}': {detail}")]
    InsertError {
        /// Source name.
        object: String,
        /// What is wrong, naming the column and row.
        detail: String,
    },
    /// The source queue is full and its policy is `reject`.
    #[error("source '{0}' is full (backpressure policy 'reject'); retry later")]
    ChannelFull(String),
    /// The operation is not valid in the current state.
    #[error("invalid operation: {0}")]
    InvalidOperation(String),
    /// The database was shut down.
    #[error("the database is shut down")]
    Shutdown,
    /// A connector failed.
    #[error("connector error in '{object}': {source}")]
    Connector {
        /// Source or sink name.
        object: String,
        /// The connector's error.
        #[source]
        source: Box<ConnectorError>,
    },
    /// The running pipeline failed.
    #[error("pipeline failed: {0}")]
    Pipeline(String),
    /// Checkpointing is not available or failed.
    #[error("checkpoint error: {0}")]
    Checkpoint(String),
    /// An object was defined differently from the one whose state the storage directory
    /// holds (or that state no longer fits it).
    #[error("{0}")]
    StateMismatch(String),
    /// A materialized view cannot be created as written (its query cannot be maintained
    /// incrementally, or it would form a cycle).
    #[error("{0}")]
    MaterializedView(String),
    /// An engine error (DataFusion execution of a bounded query, internal failures).
    #[error("engine error: {0}")]
    Engine(String),
}

impl DbError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            DbError::SqlParse { .. } => "SQL_SYNTAX",
            DbError::Sql(e) => match e.as_ref() {
                SqlError::NotSupported { .. } => "SQL_NOT_SUPPORTED",
                SqlError::UnknownObject { .. } => "SQL_UNKNOWN_OBJECT",
                SqlError::UnknownColumn { .. } => "SQL_UNKNOWN_COLUMN",
                SqlError::Plan(_) => "SQL_PLAN",
                SqlError::Invalid(_) | SqlError::TableAsChangelog(_) => "SQL_INVALID",
                SqlError::Parse { .. } => "SQL_SYNTAX",
                SqlError::UnresolvedConfigVar { .. } => "UNRESOLVED_CONFIG_VAR",
            },
            DbError::UnresolvedConfigVar(_) => "UNRESOLVED_CONFIG_VAR",
            DbError::NotFound { .. } => "NOT_FOUND",
            DbError::AlreadyExists { .. } => "ALREADY_EXISTS",
            DbError::HasDependents { .. } => "HAS_DEPENDENTS",
            DbError::SchemaMismatch { .. } => "SCHEMA_MISMATCH",
            DbError::InsertError { .. } => "INSERT_ERROR",
            DbError::ChannelFull(_) => "CHANNEL_FULL",
            DbError::InvalidOperation(_) => "INVALID_OPERATION",
            DbError::Shutdown => "SHUTDOWN",
            DbError::Connector { .. } => "CONNECTOR",
            DbError::Pipeline(_) => "PIPELINE",
            DbError::Checkpoint(_) => "CHECKPOINT",
            DbError::StateMismatch(_) => "STATE_MISMATCH",
            DbError::Engine(_) => "ENGINE",
            DbError::MaterializedView(_) => "MATERIALIZED_VIEW",
        }
    }

    /// True for errors in the SQL or configuration the user wrote (CLI exit code 1), as
    /// opposed to runtime failures (exit code 2).
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            DbError::Pipeline(_) | DbError::Engine(_) | DbError::Shutdown | DbError::Checkpoint(_)
        )
    }
}

impl From<SqlError> for DbError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Parse {
                message,
                line,
                column,
            } => DbError::SqlParse {
                message,
                line,
                column,
            },
            SqlError::UnresolvedConfigVar { name } => DbError::UnresolvedConfigVar(name),
            other => DbError::Sql(Box::new(other)),
        }
    }
}
