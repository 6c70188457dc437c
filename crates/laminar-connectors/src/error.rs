//! The one error type of this crate, [`ConnectorError`].
//!
//! Every variant carries structured context (connector, option key, file, line,
//! column) rather than a pre-formatted string, so callers can map errors to codes
//! and users get a message that says what failed, where and why. Underlying
//! errors are chained as `source()`, never stringified.

use std::fmt::Write as _;
use std::path::PathBuf;

use arrow::datatypes::DataType;
use arrow::error::ArrowError;
use parquet::errors::ParquetError;

/// Errors raised while configuring, reading from or writing to a connector.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The connector name is not one of the built-ins.
    #[error("unknown connector '{name}'; valid connectors: {}", valid.join(", "))]
    UnknownConnector {
        /// The name as the user wrote it.
        name: String,
        /// The connectors that exist for this direction (source or sink).
        valid: Vec<String>,
    },

    /// An option key the connector does not know.
    #[error(
        "unknown option '{key}' for connector {connector}{}; valid options: {}",
        did_you_mean_suffix(suggestion.as_deref()),
        valid.join(", ")
    )]
    UnknownOption {
        /// Connector name (upper case, e.g. `FILES`).
        connector: String,
        /// The key as the user wrote it.
        key: String,
        /// The closest valid key, if one is close enough.
        suggestion: Option<String>,
        /// All keys the connector accepts.
        valid: Vec<String>,
    },

    /// A required option was not given.
    #[error("connector {connector} requires option '{key}'")]
    MissingOption {
        /// Connector name.
        connector: String,
        /// The missing key.
        key: String,
    },

    /// An option value that cannot be parsed or is out of range.
    #[error("invalid value '{value}' for option '{key}' of connector {connector}: {reason}")]
    InvalidOption {
        /// Connector name.
        connector: String,
        /// The option key.
        key: String,
        /// The value as given.
        value: String,
        /// Why it is invalid, including the accepted values where there is a list.
        reason: String,
    },

    /// A file system operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A Kafka client operation failed, or a message could not be decoded (`context` says
    /// which topic, partition and offset).
    #[error("Kafka: {context}: {reason}")]
    Kafka {
        /// Where: topic, partition, offset, or the client operation.
        context: String,
        /// What went wrong.
        reason: String,
    },

    /// An Arrow kernel, reader or writer failed.
    #[error("Arrow error: {0}")]
    Arrow(#[from] ArrowError),

    /// The Parquet reader or writer failed.
    #[error("Parquet error: {0}")]
    Parquet(#[from] ParquetError),

    /// One input record could not be decoded into the declared schema.
    ///
    /// `line` is the 1-based line in a text file (CSV, JSON lines); Parquet
    /// positions (row group, row) are part of `reason`.
    #[error("bad record in {}{}: {reason}", file.display(), record_location(*line, column.as_deref()))]
    BadRecord {
        /// The file the record came from.
        file: PathBuf,
        /// 1-based line number, when the format has lines.
        line: Option<u64>,
        /// The declared column that failed, when the failure is column-specific.
        column: Option<String>,
        /// What went wrong, e.g. `cannot cast 'abc' to Int64`.
        reason: String,
    },

    /// A file's columns do not fit the declared schema (missing NOT NULL column,
    /// or a type that cannot be cast at all).
    #[error(
        "schema mismatch in {}: column '{column}' is declared as {expected} but the file has {actual}",
        file.display()
    )]
    SchemaMismatch {
        /// The file.
        file: PathBuf,
        /// The declared column.
        column: String,
        /// The declared type (with `NOT NULL` when it applies).
        expected: String,
        /// What the file has (`no such column`, or its type).
        actual: String,
    },

    /// A declared column that a generating connector cannot produce.
    #[error(
        "connector {connector} has no column '{column}'; available columns: {}",
        available.join(", ")
    )]
    UnknownColumn {
        /// Connector name (with the table, e.g. `DATAGEN (table = 'bids')`).
        connector: String,
        /// The declared column.
        column: String,
        /// The columns the connector can produce.
        available: Vec<String>,
    },

    /// A declared column whose type cannot be produced from the connector's type.
    #[error(
        "connector {connector} cannot produce column '{column}' as {declared}: it is {actual} and there is no cast"
    )]
    IncompatibleColumn {
        /// Connector name.
        connector: String,
        /// The declared column.
        column: String,
        /// The declared type.
        declared: DataType,
        /// The connector's native type for the column.
        actual: DataType,
    },

    /// A feature or option value that exists in the product but is not built yet.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl ConnectorError {
    /// Whether retrying the same operation may succeed (a transient I/O
    /// condition). Configuration, schema and bad-record errors are never retryable.
    pub fn is_retryable(&self) -> bool {
        use std::io::ErrorKind as K;
        let io_retryable = |e: &std::io::Error| {
            matches!(
                e.kind(),
                K::Interrupted
                    | K::WouldBlock
                    | K::TimedOut
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::ConnectionRefused
                    | K::NotConnected
                    | K::ResourceBusy
            )
        };
        match self {
            Self::Io { source, .. } => io_retryable(source),
            Self::Arrow(ArrowError::IoError(_, e)) => io_retryable(e),
            _ => false,
        }
    }

    /// Shorthand for an [`ConnectorError::Io`] error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

fn did_you_mean_suffix(suggestion: Option<&str>) -> String {
    suggestion
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default()
}

fn record_location(line: Option<u64>, column: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(line) = line {
        let _ = write!(out, " line {line}");
    }
    if let Some(column) = column {
        if line.is_some() {
            out.push(',');
        }
        let _ = write!(out, " column {column}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_record_message_names_file_line_and_column() {
        let e = ConnectorError::BadRecord {
            file: PathBuf::from("data/x.csv"),
            line: Some(7),
            column: Some("price".into()),
            reason: "cannot cast 'abc' to Int64".into(),
        };
        assert_eq!(
            e.to_string(),
            "bad record in data/x.csv line 7, column price: cannot cast 'abc' to Int64"
        );
        let e = ConnectorError::BadRecord {
            file: PathBuf::from("x.json"),
            line: Some(3),
            column: None,
            reason: "malformed JSON".into(),
        };
        assert_eq!(e.to_string(), "bad record in x.json line 3: malformed JSON");
    }

    #[test]
    fn unknown_option_message_has_suggestion_and_valid_keys() {
        let e = ConnectorError::UnknownOption {
            connector: "FILES".into(),
            key: "pth".into(),
            suggestion: Some("path".into()),
            valid: vec!["path".into(), "format".into()],
        };
        assert_eq!(
            e.to_string(),
            "unknown option 'pth' for connector FILES (did you mean 'path'?); valid options: path, format"
        );
    }

    #[test]
    fn only_transient_io_is_retryable() {
        let timeout = ConnectorError::io("x", std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(timeout.is_retryable());
        let missing = ConnectorError::io("x", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!missing.is_retryable());
        assert!(!ConnectorError::Unsupported("x".into()).is_retryable());
    }
}
