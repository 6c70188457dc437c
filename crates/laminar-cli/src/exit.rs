//! How the CLI ends: [`CliError`] carries the exit code (1 for SQL and configuration
//! errors, 2 for runtime failures) and the message printed on stderr.

use std::fmt::Display;

use laminar_db::DbError;

/// Exit code of SQL, configuration and usage errors.
pub(crate) const EXIT_USER: u8 = 1;
/// Exit code of runtime failures.
pub(crate) const EXIT_RUNTIME: u8 = 2;
/// Exit code when a second interrupt forces an immediate exit.
pub(crate) const EXIT_FORCED: i32 = 130;

/// An error that ends the command.
#[derive(Debug)]
pub(crate) struct CliError {
    /// Process exit code.
    pub(crate) code: u8,
    /// What went wrong, for stderr.
    pub(crate) message: String,
}

impl CliError {
    /// A SQL, configuration or usage error (exit code 1).
    pub(crate) fn user(message: impl Display) -> Self {
        CliError {
            code: EXIT_USER,
            message: message.to_string(),
        }
    }

    /// A runtime failure (exit code 2).
    pub(crate) fn runtime(message: impl Display) -> Self {
        CliError {
            code: EXIT_RUNTIME,
            message: message.to_string(),
        }
    }

    /// The failures a running pipeline reported (exit code 2).
    pub(crate) fn pipeline_failed(failures: &[String]) -> Self {
        let mut message = String::from("the pipeline failed:");
        for f in failures {
            message.push_str("\n  ");
            message.push_str(f);
        }
        CliError::runtime(message)
    }

    /// A database error, with `context` (such as the file name) in front.
    pub(crate) fn db(error: &DbError, context: Option<&str>) -> Self {
        let message = match context {
            Some(c) => format!("{c}: {error} [{}]", error.code()),
            None => format!("{error} [{}]", error.code()),
        };
        if error.is_user_error() {
            CliError::user(message)
        } else {
            CliError::runtime(message)
        }
    }
}

impl From<DbError> for CliError {
    fn from(error: DbError) -> Self {
        CliError::db(&error, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_errors_exit_1_and_runtime_errors_2() {
        let parse = DbError::SqlParse {
            message: "expected a statement".into(),
            line: 3,
            column: 7,
        };
        let e = CliError::db(&parse, Some("p.sql"));
        assert_eq!(e.code, EXIT_USER);
        assert!(
            e.message
                .starts_with("p.sql: SQL syntax error at line 3, column 7"),
            "{}",
            e.message
        );
        assert_eq!(
            CliError::from(DbError::Pipeline("boom".into())).code,
            EXIT_RUNTIME
        );
        let failed = CliError::pipeline_failed(&["sink 'o': disk full".into()]);
        assert_eq!(failed.code, EXIT_RUNTIME);
        assert!(failed.message.contains("disk full"));
    }
}
