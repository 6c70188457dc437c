//! Lowering of `GROUP BY` / aggregate queries: the DataFusion `Aggregate` node becomes an
//! [`AggregatePlan`] (window, keys, DataFusion aggregate expressions, HAVING and SELECT steps
//! over the aggregated rows, EMIT mode and lateness), with the plan below it lowered into
//! the usual stateless input chains.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column as DfColumn, DFSchema};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::expr::{AggregateFunction, Sort};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use laminar_core::operator::Step;
use laminar_core::operator::aggregate::{
    AggregateCall, EmitMode, OutputTime, WindowSpec, relaxed, retractable,
};
use laminar_core::time::{EventTimeKind, KeyedWatermark};

use super::lower::{Branch, compile, conform, describe_projection, lower_node, peel_stateless};
use super::window::{
    WINDOW_END, mentions_window, parse_emit, parse_lateness, plan_mentions_window, window_call,
    window_spec,
};
use super::{SchemaCatalog, StreamPlan};
use crate::error::SqlError;
use crate::parser::StreamingClauses;

/// A planned streaming aggregation.
#[derive(Debug, Clone)]
pub struct AggregatePlan {
    /// Schema of the rows entering the aggregation (the input chains end here).
    pub input_schema: SchemaRef,
    /// Event-time column of the input: index and storage.
    pub event_time: Option<(usize, EventTimeKind)>,
    /// The window, if any.
    pub window: Option<WindowSpec>,
    /// Group key expressions other than the window.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Aggregate calls.
    pub aggregates: Vec<AggregateCall>,
    /// Group columns, aggregate values, then the window end when windowed.
    pub aggregate_schema: SchemaRef,
    /// Position of the window start among the group columns.
    pub window_position: usize,
    /// HAVING and SELECT steps over the aggregated rows.
    pub post: Vec<Step>,
    /// Schema after `post`.
    pub post_schema: SchemaRef,
    /// EMIT mode.
    pub emit: EmitMode,
    /// Allowed lateness (ms).
    pub lateness: i64,
    /// `LATE DATA TO` stream name.
    pub late_data_to: Option<String>,
    /// Which output column carries event time.
    pub output_time: OutputTime,
    /// The EMIT clause as planned, for EXPLAIN.
    pub emit_text: String,
    /// The window as written, for EXPLAIN.
    pub window_text: Option<String>,
    /// The input's keyed watermark when the GROUP BY includes its key column: the position
    /// of that column among `keys` and the settings. Windows of each key then close by that
    /// key's watermark.
    pub keyed_watermark: Option<(usize, KeyedWatermark)>,
}

/// Lowers `plan` when it aggregates: `None` when there is no top-level aggregation.
pub(crate) fn lower_aggregation(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
) -> Result<Option<StreamPlan>, SqlError> {
    let (post_nodes, core) = peel_stateless(plan);
    let LogicalPlan::Aggregate(aggregate) = core else {
        return Ok(None);
    };
    lower_aggregate(plan, aggregate, &post_nodes, catalog, clauses).map(Some)
}

fn lower_aggregate(
    plan: &LogicalPlan,
    aggregate: &Aggregate,
    post_nodes: &[&LogicalPlan],
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
) -> Result<StreamPlan, SqlError> {
    let input = aggregate.input.as_ref();
    let input_df = input.schema();
    let input_schema: SchemaRef = Arc::new(input_df.as_arrow().clone());
    let mut branches = lower_node(input, catalog)?;
    for b in &mut branches {
        conform(b, input_df, &input_schema)?;
        if b.descriptions.iter().any(|d| d.contains(WINDOW_END)) {
            return Err(window_outside_aggregation());
        }
    }
    check_no_window_below(input)?;
    let event_time_index = match branches.first().and_then(|b| b.event_time) {
        Some(i) if branches.iter().all(|b| b.event_time == Some(i)) => Some(i),
        _ => None,
    };
    let event_time = event_time_index.and_then(|i| {
        EventTimeKind::for_type(input_schema.field(i).data_type()).map(|kind| (i, kind))
    });
    let input_keyed = super::lower::common_keyed_watermark(&branches);
    let mut keyed_watermark = None;

    // The window among the GROUP BY expressions.
    let mut window = None;
    let mut window_position = 0;
    let mut window_text = None;
    let mut keys = Vec::new();
    for (position, expr) in aggregate.group_expr.iter().enumerate() {
        if let Expr::GroupingSet(_) = expr {
            return Err(SqlError::not_supported(
                "GROUPING SETS / ROLLUP / CUBE in a continuous query",
                None,
            ));
        }
        if let Some((function, args)) = window_call(expr) {
            if window.is_some() {
                return Err(SqlError::Invalid(
                    "a GROUP BY can have only one window".into(),
                ));
            }
            check_time_column(function, args, input_df, event_time_index, &input_schema)?;
            window = Some(window_spec(function, args)?);
            window_position = position;
            window_text = Some(expr.to_string());
            continue;
        }
        if mentions_window(expr) {
            return Err(window_outside_aggregation());
        }
        if let (Some((index, k)), Expr::Column(c)) = (&input_keyed, expr)
            && input_df.index_of_column(c).ok() == Some(*index)
            && keyed_watermark.is_none()
        {
            keyed_watermark = Some((keys.len(), k.clone()));
        }
        keys.push(compile(expr, input_df)?);
    }

    // Aggregates: first_value/last_value are by event time (SPEC 2.11).
    let props = ExecutionProps::new();
    let planning = PhysicalPlanningContext::default();
    let mut aggregates = Vec::with_capacity(aggregate.aggr_expr.len());
    for expr in &aggregate.aggr_expr {
        if mentions_window(expr) {
            return Err(window_outside_aggregation());
        }
        let expr = order_by_event_time(expr, event_time_index.map(|i| input_df.qualified_field(i)));
        let lowered =
            LoweredAggregateBuilder::new(&expr, input_df, &input_schema, &props, &planning)
                .build()
                .map_err(SqlError::Plan)?;
        aggregates.push(AggregateCall {
            function: lowered.aggregate,
            filter: lowered.filter,
        });
    }

    // EMIT and lateness.
    let emit = match &clauses.emit {
        Some(text) => parse_emit(text)?,
        None if window.is_some() => EmitMode::OnWatermark,
        None => EmitMode::Changes,
    };
    let emit_text = clauses
        .emit
        .clone()
        .map(|t| format!("EMIT {t}"))
        .unwrap_or_else(|| {
            if window.is_some() {
                "EMIT ON WATERMARK (default for windows)".into()
            } else {
                "EMIT CHANGES (default without a window)".into()
            }
        });
    let lateness = match &clauses.allow_lateness {
        Some(text) => parse_lateness(text)?,
        None => 0,
    };
    if window.is_none() {
        if matches!(
            emit,
            EmitMode::OnWatermark | EmitMode::OnWindowClose | EmitMode::Final
        ) {
            return Err(SqlError::Invalid(format!(
                "{emit_text} needs a window (GROUP BY tumble/hop/session/cumulate(..)); an unwindowed GROUP BY emits CHANGES, ON UPDATE or EVERY INTERVAL"
            )));
        }
        if clauses.allow_lateness.is_some() || clauses.late_data_to.is_some() {
            return Err(SqlError::Invalid(
                "ALLOW LATENESS and LATE DATA TO apply to windows; this GROUP BY has none (rows are never late for it)".into(),
            ));
        }
    }
    if emit == EmitMode::Final && clauses.late_data_to.is_some() {
        return Err(SqlError::Invalid(
            "EMIT FINAL drops every row that arrives after its window closed; LATE DATA TO cannot be combined with it (use EMIT ON WINDOW CLOSE)".into(),
        ));
    }
    if laminar_core::message::is_changelog(&input_schema) {
        for call in &aggregates {
            retractable(&call.function).map_err(SqlError::Invalid)?;
        }
    }

    // Aggregated rows: the DataFusion aggregate schema plus the window end.
    let mut aggregate_df = aggregate.schema.as_ref().clone();
    if let Some(position) = window.map(|_| window_position) {
        let start_type = aggregate_df.field(position).data_type().clone();
        let end = DFSchema::try_from(Schema::new(vec![Field::new(WINDOW_END, start_type, true)]))
            .map_err(SqlError::Plan)?;
        aggregate_df.merge(&end);
    }
    let aggregate_schema: SchemaRef = Arc::new(aggregate_df.as_arrow().clone());

    // HAVING and the SELECT list over aggregated rows; up to the first projection the rows
    // still carry the window end column.
    let mut post = Vec::new();
    let mut descriptions = Vec::new();
    let mut extended = true;
    let mut time_column: Option<(usize, OutputTime)> =
        window.map(|_| (window_position, OutputTime::WindowStart));
    for node in post_nodes {
        let schema = if extended {
            aggregate_df.clone()
        } else {
            node.inputs()[0].schema().as_ref().clone()
        };
        match node {
            LogicalPlan::Filter(f) => {
                let predicate = replace_window_end(&f.predicate)?;
                descriptions.push(format!("Having {}", f.predicate));
                post.push(Step::Filter(compile(&predicate, &schema)?));
            }
            LogicalPlan::Projection(p) => {
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| compile(&replace_window_end(e)?, &schema))
                    .collect::<Result<Vec<_>, _>>()?;
                time_column = time_column.and_then(|(index, _)| {
                    p.expr.iter().enumerate().find_map(|(i, e)| {
                        match time_preserving(e.clone().unalias(), &schema) {
                            Expr::Column(c) if schema.index_of_column(&c).ok() == Some(index) => {
                                Some((
                                    i,
                                    if extended && index == aggregate_df.fields().len() - 1 {
                                        OutputTime::WindowEnd
                                    } else {
                                        OutputTime::WindowStart
                                    },
                                ))
                            }
                            Expr::ScalarFunction(f) if extended && f.func.name() == WINDOW_END => {
                                Some((i, OutputTime::WindowEnd))
                            }
                            _ => None,
                        }
                    })
                });
                descriptions.push(describe_projection(&p.expr));
                post.push(Step::Project {
                    exprs,
                    schema: relaxed(&Arc::new(p.schema.as_arrow().clone())),
                });
                extended = false;
            }
            _ => unreachable!("post nodes are filters and projections"),
        }
    }
    let post_schema: SchemaRef = relaxed(&Arc::new(plan.schema().as_arrow().clone()));
    if extended {
        // No projection above the aggregation: drop the window end column.
        let n = aggregate_df.fields().len() - usize::from(window.is_some());
        post.push(Step::Project {
            exprs: (0..n)
                .map(|i| {
                    Arc::new(datafusion::physical_expr::expressions::Column::new(
                        aggregate_schema.field(i).name(),
                        i,
                    )) as Arc<dyn PhysicalExpr>
                })
                .collect(),
            schema: post_schema.clone(),
        });
    }
    let (output_event_time, output_time) = match time_column {
        Some((i, kind)) => (Some(post_schema.field(i).name().clone()), kind),
        None => (None, OutputTime::None),
    };
    let updating = emit.is_updating(lateness);
    let mut output_fields: Vec<_> = post_schema.fields().iter().cloned().collect();
    if updating {
        output_fields.push(Arc::new(Field::new(
            laminar_core::OP_COLUMN,
            DataType::Utf8,
            false,
        )));
    }
    let output_schema = Arc::new(Schema::new(output_fields));
    let mut chain_descriptions: Vec<Vec<String>> =
        branches.iter().map(|b| b.descriptions.clone()).collect();
    for chain in &mut chain_descriptions {
        chain.push(format!(
            "Aggregate group by [{}] compute [{}]",
            aggregate
                .group_expr
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            aggregate
                .aggr_expr
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        chain.extend(descriptions.iter().cloned());
    }
    Ok(StreamPlan {
        inputs: branches.iter().map(|b| b.input.clone()).collect(),
        chain_descriptions,
        chains: branches.into_iter().map(|b: Branch| b.steps).collect(),
        output_schema,
        event_time: output_event_time,
        keyed_watermark: None,
        logical_plan: plan.clone(),
        join: None,
        topn: None,
        analytic: None,
        stages: Vec::new(),
        aggregate: Some(AggregatePlan {
            input_schema,
            event_time,
            window,
            keys,
            aggregates,
            aggregate_schema,
            window_position,
            post,
            post_schema,
            emit,
            lateness,
            late_data_to: clauses
                .late_data_to
                .as_deref()
                .map(parse_late_target)
                .transpose()?,
            output_time,
            emit_text,
            window_text,
            keyed_watermark: keyed_watermark.filter(|_| window.is_some()),
        }),
    })
}

fn window_outside_aggregation() -> SqlError {
    SqlError::Invalid(
        "window functions (tumble, hop, session, cumulate, window_start, window_end, *_end) can only appear in GROUP BY and in the SELECT list / HAVING of that aggregation".into(),
    )
}

fn check_no_window_below(plan: &LogicalPlan) -> Result<(), SqlError> {
    if plan_mentions_window(plan) {
        return Err(window_outside_aggregation());
    }
    Ok(())
}

/// The window's first argument must be the input's event-time column.
fn check_time_column(
    function: &str,
    args: &[Expr],
    input: &DFSchema,
    event_time: Option<usize>,
    schema: &Schema,
) -> Result<(), SqlError> {
    let column = match args.first() {
        Some(Expr::Column(c)) => c,
        Some(other) => {
            return Err(SqlError::Invalid(format!(
                "{function}(): the first argument must be the event-time column, got the expression {other}"
            )));
        }
        None => {
            return Err(SqlError::Invalid(format!(
                "{function}() needs the event-time column as its first argument"
            )));
        }
    };
    let index = input.index_of_column(column).map_err(SqlError::Plan)?;
    match event_time {
        Some(et) if et == index => Ok(()),
        Some(et) => Err(SqlError::Invalid(format!(
            "{function}({}): '{}' is not the event-time column; windows use the event-time column '{}' (declared with WATERMARK FOR)",
            column.name,
            column.name,
            schema.field(et).name()
        ))),
        None => Err(SqlError::Invalid(format!(
            "{function}({}): the input has no event-time column; declare one with WATERMARK FOR <column> on the source (streams keep it when they select it unchanged)",
            column.name
        ))),
    }
}

/// `first_value(x)` / `last_value(x)` without ORDER BY order by event time.
/// A cast of a column that keeps its value as event time (epoch milliseconds or a
/// timestamp), e.g. `CAST(tumble(ts, ..) AS BIGINT)` over a BIGINT or millisecond-timestamp
/// window, is the column itself; other expressions are returned unchanged.
fn time_preserving(expr: Expr, schema: &datafusion::common::DFSchema) -> Expr {
    use datafusion::arrow::datatypes::TimeUnit;
    let Expr::Cast(cast) = &expr else {
        return expr;
    };
    let Expr::Column(c) = cast.expr.as_ref() else {
        return expr;
    };
    let Ok(field) = datafusion::common::ExprSchema::field_from_column(schema, c) else {
        return expr;
    };
    let keeps = matches!(
        (field.data_type(), cast.field.data_type()),
        (DataType::Int64, DataType::Int64)
            | (
                DataType::Timestamp(TimeUnit::Millisecond, _),
                DataType::Int64
            )
            | (
                DataType::Int64,
                DataType::Timestamp(TimeUnit::Millisecond, _)
            )
            // Window starts are whole milliseconds: exact in any unit down from there.
            | (
                DataType::Timestamp(_, _),
                DataType::Timestamp(
                    TimeUnit::Millisecond | TimeUnit::Microsecond | TimeUnit::Nanosecond,
                    _
                )
            )
    );
    if keeps { Expr::Column(c.clone()) } else { expr }
}

fn order_by_event_time(
    expr: &Expr,
    event_time: Option<(Option<&datafusion::common::TableReference>, &Arc<Field>)>,
) -> Expr {
    let Some((qualifier, field)) = event_time else {
        return expr.clone();
    };
    expr.clone()
        .transform(|e| {
            if let Expr::AggregateFunction(AggregateFunction { func, params }) = &e
                && matches!(func.name(), "first_value" | "last_value")
                && params.order_by.is_empty()
            {
                let mut params = params.clone();
                params.order_by = vec![Sort::new(
                    Expr::Column(DfColumn::new(qualifier.cloned(), field.name())),
                    true,
                    false,
                )];
                return Ok(Transformed::yes(Expr::AggregateFunction(
                    AggregateFunction {
                        func: func.clone(),
                        params,
                    },
                )));
            }
            Ok(Transformed::no(e))
        })
        .map(|t| t.data)
        .unwrap_or_else(|_| expr.clone())
}

/// Replaces `__window_end(<window>)` with a reference to the window end column.
fn replace_window_end(expr: &Expr) -> Result<Expr, SqlError> {
    expr.clone()
        .transform(|e| {
            if let Expr::ScalarFunction(f) = &e
                && f.func.name() == WINDOW_END
            {
                return Ok(Transformed::yes(Expr::Column(DfColumn::new_unqualified(
                    WINDOW_END,
                ))));
            }
            Ok(Transformed::no(e))
        })
        .map(|t| t.data)
        .map_err(SqlError::Plan)
}

/// The stream name of `LATE DATA TO name` (the clause text after `LATE DATA`).
fn parse_late_target(text: &str) -> Result<String, SqlError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [to, name] if to.eq_ignore_ascii_case("TO") => {
            if let Some(quoted) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                Ok(quoted.to_string())
            } else if name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                Ok(name.to_lowercase())
            } else {
                Err(SqlError::Invalid(format!(
                    "LATE DATA TO: '{name}' is not a valid stream name"
                )))
            }
        }
        _ => Err(SqlError::Invalid(format!(
            "expected LATE DATA TO <stream name>, got LATE DATA {text}"
        ))),
    }
}
