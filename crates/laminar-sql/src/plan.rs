//! Planning: a SELECT is planned by DataFusion's SQL planner against the catalog (sources and
//! streams registered as schema-only tables), type-coerced and simplified, then lowered into
//! per-input chains of filter/projection steps with compiled `PhysicalExpr`s
//! ([`StreamPlan`]). Constructs that need state (aggregation, joins, windows, ORDER BY,
//! LIMIT, DISTINCT) are rejected here with an error naming them.

mod aggregate;
mod analytic;
mod join;
mod lower;
mod provider;
mod snapshot_table;
mod stage;
mod topn;
mod window;

pub use aggregate::AggregatePlan;
pub use analytic::AnalyticPlan;
pub use join::JoinPlan;
pub use lower::{reads_only_snapshots, reads_relations};
pub use stage::STAGE_RELATION;
pub use topn::TopNPlan;
pub use window::{parse_emit, parse_lateness};

use std::sync::Arc;

use arrow::array::{ArrayRef, new_null_array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::FormatOptions;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::simplify_expressions::SimplifyExpressions;
use datafusion::prelude::SessionContext;
use datafusion::sql::planner::SqlToRel;
use sqlparser::ast::{ColumnDef, DataType as SqlType, Query, Statement};

use crate::error::{SqlError, did_you_mean};
use crate::parser::StreamingClauses;
use laminar_core::operator::Step;
use laminar_core::time::KeyedWatermark;
use provider::CatalogProvider;

/// What the planner needs to know about a relation a query reads.
#[derive(Debug, Clone)]
pub struct RelationInfo {
    /// Its schema.
    pub schema: SchemaRef,
    /// Its event-time column, if any.
    pub event_time: Option<String>,
    /// Its keyed watermark (`watermark.key`), if any; the column is in `schema`.
    pub keyed_watermark: Option<KeyedWatermark>,
    /// For a reference table (`CREATE TABLE`): its store. Tables are bounded: they can be
    /// queried as snapshots and joined, not read as streams.
    pub table: Option<laminar_core::table::TableRef>,
    /// For a materialized view: its contents. Snapshot queries read them; continuous
    /// queries read the view's changelog.
    pub view: Option<std::sync::Arc<laminar_core::operator::ViewStore>>,
}

/// The catalog as the planner sees it.
pub trait SchemaCatalog {
    /// A relation (source or stream) by normalized name.
    fn relation(&self, name: &str) -> Option<RelationInfo>;
    /// Every relation name, for "did you mean" suggestions.
    fn relation_names(&self) -> Vec<String>;
}

/// True when `e` is an unknown `_op` column (qualified or not).
fn names_op(e: &SqlError) -> bool {
    use laminar_core::message::OP_COLUMN;
    matches!(e, SqlError::UnknownColumn { column, .. }
        if column == OP_COLUMN || column.ends_with(&format!(".{OP_COLUMN}")))
}

/// The catalog with every reference table presented as its changelog: the table's columns
/// and `_op`, as its change feed delivers them. Continuous queries that read a table other
/// than by a lookup join are planned against it.
struct TablesAsChangelogs<'a>(&'a dyn SchemaCatalog);

impl SchemaCatalog for TablesAsChangelogs<'_> {
    fn relation(&self, name: &str) -> Option<RelationInfo> {
        let mut info = self.0.relation(name)?;
        if let Some(table) = info.table.take() {
            info.schema = table.changes_schema();
        }
        Some(info)
    }

    fn relation_names(&self) -> Vec<String> {
        self.0.relation_names()
    }
}

/// A planned stateless continuous query.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// Upstream relations, one per input (a relation read twice appears twice).
    pub inputs: Vec<String>,
    /// One compiled chain per input.
    pub chains: Vec<Vec<Step>>,
    /// Human-readable description of each chain's steps (for EXPLAIN).
    pub chain_descriptions: Vec<Vec<String>>,
    /// Output schema.
    pub output_schema: SchemaRef,
    /// Output event-time column: the input's event-time column selected unchanged.
    pub event_time: Option<String>,
    /// The input's keyed watermark, when its key column is selected unchanged (named as in
    /// the output).
    pub keyed_watermark: Option<KeyedWatermark>,
    /// The DataFusion logical plan after type coercion.
    pub logical_plan: LogicalPlan,
    /// The aggregation, when the query aggregates (the chains then feed it).
    pub aggregate: Option<AggregatePlan>,
    /// The joins, when the query joins (the chains then feed its relations).
    pub join: Option<JoinPlan>,
    /// The top-N, when the query ranks (the chains then feed it).
    pub topn: Option<TopNPlan>,
    /// The analytic functions, when the query has them (the chains then feed them).
    pub analytic: Option<AnalyticPlan>,
    /// The stateful queries below this plan's operator (a join, an aggregation or a ranking
    /// under an aggregation, a ranking, a join or `UNION ALL`): empty when there are none,
    /// else one entry per input, `Some` for an input that is a stage's output (named
    /// [`STAGE_RELATION`], or `stage_k` for the `k`-th of several). A stage runs in the same node, before this plan's operator.
    /// [`StreamPlan::relations`] gives the relations the node reads.
    pub stages: Vec<Option<StreamPlan>>,
}

impl StreamPlan {
    /// The plan of a side-output stream (`LATE DATA TO`): rows are delivered to it directly,
    /// it reads no relation.
    pub fn side_output(schema: SchemaRef) -> StreamPlan {
        StreamPlan {
            inputs: Vec::new(),
            chains: Vec::new(),
            chain_descriptions: Vec::new(),
            output_schema: schema.clone(),
            event_time: None,
            keyed_watermark: None,
            logical_plan: LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(
                    datafusion::common::DFSchema::try_from(schema.as_ref().clone())
                        .unwrap_or_else(|_| datafusion::common::DFSchema::empty()),
                ),
            }),
            aggregate: None,
            join: None,
            topn: None,
            analytic: None,
            stages: Vec::new(),
        }
    }

    /// The relations the query reads, one per input of its node (those of its stage, when
    /// it has one).
    pub fn relations(&self) -> Vec<String> {
        if self.stages.is_empty() {
            return self.inputs.clone();
        }
        self.inputs
            .iter()
            .zip(&self.stages)
            .flat_map(|(input, stage)| match stage {
                Some(stage) => stage.relations(),
                None => vec![input.clone()],
            })
            .collect()
    }

    /// This plan and its stages, theirs, and so on (each before its stages).
    pub fn levels(&self) -> Vec<&StreamPlan> {
        let mut levels = vec![self];
        for stage in self.stages.iter().flatten() {
            levels.extend(stage.levels());
        }
        levels
    }

    /// The reference tables the query's lookup joins read.
    pub fn lookup_tables(&self) -> Vec<String> {
        self.levels()
            .into_iter()
            .filter_map(|p| p.join.as_ref())
            .flat_map(|j| j.tables.iter().cloned())
            .collect()
    }

    /// True when the output is a changelog (it carries an `_op` column).
    pub fn is_updating(&self) -> bool {
        self.aggregate
            .as_ref()
            .is_some_and(|a| a.emit.is_updating(a.lateness))
            || self.join.as_ref().is_some_and(|j| j.updating)
            || self.topn.is_some()
            || (!self.stages.is_empty() && laminar_core::message::is_changelog(&self.output_schema))
    }

    /// The output columns that determine a row (the GROUP BY columns of an aggregation,
    /// the window included), as DataFusion's functional dependencies of the query find them;
    /// `None` when no set of columns is known to.
    pub fn natural_key(&self) -> Option<Vec<String>> {
        use datafusion::common::Dependency;
        let schema = self.logical_plan.schema();
        let fields = schema.fields();
        let is_op = |i: usize| fields[i].name() == laminar_core::message::OP_COLUMN;
        schema
            .functional_dependencies()
            .iter()
            .filter(|d| {
                d.mode == Dependency::Single
                    && !d.source_indices.is_empty()
                    && !d.source_indices.iter().any(|&i| is_op(i))
                    && (0..fields.len()).all(|i| is_op(i) || d.target_indices.contains(&i))
            })
            .min_by_key(|d| d.source_indices.len())
            .map(|d| {
                d.source_indices
                    .iter()
                    .map(|&i| fields[i].name().clone())
                    .collect()
            })
    }
}

/// A query over tables, materialized views and constants, planned
/// ([`Planner::snapshot_plan`]), to be optimized and run ([`Planner::optimize_snapshot`]).
#[derive(Debug)]
pub struct SnapshotQuery {
    plan: LogicalPlan,
    reads_relations: bool,
    reads: Arc<std::sync::Mutex<snapshot_table::SnapshotReads>>,
}

impl SnapshotQuery {
    /// False for a query of constants only.
    pub fn reads_relations(&self) -> bool {
        self.reads_relations
    }
}

/// A snapshot query ready to run: from [`Planner::optimize_snapshot`].
pub struct SnapshotRun {
    /// The optimized plan.
    pub plan: LogicalPlan,
    /// The session state to run it with.
    pub state: SessionState,
    relations: Vec<String>,
    reads: Arc<std::sync::Mutex<snapshot_table::SnapshotReads>>,
}

impl SnapshotRun {
    /// The tables and views the plan reads, each once.
    pub fn relations(&self) -> &[String] {
        &self.relations
    }

    /// Makes the query read `rows` as the contents of the named relations (instead of
    /// reading them when it runs): several relations read at one point of the input.
    pub fn read_from(&self, rows: std::collections::HashMap<String, Vec<RecordBatch>>) {
        if let Ok(mut reads) = self.reads.lock() {
            reads.provide(rows);
        }
    }
}

/// Plans SQL against a catalog. Cheap to share; holds DataFusion's function registry.
pub struct Planner {
    state: SessionState,
    /// The same functions with DataFusion's default optimizer rules: for snapshot queries,
    /// which run as batch queries (filters reach the scans, so view lookups use keys).
    batch_state: SessionState,
}

impl Default for Planner {
    fn default() -> Self {
        Planner::new()
    }
}

impl Planner {
    /// A planner with every DataFusion built-in function.
    pub fn new() -> Planner {
        // SPEC 2.1: VARCHAR/TEXT are Utf8 (DataFusion would pick Utf8View).
        let mut config = datafusion::prelude::SessionConfig::new();
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        let mut batch_state = SessionStateBuilder::new()
            .with_config(config.clone())
            .with_default_features()
            .build();
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_optimizer_rules(vec![
                Arc::new(SimplifyExpressions::new()),
                // `EXISTS` / `IN` subqueries become SEMI / ANTI joins.
                Arc::new(datafusion::optimizer::decorrelate_predicate_subquery::DecorrelatePredicateSubquery::new()),
                // Their correlated equalities become join keys (a null-aware NOT IN needs one).
                Arc::new(datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate::new()),
            ])
            .build();
        for udf in window::udfs().into_iter().chain(join_markers()) {
            // Registering a new name cannot fail.
            let _ = datafusion::execution::FunctionRegistry::register_udf(&mut state, udf.clone());
            let _ = datafusion::execution::FunctionRegistry::register_udf(&mut batch_state, udf);
        }
        Planner { state, batch_state }
    }

    /// The DataFusion session state used for planning.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Converts column definitions to an Arrow schema with DataFusion's type mapping
    /// (`JSON` and `UUID` are text).
    pub fn build_schema(&self, columns: &[ColumnDef]) -> Result<Schema, SqlError> {
        let catalog = EmptyCatalog;
        let provider = CatalogProvider::new(&catalog, &self.state);
        let planner = SqlToRel::new(&provider);
        let mut fields: Vec<arrow::datatypes::FieldRef> = Vec::with_capacity(columns.len());
        for column in columns {
            for option in &column.options {
                use sqlparser::ast::ColumnOption;
                match &option.option {
                    ColumnOption::NotNull | ColumnOption::Null => {}
                    other => {
                        return Err(SqlError::not_supported(
                            format!("the column option '{other}' (on column '{}')", column.name),
                            Some("source columns take only NULL / NOT NULL"),
                        ));
                    }
                }
            }
            let mut column = column.clone();
            if let SqlType::JSON | SqlType::Uuid | SqlType::JSONB = column.data_type {
                column.data_type = SqlType::Text;
            }
            // One column at a time, so a type error names its column.
            let single = planner.build_schema(vec![column.clone()]).map_err(|e| {
                SqlError::Invalid(format!(
                    "column '{}' has unsupported type {}: {}",
                    column.name,
                    column.data_type,
                    strip_df(&e)
                ))
            })?;
            let field = single.fields()[0].clone();
            if fields.iter().any(|f| f.name() == field.name()) {
                return Err(SqlError::Invalid(format!(
                    "column '{}' is declared twice",
                    field.name()
                )));
            }
            fields.push(field);
        }
        Ok(Schema::new(fields))
    }

    /// Plans a continuous query reading from the catalog, with its streaming clauses
    /// (EMIT, ALLOW LATENESS, LATE DATA TO).
    pub fn plan_query(
        &self,
        query: &Query,
        clauses: &StreamingClauses,
        catalog: &dyn SchemaCatalog,
    ) -> Result<StreamPlan, SqlError> {
        let mut query = query.clone();
        window::rewrite_query(&mut query)?;
        match self.plan_continuous(&query, clauses, catalog) {
            // A table read other than by a lookup join is read as its changelog.
            Err(SqlError::TableAsChangelog(_)) => {
                self.plan_continuous(&query, clauses, &TablesAsChangelogs(catalog))
            }
            // So is a table whose changes' `_op` the query names.
            Err(e @ SqlError::UnknownColumn { .. }) if names_op(&e) => self
                .plan_continuous(&query, clauses, &TablesAsChangelogs(catalog))
                .map_err(|_| e),
            other => other,
        }
    }

    fn plan_continuous(
        &self,
        query: &Query,
        clauses: &StreamingClauses,
        catalog: &dyn SchemaCatalog,
    ) -> Result<StreamPlan, SqlError> {
        let logical = match self.logical_plan(query, catalog) {
            Ok(plan) => plan,
            Err(e) => {
                // BIGINT (epoch-ms) event times: INTERVAL constants in join conditions count
                // milliseconds.
                let mut retry = query.clone();
                if !join::join_intervals_as_millis(&mut retry) {
                    return Err(e);
                }
                self.logical_plan(&retry, catalog).map_err(|_| e)?
            }
        };
        lower::lower(&logical, catalog, clauses)
    }

    /// Names of the functions a query calls whose result is not determined by their
    /// arguments (`random()`, `now()`, `uuid()`): volatile or stable in DataFusion's terms.
    pub fn non_deterministic_functions(&self, query: &Query) -> Vec<String> {
        use datafusion::logical_expr::Volatility;
        use sqlparser::ast::{Expr as SqlExpr, visit_expressions};
        let mut found: Vec<String> = Vec::new();
        let _ = visit_expressions(query, |expr| {
            if let SqlExpr::Function(f) = expr {
                let name = f.name.to_string().to_lowercase();
                if self
                    .state
                    .scalar_functions()
                    .get(&name)
                    .is_some_and(|udf| udf.signature().volatility != Volatility::Immutable)
                    && !found.contains(&name)
                {
                    found.push(name);
                }
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        found
    }

    /// Plans a query to a type-coerced DataFusion logical plan.
    pub fn logical_plan(
        &self,
        query: &Query,
        catalog: &dyn SchemaCatalog,
    ) -> Result<LogicalPlan, SqlError> {
        self.plan_with(CatalogProvider::new(catalog, &self.state), query, catalog)
    }

    fn plan_with(
        &self,
        provider: CatalogProvider<'_>,
        query: &Query,
        catalog: &dyn SchemaCatalog,
    ) -> Result<LogicalPlan, SqlError> {
        let planner = SqlToRel::new(&provider);
        let plan = planner
            .sql_statement_to_plan(Statement::Query(Box::new(query.clone())))
            .map_err(|e| map_plan_error(e, &provider, catalog))?;
        self.state
            .optimize(&plan)
            .map_err(|e| map_plan_error(e, &provider, catalog))
    }

    /// Plans a bounded query over tables and materialized views (and constants): `None`
    /// when the query reads a source or stream. Nothing is read yet; tables and views are
    /// read when the plan from [`Planner::optimize_snapshot`] is executed.
    pub fn snapshot_plan(
        &self,
        query: &Query,
        catalog: &dyn SchemaCatalog,
    ) -> Result<Option<SnapshotQuery>, SqlError> {
        let reads = Arc::new(std::sync::Mutex::new(
            snapshot_table::SnapshotReads::default(),
        ));
        let plan = self.plan_with(
            CatalogProvider::new(catalog, &self.state).with_snapshots(reads.clone()),
            query,
            catalog,
        )?;
        let reads_relations = lower::reads_relations(&plan);
        if reads_relations && !lower::reads_only_snapshots(&plan, catalog) {
            return Ok(None);
        }
        Ok(Some(SnapshotQuery {
            plan,
            reads_relations,
            reads,
        }))
    }

    /// Optimizes a snapshot query for execution with DataFusion's default rules (so filters
    /// reach the scans and view lookups by key apply): the plan and the session state to run
    /// it with, whose query start time (`now()`) is now.
    pub fn optimize_snapshot(&self, query: SnapshotQuery) -> Result<SnapshotRun, SqlError> {
        use datafusion::common::tree_node::TreeNodeRecursion;
        let mut state = self.batch_state.clone();
        state.mark_start_execution();
        let plan = state.optimize(&query.plan).map_err(SqlError::Plan)?;
        let mut scans = std::collections::HashMap::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                *scans
                    .entry(scan.table_name.table().to_string())
                    .or_insert(0) += 1;
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(SqlError::Plan)?;
        let relations = scans.keys().cloned().collect();
        if let Ok(mut reads) = query.reads.lock() {
            reads.set_scans(scans);
        }
        Ok(SnapshotRun {
            plan,
            state,
            relations,
            reads: query.reads,
        })
    }

    /// Plans the rows of `INSERT INTO target [(columns)] <query>` (VALUES or a constant
    /// SELECT); [`Planner::evaluate_insert`] then computes them.
    pub fn plan_insert(
        &self,
        query: &Query,
        catalog: &dyn SchemaCatalog,
    ) -> Result<LogicalPlan, SqlError> {
        let plan = self.logical_plan(query, catalog)?;
        if lower::reads_relations(&plan) {
            return Err(SqlError::not_supported(
                "INSERT ... SELECT from a source or stream",
                Some("use CREATE SINK or CREATE STREAM to route one stream into another"),
            ));
        }
        Ok(plan)
    }

    /// Runs a plan from [`Planner::plan_insert`] and casts its rows to the target columns.
    pub async fn evaluate_insert(
        &self,
        target_name: &str,
        target: &SchemaRef,
        columns: &[String],
        plan: LogicalPlan,
    ) -> Result<RecordBatch, SqlError> {
        let ctx = SessionContext::new_with_state(self.state.clone());
        let batches = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(SqlError::Plan)?
            .collect()
            .await
            .map_err(SqlError::Plan)?;
        let batch = arrow::compute::concat_batches(
            &batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(Schema::empty())),
            &batches,
        )
        .map_err(|e| SqlError::Invalid(e.to_string()))?;
        let targets: Vec<usize> = if columns.is_empty() {
            (0..target.fields().len()).collect()
        } else {
            columns
                .iter()
                .map(|c| {
                    target.index_of(c).map_err(|_| SqlError::UnknownColumn {
                        column: c.clone(),
                        suggestion: did_you_mean(
                            c,
                            target.fields().iter().map(|f| f.name().as_str()),
                        ),
                        valid: target.fields().iter().map(|f| f.name().clone()).collect(),
                    })
                })
                .collect::<Result<_, _>>()?
        };
        if batch.num_columns() != targets.len() {
            return Err(SqlError::Invalid(format!(
                "INSERT INTO {target_name} has {} values per row but {} target columns",
                batch.num_columns(),
                targets.len()
            )));
        }
        let rows = batch.num_rows();
        let mut out: Vec<ArrayRef> = target
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), rows))
            .collect();
        let options = CastOptions {
            safe: false,
            format_options: FormatOptions::default(),
        };
        for (value_index, &target_index) in targets.iter().enumerate() {
            let field = target.field(target_index);
            out[target_index] =
                cast_with_options(batch.column(value_index), field.data_type(), &options).map_err(
                    |e| {
                        SqlError::Invalid(format!(
                            "INSERT INTO {target_name}: column '{}' expects {}, got {}: {e}",
                            field.name(),
                            field.data_type(),
                            batch.column(value_index).data_type()
                        ))
                    },
                )?;
        }
        // Nullability is checked by the ingestion path (NULL into NOT NULL names the column).
        let relaxed = Arc::new(Schema::new(
            target
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        RecordBatch::try_new(relaxed, out).map_err(|e| SqlError::Invalid(e.to_string()))
    }
}

/// The marker functions of join syntax (`__asof`, `__temporal`, `nearest`): they only carry
/// the join's definition from the parser to the join planner and fail if evaluated.
fn join_markers() -> Vec<Arc<datafusion::logical_expr::ScalarUDF>> {
    [
        crate::parser::ASOF_MARKER,
        crate::parser::TEMPORAL_MARKER,
        "nearest",
    ]
    .into_iter()
    .map(|name| {
        Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(
            JoinMarker::new(name),
        ))
    })
    .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JoinMarker {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
}

impl JoinMarker {
    fn new(name: &'static str) -> JoinMarker {
        JoinMarker {
            name,
            signature: datafusion::logical_expr::Signature::variadic_any(
                datafusion::logical_expr::Volatility::Immutable,
            ),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for JoinMarker {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(
        &self,
        _: &[arrow::datatypes::DataType],
    ) -> datafusion::error::Result<arrow::datatypes::DataType> {
        Ok(arrow::datatypes::DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        _: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        Err(DataFusionError::Plan(format!(
            "{}() belongs in the match condition of an ASOF JOIN (MATCH_CONDITION(NEAREST(l.ts, r.ts)))",
            self.name
        )))
    }
}

struct EmptyCatalog;

impl SchemaCatalog for EmptyCatalog {
    fn relation(&self, _name: &str) -> Option<RelationInfo> {
        None
    }
    fn relation_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// DataFusion's message without its "Error during planning: " style prefixes.
pub(crate) fn strip_df(e: &DataFusionError) -> String {
    let text = e.to_string();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "This feature is not implemented: ",
        "Optimizer rule 'type_coercion' failed\ncaused by\n",
        "type_coercion\ncaused by\n",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return strip_df_text(rest);
        }
    }
    strip_df_text(&text)
}

fn strip_df_text(text: &str) -> String {
    text.replace("Error during planning: ", "")
}

fn map_plan_error(
    e: DataFusionError,
    provider: &CatalogProvider<'_>,
    catalog: &dyn SchemaCatalog,
) -> SqlError {
    if let Some(missing) = provider.missing_relation() {
        let names = catalog.relation_names();
        return SqlError::UnknownObject {
            kind: "source or stream",
            suggestion: did_you_mean(&missing, names.iter().map(String::as_str)),
            name: missing,
        };
    }
    if let DataFusionError::SchemaError(inner, _) = e.find_root()
        && let SchemaError::FieldNotFound {
            field,
            valid_fields,
        } = inner.as_ref()
    {
        let valid: Vec<String> = valid_fields.iter().map(|c| c.name.clone()).collect();
        let mut unique = valid.clone();
        unique.sort();
        unique.dedup();
        return SqlError::UnknownColumn {
            column: field.name.clone(),
            suggestion: did_you_mean(&field.name, unique.iter().map(String::as_str)),
            valid: unique,
        };
    }
    if let DataFusionError::NotImplemented(msg) = e.find_root() {
        return SqlError::not_supported(msg.clone(), None);
    }
    SqlError::Plan(e)
}
