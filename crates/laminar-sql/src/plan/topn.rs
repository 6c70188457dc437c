//! Lowering of top-N queries: a `ROW_NUMBER()`, `RANK()` or `DENSE_RANK() OVER (PARTITION BY
//! .. ORDER BY ..)` in a subquery whose rank a `WHERE` bounds (`rn <= N`, `rn < N`, `rn = N`)
//! becomes a [`TopNPlan`]: the rows of each partition ranked incrementally, as a changelog.

use std::sync::Arc;

use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator};
use datafusion::physical_expr::PhysicalExpr;
use laminar_core::operator::{RankFunction, Step};

use super::lower::{
    compile, conform, lower_node, one_op_on_top, peel_stateless, post_chain, reads_changelog,
    rebuild_spine,
};
use super::{SchemaCatalog, StreamPlan};
use crate::error::SqlError;
use crate::parser::StreamingClauses;

/// Partitions a top-N keeps unless `max_partitions` says otherwise (SPEC 2.12).
pub const DEFAULT_MAX_PARTITIONS: u64 = 100_000;

/// A planned top-N.
#[derive(Debug, Clone)]
pub struct TopNPlan {
    /// Rows ranked: the input of the `OVER`, with `_op`.
    pub input_schema: SchemaRef,
    /// `PARTITION BY` over `input_schema`.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// `ORDER BY` over `input_schema`.
    pub order_by: Vec<(Arc<dyn PhysicalExpr>, SortOptions)>,
    /// The ranking function.
    pub function: RankFunction,
    /// The largest rank kept.
    pub limit: u64,
    /// `input_schema` plus the rank column.
    pub ranked_schema: SchemaRef,
    /// Filters and projections over the ranked rows.
    pub post: Vec<Step>,
    /// Their descriptions.
    pub post_descriptions: Vec<String>,
    /// The input never retracts.
    pub append_only: bool,
    /// The most partitions kept (`max_partitions`, 100,000 unless set).
    pub max_partitions: u64,
    /// One line for EXPLAIN.
    pub description: String,
}

fn refuse_function(name: &str) -> SqlError {
    SqlError::not_supported(
        format!("the window function {name}() OVER (..)"),
        Some(
            "window functions run as top-N queries: ROW_NUMBER(), RANK() or DENSE_RANK() OVER (PARTITION BY .. ORDER BY ..) in a subquery, with WHERE rank <= N",
        ),
    )
}

/// The value of an integer constant (possibly cast).
pub(super) fn int_literal(e: &Expr) -> Option<i128> {
    let mut e = e;
    while let Expr::Cast(c) = e {
        e = &c.expr;
    }
    match e {
        Expr::Literal(v, _) => int_value(v),
        _ => None,
    }
}

/// The value of an integer scalar.
pub(super) fn int_value(v: &ScalarValue) -> Option<i128> {
    match v {
        ScalarValue::Int8(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int16(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int32(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int64(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt8(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt16(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt64(Some(v)) => Some(i128::from(*v)),
        _ => None,
    }
}

/// The largest rank `conjunct` keeps when it bounds the rank column (at `rank` in `schema`).
fn rank_bound(conjunct: &Expr, schema: &DFSchema, rank: usize) -> Option<u64> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else {
        return None;
    };
    let is_rank = |e: &Expr| {
        let mut e = e;
        while let Expr::Cast(c) = e {
            e = &c.expr;
        }
        matches!(e, Expr::Column(c) if schema.index_of_column(c).ok() == Some(rank))
    };
    let literal = int_literal;
    // Normalized to `rank op n`.
    let (op, n) = if is_rank(left) {
        (*op, literal(right)?)
    } else if is_rank(right) {
        let swapped = match op {
            Operator::Lt => Operator::Gt,
            Operator::LtEq => Operator::GtEq,
            Operator::Gt => Operator::Lt,
            Operator::GtEq => Operator::LtEq,
            other => *other,
        };
        (swapped, literal(left)?)
    } else {
        return None;
    };
    let bound = match op {
        Operator::LtEq | Operator::Eq => n,
        Operator::Lt => n - 1,
        _ => return None,
    };
    Some(bound.clamp(0, i128::from(u64::MAX)) as u64)
}

pub(crate) fn lower_topn(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
) -> Result<Option<StreamPlan>, SqlError> {
    let (_, core) = peel_stateless(plan);
    let LogicalPlan::Window(window) = core else {
        return Ok(None);
    };
    let nested = matches!(peel_stateless(&window.input).1, LogicalPlan::Window(_));
    let [expr] = window.window_expr.as_slice() else {
        return Err(SqlError::not_supported(
            "several window functions in one query",
            Some("a top-N query ranks with one ROW_NUMBER(), RANK() or DENSE_RANK()"),
        ));
    };
    if nested {
        return Err(SqlError::not_supported(
            "several window functions in one query",
            Some("a top-N query ranks with one ROW_NUMBER(), RANK() or DENSE_RANK()"),
        ));
    }
    let Expr::WindowFunction(function) = expr.clone().unalias() else {
        return Err(refuse_function(&expr.to_string()));
    };
    let name = function.fun.name().to_lowercase();
    let rank_function = match name.as_str() {
        "row_number" => RankFunction::RowNumber,
        "rank" => RankFunction::Rank,
        "dense_rank" => RankFunction::DenseRank,
        _ => return Err(refuse_function(&name)),
    };
    if !clauses.is_empty() {
        return Err(SqlError::Invalid(
            "EMIT, ALLOW LATENESS and LATE DATA TO apply to aggregations; a top-N query emits every change of its ranked rows".into(),
        ));
    }

    if function.params.order_by.is_empty() {
        return Err(SqlError::Invalid(format!(
            "{}() OVER (..) needs an ORDER BY: the rank follows it",
            rank_function.sql()
        )));
    }
    let append_only = !reads_changelog(&window.input, catalog);
    // The ranked rows carry `_op`, and so does every projection up to the output.
    let input = super::join::with_changes(&window.input, catalog)?;
    let ranked = LogicalPlan::Window(
        datafusion::logical_expr::Window::try_new(window.window_expr.clone(), Arc::new(input))
            .map_err(SqlError::Plan)?,
    );
    let rewritten = one_op_on_top(rebuild_spine(plan, &mut |_| Ok(ranked.clone()))?)?;
    let (post_nodes, core) = peel_stateless(&rewritten);
    let LogicalPlan::Window(window) = core else {
        return Err(SqlError::Invalid("a top-N query lost its ranking".into()));
    };
    let input = window.input.as_ref();
    let input_df = input.schema();
    let input_schema: SchemaRef = Arc::new(input_df.as_arrow().clone());
    let mut branches = lower_node(input, catalog)?;
    for b in &mut branches {
        conform(b, input_df, &input_schema)?;
    }
    let partition_by = function
        .params
        .partition_by
        .iter()
        .map(|e| compile(e, input_df))
        .collect::<Result<Vec<_>, _>>()?;
    let order_by = function
        .params
        .order_by
        .iter()
        .map(|s| {
            Ok((
                compile(&s.expr, input_df)?,
                SortOptions {
                    descending: !s.asc,
                    nulls_first: s.nulls_first,
                },
            ))
        })
        .collect::<Result<Vec<_>, SqlError>>()?;
    // The rank column through the filters and projections above, and its bound.
    let time_at = branches
        .first()
        .and_then(|b| b.event_time)
        .filter(|t| branches.iter().all(|b| b.event_time == Some(*t)));
    let mut limit: Option<u64> = None;
    let mut tracked = [Some(input_df.fields().len()), time_at];
    let (post, post_descriptions) = post_chain(&post_nodes, &mut tracked, |f, tracked| {
        if let Some(at) = tracked[0] {
            let mut conjuncts = Vec::new();
            super::join::split_and(&f.predicate, &mut conjuncts);
            for c in &conjuncts {
                if let Some(n) = rank_bound(c, f.input.schema(), at) {
                    limit = Some(limit.map_or(n, |l| l.min(n)));
                }
            }
        }
    })?;
    let time_at = tracked[1];
    let Some(limit) = limit else {
        return Err(SqlError::not_supported(
            format!(
                "{}() OVER (..) without a bound on the rank",
                rank_function.sql()
            ),
            Some(
                "a top-N query keeps the first N rows of each partition: SELECT .. FROM (SELECT .., ROW_NUMBER() OVER (PARTITION BY .. ORDER BY ..) AS rn FROM s) WHERE rn <= 10",
            ),
        ));
    };
    let output_schema: SchemaRef = Arc::new(rewritten.schema().as_arrow().clone());
    let description = format!(
        "top {limit} by {}() OVER (PARTITION BY {} ORDER BY {}){}",
        rank_function.sql(),
        function
            .params
            .partition_by
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        function
            .params
            .order_by
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        if append_only {
            ", state: the ranked rows of each partition"
        } else {
            ", state: every row of each partition (the input retracts)"
        }
    );
    Ok(Some(StreamPlan {
        inputs: branches.iter().map(|b| b.input.clone()).collect(),
        chain_descriptions: branches.iter().map(|b| b.descriptions.clone()).collect(),
        chains: branches.into_iter().map(|b| b.steps).collect(),
        event_time: time_at.map(|i| output_schema.field(i).name().clone()),
        output_schema,
        keyed_watermark: None,
        logical_plan: rewritten.clone(),
        aggregate: None,
        join: None,
        analytic: None,
        stages: Vec::new(),
        topn: Some(TopNPlan {
            input_schema,
            partition_by,
            order_by,
            function: rank_function,
            limit,
            ranked_schema: Arc::new(window.schema.as_arrow().clone()),
            post,
            post_descriptions,
            append_only,
            description,
            max_partitions: clauses.max_partitions.unwrap_or(DEFAULT_MAX_PARTITIONS),
        }),
    }))
}
