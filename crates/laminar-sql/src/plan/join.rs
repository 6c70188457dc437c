//! Lowering of joins: a query whose top (below filters and projections) is a left-deep tree
//! of `Join` nodes becomes a [`JoinPlan`] — one join step per `Join`, each classified as
//!
//! - a **lookup** join when the right side is a TABLE (the ON must give its whole primary
//!   key; `FOR SYSTEM_TIME AS OF PROCTIME()` means the same),
//! - an **ASOF** join when the ON holds the `__asof(..)` marker of `ASOF JOIN ..
//!   MATCH_CONDITION(..)`,
//! - a **temporal** join when it holds `__temporal(left.ts)` (a backward ASOF join on the
//!   versioned right side's event time),
//! - an **interval** join otherwise, which needs a time bound between the two sides'
//!   event-time columns in the ON (an equality between them, such as joining two windowed
//!   streams on `window_start`, is the bound `[0, 0]`: a window join).
//!
//! Joins that would keep unbounded state are rejected with the bound to add.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType as DfJoinType, LogicalPlan, Operator};
use datafusion::physical_expr::PhysicalExpr;
use laminar_core::operator::Step;
use laminar_core::operator::join::{AsofDirection, JoinKind, JoinStepSpec, JoinType, TimeColumn};
use laminar_core::time::EventTimeKind;

use super::lower::{
    Branch, compile, conform, describe_projection, follow_column, lower_node, peel_stateless,
    reads_changelog,
};
use super::{SchemaCatalog, StreamPlan};
use crate::error::SqlError;
use crate::parser::{ASOF_MARKER, PROCTIME_VERSION, StreamingClauses, TEMPORAL_MARKER};

/// A planned chain of joins.
#[derive(Debug, Clone)]
pub struct JoinPlan {
    /// Relation of each input of the [`StreamPlan`] (0 = the leftmost relation).
    pub relations: Vec<usize>,
    /// The steps, in written order.
    pub steps: Vec<JoinStepSpec>,
    /// One line per step for EXPLAIN.
    pub step_descriptions: Vec<String>,
    /// Filters and projections over the last step's rows.
    pub post: Vec<Step>,
    /// Their descriptions.
    pub post_descriptions: Vec<String>,
    /// Reference tables read by lookup steps.
    pub tables: Vec<String>,
    /// True when the steps are updating joins: the output is a changelog.
    pub updating: bool,
    /// For updating joins, per relation: true when its rows never retract (the planner
    /// gives it an `_op` of `'I'`).
    pub append_only: Vec<bool>,
}

/// Compiled key expressions of the left and right inputs.
type KeyExprs = (Vec<Arc<dyn PhysicalExpr>>, Vec<Arc<dyn PhysicalExpr>>);

pub(crate) fn lower_join(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
    updating: Option<&UpdatingJoins>,
) -> Result<Option<StreamPlan>, SqlError> {
    let (post_nodes, core) = peel_stateless(plan);
    let LogicalPlan::Join(top) = core else {
        return Ok(None);
    };
    if !clauses.is_empty() {
        return Err(SqlError::Invalid(
            "EMIT, ALLOW LATENESS and LATE DATA TO apply to aggregations; a join emits each result once (create a stream for the join and aggregate it)".into(),
        ));
    }
    let (joins, base) = flatten_joins(top);
    let mut base_branches = lower_node(base, catalog)?;
    let base_schema: SchemaRef = Arc::new(base.schema().as_arrow().clone());
    for b in &mut base_branches {
        conform(b, base.schema(), &base_schema)?;
    }
    if updating.is_none() {
        refuse_changelog(base.schema())?;
    }
    // WHERE conjuncts over the leftmost relation alone filter its rows before any join when
    // every join keeps only matched or left rows (INNER, LEFT): same result, less work.
    let keeps_left_only = joins
        .iter()
        .all(|j| matches!(j.join_type, DfJoinType::Inner | DfJoinType::Left));
    let mut pushed: Vec<Expr> = Vec::new();
    let mut leading_filters = 0;
    for node in &post_nodes {
        let LogicalPlan::Filter(f) = node else {
            break;
        };
        leading_filters += 1;
        let mut conjuncts = Vec::new();
        split_and(&f.predicate, &mut conjuncts);
        for c in conjuncts {
            let columns = columns_of(&c);
            if keeps_left_only
                && !columns.is_empty()
                && columns.iter().all(|col| base.schema().has_column(col))
                && !c.is_volatile()
            {
                pushed.push(c);
            }
        }
    }
    for c in &pushed {
        let predicate = compile(c, base.schema())?;
        for b in &mut base_branches {
            b.descriptions
                .push(format!("Filter {c} (before the joins)"));
            b.steps.push(Step::Filter(predicate.clone()));
        }
    }
    let mut left_time = common_time(&base_branches, &base_schema);
    let mut inputs: Vec<String> = Vec::new();
    let mut chains = Vec::new();
    let mut chain_descriptions = Vec::new();
    let mut relations = Vec::new();
    for b in base_branches {
        inputs.push(b.input);
        chains.push(b.steps);
        chain_descriptions.push(b.descriptions);
        relations.push(0);
    }
    let mut steps = Vec::new();
    let mut step_descriptions = Vec::new();
    let mut tables = Vec::new();
    let mut next_relation = 1;
    for (number, &join) in joins.iter().enumerate() {
        let join_type = match join.join_type {
            DfJoinType::Inner => JoinType::Inner,
            DfJoinType::Left => JoinType::Left,
            DfJoinType::Right => JoinType::Right,
            DfJoinType::Full => JoinType::Full,
            DfJoinType::LeftSemi if updating.is_some() => JoinType::Semi,
            DfJoinType::LeftAnti if updating.is_some() => JoinType::Anti,
            other => {
                return Err(SqlError::not_supported(
                    format!("{other} joins in a stream"),
                    Some(
                        "EXISTS and IN subqueries work as conjuncts of WHERE (not under OR or NOT of a conjunction)",
                    ),
                ));
            }
        };
        let left_df = join.left.schema();
        let right_df = join.right.schema();
        let joined_df = join.schema.as_ref();
        let mut conjuncts: Vec<Expr> = join
            .on
            .iter()
            .map(|(l, r)| l.clone().eq(r.clone()))
            .collect();
        if let Some(filter) = &join.filter {
            split_and(filter, &mut conjuncts);
        }
        // Markers.
        let mut asof_condition = None;
        let mut temporal = None;
        conjuncts.retain(|c| match marker(c) {
            Some((name, args)) if name == ASOF_MARKER => {
                asof_condition = args.first().cloned();
                false
            }
            Some((name, args)) if name == TEMPORAL_MARKER => {
                temporal = args.first().cloned();
                false
            }
            _ => true,
        });
        // Equality keys.
        let mut keys: Vec<(Expr, Expr)> = Vec::new();
        let mut residual: Vec<Expr> = Vec::new();
        for c in &conjuncts {
            match equi_key(c, left_df, right_df) {
                Some(pair) => keys.push(pair),
                None => residual.push(c.clone()),
            }
        }
        let right_plan = join.right.as_ref();
        let table = table_of(right_plan, catalog);
        let step_number = number + 1;
        let mut step_right_time: Option<TimeColumn> = None;
        let (kind, right_relation, condition, left_keys, right_keys, description) = if let Some(u) =
            updating
        {
            let relation = next_relation;
            next_relation += 1;
            let (right_time, right_name) = add_relation(
                right_plan,
                catalog,
                relation,
                &mut inputs,
                &mut chains,
                &mut chain_descriptions,
                &mut relations,
            )?;
            step_right_time = right_time;
            if join.null_aware && (keys.len() != 1 || !residual.is_empty()) {
                return Err(SqlError::not_supported(
                    "NOT IN over several columns or with a correlated condition",
                    Some(
                        "write it as NOT EXISTS (which, unlike NOT IN, lets NULLs simply not match)",
                    ),
                ));
            }
            let pair_df = left_df.join(right_df).map_err(SqlError::Plan)?;
            let lk = keys
                .iter()
                .map(|(l, _)| compile(l, left_df))
                .collect::<Result<Vec<_>, _>>()?;
            let rk = keys
                .iter()
                .map(|(_, r)| compile(r, right_df))
                .collect::<Result<Vec<_>, _>>()?;
            let condition = and_all(&residual)
                .map(|c| compile(&c, &pair_df))
                .transpose()?;
            let left_append = u.append_only[..=number].iter().any(|a| *a);
            let right_append = u.append_only.get(number + 1).copied().unwrap_or(false);
            let left_name = u
                .append_only
                .iter()
                .position(|a| *a)
                .filter(|&i| i <= number)
                .and_then(|i| u.names.get(i).cloned())
                .unwrap_or_default();
            // A later step's left rows come from the joins before it. A TTL may expire them
            // only when nothing can retract them: every relation before is append-only and
            // every join before is INNER (its rows carry the first relation's event time).
            if number > 0
                && left_append
                && !(u.append_only[..=number].iter().all(|a| *a)
                    && joins[..number]
                        .iter()
                        .all(|j| j.join_type == DfJoinType::Inner))
            {
                return Err(SqlError::not_supported(
                    format!(
                        "an append-only stream ('{left_name}') joined with a changelog or by an outer join before another updating join"
                    ),
                    Some(
                        "a state TTL cannot expire rows that may still be retracted: join the append-only stream in the first join of the chain or as the right side of a join, or create a stream for the first joins and join that",
                    ),
                ));
            }
            if join.null_aware && (left_append || right_append) {
                return Err(SqlError::not_supported(
                    "NOT IN with an append-only input",
                    Some(
                        "with a state TTL a NULL would empty the result until it expires; write NOT EXISTS (which lets NULLs simply not match)",
                    ),
                ));
            }
            let ttl_side = |append: bool,
                            time: Option<TimeColumn>,
                            name: &str|
             -> Result<Option<TimeColumn>, SqlError> {
                if !append {
                    return Ok(None);
                }
                match u.ttl_ms {
                    None => Err(SqlError::Invalid(format!(
                        "this updating join keeps every row of the append-only stream '{name}', so its state would grow without limit: create it as a STREAM or MATERIALIZED VIEW WITH ('state.ttl' = '1 hour') (before AS) to expire its rows; two append-only streams can instead join with a time bound between their event-time columns"
                    ))),
                    Some(_) if time.is_none() => Err(SqlError::Invalid(format!(
                        "state.ttl counts event time, and the join input '{name}' has no event-time column (declare WATERMARK FOR on its source and select the column unchanged; an IN or EXISTS subquery keeps only the columns it compares)"
                    ))),
                    Some(_) => Ok(time),
                }
            };
            let left_ttl = ttl_side(left_append, left_time, &left_name)?;
            let right_ttl = ttl_side(right_append, right_time, &right_name)?;
            (
                JoinKind::Updating {
                    null_aware: join.null_aware,
                    pair_schema: Arc::new(pair_df.as_arrow().clone()),
                    ttl: u.ttl_ms,
                    left_time: left_ttl,
                    right_time: right_ttl,
                },
                Some(relation),
                condition,
                lk,
                rk,
                format!(
                    "join_step_{step_number}: updating {}{} JOIN {right_name} on {}{}{}",
                    if join.null_aware { "null-aware " } else { "" },
                    join_type.sql(),
                    describe_keys(&keys),
                    and_all(&residual)
                        .map(|c| format!(" and {c}"))
                        .unwrap_or_default(),
                    match (left_ttl.is_some() || right_ttl.is_some(), u.ttl_ms) {
                        (true, Some(ttl)) => format!(" (state.ttl {ttl} ms)"),
                        _ => String::new(),
                    }
                ),
            )
        } else if let Some((table_name, table_ref)) = table {
            if let Some(Expr::Column(c)) = &temporal {
                return Err(SqlError::Invalid(format!(
                    "FOR SYSTEM_TIME AS OF {c}: table '{table_name}' has no versions (no event-time column); use FOR SYSTEM_TIME AS OF PROCTIME() or a plain JOIN for its current row, or join a versioned source or stream"
                )));
            }
            if asof_condition.is_some() {
                return Err(SqlError::Invalid(format!(
                    "ASOF JOIN needs an event-time input on the right; '{table_name}' is a table (join it with a plain JOIN)"
                )));
            }
            if join_type.keeps_right() {
                return Err(SqlError::not_supported(
                    format!(
                        "{} JOIN with table '{table_name}' on the right",
                        join_type.sql()
                    ),
                    Some("a lookup join is INNER or LEFT (the stream on the left)"),
                ));
            }
            let key_names: Vec<String> = table_ref
                .key_columns()
                .iter()
                .map(|&i| table_ref.schema().field(i).name().clone())
                .collect();
            let mut ordered: Vec<Option<Expr>> = vec![None; key_names.len()];
            let mut extra = Vec::new();
            for (l, r) in &keys {
                let position =
                    plain_column(r).and_then(|c| key_names.iter().position(|k| *k == c.name));
                match position {
                    Some(p) if ordered[p].is_none() => ordered[p] = Some(l.clone()),
                    _ => extra.push(l.clone().eq(r.clone())),
                }
            }
            if ordered.iter().any(Option::is_none) {
                return Err(SqlError::Invalid(format!(
                    "a lookup join with table '{table_name}' needs equality on its whole primary key ({}) in ON, for example ON s.col = {table_name}.{}",
                    key_names.join(", "),
                    key_names[0]
                )));
            }
            residual.extend(extra);
            let left_keys = ordered
                .into_iter()
                .flatten()
                .map(|e| compile(&e, left_df))
                .collect::<Result<Vec<_>, _>>()?;
            let condition = and_all(&residual)
                .map(|c| compile(&c, joined_df))
                .transpose()?;
            tables.push(table_name.clone());
            (
                JoinKind::Lookup { table: table_ref },
                None,
                condition,
                left_keys,
                Vec::new(),
                format!(
                    "join_step_{step_number}: lookup {} JOIN table {table_name} on primary key ({})",
                    join_type.sql(),
                    key_names.join(", ")
                ),
            )
        } else {
            if matches!(right_plan, LogicalPlan::Join(_)) {
                return Err(SqlError::not_supported(
                    "a join on the right side of a join",
                    Some("joins are planned left-deep in written order: write a JOIN b JOIN c"),
                ));
            }
            // A temporal join's versioned side may be a changelog: each change is a version,
            // a `D` / `U-` ends the key's version.
            if temporal.is_none() {
                refuse_changelog(right_df)?;
            }
            let relation = next_relation;
            next_relation += 1;
            let (right_time, right_name) = add_relation(
                right_plan,
                catalog,
                relation,
                &mut inputs,
                &mut chains,
                &mut chain_descriptions,
                &mut relations,
            )?;
            let need_time = |what: &str| -> Result<(TimeColumn, TimeColumn), SqlError> {
                let l = left_time.ok_or_else(|| {
                        SqlError::Invalid(format!(
                            "{what} needs an event-time column on the left side, which has none (declare WATERMARK FOR on its source and select the column unchanged)"
                        ))
                    })?;
                let r = right_time.ok_or_else(|| {
                        SqlError::Invalid(format!(
                            "{what} needs an event-time column on the right side ('{right_name}' has none: declare WATERMARK FOR on its source and select the column unchanged)"
                        ))
                    })?;
                Ok((l, r))
            };
            let compile_keys = |keys: &[(Expr, Expr)]| -> Result<KeyExprs, SqlError> {
                let l = keys
                    .iter()
                    .map(|(l, _)| compile(l, left_df))
                    .collect::<Result<Vec<_>, _>>()?;
                let r = keys
                    .iter()
                    .map(|(_, r)| compile(r, right_df))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((l, r))
            };
            if let Some(version) = &temporal {
                match version {
                    Expr::Literal(ScalarValue::Utf8(Some(v)), _) if v == PROCTIME_VERSION => {
                        return Err(SqlError::not_supported(
                            format!(
                                "FOR SYSTEM_TIME AS OF PROCTIME() against '{right_name}', which is not a table"
                            ),
                            Some(
                                "processing-time lookups read a TABLE; use FOR SYSTEM_TIME AS OF <left event time> for a versioned stream",
                            ),
                        ));
                    }
                    _ => {}
                }
                let (lt, rt) = need_time("a temporal join (FOR SYSTEM_TIME AS OF)")?;
                let left_time_name = left_df.field(lt.index).name().clone();
                if plain_column(version)
                    .is_none_or(|c| left_df.index_of_column(&c).ok() != Some(lt.index))
                {
                    return Err(SqlError::Invalid(format!(
                        "FOR SYSTEM_TIME AS OF {version}: the version time must be the left side's event-time column ({left_time_name}) or PROCTIME()"
                    )));
                }
                if join_type.keeps_right() {
                    return Err(SqlError::not_supported(
                        "RIGHT or FULL temporal joins",
                        Some("a temporal join is INNER or LEFT"),
                    ));
                }
                if !residual.is_empty() {
                    return Err(SqlError::Invalid(format!(
                        "a temporal join's ON holds only key equalities; move '{}' to WHERE",
                        and_all(&residual)
                            .map(|e| e.to_string())
                            .unwrap_or_default()
                    )));
                }
                let (lk, rk) = compile_keys(&keys)?;
                (
                    JoinKind::Asof {
                        left_time: lt,
                        right_time: rt,
                        direction: AsofDirection::Backward { strict: false },
                        tolerance: None,
                    },
                    Some(relation),
                    None,
                    lk,
                    rk,
                    format!(
                        "join_step_{step_number}: temporal {} JOIN {right_name} FOR SYSTEM_TIME AS OF {left_time_name} (latest version at or before it) on {}",
                        join_type.sql(),
                        describe_keys(&keys)
                    ),
                )
            } else if let Some(condition) = &asof_condition {
                let (lt, rt) = need_time("an ASOF join")?;
                if join_type.keeps_right() {
                    return Err(SqlError::not_supported(
                        "RIGHT or FULL ASOF joins",
                        Some("use ASOF JOIN or ASOF LEFT JOIN"),
                    ));
                }
                if !residual.is_empty() {
                    return Err(SqlError::Invalid(format!(
                        "an ASOF join's ON holds only key equalities; move '{}' to WHERE",
                        and_all(&residual)
                            .map(|e| e.to_string())
                            .unwrap_or_default()
                    )));
                }
                let times = [time_column(left_df, lt), time_column(right_df, rt)];
                let (direction, tolerance) = asof_match(condition, &times)?;
                let (lk, rk) = compile_keys(&keys)?;
                (
                    JoinKind::Asof {
                        left_time: lt,
                        right_time: rt,
                        direction,
                        tolerance,
                    },
                    Some(relation),
                    None,
                    lk,
                    rk,
                    format!(
                        "join_step_{step_number}: ASOF {} JOIN {right_name} {}{} on {}",
                        join_type.sql(),
                        direction.describe(),
                        tolerance
                            .map(|t| format!(" within {t} ms"))
                            .unwrap_or_default(),
                        describe_keys(&keys)
                    ),
                )
            } else {
                let (lt, rt) = match (left_time, right_time) {
                    (Some(l), Some(r)) => (l, r),
                    _ => {
                        return Err(SqlError::Invalid(format!(
                            "a join of two streams needs a time bound, and a bound needs event-time columns on both sides ({}): declare WATERMARK FOR on the sources and select the event-time columns unchanged, join a TABLE instead, or use ASOF JOIN / FOR SYSTEM_TIME AS OF",
                            if left_time.is_none() {
                                "the left side has none"
                            } else {
                                "the right side has none"
                            }
                        )));
                    }
                };
                let times = [time_column(left_df, lt), time_column(right_df, rt)];
                let bound_hint = format!(
                    "add one to ON, for example AND {r} BETWEEN {l} - INTERVAL '10' SECOND AND {l} + INTERVAL '10' SECOND (or join a TABLE, or use ASOF JOIN / FOR SYSTEM_TIME AS OF)",
                    l = times[0],
                    r = times[1]
                );
                let (lower, upper, suspicious) =
                    time_bounds(&residual, &keys, &times, left_df, right_df);
                let (Some(lower), Some(upper)) = (lower, upper) else {
                    if let Some(s) = suspicious {
                        return Err(SqlError::Invalid(format!(
                            "the time bound '{s}' does not compare the event-time columns ({} and {}); a join's time bound must use them",
                            times[0], times[1]
                        )));
                    }
                    return Err(SqlError::Invalid(format!(
                        "this join of two unbounded streams has {}, so its state would grow without limit: {bound_hint}",
                        match (lower, upper) {
                            (None, None) => "no time bound",
                            (None, Some(_)) => "no lower time bound",
                            _ => "no upper time bound",
                        }
                    )));
                };
                if lower > upper {
                    return Err(SqlError::Invalid(format!(
                        "the join's time bound is empty: {right_name}'s time minus the left time must lie in [{lower}, {upper}] ms"
                    )));
                }
                let (lk, rk) = compile_keys(&keys)?;
                let all: Vec<Expr> = keys
                    .iter()
                    .map(|(l, r)| l.clone().eq(r.clone()))
                    .chain(residual.iter().cloned())
                    .collect();
                let condition = and_all(&all).map(|c| compile(&c, joined_df)).transpose()?;
                (
                    JoinKind::Interval {
                        left_time: lt,
                        right_time: rt,
                        lower,
                        upper,
                    },
                    Some(relation),
                    condition,
                    lk,
                    rk,
                    format!(
                        "join_step_{step_number}: interval {} JOIN {right_name} on {} with {} - {} in [{lower}, {upper}] ms",
                        join_type.sql(),
                        describe_keys(&keys),
                        times[1],
                        times[0]
                    ),
                )
            }
        };
        let left_width = left_df.fields().len();
        steps.push(JoinStepSpec {
            join_type,
            left_keys,
            right_keys,
            condition,
            left_schema: Arc::new(left_df.as_arrow().clone()),
            right_schema: Arc::new(right_df.as_arrow().clone()),
            joined_schema: Arc::new(joined_df.as_arrow().clone()),
            kind: kind.clone(),
            right_relation,
        });
        step_descriptions.push(description);
        // Event time of the joined rows.
        let right_time = match &kind {
            JoinKind::Interval { right_time, .. } | JoinKind::Asof { right_time, .. } => {
                Some(*right_time)
            }
            JoinKind::Lookup { .. } => None,
            JoinKind::Updating { .. } => step_right_time,
        };
        left_time = match join_type {
            JoinType::Inner | JoinType::Left | JoinType::Semi | JoinType::Anti => left_time,
            JoinType::Right => right_time.map(|t| TimeColumn {
                index: t.index + left_width,
                kind: t.kind,
            }),
            JoinType::Full => None,
        };
    }
    // Filters and projections above the joins.
    let mut post = Vec::new();
    let mut post_descriptions = Vec::new();
    let mut time_index = left_time.map(|t| t.index);
    for (position, node) in post_nodes.iter().enumerate() {
        match node {
            LogicalPlan::Filter(f) => {
                let mut conjuncts = Vec::new();
                split_and(&f.predicate, &mut conjuncts);
                if position < leading_filters {
                    conjuncts.retain(|c| !pushed.contains(c));
                }
                if let Some(rest) = and_all(&conjuncts) {
                    post_descriptions.push(format!("Filter {rest}"));
                    post.push(Step::Filter(compile(&rest, f.input.schema())?));
                }
            }
            LogicalPlan::Projection(p) => {
                let input_schema = p.input.schema();
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| compile(e, input_schema))
                    .collect::<Result<Vec<_>, _>>()?;
                time_index =
                    time_index.and_then(|index| follow_column(&p.expr, input_schema, index));
                post_descriptions.push(describe_projection(&p.expr));
                post.push(Step::Project {
                    exprs,
                    schema: Arc::new(p.schema.as_arrow().clone()),
                });
            }
            _ => {}
        }
    }
    let output_schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    if updating.is_none()
        && output_schema
            .fields()
            .iter()
            .any(|f| f.name() == laminar_core::message::OP_COLUMN)
    {
        return Err(SqlError::Invalid(format!(
            "a join's output is append-only: do not select the versioned side's {} column",
            laminar_core::message::OP_COLUMN
        )));
    }
    if let Some(duplicate) = duplicate_name(&output_schema) {
        return Err(SqlError::Invalid(format!(
            "the join's output has two columns named '{duplicate}'; give one an alias (for example SELECT a.{duplicate} AS a_{duplicate}, b.{duplicate} AS b_{duplicate})"
        )));
    }
    let event_time = time_index.map(|i| output_schema.field(i).name().clone());
    Ok(Some(StreamPlan {
        inputs,
        chains,
        chain_descriptions,
        output_schema,
        event_time,
        keyed_watermark: None,
        logical_plan: plan.clone(),
        aggregate: None,
        join: Some(JoinPlan {
            relations,
            steps,
            step_descriptions,
            post,
            post_descriptions,
            tables,
            updating: updating.is_some(),
            append_only: updating.map(|u| u.append_only.clone()).unwrap_or_default(),
        }),
        topn: None,
        analytic: None,
        stages: Vec::new(),
    }))
}

/// Lowers a join's right input as relation `relation`: its branches join the operator's
/// inputs. Returns its event-time column and its name.
#[allow(clippy::too_many_arguments)]
fn add_relation(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
    relation: usize,
    inputs: &mut Vec<String>,
    chains: &mut Vec<Vec<Step>>,
    chain_descriptions: &mut Vec<Vec<String>>,
    relations: &mut Vec<usize>,
) -> Result<(Option<TimeColumn>, String), SqlError> {
    let mut branches = lower_node(plan, catalog)?;
    let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
    for b in &mut branches {
        conform(b, plan.schema(), &schema)?;
    }
    let time = common_time(&branches, &schema);
    let name = branches
        .first()
        .map(|b| b.input.clone())
        .unwrap_or_default();
    for b in branches {
        inputs.push(b.input);
        chains.push(b.steps);
        chain_descriptions.push(b.descriptions);
        relations.push(relation);
    }
    Ok((time, name))
}

/// Joins over time read append-only inputs; a changelog (`_op`) input needs updating joins.
fn refuse_changelog(schema: &DFSchema) -> Result<(), SqlError> {
    if schema
        .fields()
        .iter()
        .any(|f| f.name() == laminar_core::message::OP_COLUMN)
    {
        return Err(SqlError::not_supported(
            "a join over an updating (changelog) input",
            Some(
                "joins over time read append-only streams; updating joins come with materialized views (emit the aggregation ON WINDOW CLOSE to join its final rows)",
            ),
        ));
    }
    Ok(())
}

fn duplicate_name(schema: &SchemaRef) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    schema
        .fields()
        .iter()
        .find(|f| !seen.insert(f.name().clone()))
        .map(|f| f.name().clone())
}

/// The event-time column shared by every branch of a relation, if any.
fn common_time(branches: &[Branch], schema: &SchemaRef) -> Option<TimeColumn> {
    let first = branches.first()?.event_time?;
    if !branches.iter().all(|b| b.event_time == Some(first)) {
        return None;
    }
    let kind = EventTimeKind::for_type(schema.field(first).data_type())?;
    Some(TimeColumn { index: first, kind })
}

fn time_column(schema: &DFSchema, time: TimeColumn) -> Column {
    let (qualifier, field) = schema.qualified_field(time.index);
    Column::new(qualifier.cloned(), field.name())
}

/// The reference table read by a join's right side, when it is one (possibly aliased).
fn table_of(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
) -> Option<(String, laminar_core::table::TableRef)> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => table_of(&a.input, catalog),
        LogicalPlan::TableScan(scan) if scan.projection.is_none() && scan.filters.is_empty() => {
            let name = scan.table_name.table().to_string();
            catalog.relation(&name)?.table.map(|t| (name, t))
        }
        _ => None,
    }
}

pub(super) fn split_and(expr: &Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            split_and(left, out);
            split_and(right, out);
        }
        other => out.push(other.clone()),
    }
}

fn and_all(exprs: &[Expr]) -> Option<Expr> {
    exprs.iter().cloned().reduce(|a, b| a.and(b))
}

fn marker(expr: &Expr) -> Option<(String, Vec<Expr>)> {
    match expr {
        Expr::ScalarFunction(f)
            if f.func.name() == ASOF_MARKER || f.func.name() == TEMPORAL_MARKER =>
        {
            Some((f.func.name().to_string(), f.args.clone()))
        }
        _ => None,
    }
}

fn columns_of(expr: &Expr) -> Vec<Column> {
    let mut out = Vec::new();
    let _ = expr.apply(|e| {
        if let Expr::Column(c) = e {
            out.push(c.clone());
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    out
}

fn side_of(expr: &Expr, left: &DFSchema, right: &DFSchema) -> Option<usize> {
    let columns = columns_of(expr);
    if columns.is_empty() {
        return None;
    }
    if columns.iter().all(|c| left.has_column(c)) {
        Some(0)
    } else if columns.iter().all(|c| right.has_column(c)) {
        Some(1)
    } else {
        None
    }
}

/// `l = r` with one side over the left input and the other over the right.
fn equi_key(expr: &Expr, left: &DFSchema, right: &DFSchema) -> Option<(Expr, Expr)> {
    let Expr::BinaryExpr(BinaryExpr {
        left: a,
        op: Operator::Eq,
        right: b,
    }) = expr
    else {
        return None;
    };
    match (side_of(a, left, right), side_of(b, left, right)) {
        (Some(0), Some(1)) => Some((a.as_ref().clone(), b.as_ref().clone())),
        (Some(1), Some(0)) => Some((b.as_ref().clone(), a.as_ref().clone())),
        _ => None,
    }
}

fn plain_column(expr: &Expr) -> Option<Column> {
    match expr {
        Expr::Column(c) => Some(c.clone()),
        Expr::Cast(c) => plain_column(&c.expr),
        Expr::TryCast(c) => plain_column(&c.expr),
        Expr::Alias(a) => plain_column(&a.expr),
        _ => None,
    }
}

fn describe_keys(keys: &[(Expr, Expr)]) -> String {
    if keys.is_empty() {
        return "no key".into();
    }
    keys.iter()
        .map(|(l, r)| format!("{l} = {r}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Milliseconds of a constant (an interval, a duration, or an integer of ms).
fn literal_ms(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::Literal(value, _) => match value {
            ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
                Some(v.days as i64 * 86_400_000 + v.nanoseconds / 1_000_000)
            }
            ScalarValue::IntervalDayTime(Some(v)) => {
                Some(v.days as i64 * 86_400_000 + v.milliseconds as i64)
            }
            ScalarValue::DurationSecond(Some(v)) => Some(v * 1000),
            ScalarValue::DurationMillisecond(Some(v)) => Some(*v),
            ScalarValue::DurationMicrosecond(Some(v)) => Some(v / 1000),
            ScalarValue::DurationNanosecond(Some(v)) => Some(v / 1_000_000),
            ScalarValue::Int64(Some(v)) => Some(*v),
            ScalarValue::Int32(Some(v)) => Some(*v as i64),
            ScalarValue::Int16(Some(v)) => Some(*v as i64),
            ScalarValue::Int8(Some(v)) => Some(*v as i64),
            ScalarValue::UInt32(Some(v)) => Some(*v as i64),
            ScalarValue::UInt16(Some(v)) => Some(*v as i64),
            ScalarValue::UInt8(Some(v)) => Some(*v as i64),
            _ => None,
        },
        Expr::Cast(c) => literal_ms(&c.expr),
        Expr::TryCast(c) => literal_ms(&c.expr),
        Expr::Negative(inner) => literal_ms(inner).map(|v| -v),
        _ => None,
    }
}

/// `time column of side s + offset ms`, when `expr` has that shape.
fn linear(expr: &Expr, times: &[Column; 2]) -> Option<(usize, i64)> {
    match expr {
        Expr::Column(c) => times.iter().position(|t| t == c).map(|s| (s, 0)),
        Expr::Cast(c) => linear(&c.expr, times),
        Expr::TryCast(c) => linear(&c.expr, times),
        Expr::Alias(a) => linear(&a.expr, times),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::Plus => match (linear(left, times), literal_ms(right)) {
                (Some((s, o)), Some(v)) => Some((s, o.checked_add(v)?)),
                _ => match (literal_ms(left), linear(right, times)) {
                    (Some(v), Some((s, o))) => Some((s, o.checked_add(v)?)),
                    _ => None,
                },
            },
            Operator::Minus => {
                let (s, o) = linear(left, times)?;
                Some((s, o.checked_sub(literal_ms(right)?)?))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Bounds of `right.ts - left.ts` from the ON conjuncts (and equalities between the two time
/// columns among the keys); the third value is a comparison across the sides that looks like
/// a bound but does not use the event-time columns.
fn time_bounds(
    conjuncts: &[Expr],
    keys: &[(Expr, Expr)],
    times: &[Column; 2],
    left: &DFSchema,
    right: &DFSchema,
) -> (Option<i64>, Option<i64>, Option<String>) {
    let mut lower: Option<i64> = None;
    let mut upper: Option<i64> = None;
    let mut suspicious = None;
    let mut add = |op: Operator, a: (usize, i64), b: (usize, i64)| {
        // ts_a + ca  op  ts_b + cb, with a != b; as r - l op v.
        let (op, v) = if a.0 == 1 {
            (op, b.1 - a.1)
        } else {
            (op.swap().unwrap_or(op), a.1 - b.1)
        };
        match op {
            Operator::Lt | Operator::LtEq => upper = Some(upper.map_or(v, |u| u.min(v))),
            Operator::Gt | Operator::GtEq => lower = Some(lower.map_or(v, |l| l.max(v))),
            Operator::Eq => {
                upper = Some(upper.map_or(v, |u| u.min(v)));
                lower = Some(lower.map_or(v, |l| l.max(v)));
            }
            _ => {}
        }
    };
    let mut comparisons: Vec<(Operator, Expr, Expr)> = Vec::new();
    for (l, r) in keys {
        comparisons.push((Operator::Eq, l.clone(), r.clone()));
    }
    for c in conjuncts {
        match c {
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) if matches!(
                op,
                Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq | Operator::Eq
            ) =>
            {
                comparisons.push((*op, a.as_ref().clone(), b.as_ref().clone()));
            }
            Expr::Between(between) if !between.negated => {
                comparisons.push((
                    Operator::GtEq,
                    between.expr.as_ref().clone(),
                    between.low.as_ref().clone(),
                ));
                comparisons.push((
                    Operator::LtEq,
                    between.expr.as_ref().clone(),
                    between.high.as_ref().clone(),
                ));
            }
            _ => {}
        }
    }
    for (op, a, b) in comparisons {
        match (linear(&a, times), linear(&b, times)) {
            (Some(x), Some(y)) if x.0 != y.0 => add(op, x, y),
            _ => {
                let sides = (side_of(&a, left, right), side_of(&b, left, right));
                if op != Operator::Eq && matches!(sides, (Some(0), Some(1)) | (Some(1), Some(0))) {
                    suspicious.get_or_insert_with(|| format!("{a} {op} {b}"));
                }
            }
        }
    }
    (lower, upper, suspicious)
}

/// Direction and tolerance of an ASOF match condition.
fn asof_match(
    condition: &Expr,
    times: &[Column; 2],
) -> Result<(AsofDirection, Option<i64>), SqlError> {
    let usage = || {
        SqlError::Invalid(format!(
            "MATCH_CONDITION({condition}): write MATCH_CONDITION({l} >= {r}) for the latest earlier right row, ({l} <= {r}) for the next one, or (NEAREST({l}, {r})), optionally with AND {l} - {r} <= <tolerance> (or NEAREST(.., .., <tolerance>)); both must be the event-time columns",
            l = times[0],
            r = times[1]
        ))
    };
    let mut parts = Vec::new();
    split_and(condition, &mut parts);
    let mut direction = None;
    let mut tolerance = None;
    for part in parts {
        match &part {
            Expr::ScalarFunction(f) if f.func.name() == "nearest" => {
                let (a, b) = match f.args.as_slice() {
                    [a, b] | [a, b, _] => (a, b),
                    _ => return Err(usage()),
                };
                match (linear(a, times), linear(b, times)) {
                    (Some((x, 0)), Some((y, 0))) if x != y => {}
                    _ => return Err(usage()),
                }
                if let Some(t) = f.args.get(2) {
                    tolerance = Some(literal_ms(t).ok_or_else(usage)?);
                }
                direction = Some(AsofDirection::Nearest);
            }
            Expr::BinaryExpr(BinaryExpr {
                left: a,
                op,
                right: b,
            }) => {
                match (linear(a, times), linear(b, times)) {
                    (Some((x, 0)), Some((y, 0))) if x != y => {
                        // Normalize to `left op right`.
                        let op = if x == 0 {
                            *op
                        } else {
                            op.swap().ok_or_else(usage)?
                        };
                        direction = Some(match op {
                            Operator::GtEq => AsofDirection::Backward { strict: false },
                            Operator::Gt => AsofDirection::Backward { strict: true },
                            Operator::LtEq => AsofDirection::Forward { strict: false },
                            Operator::Lt => AsofDirection::Forward { strict: true },
                            _ => return Err(usage()),
                        });
                    }
                    _ => {
                        // Tolerance: `a - b <= c` over the two time columns.
                        let Expr::BinaryExpr(BinaryExpr {
                            left: x,
                            op: Operator::Minus,
                            right: y,
                        }) = a.as_ref()
                        else {
                            return Err(usage());
                        };
                        if !matches!(op, Operator::LtEq | Operator::Lt) {
                            return Err(usage());
                        }
                        match (linear(x, times), linear(y, times)) {
                            (Some((p, 0)), Some((q, 0))) if p != q => {}
                            _ => return Err(usage()),
                        }
                        tolerance = Some(literal_ms(b).ok_or_else(usage)?);
                    }
                }
            }
            _ => return Err(usage()),
        }
    }
    let direction = direction.ok_or_else(usage)?;
    if tolerance.is_some_and(|t| t < 0) {
        return Err(SqlError::Invalid(format!(
            "MATCH_CONDITION({condition}): the tolerance must not be negative"
        )));
    }
    Ok((direction, tolerance))
}

/// Replaces `INTERVAL` constants in the join conditions of `query` by their length in
/// milliseconds; returns whether anything changed. With BIGINT (epoch-ms) event times,
/// `o.ts + INTERVAL '10' MINUTE` does not type-check, so the planner retries with this.
pub(crate) fn join_intervals_as_millis(query: &mut sqlparser::ast::Query) -> bool {
    use sqlparser::ast::{
        JoinConstraint, JoinOperator, SetExpr, TableFactor, TableWithJoins, Value,
        visit_expressions_mut,
    };
    fn on_expr(expr: &mut sqlparser::ast::Expr, changed: &mut bool) {
        let _ = visit_expressions_mut(expr, |e| {
            if let sqlparser::ast::Expr::Interval(interval) = e
                && let Ok(ms) = crate::parser::interval_to_millis(interval)
            {
                *e = sqlparser::ast::Expr::Value(Value::Number(ms.to_string(), false).into());
                *changed = true;
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
    }
    fn constraint(op: &mut JoinOperator, changed: &mut bool) {
        let c = match op {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c) => c,
            _ => return,
        };
        if let JoinConstraint::On(e) = c {
            on_expr(e, changed);
        }
    }
    fn twj(t: &mut TableWithJoins, changed: &mut bool) {
        factor(&mut t.relation, changed);
        for j in &mut t.joins {
            factor(&mut j.relation, changed);
            constraint(&mut j.join_operator, changed);
        }
    }
    fn factor(f: &mut TableFactor, changed: &mut bool) {
        match f {
            TableFactor::Derived { subquery, .. } => query_of(subquery, changed),
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => twj(table_with_joins, changed),
            _ => {}
        }
    }
    fn set_expr(body: &mut SetExpr, changed: &mut bool) {
        match body {
            SetExpr::Select(select) => {
                for from in &mut select.from {
                    twj(from, changed);
                }
            }
            SetExpr::Query(q) => query_of(q, changed),
            SetExpr::SetOperation { left, right, .. } => {
                set_expr(left, changed);
                set_expr(right, changed);
            }
            _ => {}
        }
    }
    fn query_of(q: &mut sqlparser::ast::Query, changed: &mut bool) {
        if let Some(with) = &mut q.with {
            for cte in &mut with.cte_tables {
                query_of(&mut cte.query, changed);
            }
        }
        set_expr(&mut q.body, changed);
    }
    let mut changed = false;
    query_of(query, &mut changed);
    changed
}

/// How the joins of an updating query are planned (see [`prepare_updating`]).
#[derive(Debug, Clone)]
pub(crate) struct UpdatingJoins {
    /// `state.ttl` in ms.
    pub(crate) ttl_ms: Option<i64>,
    /// Per relation of the join chain (0 = the leftmost, then each join's right side):
    /// true when it is append-only (its rows never retract, so it needs a TTL).
    pub(crate) append_only: Vec<bool>,
    /// Names of the relations, for messages.
    pub(crate) names: Vec<String>,
}

/// The name of the first relation a plan reads.
fn relation_name(plan: &LogicalPlan) -> String {
    let mut name = String::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            name = scan.table_name.table().to_string();
            return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    name
}

/// The left-deep chain of joins under `core`, in written order, and its leftmost input.
pub(super) fn flatten_joins(
    top: &datafusion::logical_expr::Join,
) -> (Vec<&datafusion::logical_expr::Join>, &LogicalPlan) {
    let mut joins = vec![top];
    let mut left = top.left.as_ref();
    loop {
        match left {
            LogicalPlan::Join(j) => {
                joins.push(j);
                left = j.left.as_ref();
            }
            LogicalPlan::SubqueryAlias(a) if matches!(a.input.as_ref(), LogicalPlan::Join(_)) => {
                left = a.input.as_ref();
            }
            _ => break,
        }
    }
    joins.reverse();
    (joins, left)
}

/// Decides whether the query's joins are updating (regular) joins — a changelog input, an
/// `EXISTS` / `IN` subquery (SEMI / ANTI join), or a `state.ttl` — and if so rewrites the
/// plan so that every join input carries `_op` (append-only inputs get `'I'`, a changelog
/// whose `_op` a subquery dropped gets it back) and the output carries exactly one `_op`.
pub(crate) fn prepare_updating(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
    clauses: &StreamingClauses,
) -> Result<Option<(LogicalPlan, UpdatingJoins)>, SqlError> {
    let (_, core) = peel_stateless(plan);
    let LogicalPlan::Join(top) = core else {
        return Ok(None);
    };
    let (joins, base) = flatten_joins(top);
    let relations: Vec<&LogicalPlan> = std::iter::once(base)
        .chain(joins.iter().map(|j| j.right.as_ref()))
        .collect();
    let changelog: Vec<bool> = relations
        .iter()
        .map(|r| reads_changelog(r, catalog))
        .collect();
    let filtering = joins.iter().any(|j| {
        matches!(
            j.join_type,
            DfJoinType::LeftSemi
                | DfJoinType::LeftAnti
                | DfJoinType::RightSemi
                | DfJoinType::RightAnti
        )
    });
    let has_marker = joins.iter().any(|j| {
        j.filter.as_ref().is_some_and(|f| {
            let mut conjuncts = Vec::new();
            split_and(f, &mut conjuncts);
            conjuncts.iter().any(|c| marker(c).is_some())
        })
    });
    // INTERSECT and EXCEPT are joins whose keys match NULL with NULL: refused elsewhere.
    let null_equal = joins
        .iter()
        .any(|j| j.null_equality == datafusion::common::NullEquality::NullEqualsNull);
    if has_marker
        || null_equal
        || !(changelog.iter().any(|c| *c) || filtering || clauses.state_ttl_ms.is_some())
    {
        return Ok(None);
    }
    // An updating join reads a table's changelog: planned again with tables as changelogs.
    if let Some((table, _)) = relations.iter().find_map(|r| table_of(r, catalog)) {
        return Err(SqlError::TableAsChangelog(format!(
            "an updating join reads table '{table}' as its changelog"
        )));
    }
    let fixed = super::lower::one_op_on_top(super::lower::rebuild_spine(plan, &mut |core| {
        with_changes_chain(core, catalog)
    })?)?;
    Ok(Some((
        fixed,
        UpdatingJoins {
            ttl_ms: clauses.state_ttl_ms,
            append_only: changelog.iter().map(|c| !c).collect(),
            names: relations.iter().map(|r| relation_name(r)).collect(),
        },
    )))
}

/// Rebuilds a chain of joins with every join input carrying `_op`.
fn with_changes_chain(
    node: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
) -> Result<LogicalPlan, SqlError> {
    match node {
        LogicalPlan::Join(j) => {
            let left = match j.left.as_ref() {
                LogicalPlan::Join(_) => with_changes_chain(&j.left, catalog)?,
                LogicalPlan::SubqueryAlias(a)
                    if matches!(a.input.as_ref(), LogicalPlan::Join(_)) =>
                {
                    let inner = with_changes_chain(&a.input, catalog)?;
                    j.left
                        .with_new_exprs(j.left.expressions(), vec![inner])
                        .map_err(SqlError::Plan)?
                }
                other => with_changes(other, catalog)?,
            };
            let right = with_changes(&j.right, catalog)?;
            LogicalPlan::Join(datafusion::logical_expr::Join {
                left: Arc::new(left),
                right: Arc::new(right),
                ..j.clone()
            })
            .recompute_schema()
            .map_err(SqlError::Plan)
        }
        other => Ok(other.clone()),
    }
}

/// A join input with `_op`: kept when it has one, restored when it reads a changelog but
/// dropped it, `'I'` for an append-only input.
pub(super) fn with_changes(
    plan: &LogicalPlan,
    catalog: &dyn SchemaCatalog,
) -> Result<LogicalPlan, SqlError> {
    use laminar_core::message::OP_COLUMN;
    if plan
        .schema()
        .index_of_column_by_name(None, OP_COLUMN)
        .is_some()
        || plan.schema().iter().any(|(_, f)| f.name() == OP_COLUMN)
    {
        return Ok(plan.clone());
    }
    if reads_changelog(plan, catalog) {
        if let LogicalPlan::SubqueryAlias(a) = plan {
            let inner = with_changes(&a.input, catalog)?;
            return LogicalPlan::SubqueryAlias(
                datafusion::logical_expr::SubqueryAlias::try_new(Arc::new(inner), a.alias.clone())
                    .map_err(SqlError::Plan)?,
            )
            .recompute_schema()
            .map_err(SqlError::Plan);
        }
        return super::lower::keep_changes(plan, catalog)?
            .ok_or_else(|| SqlError::Invalid("an updating join input lost its _op column".into()));
    }
    let qualifier = plan.schema().iter().next().and_then(|(q, _)| q.cloned());
    let mut exprs: Vec<Expr> = plan
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    exprs.push(
        datafusion::logical_expr::lit(laminar_core::message::ChangeOp::Insert.as_str())
            .alias_qualified(qualifier, OP_COLUMN),
    );
    datafusion::logical_expr::LogicalPlanBuilder::from(plan.clone())
        .project(exprs)
        .and_then(|b| b.build())
        .map_err(SqlError::Plan)
}
