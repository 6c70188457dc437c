//! The catalog as a DataFusion `ContextProvider`: relations are schema-only tables, functions
//! come from DataFusion's registry.

use std::cell::RefCell;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::catalog::empty::EmptyTable;
use datafusion::common::TableReference;
use datafusion::common::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::planner::{ContextProvider, ExprPlanner};
use datafusion::logical_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};

use super::SchemaCatalog;

pub(crate) struct CatalogProvider<'a> {
    catalog: &'a dyn SchemaCatalog,
    state: &'a SessionState,
    missing: RefCell<Option<String>>,
    /// Tables carry their current rows (for snapshot queries that execute the plan).
    snapshots: bool,
    /// The rows of each view read so far: a query that reads a view twice reads one
    /// snapshot of it.
    taken: RefCell<std::collections::HashMap<String, arrow::record_batch::RecordBatch>>,
}

impl<'a> CatalogProvider<'a> {
    pub(crate) fn new(catalog: &'a dyn SchemaCatalog, state: &'a SessionState) -> Self {
        CatalogProvider {
            catalog,
            state,
            missing: RefCell::new(None),
            snapshots: false,
            taken: RefCell::default(),
        }
    }

    /// A provider whose tables carry a snapshot of their rows taken now.
    pub(crate) fn with_snapshots(mut self) -> Self {
        self.snapshots = true;
        self
    }

    /// The first relation name that was looked up and not found.
    pub(crate) fn missing_relation(&self) -> Option<String> {
        self.missing.borrow().clone()
    }
}

impl ContextProvider for CatalogProvider<'_> {
    fn get_table_source(&self, name: TableReference) -> Result<Arc<dyn TableSource>> {
        let table = name.table();
        match self.catalog.relation(table) {
            Some(info) => match (&info.table, self.snapshots) {
                (Some(store), true) => {
                    let rows = store
                        .snapshot()
                        .map_err(|e| DataFusionError::Execution(e.to_string()))?;
                    let table = datafusion::datasource::MemTable::try_new(
                        info.schema.clone(),
                        vec![vec![rows]],
                    )?;
                    Ok(provider_as_source(Arc::new(table)))
                }
                (None, true) if info.view.is_some() => {
                    let taken = self.taken.borrow().get(table).cloned();
                    let rows = match (taken, &info.view) {
                        (Some(rows), _) => rows,
                        (None, Some(view)) => {
                            let rows = view
                                .snapshot()
                                .map_err(|e| DataFusionError::Execution(e.to_string()))?;
                            self.taken
                                .borrow_mut()
                                .insert(table.to_string(), rows.clone());
                            rows
                        }
                        (None, None) => {
                            return Err(DataFusionError::Internal(format!(
                                "view '{table}' has no contents"
                            )));
                        }
                    };
                    let table =
                        datafusion::datasource::MemTable::try_new(rows.schema(), vec![vec![rows]])?;
                    Ok(provider_as_source(Arc::new(table)))
                }
                _ => Ok(provider_as_source(Arc::new(EmptyTable::new(info.schema)))),
            },
            None => {
                self.missing
                    .borrow_mut()
                    .get_or_insert_with(|| table.to_string());
                Err(DataFusionError::Plan(format!("unknown relation '{table}'")))
            }
        }
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.state.expr_planners()
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.state.scalar_functions().get(name).cloned()
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.state.higher_order_functions().get(name).cloned()
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.state.aggregate_functions().get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.state.window_functions().get(name).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        self.state.config_options()
    }

    fn udf_names(&self) -> Vec<String> {
        self.state.scalar_functions().keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        self.state
            .higher_order_functions()
            .keys()
            .cloned()
            .collect()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.state.aggregate_functions().keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.state.window_functions().keys().cloned().collect()
    }
}
