//! Join syntax that sqlparser's generic dialect does not read, made plannable:
//!
//! - `ASOF LEFT JOIN` (sqlparser reads `ASOF JOIN ... MATCH_CONDITION(..)` only): `LEFT` is
//!   removed from the tokens and remembered;
//! - `t FOR SYSTEM_TIME AS OF <column | PROCTIME()>` after a joined relation: the clause is
//!   removed from the tokens and remembered.
//!
//! After the query is parsed, [`JoinHints::apply`] turns each ASOF join into an INNER or LEFT
//! join whose `ON` starts with the marker `__asof(<match condition>)`, and adds the marker
//! `__temporal(<version expression>)` to the `ON` of each temporal join. The planner finds the
//! markers in the join condition.

use sqlparser::ast::{
    BinaryOperator, Expr, Join, JoinConstraint, JoinOperator, ObjectNamePart, Query, SetExpr,
    TableFactor, TableWithJoins,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token};

use super::TokenStream;
use crate::error::SqlError;

/// Marker function of an ASOF join's match condition.
pub const ASOF_MARKER: &str = "__asof";
/// Marker function of a temporal join's version expression.
pub const TEMPORAL_MARKER: &str = "__temporal";
/// Argument of [`TEMPORAL_MARKER`] for `FOR SYSTEM_TIME AS OF PROCTIME()`.
pub const PROCTIME_VERSION: &str = "proctime";

/// What the token rewrite removed, by the position of the joined relation's name.
#[derive(Debug, Default)]
pub(crate) struct JoinHints {
    asof_left: Vec<Location>,
    temporal: Vec<(Location, String)>,
    used: std::cell::Cell<usize>,
}

fn word(ts: &TokenStream, i: usize) -> Option<String> {
    match ts.token(i).map(|t| &t.token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_uppercase()),
        _ => None,
    }
}

fn location(ts: &TokenStream, i: usize) -> Location {
    ts.token(i)
        .map(|t| t.span.start)
        .unwrap_or(Location { line: 0, column: 0 })
}

/// Rewrites the tokens from `start` on; see the module docs.
pub(crate) fn rewrite_join_syntax(
    ts: &mut TokenStream,
    start: usize,
) -> Result<JoinHints, SqlError> {
    let mut hints = JoinHints::default();
    let mut i = start;
    while i < ts.len() {
        let w = word(ts, i);
        if w.as_deref() == Some("ASOF")
            && word(ts, i + 1).as_deref() == Some("LEFT")
            && matches!(word(ts, i + 2).as_deref(), Some("JOIN" | "OUTER"))
        {
            ts.remove(i + 1);
            if word(ts, i + 1).as_deref() == Some("OUTER") {
                ts.remove(i + 1);
            }
            hints.asof_left.push(location(ts, i + 2));
        }
        if w.as_deref() == Some("FOR")
            && word(ts, i + 1).as_deref() == Some("SYSTEM_TIME")
            && word(ts, i + 2).as_deref() == Some("AS")
            && word(ts, i + 3).as_deref() == Some("OF")
        {
            if i == start {
                return Err(positioned(
                    ts,
                    i,
                    "FOR SYSTEM_TIME AS OF must follow a relation",
                ));
            }
            let relation = location(ts, i - 1);
            // The version: PROCTIME() or a (qualified) column.
            let mut end = i + 4;
            let version = if word(ts, end).as_deref() == Some("PROCTIME")
                && matches!(ts.token(end + 1).map(|t| &t.token), Some(Token::LParen))
                && matches!(ts.token(end + 2).map(|t| &t.token), Some(Token::RParen))
            {
                end += 3;
                format!("'{PROCTIME_VERSION}'")
            } else {
                let mut parts = Vec::new();
                loop {
                    match ts.token(end).map(|t| &t.token) {
                        Some(Token::Word(w)) => parts.push(w.to_string()),
                        _ => {
                            return Err(positioned(
                                ts,
                                end,
                                "FOR SYSTEM_TIME AS OF takes the probe side's event-time column (for example o.ts) or PROCTIME()",
                            ));
                        }
                    }
                    end += 1;
                    if matches!(ts.token(end).map(|t| &t.token), Some(Token::Period)) {
                        end += 1;
                    } else {
                        break;
                    }
                }
                parts.join(".")
            };
            for _ in i..end {
                ts.remove(i);
            }
            hints.temporal.push((relation, version));
            continue;
        }
        i += 1;
    }
    Ok(hints)
}

fn positioned(ts: &TokenStream, i: usize, message: &str) -> SqlError {
    let at = location(ts, i);
    SqlError::Parse {
        message: message.to_string(),
        line: at.line,
        column: at.column,
    }
}

fn parse_expr(text: &str) -> Result<Expr, SqlError> {
    Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| SqlError::Invalid(format!("join condition '{text}': {e}")))
}

fn and_marker(marker: Expr, condition: Option<Expr>) -> Expr {
    match condition {
        None => marker,
        Some(c) => Expr::BinaryOp {
            left: Box::new(marker),
            op: BinaryOperator::And,
            right: Box::new(Expr::Nested(Box::new(c))),
        },
    }
}

impl JoinHints {
    /// Rewrites ASOF and temporal joins of `query` into marked INNER/LEFT joins.
    pub(crate) fn apply(&self, query: &mut Query) -> Result<(), SqlError> {
        self.query(query)?;
        if self.used.get() < self.temporal.len() + self.asof_left.len() {
            return Err(SqlError::Invalid(
                "FOR SYSTEM_TIME AS OF and ASOF LEFT JOIN apply to a joined table: write `JOIN name FOR SYSTEM_TIME AS OF o.ts [AS alias]` (the clause directly after the name)".into(),
            ));
        }
        Ok(())
    }

    fn query(&self, query: &mut Query) -> Result<(), SqlError> {
        if let Some(with) = &mut query.with {
            for cte in &mut with.cte_tables {
                self.query(&mut cte.query)?;
            }
        }
        self.set_expr(&mut query.body)
    }

    fn set_expr(&self, body: &mut SetExpr) -> Result<(), SqlError> {
        match body {
            SetExpr::Select(select) => {
                for from in &mut select.from {
                    self.table_with_joins(from)?;
                }
                Ok(())
            }
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left)?;
                self.set_expr(right)
            }
            _ => Ok(()),
        }
    }

    fn table_with_joins(&self, t: &mut TableWithJoins) -> Result<(), SqlError> {
        self.factor(&mut t.relation)?;
        for join in &mut t.joins {
            self.factor(&mut join.relation)?;
            self.join(join)?;
        }
        Ok(())
    }

    fn factor(&self, factor: &mut TableFactor) -> Result<(), SqlError> {
        match factor {
            TableFactor::Derived { subquery, .. } => self.query(subquery),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.table_with_joins(table_with_joins),
            _ => Ok(()),
        }
    }

    fn join(&self, join: &mut Join) -> Result<(), SqlError> {
        let at = match &join.relation {
            TableFactor::Table { name, .. } => match name.0.first() {
                Some(ObjectNamePart::Identifier(ident)) => Some(ident.span.start),
                _ => None,
            },
            _ => None,
        };
        let temporal = at.and_then(|at| {
            self.temporal
                .iter()
                .find(|(l, _)| *l == at)
                .map(|(_, v)| v.clone())
        });
        let asof_left = at.is_some_and(|at| self.asof_left.contains(&at));
        self.used
            .set(self.used.get() + usize::from(asof_left) + usize::from(temporal.is_some()));
        let operator = std::mem::replace(
            &mut join.join_operator,
            JoinOperator::CrossJoin(JoinConstraint::None),
        );
        join.join_operator = match operator {
            JoinOperator::AsOf {
                match_condition,
                constraint,
            } => {
                let marker = parse_expr(&format!("{ASOF_MARKER}({match_condition})"))?;
                let on = match constraint {
                    JoinConstraint::On(c) => Some(c),
                    JoinConstraint::None => None,
                    _ => {
                        return Err(SqlError::Invalid(
                            "ASOF JOIN takes its equality keys in ON (USING and NATURAL are not supported)".into(),
                        ));
                    }
                };
                let constraint = JoinConstraint::On(and_marker(marker, on));
                if asof_left {
                    JoinOperator::LeftOuter(constraint)
                } else {
                    JoinOperator::Inner(constraint)
                }
            }
            other => other,
        };
        if let Some(version) = temporal {
            let marker = parse_expr(&format!("{TEMPORAL_MARKER}({version})"))?;
            let constraint = match &mut join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c) => c,
                _ => {
                    return Err(SqlError::Invalid(
                        "FOR SYSTEM_TIME AS OF works with [INNER] JOIN and LEFT JOIN".into(),
                    ));
                }
            };
            let on = match std::mem::replace(constraint, JoinConstraint::None) {
                JoinConstraint::On(c) => Some(c),
                JoinConstraint::None => None,
                _ => {
                    return Err(SqlError::Invalid(
                        "a temporal join takes its keys in ON (USING and NATURAL are not supported)".into(),
                    ));
                }
            };
            *constraint = JoinConstraint::On(and_marker(marker, on));
        }
        Ok(())
    }
}
