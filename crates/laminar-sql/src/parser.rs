//! The streaming SQL parser: LaminarDB's statements (CREATE SOURCE/STREAM/SINK, SHOW,
//! DESCRIBE, EXPLAIN, DROP, INSERT, SELECT) parsed with sqlparser's tokenizer and parser
//! primitives. Streaming clauses that sqlparser does not know (`EMIT`, `ALLOW LATENESS`,
//! `LATE DATA TO`) are cut off the token stream before the query is parsed.

mod ddl;
mod joins;
mod split;
mod vars;

use sqlparser::ast::{Expr, Ident, ObjectName, ObjectNamePart, Query};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

pub use ddl::interval_to_millis;
pub use joins::{ASOF_MARKER, PROCTIME_VERSION, TEMPORAL_MARKER};
pub use split::{StatementText, split_statements};
pub use vars::substitute_vars;

use crate::error::SqlError;

/// Maximum nesting depth of expressions and queries (bounded recursion, never a stack
/// overflow).
pub const RECURSION_LIMIT: usize = 64;

/// Kinds of catalog objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `SOURCE`.
    Source,
    /// `STREAM`.
    Stream,
    /// `SINK`.
    Sink,
    /// `TABLE`.
    Table,
    /// `MATERIALIZED VIEW`.
    MaterializedView,
}

impl ObjectKind {
    /// The SQL keyword(s).
    pub fn keyword(self) -> &'static str {
        match self {
            ObjectKind::Source => "SOURCE",
            ObjectKind::Stream => "STREAM",
            ObjectKind::Sink => "SINK",
            ObjectKind::Table => "TABLE",
            ObjectKind::MaterializedView => "MATERIALIZED VIEW",
        }
    }
}

/// `WATERMARK FOR column AS column - delay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkSpec {
    /// Event-time column.
    pub column: String,
    /// Out-of-orderness bound in milliseconds.
    pub delay_ms: i64,
    /// The expression as written.
    pub expression: String,
}

/// `FROM NAME (k = v, ..)` / `INTO NAME (..)` / `FORMAT NAME WITH (..)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorSpec {
    /// Connector or format name, upper-cased.
    pub name: String,
    /// Options in the order written (keys as written, values unquoted).
    pub options: Vec<(String, String)>,
}

/// Streaming clauses after the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamingClauses {
    /// `ALLOW LATENESS ...`, as written.
    pub allow_lateness: Option<String>,
    /// `LATE DATA TO name`.
    pub late_data_to: Option<String>,
    /// `EMIT ...`, as written.
    pub emit: Option<String>,
    /// `state.ttl` of the stream or view (`WITH (..)`), in ms: how long an updating join
    /// keeps a row of an append-only input. A planning input, not a clause.
    pub state_ttl_ms: Option<i64>,
    /// `max_partitions` of the stream or view (`WITH (..)`): the most partitions a top-N
    /// keeps. A planning input, not a clause.
    pub max_partitions: Option<u64>,
}

impl StreamingClauses {
    /// True when no streaming clause was given (`state_ttl_ms` is not a clause).
    pub fn is_empty(&self) -> bool {
        self.allow_lateness.is_none() && self.late_data_to.is_none() && self.emit.is_none()
    }
}

/// `CREATE SOURCE`.
#[derive(Debug, Clone)]
pub struct CreateSource {
    /// Source name (normalized).
    pub name: String,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// Column definitions.
    pub columns: Vec<sqlparser::ast::ColumnDef>,
    /// `WATERMARK FOR`.
    pub watermark: Option<WatermarkSpec>,
    /// `FROM <connector> (...)`.
    pub connector: Option<ConnectorSpec>,
    /// `FORMAT <fmt> [WITH (...)]`.
    pub format: Option<ConnectorSpec>,
    /// `WITH (...)` source options.
    pub options: Vec<(String, String)>,
}

/// `CREATE STREAM name AS query`.
#[derive(Debug, Clone)]
pub struct CreateStream {
    /// Stream name (normalized).
    pub name: String,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// `WITH (...)` before `AS`.
    pub options: Vec<(String, String)>,
    /// The query.
    pub query: Box<Query>,
    /// Trailing streaming clauses.
    pub clauses: StreamingClauses,
    /// `CREATE MATERIALIZED VIEW`: the query's current result is kept and queryable.
    pub materialized: bool,
}

/// `CREATE TABLE`: a keyed reference table.
#[derive(Debug, Clone)]
pub struct CreateTable {
    /// Table name (normalized).
    pub name: String,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// Column definitions (the primary-key option removed).
    pub columns: Vec<sqlparser::ast::ColumnDef>,
    /// Primary-key columns (normalized), in key order.
    pub primary_key: Vec<String>,
    /// `FROM <connector> (...)`: where the rows come from (upserted by key).
    pub connector: Option<ConnectorSpec>,
    /// `FORMAT <fmt> [WITH (...)]`.
    pub format: Option<ConnectorSpec>,
    /// `WITH (...)` options.
    pub options: Vec<(String, String)>,
}

/// Input of a sink.
#[derive(Debug, Clone)]
pub enum SinkInput {
    /// `FROM name`.
    Object(String),
    /// `FROM (SELECT ...)`.
    Query(Box<Query>),
}

/// `CREATE SINK`.
#[derive(Debug, Clone)]
pub struct CreateSink {
    /// Sink name (normalized).
    pub name: String,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// What the sink reads.
    pub input: SinkInput,
    /// `WHERE` filter applied first.
    pub filter: Option<Expr>,
    /// `INTO <connector> (...)`; `None` = in-memory endpoint.
    pub connector: Option<ConnectorSpec>,
    /// `FORMAT ...`.
    pub format: Option<ConnectorSpec>,
}

/// What `SHOW` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowKind {
    /// `SHOW SOURCES`.
    Sources,
    /// `SHOW STREAMS`.
    Streams,
    /// `SHOW SINKS`.
    Sinks,
    /// `SHOW TABLES`.
    Tables,
    /// `SHOW MATERIALIZED VIEWS`.
    MaterializedViews,
    /// `SHOW QUERIES`.
    Queries,
}

/// A parsed statement.
#[derive(Debug, Clone)]
pub enum StreamingStatement {
    /// `CREATE SOURCE`.
    CreateSource(CreateSource),
    /// `CREATE STREAM`.
    CreateStream(CreateStream),
    /// `CREATE SINK`.
    CreateSink(Box<CreateSink>),
    /// `CREATE TABLE`.
    CreateTable(CreateTable),
    /// `DELETE FROM table [WHERE ...]`.
    Delete {
        /// Target (normalized).
        table: String,
        /// The `WHERE` condition.
        selection: Option<Expr>,
    },
    /// `DROP <kind> [IF EXISTS] name [CASCADE]`.
    Drop {
        /// Object kind.
        kind: ObjectKind,
        /// Name (normalized).
        name: String,
        /// `IF EXISTS`.
        if_exists: bool,
        /// `CASCADE`.
        cascade: bool,
    },
    /// `SHOW ...`.
    Show(ShowKind),
    /// `DESCRIBE [EXTENDED] name`.
    Describe {
        /// Object name.
        name: String,
        /// `EXTENDED`.
        extended: bool,
    },
    /// `EXPLAIN [ANALYZE] statement`.
    Explain {
        /// `ANALYZE`.
        analyze: bool,
        /// The explained statement (never executed).
        statement: Box<StreamingStatement>,
    },
    /// `INSERT INTO name [(cols)] VALUES ... | SELECT ...`.
    Insert {
        /// Target (normalized).
        table: String,
        /// Explicit column list (normalized), empty = all in order.
        columns: Vec<String>,
        /// The rows.
        source: Box<Query>,
    },
    /// `SUBSCRIBE name [WHERE ..]`: the live rows of a source or stream (with `_op` for a
    /// changelog), as the continuous query `SELECT * FROM name [WHERE ..]`.
    Subscribe {
        /// The source or stream (normalized).
        name: String,
        /// `SELECT * FROM name [WHERE ..]`.
        query: Box<Query>,
    },
    /// A query: continuous over sources/streams.
    Query {
        /// The query.
        query: Box<Query>,
        /// Trailing streaming clauses.
        clauses: StreamingClauses,
    },
}

impl StreamingStatement {
    /// Short name of the statement type (for `DdlInfo`).
    pub fn statement_type(&self) -> &'static str {
        match self {
            StreamingStatement::CreateSource(_) => "CREATE SOURCE",
            StreamingStatement::CreateStream(c) if c.materialized => "CREATE MATERIALIZED VIEW",
            StreamingStatement::CreateStream(_) => "CREATE STREAM",
            StreamingStatement::CreateSink(_) => "CREATE SINK",
            StreamingStatement::CreateTable(_) => "CREATE TABLE",
            StreamingStatement::Delete { .. } => "DELETE",
            StreamingStatement::Drop { kind, .. } => match kind {
                ObjectKind::Source => "DROP SOURCE",
                ObjectKind::Stream => "DROP STREAM",
                ObjectKind::Sink => "DROP SINK",
                ObjectKind::Table => "DROP TABLE",
                ObjectKind::MaterializedView => "DROP MATERIALIZED VIEW",
            },
            StreamingStatement::Show(_) => "SHOW",
            StreamingStatement::Describe { .. } => "DESCRIBE",
            StreamingStatement::Explain { .. } => "EXPLAIN",
            StreamingStatement::Insert { .. } => "INSERT",
            StreamingStatement::Query { .. } => "SELECT",
            StreamingStatement::Subscribe { .. } => "SUBSCRIBE",
        }
    }
}

/// Parses one statement (as returned by [`split_statements`]); positions in errors are
/// relative to the statement, use [`parse_script_statement`] for absolute ones.
pub fn parse_statement(sql: &str) -> Result<StreamingStatement, SqlError> {
    let tokens = tokenize(sql)?;
    let mut stream = TokenStream::new(tokens);
    ddl::parse(&mut stream).map_err(|e| match e {
        // An error at the end of input has no token position: point after the last character.
        SqlError::Parse {
            message, line: 0, ..
        } => {
            let line = sql.lines().count().max(1) as u64;
            let column = sql.lines().last().map_or(0, |l| l.chars().count()) as u64 + 1;
            SqlError::Parse {
                message,
                line,
                column,
            }
        }
        other => other,
    })
}

/// Parses one statement of a script, reporting positions relative to the whole script.
pub fn parse_script_statement(stmt: &StatementText) -> Result<StreamingStatement, SqlError> {
    parse_statement(&stmt.text).map_err(|e| e.shifted(stmt.line, stmt.column))
}

fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, SqlError> {
    let dialect = GenericDialect {};
    Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::Parse {
            message: e.message.clone(),
            line: e.location.line,
            column: e.location.column,
        })
}

/// A token vector with a cursor, from which sub-parsers are built.
pub(crate) struct TokenStream {
    tokens: Vec<TokenWithSpan>,
}

impl TokenStream {
    fn new(tokens: Vec<TokenWithSpan>) -> Self {
        let tokens = tokens
            .into_iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .collect();
        TokenStream { tokens }
    }

    /// A sqlparser parser over `tokens[range]`.
    pub(crate) fn parser(&self, start: usize, end: usize) -> Parser<'static> {
        static DIALECT: GenericDialect = GenericDialect {};
        let end = end.min(self.tokens.len());
        let start = start.min(end);
        Parser::new(&DIALECT)
            .with_recursion_limit(RECURSION_LIMIT)
            .with_tokens_with_locations(self.tokens[start..end].to_vec())
    }

    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn token(&self, i: usize) -> Option<&TokenWithSpan> {
        self.tokens.get(i)
    }

    pub(crate) fn remove(&mut self, i: usize) {
        if i < self.tokens.len() {
            self.tokens.remove(i);
        }
    }
}

/// Converts a sqlparser error into a positioned [`SqlError::Parse`].
pub(crate) fn parse_error(e: ParserError, fallback: Option<&TokenWithSpan>) -> SqlError {
    let text = match e {
        ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
        ParserError::RecursionLimitExceeded => {
            let (line, column) = fallback
                .map(|t| (t.span.start.line, t.span.start.column))
                .unwrap_or((1, 1));
            return SqlError::Parse {
                message: format!(
                    "statement nests deeper than the limit of {RECURSION_LIMIT} levels"
                ),
                line,
                column,
            };
        }
    };
    // sqlparser appends " at Line: L, Column: C".
    if let Some(idx) = text.rfind(" at Line: ") {
        let tail = &text[idx + " at Line: ".len()..];
        let mut parts = tail.split(", Column: ");
        let line = parts.next().and_then(|l| l.trim().parse().ok());
        let column = parts.next().and_then(|c| c.trim().parse().ok());
        if let (Some(line), Some(column)) = (line, column) {
            return SqlError::Parse {
                message: text[..idx].to_string(),
                line,
                column,
            };
        }
    }
    let (line, column) = fallback
        .map(|t| (t.span.start.line, t.span.start.column))
        .unwrap_or((1, 1));
    SqlError::Parse {
        message: text,
        line,
        column,
    }
}

/// Normalizes an identifier the way DataFusion does: unquoted -> lower case.
pub fn normalize_ident(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// Normalizes a single-part object name; multi-part names are rejected.
pub fn normalize_name(name: &ObjectName) -> Result<String, SqlError> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => Ok(normalize_ident(ident)),
        _ => Err(SqlError::Invalid(format!(
            "object names have one part; '{name}' is qualified"
        ))),
    }
}

#[cfg(test)]
mod tests;
