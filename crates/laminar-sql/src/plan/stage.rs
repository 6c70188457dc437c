//! Stacked stateful operators in one query: an aggregation or a ranking (top-N, analytic
//! functions) whose input is itself a join, an aggregation, DISTINCT or a ranking — for
//! example `SELECT category, AVG(price) FROM auctions JOIN bids ON .. GROUP BY category`, or a
//! top-N over a GROUP BY. The input below the top operator is planned on its own as the
//! query's *stage* ([`StreamPlan::stage`]); the top operator is planned over a relation named
//! [`STAGE_RELATION`] that stands for the stage's output, as if the stage were a stream (or a
//! view, when its output is a changelog) the query reads. Both run in the query's node, the
//! stage first.

use std::sync::Arc;

use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::catalog::empty::EmptyTable;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, TableReference};
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Projection};

use super::{RelationInfo, SchemaCatalog, StreamPlan};
use crate::error::SqlError;
use crate::parser::StreamingClauses;

/// The name under which the top operator of a staged query reads its stage's output.
pub const STAGE_RELATION: &str = "stage";

/// The catalog with the stage's output added as [`STAGE_RELATION`].
struct WithStage<'a> {
    catalog: &'a dyn SchemaCatalog,
    stage: RelationInfo,
}

impl SchemaCatalog for WithStage<'_> {
    fn relation(&self, name: &str) -> Option<RelationInfo> {
        if name == STAGE_RELATION {
            Some(self.stage.clone())
        } else {
            self.catalog.relation(name)
        }
    }

    fn relation_names(&self) -> Vec<String> {
        self.catalog.relation_names()
    }
}

/// True when the plan holds an operator that keeps state (a join, an aggregation, DISTINCT,
/// a window function).
fn keeps_state(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if matches!(
            node,
            LogicalPlan::Join(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::Window(_)
        ) {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Plans `plan` in two stages when its top operator (an aggregation or a window function,
/// below the filters and projections of the SELECT) reads another stateful operator; `None`
/// when it does not.
pub(super) fn lower_staged(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
) -> Result<Option<StreamPlan>, SqlError> {
    let (_, core) = super::lower::peel_stateless(plan);
    let input = match core {
        LogicalPlan::Aggregate(a) => a.input.as_ref(),
        // Window functions with different specifications in one SELECT are windows directly
        // over each other: one query level, refused as such by the ranking planners.
        LogicalPlan::Window(w)
            if !matches!(
                super::lower::peel_stateless(&w.input).1,
                LogicalPlan::Window(_)
            ) =>
        {
            w.input.as_ref()
        }
        _ => return Ok(None),
    };
    if !keeps_state(input) {
        return Ok(None);
    }
    // The stage: the input, its columns under names unique without their qualifiers. The
    // changes of the stage's inputs (their `_op`) stay inside it: when it reads a changelog,
    // its output is one, with its own `_op`.
    let op = laminar_core::message::OP_COLUMN;
    let fields: Vec<(Option<TableReference>, String)> = input
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
        Arc::new(input.clone()),
    )
    .map(LogicalPlan::Projection)
    .map_err(SqlError::Plan)?;
    // EMIT, lateness and partition bounds belong to the top operator; a join's state TTL
    // to the stage.
    let ranks = matches!(core, LogicalPlan::Window(_));
    let stage_clauses = StreamingClauses {
        state_ttl_ms: clauses.state_ttl_ms,
        max_partitions: if ranks { None } else { clauses.max_partitions },
        ..StreamingClauses::default()
    };
    let top_clauses = StreamingClauses {
        state_ttl_ms: None,
        max_partitions: if ranks { clauses.max_partitions } else { None },
        ..clauses.clone()
    };
    let stage = super::lower::lower(&stage_query, catalog, &stage_clauses)?;

    // The top operator reads the stage's output, its columns renamed back to the names
    // (and qualifiers) the query's expressions use; a changelog's `_op` comes along.
    let stage_scan = LogicalPlanBuilder::scan(
        STAGE_RELATION,
        provider_as_source(Arc::new(EmptyTable::new(stage.output_schema.clone()))),
        None,
    )
    .and_then(|b| b.build())
    .map_err(SqlError::Plan)?;
    let stage_column = |name: &str| Expr::Column(Column::new(Some(STAGE_RELATION), name));
    let mut exprs: Vec<Expr> = fields
        .iter()
        .zip(&names)
        .map(|((q, n), name)| stage_column(name).alias_qualified(q.clone(), n))
        .collect();
    if stage.output_schema.index_of(op).is_ok() {
        exprs.push(stage_column(op));
    }
    let renamed = Projection::try_new(exprs, Arc::new(stage_scan))
        .map(LogicalPlan::Projection)
        .map_err(SqlError::Plan)?;
    let top = replace_core_input(plan, renamed)?;
    let stage_info = RelationInfo {
        schema: stage.output_schema.clone(),
        event_time: stage.event_time.clone(),
        keyed_watermark: stage.keyed_watermark.clone(),
        table: None,
        view: None,
    };
    let mut planned = super::lower::lower(
        &top,
        &WithStage {
            catalog,
            stage: stage_info,
        },
        &top_clauses,
    )?;
    planned.stage = Some(Box::new(stage));
    Ok(Some(planned))
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

/// The plan with the input of its top operator (below the filters, projections and aliases
/// at the top) replaced by `input`.
fn replace_core_input(plan: &LogicalPlan, input: LogicalPlan) -> Result<LogicalPlan, SqlError> {
    match plan {
        LogicalPlan::Projection(_) | LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {
            let below = replace_core_input(plan.inputs()[0], input)?;
            plan.with_new_exprs(plan.expressions(), vec![below])
                .map_err(SqlError::Plan)
        }
        core => core
            .with_new_exprs(core.expressions(), vec![input])
            .map_err(SqlError::Plan),
    }
}
