//! Event-time windows in SQL: the window functions DataFusion plans as scalar functions
//! (`tumble`, `hop`/`slide`, `session`, `cumulate` and the internal `__window_end`), the
//! rewrite of window table-valued functions and `*_end` calls into that form, the reading of
//! a window definition from a planned GROUP BY expression, and the EMIT / ALLOW LATENESS
//! clauses.
//!
//! `FROM TUMBLE(TABLE t, DESCRIPTOR(ts), size)` becomes `FROM t` with `window_start` replaced
//! by `tumble(ts, size)` and `window_end` by `__window_end(tumble(ts, size))`; likewise
//! `tumble_end(ts, size)` becomes `__window_end(tumble(ts, size))`. DataFusion then sees one
//! GROUP BY expression per window, and the window end is a function of it, so it may appear
//! in SELECT and HAVING. The functions only mark windows: evaluating them row by row is an
//! error, because a hop or session window is not a function of one row.

use std::ops::ControlFlow;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, Expr as DfExpr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use laminar_core::operator::aggregate::{EmitMode, WindowSpec};
use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName, Query,
    Select, SelectItem, SetExpr, TableFactor, visit_expressions_mut,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::error::SqlError;
use crate::parser::interval_to_millis;

/// Name of the internal function marking a window's end.
pub(crate) const WINDOW_END: &str = "__window_end";

/// The window-marking function names as DataFusion registers them.
const WINDOW_FUNCTIONS: [&str; 4] = ["tumble", "hop", "session", "cumulate"];

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunction {
    name: &'static str,
    aliases: Vec<String>,
    signature: Signature,
}

impl ScalarUDFImpl for WindowFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        arg_types.first().cloned().ok_or_else(|| {
            DataFusionError::Plan(format!("{}() needs an event-time column", self.name))
        })
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let name = if self.name == WINDOW_END {
            "window_end"
        } else {
            self.name
        };
        Err(DataFusionError::Plan(format!(
            "{name}() defines an event-time window: use it in GROUP BY (and in SELECT/HAVING of that aggregation) of a continuous query"
        )))
    }
}

/// Name of the internal function giving a row's k-th window of a window TVF used without
/// GROUP BY: `__tvf_window('start'|'end', '<function>', k, ts, params..)`, NULL when the row
/// has fewer than k+1 windows.
pub(crate) const TVF_WINDOW: &str = "__tvf_window";

/// Most windows per row a window TVF without GROUP BY may produce (hop: size / slide,
/// cumulate: size / step); each is one branch of a UNION ALL.
const MAX_ROW_WINDOWS: i64 = 64;

#[derive(Debug, PartialEq, Eq, Hash)]
struct TvfWindowFunction {
    signature: Signature,
}

impl ScalarUDFImpl for TvfWindowFunction {
    fn name(&self) -> &str {
        TVF_WINDOW
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        arg_types.get(3).cloned().ok_or_else(|| {
            DataFusionError::Plan(format!("{TVF_WINDOW}() needs an event-time column"))
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let literal = |i: usize| match args.args.get(i) {
            Some(ColumnarValue::Scalar(s)) => Ok(s.clone()),
            _ => Err(DataFusionError::Plan(format!(
                "{TVF_WINDOW}(): argument {i} must be a constant"
            ))),
        };
        let which = literal(0)?.to_string();
        let function = literal(1)?.to_string();
        let k = match literal(2)? {
            ScalarValue::Int64(Some(k)) => k,
            other => {
                return Err(DataFusionError::Plan(format!(
                    "{TVF_WINDOW}(): bad window index {other}"
                )));
            }
        };
        let params = (4..args.args.len())
            .map(|i| literal(i).map(|s| DfExpr::Literal(s, None)))
            .collect::<DfResult<Vec<_>>>()?;
        let mut spec_args = vec![DfExpr::Literal(ScalarValue::Null, None)];
        spec_args.extend(params);
        let spec =
            window_spec(&function, &spec_args).map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let ts = args.args[3].clone().into_array(rows)?;
        let data_type = ts.data_type().clone();
        let kind = laminar_core::time::EventTimeKind::for_type(&data_type).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "{function}: the time column has type {data_type}, not TIMESTAMP or BIGINT"
            ))
        })?;
        let raw = arrow::compute::cast(&ts, &DataType::Int64)?;
        let raw = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&raw);
        let mut windows: Vec<(i64, i64)> = Vec::new();
        let out: arrow::array::Int64Array = raw
            .iter()
            .map(|value| {
                let t = kind.to_millis(value?);
                windows.clear();
                spec.for_each_window(spec.anchor(t), |start, end| windows.push((start, end)));
                windows.sort_unstable();
                let (start, end) = *windows.get(usize::try_from(k).ok()?)?;
                Some(kind.from_millis(if which == "end" { end } else { start }))
            })
            .collect();
        let out: arrow::array::ArrayRef = Arc::new(out);
        Ok(ColumnarValue::Array(arrow::compute::cast(
            &out, &data_type,
        )?))
    }
}

/// The window functions, for registration with the planner.
pub(crate) fn udfs() -> Vec<Arc<ScalarUDF>> {
    let make = |name: &'static str, aliases: &[&str]| {
        Arc::new(ScalarUDF::new_from_impl(WindowFunction {
            name,
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            signature: Signature::variadic_any(Volatility::Immutable),
        }))
    };
    vec![
        make("tumble", &[]),
        make("hop", &["slide"]),
        make("session", &[]),
        make("cumulate", &[]),
        make(WINDOW_END, &[]),
        Arc::new(ScalarUDF::new_from_impl(TvfWindowFunction {
            signature: Signature::variadic_any(Volatility::Immutable),
        })),
    ]
}

/// Checks the window definitions of row-level window TVFs (`__tvf_window` calls) at CREATE
/// time, so that a bad size is an error then, not on the first row.
pub(crate) fn validate_tvf_windows(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> Result<(), SqlError> {
    let mut error = None;
    let _ = plan.apply(|node| {
        for expr in node.expressions() {
            let _ = expr.apply(|e| {
                if let DfExpr::ScalarFunction(f) = e
                    && f.func.name() == TVF_WINDOW
                    && error.is_none()
                    && let Some(DfExpr::Literal(function, _)) = f.args.get(1)
                {
                    let mut spec_args = vec![DfExpr::Literal(ScalarValue::Null, None)];
                    spec_args.extend(f.args.iter().skip(4).cloned());
                    if let Err(e) = window_spec(&function.to_string(), &spec_args) {
                        error = Some(e);
                    }
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            });
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    error.map_or(Ok(()), Err)
}

/// The window function a planned expression calls, if any: (name, arguments).
pub(crate) fn window_call(expr: &DfExpr) -> Option<(&str, &[DfExpr])> {
    match expr {
        DfExpr::ScalarFunction(f) if WINDOW_FUNCTIONS.contains(&f.func.name()) => {
            Some((f.func.name(), &f.args))
        }
        DfExpr::Alias(a) => window_call(&a.expr),
        _ => None,
    }
}

/// True when the expression calls any window function (including `__window_end`).
pub(crate) fn mentions_window(expr: &DfExpr) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if let DfExpr::ScalarFunction(f) = e
            && (WINDOW_FUNCTIONS.contains(&f.func.name()) || f.func.name() == WINDOW_END)
        {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

use datafusion::common::tree_node::TreeNode;

/// True when any node of the plan calls a window function.
pub(crate) fn plan_mentions_window(plan: &datafusion::logical_expr::LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if node.expressions().iter().any(mentions_window) {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// Milliseconds of a constant window parameter (an INTERVAL, or an integer of ms).
fn constant_millis(function: &str, what: &str, expr: &DfExpr) -> Result<i64, SqlError> {
    let not_constant = || {
        SqlError::Invalid(format!(
            "{function}(): the window {what} must be a constant INTERVAL (or milliseconds), got {expr}"
        ))
    };
    let value = match expr {
        DfExpr::Literal(value, _) => value,
        DfExpr::Cast(c) => return constant_millis(function, what, &c.expr),
        DfExpr::Negative(inner) => return constant_millis(function, what, inner).map(|v| -v),
        _ => return Err(not_constant()),
    };
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) => {
            if v.months != 0 {
                return Err(SqlError::Invalid(format!(
                    "{function}(): the window {what} {expr} uses months or years, which have no fixed length; use DAY, HOUR, MINUTE, SECOND or MILLISECOND"
                )));
            }
            Ok(v.days as i64 * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Ok(v.days as i64 * 86_400_000 + v.milliseconds as i64)
        }
        ScalarValue::Int64(Some(v)) => Ok(*v),
        ScalarValue::Int32(Some(v)) => Ok(*v as i64),
        ScalarValue::Int16(Some(v)) => Ok(*v as i64),
        ScalarValue::Int8(Some(v)) => Ok(*v as i64),
        ScalarValue::UInt32(Some(v)) => Ok(*v as i64),
        ScalarValue::UInt16(Some(v)) => Ok(*v as i64),
        ScalarValue::UInt8(Some(v)) => Ok(*v as i64),
        _ => Err(not_constant()),
    }
}

/// Reads a window definition from a window function call's arguments (after the time
/// column) and validates it.
pub(crate) fn window_spec(function: &str, args: &[DfExpr]) -> Result<WindowSpec, SqlError> {
    let params = &args[1.min(args.len())..];
    let arity = |expected: &str| {
        SqlError::Invalid(format!(
            "{function}() takes ({expected}), got {} argument(s)",
            args.len()
        ))
    };
    let ms = |what: &str, i: usize| constant_millis(function, what, &params[i]);
    let spec = match function {
        "tumble" => match params.len() {
            1 | 2 => WindowSpec::Tumble {
                size: ms("size", 0)?,
                offset: if params.len() == 2 {
                    ms("offset", 1)?
                } else {
                    0
                },
            },
            _ => return Err(arity("time_column, size [, offset]")),
        },
        "hop" => match params.len() {
            2 | 3 => WindowSpec::Hop {
                slide: ms("slide", 0)?,
                size: ms("size", 1)?,
                offset: if params.len() == 3 {
                    ms("offset", 2)?
                } else {
                    0
                },
            },
            _ => return Err(arity("time_column, slide, size [, offset]")),
        },
        "cumulate" => match params.len() {
            2 | 3 => WindowSpec::Cumulate {
                step: ms("step", 0)?,
                size: ms("size", 1)?,
                offset: if params.len() == 3 {
                    ms("offset", 2)?
                } else {
                    0
                },
            },
            _ => return Err(arity("time_column, step, max_size [, offset]")),
        },
        "session" => match params.len() {
            1 => WindowSpec::Session { gap: ms("gap", 0)? },
            _ => return Err(arity("time_column, gap")),
        },
        other => {
            return Err(SqlError::Invalid(format!(
                "{other}() is not a window function"
            )));
        }
    };
    spec.validate()
        .map_err(|reason| SqlError::Invalid(format!("{function}(): {reason}")))?;
    Ok(spec)
}

/// Parses the text of an `EMIT` clause (SPEC 2.9).
pub fn parse_emit(text: &str) -> Result<EmitMode, SqlError> {
    let words: Vec<String> = text.split_whitespace().map(|w| w.to_uppercase()).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mode = match words.as_slice() {
        ["ON", "WATERMARK"] | ["AFTER", "WATERMARK"] => EmitMode::OnWatermark,
        ["ON", "WINDOW", "CLOSE"] => EmitMode::OnWindowClose,
        ["FINAL"] => EmitMode::Final,
        ["ON", "UPDATE"] => EmitMode::OnUpdate,
        ["CHANGES"] => EmitMode::Changes,
        ["EVERY", ..] | ["PERIODICALLY", ..] => {
            let rest = text
                .trim()
                .split_once(char::is_whitespace)
                .map(|(_, r)| r.trim())
                .unwrap_or("");
            let ms = interval_millis_text(rest)
                .map_err(|reason| SqlError::Invalid(format!("EMIT {text}: {reason}")))?;
            if ms <= 0 {
                return Err(SqlError::Invalid(format!(
                    "EMIT {text}: the interval must be positive"
                )));
            }
            EmitMode::Every(ms as u64)
        }
        _ => {
            return Err(SqlError::Invalid(format!(
                "unknown EMIT form 'EMIT {text}'; valid forms: EMIT ON WATERMARK (= AFTER WATERMARK), EMIT ON WINDOW CLOSE, EMIT FINAL, EMIT ON UPDATE, EMIT EVERY INTERVAL 'n' unit (= PERIODICALLY), EMIT CHANGES"
            )));
        }
    };
    Ok(mode)
}

/// Parses the text of an `ALLOW LATENESS` clause into milliseconds.
pub fn parse_lateness(text: &str) -> Result<i64, SqlError> {
    let ms = interval_millis_text(text)
        .map_err(|reason| SqlError::Invalid(format!("ALLOW LATENESS {text}: {reason}")))?;
    if ms < 0 {
        return Err(SqlError::Invalid(format!(
            "ALLOW LATENESS {text}: lateness must not be negative"
        )));
    }
    Ok(ms)
}

/// Milliseconds of `INTERVAL '..' unit` or a plain integer of milliseconds, as text.
fn interval_millis_text(text: &str) -> Result<i64, String> {
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| format!("expected INTERVAL 'n' unit ({e})"))?;
    match &expr {
        Expr::Interval(interval) => interval_to_millis(interval).map_err(|e| e.to_string()),
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::Number(n, _) => n
                .parse::<i64>()
                .map_err(|_| format!("'{n}' is not a whole number of milliseconds")),
            other => Err(format!("expected INTERVAL 'n' unit, got {other}")),
        },
        other => Err(format!("expected INTERVAL 'n' unit, got {other}")),
    }
}

/// Rewrites window TVFs and `*_end(..)` calls in a query (see the module documentation).
pub(crate) fn rewrite_query(query: &mut Query) -> Result<(), SqlError> {
    rewrite_set_expr(&mut query.body)?;
    // `tumble_end(..)` -> `__window_end(tumble(..))` everywhere.
    let _ = visit_expressions_mut(query, |expr| {
        if let Expr::Function(f) = expr {
            let name = f.name.to_string().to_lowercase();
            if let Some(base) = name.strip_suffix("_end")
                && matches!(base, "tumble" | "hop" | "slide" | "session" | "cumulate")
            {
                let mut inner = f.clone();
                inner.name = ObjectName::from(vec![Ident::new(base)]);
                *expr = wrap_window_end(Expr::Function(inner));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

fn rewrite_set_expr(body: &mut SetExpr) -> Result<(), SqlError> {
    match body {
        SetExpr::Select(select) => {
            if let Some(replacement) = rewrite_select(select)? {
                *body = replacement;
            }
            Ok(())
        }
        SetExpr::Query(q) => rewrite_query(q),
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_set_expr(left)?;
            rewrite_set_expr(right)
        }
        _ => Ok(()),
    }
}

fn wrap_window_end(inner: Expr) -> Expr {
    let mut wrapper = Parser::new(&GenericDialect {})
        .try_with_sql(&format!("{WINDOW_END}(0)"))
        .and_then(|mut p| p.parse_expr())
        .expect("constant expression parses");
    if let Expr::Function(f) = &mut wrapper
        && let FunctionArguments::List(list) = &mut f.args
    {
        list.args = vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))];
    }
    wrapper
}

/// The window of a TVF in FROM: its function call and the alias of the relation.
struct TvfWindow {
    start: Expr,
    end: Expr,
    alias: Option<String>,
    /// The function (`tumble`, `hop`, `session`, `cumulate`), the time column and the
    /// parameters as written, for the row-level form.
    function: String,
    time_column: Ident,
    params: Vec<String>,
}

/// Rewrites window TVFs in the FROM of `select`; returns a replacement for the whole SELECT
/// when a TVF without GROUP BY expands rows into several windows (a UNION ALL).
fn rewrite_select(select: &mut Select) -> Result<Option<SetExpr>, SqlError> {
    let mut window: Option<TvfWindow> = None;
    for table in &mut select.from {
        if let TableFactor::Derived { subquery, .. } = &mut table.relation {
            rewrite_query(subquery)?;
        }
        let TableFactor::Table {
            name, alias, args, ..
        } = &mut table.relation
        else {
            continue;
        };
        let function = name.to_string().to_lowercase();
        let Some(tvf_args) = args.as_ref() else {
            continue;
        };
        if !matches!(
            function.as_str(),
            "tumble" | "hop" | "slide" | "session" | "cumulate"
        ) {
            continue;
        }
        let upper = function.to_uppercase();
        let usage = match function.as_str() {
            "tumble" => "TUMBLE(TABLE t, DESCRIPTOR(ts), size [, offset])",
            "hop" | "slide" => "HOP(TABLE t, DESCRIPTOR(ts), slide, size [, offset])",
            "session" => "SESSION(TABLE t, DESCRIPTOR(ts), gap)",
            _ => "CUMULATE(TABLE t, DESCRIPTOR(ts), step, max_size)",
        };
        let exprs: Vec<&Expr> = tvf_args
            .args
            .iter()
            .filter_map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                _ => None,
            })
            .collect();
        if exprs.len() != tvf_args.args.len() || exprs.len() < 3 {
            return Err(SqlError::Invalid(format!("{upper} takes {usage}")));
        }
        let table_name = match exprs[0] {
            Expr::Identifier(i) => ObjectName::from(vec![i.clone()]),
            Expr::CompoundIdentifier(parts) => ObjectName::from(parts.clone()),
            other => {
                return Err(SqlError::Invalid(format!(
                    "{upper}: the first argument must be TABLE <name>, got {other}; usage: {usage}"
                )));
            }
        };
        let time_column = match exprs[1] {
            Expr::Identifier(i) => i.clone(),
            other => {
                return Err(SqlError::Invalid(format!(
                    "{upper}: the second argument must be DESCRIPTOR(<event-time column>), got {other}; usage: {usage}"
                )));
            }
        };
        if window.is_some() {
            return Err(SqlError::not_supported(
                "more than one window table-valued function in one FROM",
                None,
            ));
        }
        let params: Vec<String> = exprs[2..].iter().map(|e| e.to_string()).collect();
        let call = format!("{function}({}, {})", time_column, params.join(", "));
        let start = Parser::new(&GenericDialect {})
            .try_with_sql(&call)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| SqlError::Invalid(format!("{upper}: {e}")))?;
        window = Some(TvfWindow {
            end: wrap_window_end(start.clone()),
            start,
            alias: alias.as_ref().map(|a| a.name.value.to_lowercase()),
            function: if function == "slide" {
                "hop".into()
            } else {
                function.clone()
            },
            time_column,
            params,
        });
        *args = None;
        *name = table_name;
    }
    let Some(window) = window else {
        return Ok(None);
    };
    if matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty()) {
        return row_level_windows(select, &window).map(Some);
    }
    let replace = |expr: &mut Expr| {
        replace_window_columns(expr, window.alias.as_deref(), &window.start, &window.end)
    };
    for item in &mut select.projection {
        match item {
            SelectItem::UnnamedExpr(e) => {
                // Keep the column name users expect.
                if let Expr::Identifier(i) = e {
                    let name = i.value.to_lowercase();
                    if name == "window_start" || name == "window_end" {
                        let alias = i.clone();
                        let mut replaced = e.clone();
                        replace(&mut replaced);
                        *item = sqlparser::ast::SelectItem::ExprWithAlias {
                            expr: replaced,
                            alias,
                        };
                        continue;
                    }
                }
                replace(e)
            }
            sqlparser::ast::SelectItem::ExprWithAlias { expr, .. } => replace(expr),
            _ => {}
        }
    }
    if let Some(selection) = &mut select.selection {
        replace(selection);
    }
    if let Some(having) = &mut select.having {
        replace(having);
    }
    let GroupByExpr::Expressions(group_by, _) = &mut select.group_by else {
        return Err(SqlError::not_supported("GROUP BY ALL with a window", None));
    };
    for e in group_by.iter_mut() {
        replace(e);
    }
    // The end is a function of the start: grouping by both is grouping by the start.
    let end_text = window.end.to_string();
    group_by.retain(|e| e.to_string() != end_text);
    let start_text = window.start.to_string();
    if !group_by.iter().any(|e| e.to_string() == start_text) {
        return Err(SqlError::Invalid(
            "a window table-valued function must be grouped by window_start (and window_end)"
                .into(),
        ));
    }
    Ok(None)
}

/// Replaces references to `window_start` / `window_end` (bare, or qualified by the TVF's
/// `alias`) in `expr` with `start` / `end`.
fn replace_window_columns(expr: &mut Expr, alias: Option<&str>, start: &Expr, end: &Expr) {
    let _ = visit_expressions_mut(expr, |e| {
        let column = match e {
            Expr::Identifier(i) => Some(i.value.to_lowercase()),
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                let qualifier = parts[0].value.to_lowercase();
                (alias == Some(qualifier.as_str())).then(|| parts[1].value.to_lowercase())
            }
            _ => None,
        };
        match column.as_deref() {
            Some("window_start") => *e = start.clone(),
            Some("window_end") => *e = end.clone(),
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

/// Milliseconds of a constant window parameter as written (INTERVAL or a number).
fn written_millis(text: &str) -> Option<i64> {
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .ok()?;
    match expr {
        Expr::Interval(i) => crate::parser::interval_to_millis(&i).ok(),
        Expr::Value(v) => match v.value {
            sqlparser::ast::Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A window TVF without GROUP BY: every input row with the `window_start` / `window_end` of
/// each window it belongs to (one row per window, as Flink's window TVFs). Tumble gives one
/// row; hop and cumulate one UNION ALL branch per possible window of a row, each keeping the
/// rows that have that window.
fn row_level_windows(select: &Select, window: &TvfWindow) -> Result<SetExpr, SqlError> {
    let upper = window.function.to_uppercase();
    let millis = |i: usize, what: &str| {
        window
            .params
            .get(i)
            .and_then(|p| written_millis(p))
            .filter(|ms| *ms > 0)
            .ok_or_else(|| {
                SqlError::Invalid(format!(
                    "{upper}: the window {what} must be a positive constant INTERVAL (or milliseconds)"
                ))
            })
    };
    let branches = match window.function.as_str() {
        "tumble" => 1,
        "hop" => {
            let (slide, size) = (millis(0, "slide")?, millis(1, "size")?);
            (size + slide - 1) / slide
        }
        "cumulate" => {
            let (step, size) = (millis(0, "step")?, millis(1, "size")?);
            (size + step - 1) / step
        }
        _ => {
            return Err(SqlError::not_supported(
                format!("{upper} without GROUP BY"),
                Some(
                    "session windows exist only in aggregation: GROUP BY window_start, window_end[, keys]",
                ),
            ));
        }
    };
    if branches > MAX_ROW_WINDOWS {
        return Err(SqlError::Invalid(format!(
            "{upper} without GROUP BY gives each row {branches} windows; at most {MAX_ROW_WINDOWS} are supported (aggregate with GROUP BY window_start, window_end instead)"
        )));
    }
    let call = |which: &str, k: i64| -> Result<Expr, SqlError> {
        let text = format!(
            "{TVF_WINDOW}('{which}', '{}', {k}, {}, {})",
            window.function,
            window.time_column,
            window.params.join(", ")
        );
        Parser::new(&GenericDialect {})
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| SqlError::Invalid(format!("{upper}: {e}")))
    };
    let mut selects = Vec::new();
    for k in 0..branches {
        let (start, end) = (call("start", k)?, call("end", k)?);
        let mut branch = select.clone();
        let replace =
            |expr: &mut Expr| replace_window_columns(expr, window.alias.as_deref(), &start, &end);
        let mut projection = Vec::new();
        for item in branch.projection.drain(..) {
            match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    projection.push(item);
                    projection.push(SelectItem::ExprWithAlias {
                        expr: start.clone(),
                        alias: Ident::new("window_start"),
                    });
                    projection.push(SelectItem::ExprWithAlias {
                        expr: end.clone(),
                        alias: Ident::new("window_end"),
                    });
                }
                SelectItem::UnnamedExpr(mut e) => {
                    let name = match &e {
                        Expr::Identifier(i) => Some(i.clone()),
                        Expr::CompoundIdentifier(parts) => parts.last().cloned(),
                        _ => None,
                    }
                    .filter(|i| {
                        matches!(
                            i.value.to_lowercase().as_str(),
                            "window_start" | "window_end"
                        )
                    });
                    replace(&mut e);
                    projection.push(match name {
                        Some(alias) => SelectItem::ExprWithAlias { expr: e, alias },
                        None => SelectItem::UnnamedExpr(e),
                    });
                }
                SelectItem::ExprWithAlias { mut expr, alias } => {
                    replace(&mut expr);
                    projection.push(SelectItem::ExprWithAlias { expr, alias });
                }
                other => projection.push(other),
            }
        }
        branch.projection = projection;
        if let Some(selection) = &mut branch.selection {
            replace(selection);
        }
        // Only rows that have a k-th window.
        let has_window = Expr::IsNotNull(Box::new(start.clone()));
        branch.selection = Some(match branch.selection.take() {
            Some(existing) => Expr::BinaryOp {
                left: Box::new(Expr::Nested(Box::new(existing))),
                op: sqlparser::ast::BinaryOperator::And,
                right: Box::new(has_window),
            },
            None => has_window,
        });
        selects.push(SetExpr::Select(Box::new(branch)));
    }
    let mut iter = selects.into_iter();
    let mut union = iter.next().expect("at least one branch");
    for next in iter {
        union = SetExpr::SetOperation {
            op: sqlparser::ast::SetOperator::Union,
            set_quantifier: sqlparser::ast::SetQuantifier::All,
            left: Box::new(union),
            right: Box::new(next),
        };
    }
    Ok(union)
}
