//! Errors of the SQL front end, with positions and suggestions.

use datafusion::error::DataFusionError;

/// An error in a SQL statement. Positions are 1-based and relative to the whole text passed
/// to `execute`.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The text does not parse.
    #[error("syntax error at line {line}, column {column}: {message}")]
    Parse {
        /// What the parser expected and found.
        message: String,
        /// Line (1-based).
        line: u64,
        /// Column (1-based).
        column: u64,
    },
    /// `${NAME}` with no value configured.
    #[error("unresolved config variable ${{{name}}}: set it with config_var(\"{name}\", ...)")]
    UnresolvedConfigVar {
        /// The variable name.
        name: String,
    },
    /// A construct that LaminarDB does not run yet, or cannot run on an unbounded stream.
    #[error("{construct} is not supported yet{}", hint.as_ref().map(|h| format!(": {h}")).unwrap_or_default())]
    NotSupported {
        /// The construct, as the user wrote it.
        construct: String,
        /// What to do instead.
        hint: Option<String>,
    },
    /// A referenced source, stream or table does not exist.
    #[error("unknown {kind} '{name}'{}", suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default())]
    UnknownObject {
        /// "source", "stream", "table or stream", ...
        kind: &'static str,
        /// The name used.
        name: String,
        /// A close existing name.
        suggestion: Option<String>,
    },
    /// A referenced column does not exist.
    #[error("unknown column '{column}'{}{}", suggestion.as_ref().map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default(), if valid.is_empty() { String::new() } else { format!("; valid columns: {}", valid.join(", ")) })]
    UnknownColumn {
        /// The name used.
        column: String,
        /// A close existing column.
        suggestion: Option<String>,
        /// The columns in scope.
        valid: Vec<String>,
    },
    /// The statement is well-formed but invalid (bad watermark column, bad type, ...).
    #[error("{0}")]
    Invalid(String),
    /// Planning failed in DataFusion (type mismatch, unknown function, ...).
    #[error("{0}")]
    Plan(#[source] DataFusionError),
    /// A continuous query reads a reference table other than by a lookup join. The planner
    /// then plans it again reading the table's changelog, and reports that attempt's error
    /// if it fails too.
    #[error("{0}")]
    TableAsChangelog(String),
}

impl SqlError {
    /// A stable, SQLSTATE-like error class.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SqlError::Parse { .. } => "42601",
            SqlError::UnresolvedConfigVar { .. } => "42704",
            SqlError::NotSupported { .. } => "0A000",
            SqlError::UnknownObject { .. } => "42P01",
            SqlError::UnknownColumn { .. } => "42703",
            SqlError::Invalid(_) | SqlError::TableAsChangelog(_) => "42000",
            SqlError::Plan(_) => "42804",
        }
    }

    /// Shifts a parse position by the start of the statement inside the whole text.
    pub(crate) fn shifted(self, start_line: u64, start_column: u64) -> SqlError {
        match self {
            SqlError::Parse {
                message,
                line,
                column,
            } => SqlError::Parse {
                message,
                column: if line == 1 {
                    column + start_column - 1
                } else {
                    column
                },
                line: line + start_line - 1,
            },
            other => other,
        }
    }

    /// A "not supported yet" error.
    pub fn not_supported(construct: impl Into<String>, hint: Option<&str>) -> SqlError {
        SqlError::NotSupported {
            construct: construct.into(),
            hint: hint.map(str::to_string),
        }
    }
}

/// A close candidate for a misspelt name: edit distance at most 2 (or 1/3 of the length),
/// case-insensitive.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let word_lc = word.to_lowercase();
    let limit = (word.len() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (levenshtein(&word_lc, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("ordrs", ["orders", "bids"]),
            Some("orders".into())
        );
        assert_eq!(did_you_mean("xyz", ["orders", "bids"]), None);
        assert_eq!(did_you_mean("PRICE", ["price"]), Some("price".into()));
    }

    #[test]
    fn positions_shift_by_statement_start() {
        let e = SqlError::Parse {
            message: "m".into(),
            line: 1,
            column: 5,
        }
        .shifted(3, 10);
        assert!(matches!(
            e,
            SqlError::Parse {
                line: 3,
                column: 14,
                ..
            }
        ));
    }
}
