//! Materialized views and reference tables as DataFusion tables for snapshot queries.
//!
//! A [`SnapshotTable`] reads its view or table when the query is planned for execution (at
//! `scan`), not when it is named, so planning a query copies nothing. A query that reads a
//! view once and fixes every column of the view's key with `=` or `IN` literals gets only the
//! rows with those keys, looked up in the view's key index under one lock; any other read
//! takes the whole contents, once per relation and query, so a relation read twice (a
//! self-join, a CTE used twice) is read at one point in time. Key filters are pushed down as
//! inexact: DataFusion still applies every filter above the scan. Contents taken beforehand
//! ([`crate::plan::SnapshotRun::read_from`]: several relations read at one point of the
//! input) are read instead, key lookups included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::ArrayRef;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::ScalarValue;
use datafusion::datasource::TableProvider;
use datafusion::datasource::memory::{DataSourceExec, MemorySourceConfig};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType,
};
use datafusion::physical_plan::ExecutionPlan;
use laminar_core::operator::ViewStore;
use laminar_core::table::TableRef;

/// The most keys a lookup takes; a larger `IN` list (or product of lists) reads the view.
const MAX_LOOKUP_KEYS: usize = 1024;

/// What one snapshot query reads of its views.
#[derive(Debug, Default)]
pub(crate) struct SnapshotReads {
    /// How many scans of each view the query's final plan has (set after optimization).
    scans: HashMap<String, usize>,
    /// The whole contents of each relation read so far.
    taken: HashMap<String, Vec<RecordBatch>>,
}

impl SnapshotReads {
    /// Records how many times the final plan scans each relation.
    pub(crate) fn set_scans(&mut self, scans: HashMap<String, usize>) {
        self.scans = scans;
    }

    /// The contents to read for these relations, taken beforehand.
    pub(crate) fn provide(&mut self, rows: HashMap<String, Vec<RecordBatch>>) {
        self.taken.extend(rows);
    }
}

/// What a [`SnapshotTable`] reads.
#[derive(Debug, Clone)]
pub(crate) enum Contents {
    View(Arc<ViewStore>),
    Table(TableRef),
}

/// One materialized view or reference table in one snapshot query.
#[derive(Debug)]
pub(crate) struct SnapshotTable {
    name: String,
    schema: SchemaRef,
    contents: Contents,
    reads: Arc<Mutex<SnapshotReads>>,
}

impl SnapshotTable {
    pub(crate) fn new(
        name: &str,
        schema: SchemaRef,
        contents: Contents,
        reads: Arc<Mutex<SnapshotReads>>,
    ) -> Self {
        SnapshotTable {
            name: name.to_string(),
            schema,
            contents,
            reads,
        }
    }

    /// The view's store, when this is a view with a key.
    fn keyed_view(&self) -> Option<(&ViewStore, &[usize])> {
        match &self.contents {
            Contents::View(store) => store.key_columns().map(|key| (store.as_ref(), key)),
            Contents::Table(_) => None,
        }
    }

    /// The literal values a filter allows for key column `column` (`col = v`, `v = col`,
    /// `col IN (v, ..)` and ORs of these), cast-free: each value already has the column's type. NULLs are
    /// left out (they equal nothing).
    fn key_values(&self, filter: &Expr, column: usize) -> Option<Vec<ScalarValue>> {
        let field = self.schema.field(column);
        let is_column = |e: &Expr| matches!(e, Expr::Column(c) if c.name == *field.name());
        let literal = |e: &Expr| match e {
            Expr::Literal(v, _) if v.data_type() == *field.data_type() => Some(v.clone()),
            _ => None,
        };
        let values = match filter {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Eq,
                right,
            }) => {
                if is_column(left) {
                    vec![literal(right)?]
                } else if is_column(right) {
                    vec![literal(left)?]
                } else {
                    return None;
                }
            }
            // DataFusion turns short IN lists into ORs of equalities.
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::Or,
                right,
            }) => {
                let mut values = self.key_values(left, column)?;
                values.extend(self.key_values(right, column)?);
                return Some(values);
            }
            Expr::InList(list) if !list.negated && is_column(&list.expr) => list
                .list
                .iter()
                .map(literal)
                .collect::<Option<Vec<ScalarValue>>>()?,
            _ => return None,
        };
        Some(values.into_iter().filter(|v| !v.is_null()).collect())
    }

    /// True when `filter` fixes some key column to literals.
    fn is_key_filter(&self, filter: &Expr) -> bool {
        self.keyed_view()
            .is_some_and(|(_, key)| key.iter().any(|&c| self.key_values(filter, c).is_some()))
    }

    /// The keys to look up when `filters` fix every key column: one array per key column.
    fn lookup_keys(&self, filters: &[Expr]) -> Option<Vec<ArrayRef>> {
        let (_, key) = self.keyed_view()?;
        let per_column: Vec<Vec<ScalarValue>> = key
            .iter()
            .map(|&c| filters.iter().find_map(|f| self.key_values(f, c)))
            .collect::<Option<_>>()?;
        let combinations = per_column
            .iter()
            .try_fold(1usize, |n, values| n.checked_mul(values.len()))?;
        if combinations > MAX_LOOKUP_KEYS {
            return None;
        }
        // Every combination of the columns' values, column by column.
        let mut columns: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(combinations); key.len()];
        for i in 0..combinations {
            let mut rest = i;
            for (c, values) in per_column.iter().enumerate().rev() {
                columns[c].push(values[rest % values.len()].clone());
                rest /= values.len();
            }
        }
        key.iter()
            .zip(columns)
            .map(|(&c, values)| {
                if values.is_empty() {
                    Some(arrow::array::new_empty_array(
                        self.schema.field(c).data_type(),
                    ))
                } else {
                    ScalarValue::iter_to_array(values).ok()
                }
            })
            .collect()
    }

    /// The whole contents as this query sees them.
    fn whole(&self) -> Result<Vec<RecordBatch>> {
        let mut reads = self.lock()?;
        if let Some(rows) = reads.taken.get(&self.name) {
            return Ok(rows.clone());
        }
        let rows = match &self.contents {
            Contents::View(store) => store.snapshot_chunks(),
            Contents::Table(store) => store.snapshot().map(|rows| vec![rows]),
        }
        .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        reads.taken.insert(self.name.clone(), rows.clone());
        Ok(rows)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, SnapshotReads>> {
        self.reads
            .lock()
            .map_err(|_| DataFusionError::Internal("a view read failed in another thread".into()))
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if self.is_key_filter(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (read_once, provided) = {
            let reads = self.lock()?;
            (
                reads.scans.get(&self.name) == Some(&1),
                reads.taken.contains_key(&self.name),
            )
        };
        // Contents provided beforehand are the ones to read, even for a key lookup.
        let keys = if read_once && !provided {
            self.lookup_keys(filters)
        } else {
            None
        };
        let rows = match (keys, self.keyed_view()) {
            (Some(keys), Some((store, _))) => vec![
                store
                    .lookup(&keys)
                    .map_err(|e| DataFusionError::Execution(e.to_string()))?,
            ],
            _ => self.whole()?,
        };
        let source = MemorySourceConfig::try_new(&[rows], self.schema(), projection.cloned())?;
        Ok(DataSourceExec::from_data_source(source))
    }
}
