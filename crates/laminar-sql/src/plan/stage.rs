//! Stacked stateful operators in one query: an aggregation, a ranking (top-N, analytic
//! functions), a join or a `UNION ALL` whose input is itself a join, an aggregation, DISTINCT
//! or a ranking — for example `SELECT category, AVG(price) FROM auctions JOIN bids ON .. GROUP
//! BY category`, a top-N over a GROUP BY, or a join of two aggregated subqueries. Each such
//! input is planned on its own as a *stage* of the query ([`StreamPlan::stages`]); the top
//! operator is planned over a relation named [`STAGE_RELATION`] (`stage_k` for the `k`-th of
//! several) that stands for the stage's output, as if the stage were a stream (or a view, when
//! its output is a changelog) the query reads. All run in the query's node, the stages first.

use std::sync::Arc;

use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::catalog::empty::EmptyTable;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, TableReference};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Projection};

use super::{RelationInfo, SchemaCatalog, StreamPlan};
use crate::error::SqlError;
use crate::parser::StreamingClauses;

/// The name under which the top operator reads its stage's output when it has one stage;
/// with several, the `k`-th (in the order of the query) is `stage_k`. A name the catalog
/// already has gets a leading `_` until it is free.
pub const STAGE_RELATION: &str = "stage";

/// The catalog with the stages' outputs added under their names.
struct WithStages<'a> {
    catalog: &'a dyn SchemaCatalog,
    stages: Vec<(String, RelationInfo)>,
}

impl SchemaCatalog for WithStages<'_> {
    fn relation(&self, name: &str) -> Option<RelationInfo> {
        match self.stages.iter().find(|(stage, _)| stage == name) {
            Some((_, info)) => Some(info.clone()),
            None => self.catalog.relation(name),
        }
    }

    fn relation_names(&self) -> Vec<String> {
        self.catalog.relation_names()
    }
}

/// True when the plan holds an operator that keeps state (a join, an aggregation, DISTINCT,
/// a window function).
fn keeps_state(plan: &LogicalPlan) -> bool {
    holds(plan, |node| {
        matches!(
            node,
            LogicalPlan::Join(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::Window(_)
        )
    })
}

/// True when a node of the plan satisfies `test`.
fn holds(plan: &LogicalPlan, test: impl Fn(&LogicalPlan) -> bool) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if test(node) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The inputs of the plan's top operator (below the filters and projections of the SELECT)
/// that keep state, in the order of the query: they become stages.
fn stage_roots(plan: &LogicalPlan) -> Vec<&LogicalPlan> {
    let (_, core) = super::lower::peel_stateless(plan);
    let inputs: Vec<&LogicalPlan> = match core {
        LogicalPlan::Aggregate(a) => vec![a.input.as_ref()],
        // Window functions with different specifications in one SELECT are windows directly
        // over each other: one query level, refused as such by the ranking planners.
        LogicalPlan::Window(w) if !matches!(w.input.as_ref(), LogicalPlan::Window(_)) => {
            vec![w.input.as_ref()]
        }
        LogicalPlan::Join(top) => {
            let (joins, base) = super::join::flatten_joins(top);
            std::iter::once(base)
                .chain(joins.iter().map(|j| j.right.as_ref()))
                .collect()
        }
        LogicalPlan::Union(union) => union.inputs.iter().map(|i| i.as_ref()).collect(),
        _ => Vec::new(),
    };
    inputs.into_iter().filter(|i| keeps_state(i)).collect()
}

/// Plans `plan` in stages when an input of its top operator (an aggregation, a window
/// function, a join or `UNION ALL`, below the filters and projections of the SELECT) is
/// itself stateful; `None` when none is.
pub(super) fn lower_staged(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
) -> Result<Option<StreamPlan>, SqlError> {
    let roots = stage_roots(plan);
    if roots.is_empty() {
        return Ok(None);
    }
    let (_, core) = super::lower::peel_stateless(plan);
    // EMIT, lateness and late data belong to the top operator; a join's state TTL and a
    // ranking's partition bound to the operators that join or rank: the top one, or else
    // the stages that hold one.
    let joins = matches!(core, LogicalPlan::Join(_));
    let ranks = matches!(core, LogicalPlan::Window(_));
    let is_join = |p: &LogicalPlan| matches!(p, LogicalPlan::Join(_));
    let is_window = |p: &LogicalPlan| matches!(p, LogicalPlan::Window(_));
    if clauses.state_ttl_ms.is_some() && !joins && !roots.iter().any(|r| holds(r, is_join)) {
        return Err(SqlError::Invalid(
            "state.ttl applies to updating joins (it bounds how long a join keeps the rows of an append-only input); this query has none".into(),
        ));
    }
    if clauses.max_partitions.is_some() && !ranks && !roots.iter().any(|r| holds(r, is_window)) {
        return Err(SqlError::Invalid(
            "max_partitions applies to top-N queries (ROW_NUMBER, RANK or DENSE_RANK with WHERE rank <= N); this query has none".into(),
        ));
    }
    let stage_clauses = |root: &LogicalPlan| StreamingClauses {
        state_ttl_ms: clauses
            .state_ttl_ms
            .filter(|_| !joins && holds(root, is_join)),
        max_partitions: clauses
            .max_partitions
            .filter(|_| !ranks && holds(root, is_window)),
        ..StreamingClauses::default()
    };
    let top_clauses = StreamingClauses {
        state_ttl_ms: clauses.state_ttl_ms.filter(|_| joins),
        max_partitions: clauses.max_partitions.filter(|_| ranks),
        ..clauses.clone()
    };
    let mut stages: Vec<(String, StreamPlan)> = Vec::with_capacity(roots.len());
    let mut replacements: Vec<(&LogicalPlan, LogicalPlan)> = Vec::with_capacity(roots.len());
    for (k, root) in roots.iter().enumerate() {
        let mut name = if roots.len() == 1 {
            STAGE_RELATION.to_string()
        } else {
            format!("{STAGE_RELATION}_{}", k + 1)
        };
        // A relation of the catalog with that name keeps it: the stage takes another.
        while catalog.relation(&name).is_some() {
            name.insert(0, '_');
        }
        let (stage, renamed) = plan_stage(root, &name, catalog, &stage_clauses(root))?;
        stages.push((name, stage));
        replacements.push((root, renamed));
    }
    let top = replace(plan, &replacements)?;
    let top = match core {
        LogicalPlan::Union(_) => same_width_union(&top, catalog)?,
        _ => top,
    };
    let with_stages = WithStages {
        catalog,
        stages: stages
            .iter()
            .map(|(name, stage)| {
                let info = RelationInfo {
                    schema: stage.output_schema.clone(),
                    event_time: stage.event_time.clone(),
                    keyed_watermark: stage.keyed_watermark.clone(),
                    table: None,
                    view: None,
                };
                (name.clone(), info)
            })
            .collect(),
    };
    let mut planned = super::lower::lower(&top, &with_stages, &top_clauses)?;
    let mut stages: Vec<(String, Option<StreamPlan>)> =
        stages.into_iter().map(|(n, s)| (n, Some(s))).collect();
    planned.stages = planned
        .inputs
        .iter()
        .map(|input| {
            stages
                .iter_mut()
                .find(|(name, _)| name == input)
                .and_then(|(_, stage)| stage.take())
        })
        .collect();
    if let Some((name, _)) = stages.iter().find(|(_, s)| s.is_some()) {
        return Err(SqlError::Invalid(format!(
            "the query reads its stage '{name}' more than once, or not at all"
        )));
    }
    Ok(Some(planned))
}

/// Plans the stateful subquery `root` as the stage `name`: the stage's plan, and what the
/// top operator reads in its place (the stage's output with the columns renamed back to the
/// names and qualifiers the query uses; a changelog's `_op` comes along).
fn plan_stage(
    root: &LogicalPlan,
    name: &str,
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
) -> Result<(StreamPlan, LogicalPlan), SqlError> {
    // The stage: the subquery, its columns under names unique without their qualifiers. The
    // changes of the stage's inputs (their `_op`) stay inside it: when it reads a changelog,
    // its output is one, with its own `_op`.
    let op = laminar_core::message::OP_COLUMN;
    let fields: Vec<(Option<TableReference>, String)> = root
        .schema()
        .iter()
        .filter(|(_, f)| f.name() != op)
        .map(|(q, f)| (q.cloned(), f.name().clone()))
        .collect();
    let names = unique_names(&fields);
    let stage_query = Projection::try_new(
        fields
            .iter()
            .zip(&names)
            .map(|((q, n), name)| Expr::Column(Column::new(q.clone(), n)).alias(name))
            .collect(),
        Arc::new(root.clone()),
    )
    .map(LogicalPlan::Projection)
    .map_err(SqlError::Plan)?;
    let stage = super::lower::lower(&stage_query, catalog, clauses)?;
    let scan = LogicalPlanBuilder::scan(
        name,
        provider_as_source(Arc::new(EmptyTable::new(stage.output_schema.clone()))),
        None,
    )
    .and_then(|b| b.build())
    .map_err(SqlError::Plan)?;
    let stage_column = |column: &str| Expr::Column(Column::new(Some(name), column));
    let mut exprs: Vec<Expr> = fields
        .iter()
        .zip(&names)
        .map(|((q, n), column)| stage_column(column).alias_qualified(q.clone(), n))
        .collect();
    if stage.output_schema.index_of(op).is_ok() {
        exprs.push(stage_column(op));
    }
    let renamed = Projection::try_new(exprs, Arc::new(scan))
        .map(LogicalPlan::Projection)
        .map_err(SqlError::Plan)?;
    Ok((stage, renamed))
}

/// Each column's name when no other column has it, else `qualifier.name` (numbered when
/// that is taken too).
fn unique_names(fields: &[(Option<TableReference>, String)]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(fields.len());
    for (q, n) in fields {
        let shared = fields.iter().filter(|(_, other)| other == n).count() > 1;
        let mut name = match (shared, q) {
            (true, Some(q)) => format!("{q}.{n}"),
            _ => n.clone(),
        };
        let base = name.clone();
        let mut i = 2;
        while names.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        names.push(name);
    }
    names
}

/// The plan with each of the `replacements`' nodes (found by identity) replaced.
fn replace(
    node: &LogicalPlan,
    replacements: &[(&LogicalPlan, LogicalPlan)],
) -> Result<LogicalPlan, SqlError> {
    if let Some((_, with)) = replacements.iter().find(|(r, _)| std::ptr::eq(*r, node)) {
        return Ok(with.clone());
    }
    let mut holds_one = false;
    let _ = node.apply(|n| {
        if replacements.iter().any(|(r, _)| std::ptr::eq(*r, n)) {
            holds_one = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if !holds_one {
        return Ok(node.clone());
    }
    let inputs = node
        .inputs()
        .into_iter()
        .map(|input| replace(input, replacements))
        .collect::<Result<Vec<_>, _>>()?;
    node.with_new_exprs(node.expressions(), inputs)
        .map_err(SqlError::Plan)
}

/// A `UNION ALL` (below its filters and projections) whose branches all have the same
/// columns: when some read a changelog stage (with `_op`), the others get theirs (`_op` of
/// the changelog they read, `'I'` when they read none).
fn same_width_union(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
) -> Result<LogicalPlan, SqlError> {
    match plan {
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            let below = same_width_union(plan.inputs()[0], catalog)?;
            plan.with_new_exprs(plan.expressions(), vec![below])
                .map_err(SqlError::Plan)
        }
        LogicalPlan::Union(union) => {
            let changes = union.inputs.iter().any(|i| {
                i.schema()
                    .index_of_column_by_name(None, laminar_core::message::OP_COLUMN)
                    .is_some()
            });
            if changes {
                super::lower::union_of_changes(&union.inputs, catalog)
            } else {
                Ok(plan.clone())
            }
        }
        other => Ok(other.clone()),
    }
}
