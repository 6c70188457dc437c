//! Errors raised by the streaming core.

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Result alias of this crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// An error raised while executing an operator graph.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Evaluating an expression failed (for example a division by zero or an invalid cast).
    #[error("operator '{operator}' failed: {source}")]
    Evaluation {
        /// Name of the operator (its stream).
        operator: String,
        /// The DataFusion error.
        #[source]
        source: DataFusionError,
    },
    /// An Arrow kernel failed.
    #[error("operator '{operator}' failed: {source}")]
    Arrow {
        /// Name of the operator.
        operator: String,
        /// The Arrow error.
        #[source]
        source: ArrowError,
    },
    /// Event-time column problems (NULL event time, wrong type).
    #[error("event time of '{node}': {reason}")]
    EventTime {
        /// Node (source or stream) name.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// A sink's connector failed.
    #[error("sink '{sink}' failed: {reason}")]
    Sink {
        /// Sink name.
        sink: String,
        /// What failed.
        reason: String,
    },
    /// Data a caller handed in breaks a rule of its target (a NULL primary key, a table
    /// beyond its row bound); nothing was changed.
    #[error("{0}")]
    InvalidData(String),
    /// The runtime is shut down.
    #[error("the runtime is shut down")]
    Shutdown,
    /// An internal invariant was breached: a bug.
    #[error(
        "internal error: {0}. This is a bug in LaminarDB; please report it with the SQL that triggered it"
    )]
    Internal(String),
}
