//! The catalog as a DataFusion `ContextProvider`: relations are schema-only tables, functions
//! come from DataFusion's registry.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

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
use super::snapshot_table::{Contents, SnapshotReads, SnapshotTable};

pub(crate) struct CatalogProvider<'a> {
    catalog: &'a dyn SchemaCatalog,
    state: &'a SessionState,
    missing: RefCell<Option<String>>,
    /// Tables and views read their rows when the plan is executed (for snapshot queries);
    /// what the query has read of them.
    snapshots: Option<Arc<Mutex<SnapshotReads>>>,
}

impl<'a> CatalogProvider<'a> {
    pub(crate) fn new(catalog: &'a dyn SchemaCatalog, state: &'a SessionState) -> Self {
        CatalogProvider {
            catalog,
            state,
            missing: RefCell::new(None),
            snapshots: None,
        }
    }

    /// A provider whose tables and views are read when the plan is executed, recording
    /// their reads in `reads`.
    pub(crate) fn with_snapshots(mut self, reads: Arc<Mutex<SnapshotReads>>) -> Self {
        self.snapshots = Some(reads);
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
            Some(info) => match (&info.table, &info.view, &self.snapshots) {
                (Some(store), _, Some(reads)) => {
                    Ok(provider_as_source(Arc::new(SnapshotTable::new(
                        table,
                        info.schema.clone(),
                        Contents::Table(store.clone()),
                        reads.clone(),
                    ))))
                }
                (None, Some(view), Some(reads)) => {
                    Ok(provider_as_source(Arc::new(SnapshotTable::new(
                        table,
                        view.schema().clone(),
                        Contents::View(view.clone()),
                        reads.clone(),
                    ))))
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
