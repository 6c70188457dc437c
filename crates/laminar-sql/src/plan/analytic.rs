//! Lowering of analytic window functions: `LAG`, `LEAD`, `FIRST_VALUE`, `LAST_VALUE`,
//! `NTH_VALUE` and aggregates `OVER (PARTITION BY .. ORDER BY <event time> [frame])` over an
//! append-only input become an [`AnalyticPlan`]: one output row per input row, once the
//! watermark passes it (SPEC 2.12).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, LogicalPlan, WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::window::WindowExpr;
use laminar_core::operator::join::TimeColumn;
use laminar_core::operator::{Lookback, Step};
use laminar_core::time::EventTimeKind;

use super::lower::{compile, conform, lower_node, peel_stateless, post_chain, reads_changelog};
use super::topn::{int_literal, int_value};
use super::{SchemaCatalog, StreamPlan};
use crate::error::SqlError;
use crate::parser::StreamingClauses;

/// A planned analytic query.
#[derive(Debug, Clone)]
pub struct AnalyticPlan {
    /// Rows read.
    pub input_schema: SchemaRef,
    /// Their event-time column (the `ORDER BY`).
    pub event_time: TimeColumn,
    /// `PARTITION BY` over `input_schema`.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// The window functions.
    pub functions: Vec<Arc<dyn WindowExpr>>,
    /// Earlier rows they read.
    pub lookback: Lookback,
    /// Later rows they read.
    pub lookahead: u64,
    /// `input_schema` plus one column per function.
    pub window_schema: SchemaRef,
    /// Filters and projections above.
    pub post: Vec<Step>,
    /// Their descriptions.
    pub post_descriptions: Vec<String>,
    /// One line for EXPLAIN.
    pub description: String,
}

/// Window functions this plan runs.
const ANALYTIC: [&str; 5] = ["lag", "lead", "first_value", "last_value", "nth_value"];

fn analytic_function(expr: &Expr) -> Option<&datafusion::logical_expr::expr::WindowFunction> {
    let mut e = expr;
    while let Expr::Alias(a) = e {
        e = &a.expr;
    }
    let Expr::WindowFunction(f) = e else {
        return None;
    };
    match &f.fun {
        WindowFunctionDefinition::AggregateUDF(_) => Some(f),
        WindowFunctionDefinition::WindowUDF(u)
            if ANALYTIC.contains(&u.name().to_lowercase().as_str()) =>
        {
            Some(f)
        }
        WindowFunctionDefinition::WindowUDF(_) => None,
    }
}

/// True when the plan's top (below filters and projections) is a window of analytic
/// functions only.
pub(crate) fn is_analytic(plan: &LogicalPlan) -> bool {
    let (_, core) = peel_stateless(plan);
    matches!(core, LogicalPlan::Window(w) if w.window_expr.iter().all(|e| analytic_function(e).is_some()))
}

fn frame_millis(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::IntervalDayTime(Some(d)) => {
            Some(i64::from(d.days) * 86_400_000 + i64::from(d.milliseconds))
        }
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            Some(i64::from(i.days) * 86_400_000 + i.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalYearMonth(_) | ScalarValue::IntervalMonthDayNano(_) => None,
        other => int_value(other).and_then(|v| i64::try_from(v).ok()),
    }
}

fn unsupported_frame(what: &str) -> SqlError {
    SqlError::not_supported(
        format!("the window frame {what}"),
        Some(
            "frames are ROWS BETWEEN n|UNBOUNDED PRECEDING AND CURRENT ROW|n FOLLOWING, or RANGE BETWEEN <interval>|UNBOUNDED PRECEDING AND CURRENT ROW",
        ),
    )
}

/// Widest of two lookbacks.
fn wider(a: Lookback, b: Lookback) -> Lookback {
    match (a, b) {
        (Lookback::Unbounded, _) | (_, Lookback::Unbounded) => Lookback::Unbounded,
        (Lookback::Rows(x), Lookback::Rows(y)) => Lookback::Rows(x.max(y)),
        (Lookback::Millis(x), Lookback::Millis(y)) => Lookback::Millis(x.max(y)),
        // Rows and a time range together: keep everything (simple and exact).
        _ => Lookback::Unbounded,
    }
}

pub(crate) fn lower_analytic(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
) -> Result<Option<StreamPlan>, SqlError> {
    if !is_analytic(plan) {
        return Ok(None);
    }
    let (post_nodes, core) = peel_stateless(plan);
    let LogicalPlan::Window(window) = core else {
        return Ok(None);
    };
    if matches!(peel_stateless(&window.input).1, LogicalPlan::Window(_)) {
        return Err(SqlError::not_supported(
            "window functions with different PARTITION BY or ORDER BY in one query",
            Some("create a stream per window specification"),
        ));
    }
    if !clauses.is_empty() {
        return Err(SqlError::Invalid(
            "EMIT, ALLOW LATENESS and LATE DATA TO apply to aggregations; analytic functions emit one row per input row once the watermark passes it".into(),
        ));
    }
    if reads_changelog(&window.input, catalog) {
        return Err(SqlError::not_supported(
            "analytic functions (OVER) over an updating (changelog) input",
            Some(
                "they read append-only streams; a top-N (ROW_NUMBER .. WHERE rn <= N) reads changelogs",
            ),
        ));
    }
    let input = window.input.as_ref();
    let input_df = input.schema();
    let input_schema: SchemaRef = Arc::new(input_df.as_arrow().clone());
    let mut branches = lower_node(input, catalog)?;
    for b in &mut branches {
        conform(b, input_df, &input_schema)?;
    }
    let time_index = branches
        .first()
        .and_then(|b| b.event_time)
        .filter(|t| branches.iter().all(|b| b.event_time == Some(*t)));
    let input_name = branches
        .first()
        .map(|b| b.input.clone())
        .unwrap_or_default();
    let Some(time_index) = time_index else {
        return Err(SqlError::Invalid(format!(
            "analytic functions (OVER) order rows by event time, and '{input_name}' has no event-time column (declare WATERMARK FOR on its source and select the column unchanged)"
        )));
    };
    let kind = EventTimeKind::for_type(input_schema.field(time_index).data_type())
        .ok_or_else(|| SqlError::Invalid("the event-time column has an unsupported type".into()))?;
    let time_name = input_schema.field(time_index).name().clone();
    let mut partition_exprs: Option<Vec<Expr>> = None;
    let mut lookback = Lookback::Rows(0);
    let mut lookahead = 0u64;
    let mut functions: Vec<Arc<dyn WindowExpr>> = Vec::new();
    for expr in &window.window_expr {
        let f = analytic_function(expr)
            .ok_or_else(|| SqlError::Invalid("not an analytic function".into()))?;
        let params = &f.params;
        let ordered_by_time = matches!(params.order_by.as_slice(), [s] if s.asc
            && matches!(&s.expr, Expr::Column(c) if input_df.index_of_column(c).ok() == Some(time_index)));
        if !ordered_by_time {
            return Err(SqlError::Invalid(format!(
                "{expr}: analytic functions run in event-time order; write OVER ([PARTITION BY ..] ORDER BY {time_name})"
            )));
        }
        match &partition_exprs {
            None => partition_exprs = Some(params.partition_by.clone()),
            Some(p) if *p == params.partition_by => {}
            Some(_) => {
                return Err(SqlError::not_supported(
                    "window functions with different PARTITION BY in one query",
                    Some("create a stream per window specification"),
                ));
            }
        }
        let name = f.fun.name().to_lowercase();
        let offset = || -> Result<u64, SqlError> {
            match params.args.get(1) {
                None => Ok(1),
                Some(a) => int_literal(a)
                    .and_then(|v| u64::try_from(v).ok())
                    .ok_or_else(|| {
                        SqlError::Invalid(format!(
                            "{expr}: the offset of {name} must be a non-negative integer constant"
                        ))
                    }),
            }
        };
        let (back, ahead) = match name.as_str() {
            "lag" => (Lookback::Rows(offset()?), 0),
            "lead" => (Lookback::Rows(0), offset()?),
            _ => {
                let frame = &params.window_frame;
                let (back, ahead) = match frame.units {
                    WindowFrameUnits::Rows => {
                        let back = match &frame.start_bound {
                            WindowFrameBound::Preceding(v) if v.is_null() => Lookback::Unbounded,
                            WindowFrameBound::Preceding(v) => Lookback::Rows(
                                int_value(v)
                                    .and_then(|v| u64::try_from(v).ok())
                                    .ok_or_else(|| unsupported_frame(&frame.to_string()))?,
                            ),
                            _ => Lookback::Rows(0),
                        };
                        let ahead = match &frame.end_bound {
                            WindowFrameBound::Following(v) if v.is_null() => {
                                return Err(unsupported_frame(&frame.to_string()));
                            }
                            WindowFrameBound::Following(v) => int_value(v)
                                .and_then(|v| u64::try_from(v).ok())
                                .ok_or_else(|| unsupported_frame(&frame.to_string()))?,
                            _ => 0,
                        };
                        (back, ahead)
                    }
                    WindowFrameUnits::Range => {
                        let back = match &frame.start_bound {
                            WindowFrameBound::Preceding(v) if v.is_null() => Lookback::Unbounded,
                            WindowFrameBound::Preceding(v) => Lookback::Millis(
                                frame_millis(v)
                                    .map(|ms| {
                                        if kind == EventTimeKind::EpochMillis {
                                            ms
                                        } else {
                                            ms.saturating_add(1)
                                        }
                                    })
                                    .ok_or_else(|| unsupported_frame(&frame.to_string()))?,
                            ),
                            WindowFrameBound::CurrentRow => Lookback::Millis(0),
                            WindowFrameBound::Following(_) => {
                                return Err(unsupported_frame(&frame.to_string()));
                            }
                        };
                        if !matches!(frame.end_bound, WindowFrameBound::CurrentRow) {
                            return Err(unsupported_frame(&frame.to_string()));
                        }
                        (back, 0)
                    }
                    WindowFrameUnits::Groups => return Err(unsupported_frame("GROUPS")),
                };
                (back, ahead)
            }
        };
        lookback = wider(lookback, back);
        lookahead = lookahead.max(ahead);
        functions.push(
            datafusion::physical_planner::create_window_expr(
                expr,
                input_df,
                &ExecutionProps::new(),
                &PhysicalPlanningContext::default(),
            )
            .map_err(SqlError::Plan)?,
        );
    }
    let partition_exprs = partition_exprs.unwrap_or_default();
    let partition_by = partition_exprs
        .iter()
        .map(|e| compile(e, input_df))
        .collect::<Result<Vec<_>, _>>()?;
    // Filters and projections above; the event-time column is followed through them.
    let mut tracked = [Some(time_index)];
    let (post, post_descriptions) = post_chain(&post_nodes, &mut tracked, |_, _| {})?;
    let [time_at] = tracked;
    let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let description = format!(
        "{} over {time_name} order{}, keeping {} and waiting for {lookahead} later row{}",
        window
            .window_expr
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if partition_exprs.is_empty() {
            String::new()
        } else {
            format!(
                " per {}",
                partition_exprs
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        match lookback {
            Lookback::Rows(n) => format!("{n} earlier row(s)"),
            Lookback::Millis(ms) => format!("the rows of the last {ms} ms"),
            Lookback::Unbounded => "every earlier row".into(),
        },
        if lookahead == 1 { "" } else { "s" }
    );
    Ok(Some(StreamPlan {
        inputs: branches.iter().map(|b| b.input.clone()).collect(),
        chain_descriptions: branches.iter().map(|b| b.descriptions.clone()).collect(),
        chains: branches.into_iter().map(|b| b.steps).collect(),
        event_time: time_at.map(|i| output_schema.field(i).name().clone()),
        output_schema,
        keyed_watermark: None,
        logical_plan: plan.clone(),
        aggregate: None,
        join: None,
        topn: None,
        analytic: Some(AnalyticPlan {
            input_schema,
            event_time: TimeColumn {
                index: time_index,
                kind,
            },
            partition_by,
            functions,
            lookback,
            lookahead,
            window_schema: Arc::new(window.schema.as_arrow().clone()),
            post,
            post_descriptions,
            description,
        }),
        stages: Vec::new(),
    }))
}
