//! Splitting SQL text into statements the way `LaminarDB::execute` does (`;` outside
//! quotes and comments), so the shell can run statements one at a time, print each result,
//! know when a multi-line statement is complete, and report error positions relative to the
//! whole input.

use laminar_db::DbError;

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement<'a> {
    /// The text, from its first non-blank character (a leading comment included) up to,
    /// not including, the `;`.
    pub(crate) text: &'a str,
    /// 1-based line of the first character in the script.
    pub(crate) line: u64,
    /// 1-based column (in characters) of the first character.
    pub(crate) column: u64,
}

impl Statement<'_> {
    /// Moves the position of a syntax error in this statement (which the library reports
    /// relative to the statement) to the position in the whole script.
    pub(crate) fn locate(&self, error: DbError) -> DbError {
        match error {
            DbError::SqlParse {
                message,
                line,
                column,
            } => DbError::SqlParse {
                message,
                line: line + self.line - 1,
                column: if line == 1 {
                    column + self.column - 1
                } else {
                    column
                },
            },
            other => other,
        }
    }
}

/// Where the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Code,
    /// Inside a quoted string or identifier opened by this character.
    Quoted(char),
    LineComment,
    /// Inside `/* */` comments nested this deep.
    BlockComment(u32),
}

/// The result of scanning a script.
struct Scan<'a> {
    statements: Vec<Statement<'a>>,
    /// The scan ended inside a string or a block comment.
    open: bool,
    /// Code (not a comment, not blank) follows the last `;`.
    trailing_code: bool,
}

fn scan(script: &str) -> Scan<'_> {
    let mut statements = Vec::new();
    let mut state = State::Code;
    // Start (byte, line, column) of the current statement and whether it has code.
    let mut start: Option<(usize, u64, u64)> = None;
    let mut has_code = false;
    let (mut line, mut column) = (1u64, 1u64);
    let mut chars = script.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next = chars.peek().map(|&(_, n)| n);
        let mut width = 1; // characters consumed
        match state {
            State::Code => {
                if c == ';' {
                    if has_code && let Some((s, l, col)) = start {
                        statements.push(Statement {
                            text: script[s..i].trim_end(),
                            line: l,
                            column: col,
                        });
                    }
                    start = None;
                    has_code = false;
                } else if !c.is_whitespace() {
                    if start.is_none() {
                        start = Some((i, line, column));
                    }
                    if c == '-' && next == Some('-') {
                        state = State::LineComment;
                    } else if c == '/' && next == Some('*') {
                        state = State::BlockComment(1);
                        chars.next();
                        width = 2;
                    } else {
                        has_code = true;
                        if matches!(c, '\'' | '"' | '`') {
                            state = State::Quoted(c);
                        }
                    }
                }
            }
            State::Quoted(q) => {
                if c == q {
                    if next == Some(q) {
                        // A doubled quote is an escaped quote.
                        chars.next();
                        width = 2;
                    } else {
                        state = State::Code;
                    }
                }
            }
            State::LineComment => {
                if c == '\n' {
                    state = State::Code;
                }
            }
            State::BlockComment(depth) => {
                if c == '/' && next == Some('*') {
                    state = State::BlockComment(depth + 1);
                    chars.next();
                    width = 2;
                } else if c == '*' && next == Some('/') {
                    state = if depth == 1 {
                        State::Code
                    } else {
                        State::BlockComment(depth - 1)
                    };
                    chars.next();
                    width = 2;
                }
            }
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += width;
        }
    }
    if has_code && let Some((s, l, col)) = start {
        statements.push(Statement {
            text: script[s..].trim_end(),
            line: l,
            column: col,
        });
    }
    Scan {
        statements,
        open: matches!(state, State::Quoted(_) | State::BlockComment(_)),
        trailing_code: has_code,
    }
}

/// The statements of `script`, skipping empty ones and ones holding only comments.
pub(crate) fn split(script: &str) -> Vec<Statement<'_>> {
    scan(script).statements
}

/// True when `buffer` holds at least one statement and ends with a `;` outside quotes and
/// comments (trailing blanks and comments allowed): the shell then runs it.
pub(crate) fn is_complete(buffer: &str) -> bool {
    let s = scan(buffer);
    !s.open && !s.trailing_code && !s.statements.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(script: &str) -> Vec<&str> {
        split(script).into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn splits_outside_quotes_and_comments() {
        assert_eq!(
            texts(
                "CREATE SOURCE a (x INT);\n  SELECT ';' FROM a -- c;\n; /* ; */ SELECT \"a;b\" FROM a"
            ),
            vec![
                "CREATE SOURCE a (x INT)",
                "SELECT ';' FROM a -- c;",
                "/* ; */ SELECT \"a;b\" FROM a"
            ]
        );
        assert_eq!(
            texts("SELECT 'it''s; fine'; ;; -- only a comment;"),
            vec!["SELECT 'it''s; fine'"]
        );
        assert!(texts(" \n -- nothing\n").is_empty());
    }

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let s = split("SHOW SOURCES;\n\n   SELECT x\n FROM a;");
        assert_eq!((s[0].line, s[0].column), (1, 1));
        assert_eq!((s[1].line, s[1].column), (3, 4));
        let e = s[1].locate(DbError::SqlParse {
            message: "m".into(),
            line: 1,
            column: 8,
        });
        assert!(
            matches!(
                e,
                DbError::SqlParse {
                    line: 3,
                    column: 11,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = s[1].locate(DbError::SqlParse {
            message: "m".into(),
            line: 2,
            column: 2,
        });
        assert!(
            matches!(
                e,
                DbError::SqlParse {
                    line: 4,
                    column: 2,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn completeness_of_shell_input() {
        assert!(is_complete("SHOW SOURCES;"));
        assert!(is_complete("CREATE SOURCE a (x INT)\n;  -- done"));
        assert!(is_complete("SELECT 1; SELECT 2;"));
        assert!(!is_complete("CREATE SOURCE a (x INT)"));
        assert!(!is_complete("SELECT 'a;"));
        assert!(!is_complete("SELECT 1 /* ; */"));
        assert!(!is_complete("SELECT 1; SELECT 2"));
        assert!(!is_complete("/* unterminated ; "));
        assert!(!is_complete(";"));
        assert!(!is_complete(""));
    }
}
