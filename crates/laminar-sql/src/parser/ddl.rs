//! Statement grammar: which statement a token stream holds and how each streaming statement is
//! parsed.

use sqlparser::ast::{BinaryOperator, Expr, Interval, Statement, TableObject, Value};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::{
    ConnectorSpec, CreateSink, CreateSource, CreateStream, CreateTable, ObjectKind, ShowKind,
    SinkInput, StreamingClauses, StreamingStatement, TokenStream, WatermarkSpec, normalize_ident,
    normalize_name, parse_error,
};
use crate::error::SqlError;

type PResult<T> = Result<T, SqlError>;

/// Parses the statement held by `ts`.
pub(crate) fn parse(ts: &mut TokenStream) -> PResult<StreamingStatement> {
    parse_from(ts, 0)
}

fn word(ts: &TokenStream, i: usize) -> Option<String> {
    match ts.token(i).map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_uppercase()),
        _ => None,
    }
}

fn parse_from(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    let first = word(ts, start);
    match first.as_deref() {
        Some("CREATE") => parse_create(ts, start),
        Some("DROP") => parse_drop(ts, start),
        Some("SHOW") => parse_show(ts, start),
        Some("DESCRIBE") | Some("DESC") => parse_describe(ts, start),
        Some("EXPLAIN") => {
            let analyze = word(ts, start + 1).as_deref() == Some("ANALYZE");
            let inner_start = start + 1 + usize::from(analyze);
            if inner_start >= ts.len()
                || matches!(ts.token(inner_start).map(|t| &t.token), Some(Token::EOF))
            {
                return Err(positioned(
                    ts,
                    inner_start,
                    "EXPLAIN needs a statement to explain",
                ));
            }
            // `EXPLAIN ANALYZE <name>`: the running graph of an existing stream.
            if analyze
                && matches!(
                    ts.token(inner_start).map(|t| &t.token),
                    Some(Token::Word(_))
                )
                && matches!(
                    ts.token(inner_start + 1).map(|t| &t.token),
                    None | Some(Token::EOF)
                )
            {
                let mut p = ts.parser(inner_start, inner_start + 1);
                let name = normalize_name(&p.parse_object_name(false).map_err(pe(&p))?)?;
                return Ok(StreamingStatement::Explain {
                    analyze,
                    statement: Box::new(StreamingStatement::Describe {
                        name,
                        extended: false,
                    }),
                });
            }
            let statement = parse_from(ts, inner_start)?;
            Ok(StreamingStatement::Explain {
                analyze,
                statement: Box::new(statement),
            })
        }
        Some("INSERT") => parse_insert(ts, start),
        Some("DELETE") => parse_delete(ts, start),
        Some("SELECT") | Some("WITH") | Some("VALUES") => parse_query_statement(ts, start),
        Some("SUBSCRIBE") => parse_subscribe(ts, start),
        _ if matches!(ts.token(start).map(|t| &t.token), Some(Token::LParen)) => {
            parse_query_statement(ts, start)
        }
        _ => {
            // Let sqlparser tell a syntax error from a statement we do not run.
            let mut p = ts.parser(start, ts.len());
            match p.parse_statement() {
                Ok(stmt) => Err(SqlError::not_supported(
                    format!("the statement '{}'", statement_head(&stmt)),
                    Some(
                        "LaminarDB runs CREATE SOURCE/STREAM/SINK/TABLE, DROP, SHOW, DESCRIBE, EXPLAIN, INSERT, DELETE, SELECT and SUBSCRIBE",
                    ),
                )),
                Err(e) => Err(parse_error(e, ts.token(start))),
            }
        }
    }
}

fn statement_head(stmt: &Statement) -> String {
    stmt.to_string()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn positioned(ts: &TokenStream, i: usize, message: &str) -> SqlError {
    let (line, column) = ts
        .token(i.min(ts.len().saturating_sub(1)))
        .map(|t| (t.span.start.line, t.span.start.column))
        .unwrap_or((1, 1));
    SqlError::Parse {
        message: message.to_string(),
        line,
        column,
    }
}

fn err(p: &Parser<'_>, message: impl Into<String>) -> SqlError {
    let t = p.peek_token();
    SqlError::Parse {
        message: message.into(),
        line: t.span.start.line,
        column: t.span.start.column,
    }
}

fn pe<'a>(p: &'a Parser<'_>) -> impl Fn(sqlparser::parser::ParserError) -> SqlError + 'a {
    move |e| {
        let t = p.peek_token();
        parse_error(e, Some(&t))
    }
}

fn peek_word(p: &Parser<'_>, w: &str) -> bool {
    matches!(&p.peek_token().token, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w))
}

fn parse_word(p: &mut Parser<'_>, w: &str) -> bool {
    if peek_word(p, w) {
        p.next_token();
        true
    } else {
        false
    }
}

fn expect_word(p: &mut Parser<'_>, w: &str) -> PResult<()> {
    if parse_word(p, w) {
        Ok(())
    } else {
        Err(err(
            p,
            format!("expected {w}, found {}", p.peek_token().token),
        ))
    }
}

fn expect_end(p: &Parser<'_>) -> PResult<()> {
    match &p.peek_token().token {
        Token::EOF => Ok(()),
        other => Err(err(
            p,
            format!("unexpected '{other}' after the end of the statement"),
        )),
    }
}

/// Index of the first top-level streaming clause (`EMIT`, `ALLOW LATENESS`, `LATE DATA TO`)
/// at or after `start`, or the token count.
fn clause_cut(ts: &TokenStream, start: usize) -> usize {
    let mut depth = 0i64;
    for i in start..ts.len() {
        match ts.token(i).map(|t| &t.token) {
            Some(Token::LParen) => depth += 1,
            Some(Token::RParen) => depth -= 1,
            _ if depth == 0 => {
                let w = word(ts, i);
                let next = word(ts, i + 1);
                match (w.as_deref(), next.as_deref()) {
                    (Some("EMIT"), _)
                    | (Some("ALLOW"), Some("LATENESS"))
                    | (Some("LATE"), Some("DATA")) => {
                        return i;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    ts.len()
}

fn parse_clauses(ts: &TokenStream, cut: usize) -> PResult<StreamingClauses> {
    let mut clauses = StreamingClauses::default();
    let mut i = cut;
    while i < ts.len() {
        let (key, skip) = match (word(ts, i).as_deref(), word(ts, i + 1).as_deref()) {
            (Some("EMIT"), _) => ("EMIT", 1),
            (Some("ALLOW"), Some("LATENESS")) => ("ALLOW", 2),
            (Some("LATE"), Some("DATA")) => ("LATE", 2),
            _ if matches!(ts.token(i).map(|t| &t.token), Some(Token::EOF)) => break,
            _ => {
                return Err(positioned(
                    ts,
                    i,
                    "expected EMIT, ALLOW LATENESS or LATE DATA TO",
                ));
            }
        };
        let body_start = i + skip;
        let mut end = body_start;
        while end < ts.len() {
            let w = word(ts, end);
            let n = word(ts, end + 1);
            let stop = matches!(
                (w.as_deref(), n.as_deref()),
                (Some("EMIT"), _)
                    | (Some("ALLOW"), Some("LATENESS"))
                    | (Some("LATE"), Some("DATA"))
            ) || matches!(ts.token(end).map(|t| &t.token), Some(Token::EOF));
            if stop {
                break;
            }
            end += 1;
        }
        let text = (body_start..end)
            .filter_map(|j| ts.token(j).map(|t| t.token.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() {
            return Err(positioned(
                ts,
                body_start,
                &format!("{key} clause is incomplete"),
            ));
        }
        if key == "EMIT"
            && let Err(e) = crate::plan::parse_emit(&text)
        {
            return Err(positioned(ts, body_start, &e.to_string()));
        }
        let slot = match key {
            "EMIT" => &mut clauses.emit,
            "ALLOW" => &mut clauses.allow_lateness,
            _ => &mut clauses.late_data_to,
        };
        if slot.is_some() {
            return Err(positioned(ts, i, &format!("{key} clause given twice")));
        }
        *slot = Some(text);
        i = end;
    }
    Ok(clauses)
}

fn parse_create(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    let mut kind_at = start + 1;
    if word(ts, kind_at).as_deref() == Some("OR")
        && word(ts, kind_at + 1).as_deref() == Some("REPLACE")
    {
        kind_at += 2;
    }
    match word(ts, kind_at).as_deref() {
        Some("SOURCE") => parse_create_source(ts, start),
        Some("STREAM") => parse_create_stream(ts, start),
        Some("SINK") => parse_create_sink(ts, start),
        Some("MATERIALIZED") => parse_create_stream(ts, start),
        Some("TABLE") => parse_create_table(ts, start),
        _ => {
            let mut p = ts.parser(start, ts.len());
            match p.parse_statement() {
                Ok(stmt) => Err(SqlError::not_supported(
                    format!("the statement '{}'", statement_head(&stmt)),
                    Some("CREATE takes SOURCE, STREAM or SINK"),
                )),
                Err(_) => Err(positioned(
                    ts,
                    kind_at,
                    "expected SOURCE, STREAM, SINK, TABLE or MATERIALIZED VIEW after CREATE",
                )),
            }
        }
    }
}

fn parse_create_prefix(p: &mut Parser<'_>, kind: &str) -> PResult<(bool, bool, String)> {
    p.expect_keyword(Keyword::CREATE).map_err(pe(p))?;
    let or_replace = p.parse_keywords(&[Keyword::OR, Keyword::REPLACE]);
    for kind_word in kind.split(' ') {
        expect_word(p, kind_word)?;
    }
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = p.parse_object_name(false).map_err(pe(p))?;
    let name = normalize_name(&name)?;
    if or_replace && if_not_exists {
        return Err(err(p, "OR REPLACE and IF NOT EXISTS cannot be combined"));
    }
    Ok((or_replace, if_not_exists, name))
}

fn parse_create_source(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    let mut p = ts.parser(start, ts.len());
    let (or_replace, if_not_exists, name) = parse_create_prefix(&mut p, "SOURCE")?;
    let mut columns = Vec::new();
    let mut watermark = None;
    if p.consume_token(&Token::LParen) {
        loop {
            if parse_word(&mut p, "WATERMARK") {
                if watermark.is_some() {
                    return Err(err(&p, "a source has at most one WATERMARK FOR clause"));
                }
                p.expect_keyword(Keyword::FOR).map_err(pe(&p))?;
                let column = normalize_ident(&p.parse_identifier().map_err(pe(&p))?);
                p.expect_keyword(Keyword::AS).map_err(pe(&p))?;
                let expr = p.parse_expr().map_err(pe(&p))?;
                let delay_ms = watermark_delay(&column, &expr)?;
                watermark = Some(WatermarkSpec {
                    column,
                    delay_ms,
                    expression: expr.to_string(),
                });
            } else if p.peek_keyword(Keyword::PRIMARY) || p.peek_keyword(Keyword::CONSTRAINT) {
                return Err(err(
                    &p,
                    "sources have no primary key; declare a TABLE for keyed reference data",
                ));
            } else {
                columns.push(p.parse_column_def().map_err(pe(&p))?);
            }
            if p.consume_token(&Token::Comma) {
                continue;
            }
            p.expect_token(&Token::RParen).map_err(pe(&p))?;
            break;
        }
    }
    let (connector, format, options) = parse_input_clauses(&mut p)?;
    expect_end(&p)?;
    Ok(StreamingStatement::CreateSource(CreateSource {
        name,
        or_replace,
        if_not_exists,
        columns,
        watermark,
        connector,
        format,
        options,
    }))
}

fn parse_create_stream(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    rewrite_window_tvfs(ts, start)?;
    let hints = super::joins::rewrite_join_syntax(ts, start)?;
    let cut = clause_cut(ts, start);
    let clauses = parse_clauses(ts, cut)?;
    let mut p = ts.parser(start, cut);
    let materialized = word(ts, start + 1).as_deref() == Some("MATERIALIZED")
        || word(ts, start + 3).as_deref() == Some("MATERIALIZED");
    let kind = if materialized {
        "MATERIALIZED VIEW"
    } else {
        "STREAM"
    };
    let (or_replace, if_not_exists, name) = parse_create_prefix(&mut p, kind)?;
    let options = if p.parse_keyword(Keyword::WITH) {
        parse_options(&mut p)?
    } else {
        Vec::new()
    };
    p.expect_keyword(Keyword::AS).map_err(pe(&p))?;
    let mut query = p.parse_query().map_err(pe(&p))?;
    expect_end(&p)?;
    hints.apply(&mut query)?;
    Ok(StreamingStatement::CreateStream(CreateStream {
        name,
        or_replace,
        if_not_exists,
        options,
        query,
        clauses,
        materialized,
    }))
}

fn parse_create_sink(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    rewrite_window_tvfs(ts, start)?;
    let hints = super::joins::rewrite_join_syntax(ts, start)?;
    let mut p = ts.parser(start, ts.len());
    let (or_replace, if_not_exists, name) = parse_create_prefix(&mut p, "SINK")?;
    p.expect_keyword(Keyword::FROM).map_err(pe(&p))?;
    let input = if p.consume_token(&Token::LParen) {
        let mut q = p.parse_query().map_err(pe(&p))?;
        hints.apply(&mut q)?;
        p.expect_token(&Token::RParen).map_err(pe(&p))?;
        SinkInput::Query(q)
    } else {
        let n = p.parse_object_name(false).map_err(pe(&p))?;
        SinkInput::Object(normalize_name(&n)?)
    };
    let filter = if p.parse_keyword(Keyword::WHERE) {
        Some(p.parse_expr().map_err(pe(&p))?)
    } else {
        None
    };
    let mut connector = None;
    let mut format = None;
    loop {
        if p.parse_keyword(Keyword::INTO) {
            connector = Some(parse_connector(&mut p)?);
        } else if p.parse_keyword(Keyword::FORMAT) {
            format = Some(parse_format(&mut p)?);
        } else {
            break;
        }
    }
    expect_end(&p)?;
    Ok(StreamingStatement::CreateSink(Box::new(CreateSink {
        name,
        or_replace,
        if_not_exists,
        input,
        filter,
        connector,
        format,
    })))
}

/// `FROM` connector, `FORMAT` and `WITH` options of a source or table.
type InputClauses = (
    Option<ConnectorSpec>,
    Option<ConnectorSpec>,
    Vec<(String, String)>,
);

/// `[FROM <connector> (..)] [FORMAT <fmt> [WITH (..)]] [WITH (..)]` in any order, as sources
/// and tables take them.
fn parse_input_clauses(p: &mut Parser<'_>) -> PResult<InputClauses> {
    let mut connector = None;
    let mut format = None;
    let mut options = Vec::new();
    loop {
        if p.parse_keyword(Keyword::FROM) {
            if connector.is_some() {
                return Err(err(p, "FROM given twice"));
            }
            connector = Some(parse_connector(p)?);
        } else if p.parse_keyword(Keyword::FORMAT) {
            format = Some(parse_format(p)?);
        } else if p.parse_keyword(Keyword::WITH) {
            options.extend(parse_options(p)?);
        } else {
            break;
        }
    }
    Ok((connector, format, options))
}

fn parse_connector(p: &mut Parser<'_>) -> PResult<ConnectorSpec> {
    let name = match p.next_token().token {
        Token::Word(w) => w.value.to_uppercase(),
        other => return Err(err(p, format!("expected a connector name, found {other}"))),
    };
    let options = if p.peek_token().token == Token::LParen {
        parse_options(p)?
    } else {
        Vec::new()
    };
    Ok(ConnectorSpec { name, options })
}

fn parse_format(p: &mut Parser<'_>) -> PResult<ConnectorSpec> {
    let name = match p.next_token().token {
        Token::Word(w) => w.value.to_lowercase(),
        Token::SingleQuotedString(s) => s.to_lowercase(),
        other => return Err(err(p, format!("expected a format name, found {other}"))),
    };
    let options = if p.parse_keyword(Keyword::WITH) {
        parse_options(p)?
    } else {
        Vec::new()
    };
    Ok(ConnectorSpec { name, options })
}

/// `( key = value, ... )`; keys may be dotted words or quoted strings.
fn parse_options(p: &mut Parser<'_>) -> PResult<Vec<(String, String)>> {
    p.expect_token(&Token::LParen).map_err(pe(p))?;
    let mut out = Vec::new();
    if p.consume_token(&Token::RParen) {
        return Ok(out);
    }
    loop {
        let mut key = match p.next_token().token {
            Token::Word(w) => w.value,
            Token::SingleQuotedString(s) => s,
            other => return Err(err(p, format!("expected an option name, found {other}"))),
        };
        while p.consume_token(&Token::Period) {
            match p.next_token().token {
                Token::Word(w) => {
                    key.push('.');
                    key.push_str(&w.value);
                }
                other => {
                    return Err(err(
                        p,
                        format!("expected an option name part, found {other}"),
                    ));
                }
            }
        }
        p.expect_token(&Token::Eq).map_err(pe(p))?;
        let value = match p.next_token().token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            Token::Word(w) => w.value,
            Token::Minus => match p.next_token().token {
                Token::Number(n, _) => format!("-{n}"),
                other => {
                    return Err(err(
                        p,
                        format!("expected a number after '-', found {other}"),
                    ));
                }
            },
            other => {
                return Err(err(
                    p,
                    format!("expected a value for option '{key}', found {other}"),
                ));
            }
        };
        if out
            .iter()
            .any(|(k, _): &(String, String)| k.eq_ignore_ascii_case(&key))
        {
            return Err(err(p, format!("option '{key}' given twice")));
        }
        out.push((key, value));
        if p.consume_token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen).map_err(pe(p))?;
        return Ok(out);
    }
}

fn parse_drop(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    let mut p = ts.parser(start, ts.len());
    p.expect_keyword(Keyword::DROP).map_err(pe(&p))?;
    let kind = if parse_word(&mut p, "SOURCE") {
        ObjectKind::Source
    } else if parse_word(&mut p, "STREAM") {
        ObjectKind::Stream
    } else if parse_word(&mut p, "SINK") {
        ObjectKind::Sink
    } else if p.parse_keyword(Keyword::TABLE) {
        ObjectKind::Table
    } else if p.parse_keywords(&[Keyword::MATERIALIZED, Keyword::VIEW]) {
        ObjectKind::MaterializedView
    } else {
        return Err(err(
            &p,
            "expected SOURCE, STREAM, SINK, TABLE or MATERIALIZED VIEW after DROP",
        ));
    };
    let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = normalize_name(&p.parse_object_name(false).map_err(pe(&p))?)?;
    let cascade = p.parse_keyword(Keyword::CASCADE);
    expect_end(&p)?;
    Ok(StreamingStatement::Drop {
        kind,
        name,
        if_exists,
        cascade,
    })
}

fn parse_show(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    let mut p = ts.parser(start, ts.len());
    p.expect_keyword(Keyword::SHOW).map_err(pe(&p))?;
    let kind = if parse_word(&mut p, "SOURCES") {
        ShowKind::Sources
    } else if parse_word(&mut p, "STREAMS") {
        ShowKind::Streams
    } else if parse_word(&mut p, "SINKS") {
        ShowKind::Sinks
    } else if parse_word(&mut p, "TABLES") {
        ShowKind::Tables
    } else if parse_word(&mut p, "QUERIES") {
        ShowKind::Queries
    } else if parse_word(&mut p, "MATERIALIZED") {
        expect_word(&mut p, "VIEWS")?;
        ShowKind::MaterializedViews
    } else {
        return Err(err(
            &p,
            "expected SOURCES, STREAMS, SINKS, TABLES, MATERIALIZED VIEWS or QUERIES after SHOW",
        ));
    };
    expect_end(&p)?;
    Ok(StreamingStatement::Show(kind))
}

fn parse_describe(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    let mut p = ts.parser(start, ts.len());
    p.next_token();
    let extended = parse_word(&mut p, "EXTENDED");
    let name = normalize_name(&p.parse_object_name(false).map_err(pe(&p))?)?;
    expect_end(&p)?;
    Ok(StreamingStatement::Describe { name, extended })
}

fn parse_create_table(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    use sqlparser::ast::ColumnOption;
    let mut p = ts.parser(start, ts.len());
    let (or_replace, if_not_exists, name) = parse_create_prefix(&mut p, "TABLE")?;
    let mut columns = Vec::new();
    let mut primary_key: Vec<String> = Vec::new();
    p.expect_token(&Token::LParen).map_err(pe(&p))?;
    loop {
        if p.parse_keywords(&[Keyword::PRIMARY, Keyword::KEY]) {
            if !primary_key.is_empty() {
                return Err(err(&p, "a table has one PRIMARY KEY"));
            }
            p.expect_token(&Token::LParen).map_err(pe(&p))?;
            loop {
                primary_key.push(normalize_ident(&p.parse_identifier().map_err(pe(&p))?));
                if !p.consume_token(&Token::Comma) {
                    break;
                }
            }
            p.expect_token(&Token::RParen).map_err(pe(&p))?;
        } else if p.peek_keyword(Keyword::CONSTRAINT) || p.peek_keyword(Keyword::UNIQUE) {
            return Err(err(
                &p,
                "tables take PRIMARY KEY (columns) as their only constraint",
            ));
        } else if parse_word(&mut p, "WATERMARK") {
            return Err(err(
                &p,
                "tables have no watermark; declare a SOURCE for event-time data",
            ));
        } else {
            let mut column = p.parse_column_def().map_err(pe(&p))?;
            let mut inline_key = false;
            column.options.retain(|o| {
                let key = matches!(o.option, ColumnOption::PrimaryKey(_));
                inline_key |= key;
                !key
            });
            if inline_key {
                if !primary_key.is_empty() {
                    return Err(err(&p, "a table has one PRIMARY KEY"));
                }
                primary_key.push(normalize_ident(&column.name));
            }
            columns.push(column);
        }
        if p.consume_token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen).map_err(pe(&p))?;
        break;
    }
    let (connector, format, options) = parse_input_clauses(&mut p)?;
    expect_end(&p)?;
    if primary_key.is_empty() {
        return Err(SqlError::Invalid(format!(
            "table '{name}' needs a PRIMARY KEY (a column option, or PRIMARY KEY (a, b) for a composite key)"
        )));
    }
    Ok(StreamingStatement::CreateTable(CreateTable {
        name,
        or_replace,
        if_not_exists,
        columns,
        primary_key,
        connector,
        format,
        options,
    }))
}

fn parse_delete(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    let mut p = ts.parser(start, ts.len());
    let stmt = p.parse_statement().map_err(pe(&p))?;
    expect_end(&p)?;
    let Statement::Delete(delete) = stmt else {
        return Err(SqlError::not_supported("this form of DELETE", None));
    };
    let from = match &delete.from {
        sqlparser::ast::FromTable::WithFromKeyword(f)
        | sqlparser::ast::FromTable::WithoutKeyword(f) => f,
    };
    let table = match from.as_slice() {
        [
            sqlparser::ast::TableWithJoins {
                relation: sqlparser::ast::TableFactor::Table { name, .. },
                joins,
            },
        ] if joins.is_empty() && delete.using.is_none() && delete.tables.is_empty() => {
            normalize_name(name)?
        }
        _ => {
            return Err(SqlError::not_supported(
                "DELETE from several tables or with USING",
                Some("DELETE FROM table WHERE <primary key> = value"),
            ));
        }
    };
    if delete.returning.is_some() || delete.limit.is_some() || !delete.order_by.is_empty() {
        return Err(SqlError::not_supported(
            "DELETE with RETURNING, ORDER BY or LIMIT",
            None,
        ));
    }
    Ok(StreamingStatement::Delete {
        table,
        selection: delete.selection,
    })
}

fn parse_insert(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    let mut p = ts.parser(start, ts.len());
    let stmt = p.parse_statement().map_err(pe(&p))?;
    expect_end(&p)?;
    let Statement::Insert(insert) = stmt else {
        return Err(SqlError::not_supported("this form of INSERT", None));
    };
    let table = match &insert.table {
        TableObject::TableName(name) => normalize_name(name)?,
        TableObject::TableFunction(_) | TableObject::TableQuery(_) => {
            return Err(SqlError::not_supported(
                "INSERT INTO a table function",
                None,
            ));
        }
    };
    let columns = insert
        .columns
        .iter()
        .map(normalize_name)
        .collect::<Result<Vec<_>, _>>()?;
    let source = insert
        .source
        .ok_or_else(|| SqlError::Invalid("INSERT needs VALUES or a SELECT".into()))?;
    Ok(StreamingStatement::Insert {
        table,
        columns,
        source,
    })
}

/// `SUBSCRIBE name [WHERE condition]`.
fn parse_subscribe(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    if matches!(
        ts.token(start + 1).map(|t| &t.token),
        None | Some(Token::EOF)
    ) {
        return Err(positioned(
            ts,
            start + 1,
            "SUBSCRIBE needs the name of a source or stream",
        ));
    }
    let mut p = ts.parser(start + 1, ts.len());
    let object = p.parse_object_name(false).map_err(pe(&p))?;
    let name = normalize_name(&object)?;
    let filter = if p.parse_keyword(Keyword::WHERE) {
        Some(p.parse_expr().map_err(pe(&p))?)
    } else {
        None
    };
    expect_end(&p)?;
    let text = match &filter {
        Some(condition) => format!("SELECT * FROM {object} WHERE {condition}"),
        None => format!("SELECT * FROM {object}"),
    };
    let tokens = super::tokenize(&text)?;
    let inner = TokenStream::new(tokens);
    let mut q = inner.parser(0, inner.len());
    let query = q.parse_query().map_err(pe(&q))?;
    Ok(StreamingStatement::Subscribe { name, query })
}

fn parse_query_statement(ts: &mut TokenStream, start: usize) -> PResult<StreamingStatement> {
    rewrite_window_tvfs(ts, start)?;
    let hints = super::joins::rewrite_join_syntax(ts, start)?;
    let cut = clause_cut(ts, start);
    let clauses = parse_clauses(ts, cut)?;
    let mut p = ts.parser(start, cut);
    let mut query = p.parse_query().map_err(pe(&p))?;
    expect_end(&p)?;
    hints.apply(&mut query)?;
    Ok(StreamingStatement::Query { query, clauses })
}

/// The out-of-orderness bound of `WATERMARK FOR column AS expr`.
fn watermark_delay(column: &str, expr: &Expr) -> PResult<i64> {
    let bad = || {
        SqlError::Invalid(format!(
            "WATERMARK FOR {column} AS {expr}: the expression must be `{column}`, `{column} - INTERVAL 'n' unit` or `{column} - <milliseconds>`"
        ))
    };
    match expr {
        Expr::Nested(inner) => watermark_delay(column, inner),
        Expr::Identifier(ident) if normalize_ident(ident) == column => Ok(0),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Minus,
            right,
        } => {
            let Expr::Identifier(ident) = left.as_ref() else {
                return Err(bad());
            };
            if normalize_ident(ident) != column {
                return Err(bad());
            }
            let delay = match right.as_ref() {
                Expr::Interval(interval) => interval_to_millis(interval)?,
                Expr::Value(v) => match &v.value {
                    Value::Number(n, _) => n.parse::<i64>().map_err(|_| bad())?,
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            };
            if delay < 0 {
                return Err(SqlError::Invalid(format!(
                    "WATERMARK FOR {column}: the delay must not be negative"
                )));
            }
            Ok(delay)
        }
        _ => Err(bad()),
    }
}

/// Milliseconds of a constant interval such as `INTERVAL '2' SECOND` or `INTERVAL '1 minute'`.
pub fn interval_to_millis(interval: &Interval) -> Result<i64, SqlError> {
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            other => {
                return Err(SqlError::Invalid(format!(
                    "interval value {other} is not a constant"
                )));
            }
        },
        other => {
            return Err(SqlError::Invalid(format!(
                "interval value {other} is not a constant"
            )));
        }
    };
    let (amount, unit) = match &interval.leading_field {
        Some(field) => (text.trim().to_string(), field.to_string()),
        None => {
            let mut parts = text.split_whitespace();
            let amount = parts.next().unwrap_or_default().to_string();
            let unit = parts.next().unwrap_or("SECOND").to_string();
            (amount, unit)
        }
    };
    let amount: f64 = amount
        .parse()
        .map_err(|_| SqlError::Invalid(format!("interval amount '{amount}' is not a number")))?;
    let unit_ms = match unit.to_uppercase().trim_end_matches('S') {
        "MILLISECOND" => 1.0,
        "SECOND" => 1000.0,
        "MINUTE" => 60_000.0,
        "HOUR" => 3_600_000.0,
        "DAY" => 86_400_000.0,
        "WEEK" => 604_800_000.0,
        other => {
            return Err(SqlError::Invalid(format!(
                "interval unit {other} is not fixed-length (use MILLISECOND, SECOND, MINUTE, HOUR, DAY or WEEK)"
            )));
        }
    };
    Ok((amount * unit_ms).round() as i64)
}

/// Makes window table-valued functions parseable: `TUMBLE(TABLE t, DESCRIPTOR(ts), ..)` becomes
/// `TUMBLE(t, ts, ..)`, which sqlparser reads as a table function; the planner's window
/// rewrite turns it into a windowed aggregation.
fn rewrite_window_tvfs(ts: &mut TokenStream, start: usize) -> PResult<()> {
    let mut i = start;
    while i < ts.len() {
        let w = word(ts, i);
        let paren = |ts: &TokenStream, j: usize| {
            matches!(ts.token(j).map(|t| &t.token), Some(Token::LParen))
        };
        let is_window = matches!(
            w.as_deref(),
            Some("TUMBLE" | "HOP" | "SLIDE" | "SESSION" | "CUMULATE")
        );
        if is_window && paren(ts, i + 1) && word(ts, i + 2).as_deref() == Some("TABLE") {
            ts.remove(i + 2);
        }
        if w.as_deref() == Some("DESCRIPTOR")
            && paren(ts, i + 1)
            && matches!(ts.token(i + 3).map(|t| &t.token), Some(Token::RParen))
        {
            ts.remove(i + 3);
            ts.remove(i + 1);
            ts.remove(i);
        }
        i += 1;
    }
    Ok(())
}
