//! Lowering a type-coerced DataFusion logical plan into per-input chains of compiled
//! filter/projection steps.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_expr::expressions::{CastExpr, Column};
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use super::{SchemaCatalog, StreamPlan};
use crate::error::SqlError;
use crate::parser::StreamingClauses;
use laminar_core::operator::Step;
use laminar_core::time::KeyedWatermark;

/// A chain being built for one input.
pub(super) struct Branch {
    pub(super) input: String,
    pub(super) steps: Vec<Step>,
    pub(super) descriptions: Vec<String>,
    /// Index of the event-time column in the branch's current output, if it survives.
    pub(super) event_time: Option<usize>,
    /// The input's keyed watermark and the index of its key column in the branch's current
    /// output, if it survives.
    pub(super) keyed_watermark: Option<(usize, KeyedWatermark)>,
}

impl Branch {
    /// Follows the tracked columns through a projection: a column survives when it is
    /// selected unchanged.
    fn project(&mut self, exprs: &[Expr], input_schema: &DFSchema) {
        let follow = |index: usize| follow_column(exprs, input_schema, index);
        self.event_time = self.event_time.and_then(follow);
        self.keyed_watermark = self
            .keyed_watermark
            .take()
            .and_then(|(index, k)| follow(index).map(|i| (i, k)));
    }
}

/// Position in a projection's output of input column `index`, when it is selected unchanged
/// (possibly renamed).
pub(super) fn follow_column(
    exprs: &[Expr],
    input_schema: &DFSchema,
    index: usize,
) -> Option<usize> {
    exprs.iter().position(|e| match e.clone().unalias() {
        Expr::Column(c) => input_schema.index_of_column(&c).ok() == Some(index),
        _ => false,
    })
}

/// `Project a, b, ..` for EXPLAIN.
pub(super) fn describe_projection(exprs: &[Expr]) -> String {
    format!(
        "Project {}",
        exprs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The keyed watermark shared by every branch (by key column position), if any.
pub(super) fn common_keyed_watermark(branches: &[Branch]) -> Option<(usize, KeyedWatermark)> {
    let first = branches.first()?.keyed_watermark.clone()?;
    branches
        .iter()
        .all(|b| b.keyed_watermark.as_ref() == Some(&first))
        .then_some(first)
}

/// Splits off the filters, projections and aliases at the top of a plan: returns them in
/// execution order (bottom-up) and the node below them.
pub(super) fn peel_stateless(plan: &LogicalPlan) -> (Vec<&LogicalPlan>, &LogicalPlan) {
    let mut post_nodes: Vec<&LogicalPlan> = Vec::new();
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(p) => {
                post_nodes.push(node);
                node = &p.input;
            }
            LogicalPlan::Filter(f) => {
                post_nodes.push(node);
                node = &f.input;
            }
            LogicalPlan::SubqueryAlias(a) => node = &a.input,
            _ => break,
        }
    }
    post_nodes.reverse();
    (post_nodes, node)
}

/// True when every relation the plan reads is a table or a materialized view: a snapshot
/// query.
pub fn reads_only_snapshots(plan: &LogicalPlan, catalog: &dyn SchemaCatalog) -> bool {
    let mut all = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && catalog
                .relation(scan.table_name.table())
                .is_none_or(|r| r.table.is_none() && r.view.is_none())
        {
            all = false;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    all && reads_relations(plan)
}

/// Rebuilds the filters, projections and aliases at the top of a plan over `core(node)` of
/// the node below them (a join chain, a top-N), whose output carries `_op`: a projection that
/// leaves `_op` out gets its input's first `_op` appended, so the change reaches the top.
pub(super) fn rebuild_spine(
    node: &LogicalPlan,
    core: &mut dyn FnMut(&LogicalPlan) -> Result<LogicalPlan, SqlError>,
) -> Result<LogicalPlan, SqlError> {
    use laminar_core::message::OP_COLUMN;
    match node {
        LogicalPlan::Projection(p) => {
            let input = rebuild_spine(&p.input, core)?;
            let mut exprs = p.expr.clone();
            if !p.schema.iter().any(|(_, f)| f.name() == OP_COLUMN)
                && let Some((qualifier, field)) =
                    input.schema().iter().find(|(_, f)| f.name() == OP_COLUMN)
            {
                exprs.push(Expr::Column(datafusion::common::Column::new(
                    qualifier.cloned(),
                    field.name(),
                )));
            }
            datafusion::logical_expr::Projection::try_new(exprs, Arc::new(input))
                .map(LogicalPlan::Projection)
                .map_err(SqlError::Plan)
        }
        LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            let input = rebuild_spine(node.inputs()[0], core)?;
            node.with_new_exprs(node.expressions(), vec![input])
                .map_err(SqlError::Plan)
        }
        other => core(other),
    }
}

/// Compiles the filters and projections above an operator (bottom-up, as
/// [`peel_stateless`] returns them) into its post chain and their descriptions. The columns
/// at `tracked` (positions in the operator's output) are followed through the projections
/// (`None` once one drops them); `filter` sees each filter with the positions at that point.
pub(super) fn post_chain(
    post_nodes: &[&LogicalPlan],
    tracked: &mut [Option<usize>],
    mut filter: impl FnMut(&datafusion::logical_expr::Filter, &[Option<usize>]),
) -> Result<(Vec<Step>, Vec<String>), SqlError> {
    let mut post = Vec::new();
    let mut descriptions = Vec::new();
    for node in post_nodes {
        match node {
            LogicalPlan::Filter(f) => {
                filter(f, tracked);
                descriptions.push(format!("Filter {}", f.predicate));
                post.push(Step::Filter(compile(&f.predicate, f.input.schema())?));
            }
            LogicalPlan::Projection(p) => {
                let schema = p.input.schema();
                for t in tracked.iter_mut() {
                    *t = t.and_then(|i| follow_column(&p.expr, schema, i));
                }
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| compile(e, schema))
                    .collect::<Result<Vec<_>, _>>()?;
                descriptions.push(describe_projection(&p.expr));
                post.push(Step::Project {
                    exprs,
                    schema: Arc::new(p.schema.as_arrow().clone()),
                });
            }
            _ => {}
        }
    }
    Ok((post, descriptions))
}

/// The plan with exactly one `_op` column in its output (the first; appended from the
/// input of the top projection when it has none).
pub(super) fn one_op_on_top(plan: LogicalPlan) -> Result<LogicalPlan, SqlError> {
    use laminar_core::message::OP_COLUMN;
    let lost = || SqlError::Invalid("an updating query lost its _op column".into());
    let (input, candidates): (LogicalPlan, Vec<(Expr, bool)>) = match &plan {
        LogicalPlan::Projection(p) => (
            p.input.as_ref().clone(),
            p.expr
                .iter()
                .zip(p.schema.iter())
                .map(|(e, (_, f))| (e.clone(), f.name() == OP_COLUMN))
                .collect(),
        ),
        other => (
            other.clone(),
            other
                .schema()
                .iter()
                .map(|(q, f)| {
                    (
                        Expr::Column(datafusion::common::Column::new(q.cloned(), f.name())),
                        f.name() == OP_COLUMN,
                    )
                })
                .collect(),
        ),
    };
    let mut exprs = Vec::with_capacity(candidates.len() + 1);
    let mut has_op = false;
    for (e, is_op) in candidates {
        if is_op {
            if has_op {
                continue;
            }
            has_op = true;
        }
        exprs.push(e);
    }
    if !has_op {
        let (qualifier, field) = input
            .schema()
            .iter()
            .find(|(_, f)| f.name() == OP_COLUMN)
            .ok_or_else(lost)?;
        exprs.push(Expr::Column(datafusion::common::Column::new(
            qualifier.cloned(),
            field.name(),
        )));
    }
    datafusion::logical_expr::Projection::try_new(exprs, Arc::new(input))
        .map(LogicalPlan::Projection)
        .map_err(SqlError::Plan)
}

/// True when the plan reads a changelog relation (one with `_op`).
pub(super) fn reads_changelog(plan: &LogicalPlan, catalog: &dyn SchemaCatalog) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && catalog
                .relation(scan.table_name.table())
                .is_some_and(|r| laminar_core::message::is_changelog(&r.schema))
        {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

/// A filter/projection over a changelog passes every change on with its weight: when the
/// query reads a changelog (a relation with `_op`) and its `SELECT` list leaves `_op` out,
/// `_op` is appended to the output. `None` when nothing needs changing.
pub(super) fn keep_changes(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
) -> Result<Option<LogicalPlan>, SqlError> {
    use laminar_core::message::OP_COLUMN;
    if plan
        .schema()
        .index_of_column_by_name(None, OP_COLUMN)
        .is_some()
    {
        return Ok(None);
    }
    if !reads_changelog(plan, catalog) {
        return Ok(None);
    }
    let refused = || {
        SqlError::not_supported(
            "this query over a changelog (an input with _op)",
            Some("select the changes' _op column, or aggregate them"),
        )
    };
    if let LogicalPlan::Union(union) = plan {
        return union_of_changes(&union.inputs, catalog).map(Some);
    }
    let LogicalPlan::Projection(projection) = plan else {
        return Err(refused());
    };
    let Some((qualifier, field)) = projection
        .input
        .schema()
        .iter()
        .find(|(_, f)| f.name() == OP_COLUMN)
    else {
        return Err(refused());
    };
    let mut exprs = projection.expr.clone();
    exprs.push(Expr::Column(datafusion::common::Column::new(
        qualifier.cloned(),
        field.name(),
    )));
    datafusion::logical_expr::Projection::try_new(exprs, projection.input.clone())
        .map(|p| Some(LogicalPlan::Projection(p)))
        .map_err(SqlError::Plan)
}

/// The `UNION ALL` of `inputs` with every branch carrying `_op`: a branch over a changelog
/// passes its changes on (see [`keep_changes`]), an append-only branch adds only (`I`).
pub(super) fn union_of_changes(
    inputs: &[Arc<LogicalPlan>],
    catalog: &dyn SchemaCatalog,
) -> Result<LogicalPlan, SqlError> {
    use laminar_core::message::OP_COLUMN;
    let mut branches = Vec::with_capacity(inputs.len());
    for input in inputs {
        let branch = match keep_changes(input, catalog)? {
            Some(kept) => kept,
            None if input
                .schema()
                .index_of_column_by_name(None, OP_COLUMN)
                .is_some() =>
            {
                input.as_ref().clone()
            }
            None => {
                let mut exprs: Vec<Expr> = input
                    .schema()
                    .columns()
                    .into_iter()
                    .map(Expr::Column)
                    .collect();
                exprs.push(datafusion::logical_expr::lit("I").alias(OP_COLUMN));
                LogicalPlanBuilder::from(input.as_ref().clone())
                    .project(exprs)
                    .and_then(|b| b.build())
                    .map_err(SqlError::Plan)?
            }
        };
        branches.push(branch);
    }
    let mut branches = branches.into_iter();
    let Some(first) = branches.next() else {
        return Err(SqlError::Invalid("a UNION ALL without branches".into()));
    };
    let mut builder = LogicalPlanBuilder::from(first);
    for branch in branches {
        builder = builder.union(branch).map_err(SqlError::Plan)?;
    }
    builder.build().map_err(SqlError::Plan)
}

/// `SELECT DISTINCT ..` and `UNION` (distinct) are a grouping by every output column without
/// aggregates; they are rewritten into that aggregation, which is maintained incrementally: a
/// row enters (`I`) with its first copy and leaves (`D`) when its last copy is retracted.
fn distinct_as_aggregate(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
) -> Result<Option<LogicalPlan>, SqlError> {
    use laminar_core::message::OP_COLUMN;
    let LogicalPlan::Distinct(distinct) = plan else {
        return Ok(None);
    };
    let datafusion::logical_expr::Distinct::All(input) = distinct else {
        return Err(not_supported(
            "DISTINCT ON",
            Some("use GROUP BY with first_value/last_value"),
        ));
    };
    // Over a changelog the grouping needs each row's weight.
    let input = keep_changes(input, catalog)?.unwrap_or_else(|| input.as_ref().clone());
    let groups: Vec<Expr> = input
        .schema()
        .columns()
        .into_iter()
        .filter(|c| c.name != OP_COLUMN)
        .map(Expr::Column)
        .collect();
    LogicalPlanBuilder::from(input)
        .aggregate(groups, Vec::<Expr>::new())
        .and_then(|b| b.build())
        .map(Some)
        .map_err(SqlError::Plan)
}

/// `A INTERSECT B` and `A EXCEPT B` (distinct) are rewritten into a grouping of both inputs
/// that counts, per distinct row, its copies on each side — `SELECT .. FROM (A UNION ALL B)
/// GROUP BY .. HAVING` both counts positive (INTERSECT) or only the left one (EXCEPT) — which
/// is maintained incrementally over append-only inputs and changelogs alike. DataFusion plans
/// them as a SEMI / ANTI join of the distinct left rows whose keys match NULL with NULL; the
/// grouping treats NULLs alike too. `INTERSECT ALL` / `EXCEPT ALL` are refused.
fn set_operation_as_aggregate(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
) -> Result<Option<LogicalPlan>, SqlError> {
    use datafusion::common::NullEquality;
    use datafusion::logical_expr::{JoinType, col, lit};
    use laminar_core::message::{ChangeOp, OP_COLUMN};
    let LogicalPlan::Join(join) = plan else {
        return Ok(None);
    };
    let intersect = match join.join_type {
        JoinType::LeftSemi => true,
        JoinType::LeftAnti => false,
        _ => return Ok(None),
    };
    if join.null_equality != NullEquality::NullEqualsNull || join.filter.is_some() {
        return Ok(None);
    }
    let LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(left)) = join.left.as_ref()
    else {
        return Err(not_supported(
            if intersect {
                "INTERSECT ALL"
            } else {
                "EXCEPT ALL"
            },
            Some(if intersect {
                "use INTERSECT (distinct)"
            } else {
                "use EXCEPT (distinct)"
            }),
        ));
    };
    let right = join.right.as_ref();
    let changelog = reads_changelog(plan, catalog);
    // Each side: its data columns under the left side's names, `_op` when either side is a
    // changelog, and its side's count.
    let names: Vec<String> = left
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let branch = |input: &LogicalPlan, counts: (i64, i64)| -> Result<LogicalPlan, SqlError> {
        let kept = if changelog {
            keep_changes(input, catalog)?
        } else {
            None
        };
        let input = kept.unwrap_or_else(|| input.clone());
        let mut exprs: Vec<Expr> = input
            .schema()
            .columns()
            .into_iter()
            .filter(|c| c.name != OP_COLUMN)
            .zip(&names)
            .map(|(c, name)| Expr::Column(c).alias(name))
            .collect();
        if changelog {
            let op = input
                .schema()
                .columns()
                .into_iter()
                .find(|c| c.name == OP_COLUMN)
                .map_or_else(|| lit(ChangeOp::Insert.as_str()), Expr::Column);
            exprs.push(op.alias(OP_COLUMN));
        }
        exprs.push(lit(counts.0).alias("__in_left"));
        exprs.push(lit(counts.1).alias("__in_right"));
        LogicalPlanBuilder::from(input)
            .project(exprs)
            .and_then(|b| b.build())
            .map_err(SqlError::Plan)
    };
    let both = LogicalPlanBuilder::from(branch(left, (1, 0))?)
        .union(branch(right, (0, 1))?)
        .map_err(SqlError::Plan)?;
    let groups: Vec<Expr> = names.iter().map(|n| col(format!("\"{n}\""))).collect();
    let in_left =
        datafusion::functions_aggregate::expr_fn::sum(col("__in_left")).alias("__in_left");
    let in_right =
        datafusion::functions_aggregate::expr_fn::sum(col("__in_right")).alias("__in_right");
    let right_test = if intersect {
        col("__in_right").gt(lit(0i64))
    } else {
        col("__in_right").eq(lit(0i64))
    };
    both.aggregate(groups.clone(), vec![in_left, in_right])
        .and_then(|b| b.filter(col("__in_left").gt(lit(0i64)).and(right_test)))
        .and_then(|b| b.project(groups))
        .and_then(|b| b.build())
        .map(Some)
        .map_err(SqlError::Plan)
}

/// True when the plan reads any catalog relation.
pub fn reads_relations(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::TableScan(_)) {
            found = true;
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    found
}

pub(crate) fn lower(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
) -> Result<StreamPlan, SqlError> {
    let set_operation = set_operation_as_aggregate(plan, catalog)?;
    let plan = set_operation.as_ref().unwrap_or(plan);
    let distinct = distinct_as_aggregate(plan, catalog)?;
    let plan = distinct.as_ref().unwrap_or(plan);
    if let Some(staged) = super::stage::lower_staged(plan, catalog, clauses)? {
        return Ok(staged);
    }
    let prepared = super::join::prepare_updating(plan, catalog, clauses)?;
    let joined = super::join::lower_join(
        prepared.as_ref().map_or(plan, |(p, _)| p),
        catalog,
        clauses,
        prepared.as_ref().map(|(_, u)| u),
    )?;
    if clauses.state_ttl_ms.is_some() && !joined.as_ref().is_some_and(|p| p.is_updating()) {
        return Err(SqlError::Invalid(
            "state.ttl applies to updating joins (it bounds how long a join keeps the rows of an append-only input); this query has none".into(),
        ));
    }
    let topn = match joined {
        Some(plan) => Some(plan),
        None if super::analytic::is_analytic(plan) => {
            super::analytic::lower_analytic(plan, catalog, clauses)?
        }
        None => super::topn::lower_topn(plan, catalog, clauses)?,
    };
    if clauses.max_partitions.is_some() && topn.as_ref().is_none_or(|p| p.topn.is_none()) {
        return Err(SqlError::Invalid(
            "max_partitions applies to top-N queries (ROW_NUMBER, RANK or DENSE_RANK with WHERE rank <= N); this query has none".into(),
        ));
    }
    if let Some(plan) = topn {
        return Ok(plan);
    }
    if let Some(plan) = super::aggregate::lower_aggregation(plan, catalog, clauses)? {
        return Ok(plan);
    }
    if let Some(emit) = &clauses.emit {
        return Err(SqlError::Invalid(format!(
            "EMIT {emit} applies to aggregating queries (GROUP BY or aggregate functions); this query does not aggregate, so its output is append-only"
        )));
    }
    if clauses.allow_lateness.is_some() || clauses.late_data_to.is_some() {
        return Err(SqlError::Invalid(
            "ALLOW LATENESS and LATE DATA TO apply to windowed aggregations; this query has no window".into(),
        ));
    }
    super::window::validate_tvf_windows(plan)?;
    if super::window::plan_mentions_window(plan) {
        return Err(SqlError::Invalid(
            "window functions (tumble, hop, session, cumulate, window_start, window_end) need a GROUP BY over the window".into(),
        ));
    }
    let kept_changes = keep_changes(plan, catalog)?;
    let plan = kept_changes.as_ref().unwrap_or(plan);
    let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    let mut branches = lower_node(plan, catalog)?;
    // Every chain ends in exactly the output schema (names, types, nullability), so batches
    // from different inputs of a UNION ALL are interchangeable.
    for branch in &mut branches {
        conform(branch, plan.schema(), &output_schema)?;
    }
    let event_time = match branches.first().and_then(|b| b.event_time) {
        Some(i) if branches.iter().all(|b| b.event_time == Some(i)) => {
            Some(output_schema.field(i).name().clone())
        }
        _ => None,
    };
    let keyed_watermark = common_keyed_watermark(&branches).map(|(index, k)| KeyedWatermark {
        column: output_schema.field(index).name().clone(),
        ..k
    });
    Ok(StreamPlan {
        inputs: branches.iter().map(|b| b.input.clone()).collect(),
        chain_descriptions: branches.iter().map(|b| b.descriptions.clone()).collect(),
        chains: branches.into_iter().map(|b| b.steps).collect(),
        output_schema,
        event_time,
        keyed_watermark,
        logical_plan: plan.clone(),
        aggregate: None,
        join: None,
        topn: None,
        analytic: None,
        stages: Vec::new(),
    })
}

pub(super) fn lower_node(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
) -> Result<Vec<Branch>, SqlError> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            if scan.fetch.is_some() {
                return Err(not_supported("LIMIT", None));
            }
            let table = scan.table_name.table().to_string();
            let info = catalog
                .relation(&table)
                .ok_or_else(|| SqlError::UnknownObject {
                    kind: "source or stream",
                    name: table.clone(),
                    suggestion: None,
                })?;
            if info.table.is_some() {
                return Err(SqlError::TableAsChangelog(format!(
                    "'{table}' is a table: a continuous query reads it by a lookup join (FROM stream s JOIN {table} t ON ..) or as its changelog"
                )));
            }
            let mut branch = Branch {
                input: table.clone(),
                steps: Vec::new(),
                descriptions: Vec::new(),
                event_time: info
                    .event_time
                    .as_ref()
                    .and_then(|c| info.schema.index_of(c).ok()),
                keyed_watermark: info
                    .keyed_watermark
                    .as_ref()
                    .and_then(|k| Some((info.schema.index_of(&k.column).ok()?, k.clone()))),
            };
            if !scan.filters.is_empty() {
                return Err(SqlError::Plan(
                    datafusion::error::DataFusionError::Internal(
                        "filters were pushed into a stream scan".into(),
                    ),
                ));
            }
            if let Some(projection) = &scan.projection {
                let exprs: Vec<Arc<dyn PhysicalExpr>> = projection
                    .iter()
                    .map(|&i| Arc::new(Column::new(info.schema.field(i).name(), i)) as _)
                    .collect();
                branch.event_time = branch
                    .event_time
                    .and_then(|et| projection.iter().position(|&i| i == et));
                branch.keyed_watermark = branch
                    .keyed_watermark
                    .take()
                    .and_then(|(key, k)| projection.iter().position(|&i| i == key).map(|i| (i, k)));
                branch.descriptions.push(format!(
                    "Scan {table} columns [{}]",
                    projection
                        .iter()
                        .map(|&i| info.schema.field(i).name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                branch.steps.push(Step::Project {
                    exprs,
                    schema: Arc::new(scan.projected_schema.as_arrow().clone()),
                });
            } else {
                branch.descriptions.push(format!("Scan {table}"));
            }
            Ok(vec![branch])
        }
        LogicalPlan::Filter(filter) => {
            let mut branches = lower_node(&filter.input, catalog)?;
            let predicate = compile(&filter.predicate, filter.input.schema())?;
            for b in &mut branches {
                b.descriptions.push(format!("Filter {}", filter.predicate));
                b.steps.push(Step::Filter(predicate.clone()));
            }
            Ok(branches)
        }
        LogicalPlan::Projection(projection) => {
            let mut branches = lower_node(&projection.input, catalog)?;
            let input_schema = projection.input.schema();
            let exprs = projection
                .expr
                .iter()
                .map(|e| compile(e, input_schema))
                .collect::<Result<Vec<_>, _>>()?;
            let schema: SchemaRef = Arc::new(projection.schema.as_arrow().clone());
            for b in &mut branches {
                b.project(&projection.expr, input_schema);
                b.descriptions.push(describe_projection(&projection.expr));
                b.steps.push(Step::Project {
                    exprs: exprs.clone(),
                    schema: schema.clone(),
                });
            }
            Ok(branches)
        }
        LogicalPlan::SubqueryAlias(alias) => lower_node(&alias.input, catalog),
        LogicalPlan::Union(union) => {
            let mut all = Vec::new();
            for input in &union.inputs {
                let mut branches = lower_node(input, catalog)?;
                let target = Arc::new(union.schema.as_arrow().clone());
                for b in &mut branches {
                    conform(b, input.schema(), &target)?;
                }
                all.extend(branches);
            }
            Ok(all)
        }
        LogicalPlan::Aggregate(_) => Err(not_supported(
            "an aggregation in this position of the query",
            Some("create a stream or view for the inner aggregation and read it"),
        )),
        LogicalPlan::Join(_) => Err(not_supported(
            "a JOIN in this position of the query",
            Some("create a stream or view for the inner join and read it"),
        )),
        LogicalPlan::Window(_) => Err(not_supported(
            "window functions (OVER ...) below another operator",
            Some(
                "ROW_NUMBER(), RANK() and DENSE_RANK() run as a top-N query: in a subquery with WHERE rank <= N, as the whole query",
            ),
        )),
        LogicalPlan::Sort(_) => Err(not_supported(
            "ORDER BY",
            Some("a stream is unbounded; order results in the subscriber or the sink"),
        )),
        LogicalPlan::Limit(_) => Err(not_supported("LIMIT", None)),
        LogicalPlan::Distinct(_) => Err(not_supported(
            "INTERSECT, EXCEPT, DISTINCT or UNION (distinct) inside a subquery or a UNION ALL branch",
            Some(
                "SELECT DISTINCT, UNION, INTERSECT and EXCEPT work as the whole query; create a stream or view for the inner one and read it",
            ),
        )),
        LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Err(not_supported(
            "a continuous query without a source or stream in FROM",
            None,
        )),
        LogicalPlan::Unnest(_) => Err(not_supported("UNNEST", None)),
        LogicalPlan::RecursiveQuery(_) => Err(not_supported("WITH RECURSIVE", None)),
        other => Err(not_supported(
            format!("the query construct '{}'", other.display()),
            None,
        )),
    }
}

/// Appends a projection that makes the branch output exactly `target` (by position), casting
/// where types differ. No step is added when the schemas already match.
pub(super) fn conform(
    branch: &mut Branch,
    current: &DFSchema,
    target: &SchemaRef,
) -> Result<(), SqlError> {
    let current_arrow: &Schema = current.as_arrow();
    if current_arrow.fields() == target.fields() {
        return Ok(());
    }
    if current_arrow.fields().len() != target.fields().len() {
        return Err(SqlError::Invalid(format!(
            "UNION ALL inputs have {} and {} columns",
            current_arrow.fields().len(),
            target.fields().len()
        )));
    }
    let exprs = current_arrow
        .fields()
        .iter()
        .zip(target.fields())
        .enumerate()
        .map(|(i, (have, want))| {
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(have.name(), i));
            if have.data_type() == want.data_type() {
                column
            } else {
                Arc::new(CastExpr::new(column, want.data_type().clone(), None))
            }
        })
        .collect();
    branch.steps.push(Step::Project {
        exprs,
        schema: target.clone(),
    });
    Ok(())
}

pub(super) fn compile(expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>, SqlError> {
    create_physical_expr(
        expr,
        schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .map_err(SqlError::Plan)
}

fn not_supported(construct: impl Into<String>, hint: Option<&str>) -> SqlError {
    SqlError::not_supported(construct, hint)
}
