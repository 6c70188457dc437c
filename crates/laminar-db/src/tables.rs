//! Reference tables (`CREATE TABLE`): creation, upserting `INSERT`, `DELETE` by primary
//! key, `SHOW TABLES` and snapshot queries. The rows live in a
//! [`laminar_core::table::TableStore`] that lookup joins read directly.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema};
use laminar_core::table::{TableRef, TableStore};
use laminar_sql::error::SqlError;
use laminar_sql::parser::CreateTable;
use sqlparser::ast::{BinaryOperator, Expr, Query};

use crate::LaminarDB;
use crate::error::DbError;
use crate::execute::batch;

/// A declared table.
pub(crate) struct TableEntry {
    pub(crate) name: String,
    pub(crate) sql: String,
    pub(crate) primary_key: Vec<String>,
    pub(crate) store: TableRef,
}

impl LaminarDB {
    pub(crate) fn create_table(&self, c: CreateTable, sql: &str) -> Result<String, DbError> {
        if !self.not_exists_or(&c.name, "table", c.if_not_exists, c.or_replace)? {
            return Ok(c.name);
        }
        let schema = self.inner.planner.build_schema(&c.columns)?;
        let mut max_rows = None;
        for (key, value) in &c.options {
            match key.to_lowercase().as_str() {
                "max_rows" => {
                    let n: usize = value.trim().parse().ok().filter(|n| *n > 0).ok_or_else(
                        || {
                            SqlError::Invalid(format!(
                                "table '{}': max_rows must be a positive integer, got '{value}'",
                                c.name
                            ))
                        },
                    )?;
                    max_rows = Some(n);
                }
                other => {
                    return Err(SqlError::Invalid(format!(
                        "unknown table option '{other}' (tables take max_rows)"
                    ))
                    .into());
                }
            }
        }
        let mut key_columns = Vec::new();
        for k in &c.primary_key {
            let index = schema.index_of(k).map_err(|_| SqlError::UnknownColumn {
                column: k.clone(),
                suggestion: laminar_sql::error::did_you_mean(
                    k,
                    schema.fields().iter().map(|f| f.name().as_str()),
                ),
                valid: schema.fields().iter().map(|f| f.name().clone()).collect(),
            })?;
            if key_columns.contains(&index) {
                return Err(SqlError::Invalid(format!(
                    "table '{}': column '{k}' appears twice in the primary key",
                    c.name
                ))
                .into());
            }
            key_columns.push(index);
        }
        // Primary-key columns are NOT NULL.
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let field = f.as_ref().clone();
                if key_columns.contains(&i) {
                    field.with_nullable(false)
                } else {
                    field
                }
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let store = TableStore::new(&c.name, schema, key_columns, max_rows)
            .map_err(|e| SqlError::Invalid(e.to_string()))?;
        if c.or_replace {
            self.inner.catalog.write().tables.remove(&c.name);
        }
        self.inner.catalog.write().tables.insert(
            c.name.clone(),
            TableEntry {
                name: c.name.clone(),
                sql: sql.to_string(),
                primary_key: c.primary_key.clone(),
                store: Arc::new(store),
            },
        );
        Ok(c.name)
    }

    /// `INSERT INTO table ...`: upserts the rows (all or nothing).
    pub(crate) async fn insert_into_table(
        &self,
        table: &str,
        columns: &[String],
        source: &Query,
    ) -> Result<u64, DbError> {
        let (store, plan) = {
            let catalog = self.inner.catalog.read();
            let store = catalog
                .tables
                .get(table)
                .map(|t| t.store.clone())
                .ok_or_else(|| DbError::Engine(format!("table '{table}' vanished")))?;
            (store, self.inner.planner.plan_insert(source, &*catalog)?)
        };
        let rows = self
            .inner
            .planner
            .evaluate_insert(table, store.schema(), columns, plan)
            .await?;
        check_not_null(table, store.schema(), &rows)?;
        store.upsert(&rows).map_err(|e| DbError::InsertError {
            object: table.to_string(),
            detail: e.to_string(),
        })?;
        Ok(rows.num_rows() as u64)
    }

    /// `DELETE FROM table WHERE pk = value [AND ...]`.
    pub(crate) async fn delete_from_table(
        &self,
        table: &str,
        selection: Option<&Expr>,
    ) -> Result<u64, DbError> {
        let (store, primary_key) = {
            let catalog = self.inner.catalog.read();
            match catalog.tables.get(table) {
                Some(t) => (t.store.clone(), t.primary_key.clone()),
                None => {
                    let kind = catalog.kind_of(table);
                    return Err(match kind {
                        Some(kind) => DbError::InvalidOperation(format!(
                            "DELETE works on tables; '{table}' is a {kind}"
                        )),
                        None => DbError::NotFound {
                            kind: "table",
                            name: table.to_string(),
                            suggestion: laminar_sql::error::did_you_mean(
                                table,
                                catalog.tables.keys().map(String::as_str),
                            ),
                        },
                    });
                }
            }
        };
        let usage = || {
            SqlError::Invalid(format!(
                "DELETE FROM {table} needs WHERE {} (equality on every column of the primary key)",
                primary_key
                    .iter()
                    .map(|k| format!("{k} = <value>"))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ))
        };
        let selection = selection.ok_or_else(usage)?;
        let mut equalities = Vec::new();
        split_and(selection, &mut equalities);
        let mut values: Vec<Option<Expr>> = vec![None; primary_key.len()];
        for (column, value) in equalities {
            let position = primary_key
                .iter()
                .position(|k| *k == column)
                .ok_or_else(usage)?;
            if values[position].replace(value).is_some() {
                return Err(usage().into());
            }
        }
        if values.iter().any(Option::is_none) {
            return Err(usage().into());
        }
        let row = values
            .into_iter()
            .flatten()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let query = match laminar_sql::parser::parse_statement(&format!("SELECT {row}"))? {
            laminar_sql::parser::StreamingStatement::Query { query, .. } => query,
            _ => return Err(usage().into()),
        };
        let key_schema = Arc::new(Schema::new(
            store
                .key_columns()
                .iter()
                .map(|&i| store.schema().field(i).clone())
                .collect::<Vec<_>>(),
        ));
        let plan = {
            let catalog = self.inner.catalog.read();
            self.inner.planner.plan_insert(&query, &*catalog)?
        };
        let keys = self
            .inner
            .planner
            .evaluate_insert(table, &key_schema, &[], plan)
            .await?;
        let removed = store
            .delete(keys.columns())
            .map_err(|e| DbError::Engine(e.to_string()))?;
        Ok(removed as u64)
    }

    pub(crate) fn show_tables(&self) -> Result<RecordBatch, DbError> {
        let catalog = self.inner.catalog.read();
        let tables: Vec<&TableEntry> = catalog.tables.values().collect();
        batch(
            &[
                ("name", DataType::Utf8),
                ("primary_key", DataType::Utf8),
                ("row_count", DataType::UInt64),
                ("connector", DataType::Utf8),
            ],
            vec![
                Arc::new(StringArray::from(
                    tables.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
                )) as ArrayRef,
                Arc::new(StringArray::from(
                    tables
                        .iter()
                        .map(|t| t.primary_key.join(", "))
                        .collect::<Vec<_>>(),
                )),
                Arc::new(UInt64Array::from(
                    tables
                        .iter()
                        .map(|t| t.store.len() as u64)
                        .collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(vec![None::<String>; tables.len()])),
            ],
        )
    }

    /// Runs a query over tables only (a snapshot of their current rows).
    pub(crate) async fn snapshot_query(&self, query: &Query) -> Result<Vec<RecordBatch>, DbError> {
        let plan = {
            let catalog = self.inner.catalog.read();
            self.inner.planner.snapshot_plan(query, &*catalog)?
        };
        let ctx =
            datafusion::prelude::SessionContext::new_with_state(self.inner.planner.state().clone());
        ctx.execute_logical_plan(plan)
            .await
            .map_err(|e| DbError::from(SqlError::Plan(e)))?
            .collect()
            .await
            .map_err(|e| DbError::Engine(e.to_string()))
    }
}

/// `col = value` conjuncts of a DELETE's WHERE (anything else yields nothing, so the caller
/// reports the expected form).
fn split_and(expr: &Expr, out: &mut Vec<(String, Expr)>) {
    match expr {
        Expr::Nested(inner) => split_and(inner, out),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            let column = |e: &Expr| match e {
                Expr::Identifier(i) => Some(laminar_sql::parser::normalize_ident(i)),
                Expr::CompoundIdentifier(parts) => {
                    parts.last().map(laminar_sql::parser::normalize_ident)
                }
                _ => None,
            };
            match (column(left), column(right)) {
                (Some(c), None) => out.push((c, right.as_ref().clone())),
                (None, Some(c)) => out.push((c, left.as_ref().clone())),
                _ => out.push((String::new(), expr.clone())),
            }
        }
        other => out.push((String::new(), other.clone())),
    }
}

/// NULL into a NOT NULL column names the column and row.
fn check_not_null(table: &str, schema: &Schema, rows: &RecordBatch) -> Result<(), DbError> {
    for (i, field) in schema.fields().iter().enumerate() {
        let column = rows.column(i);
        if !field.is_nullable() && column.null_count() > 0 {
            let row = (0..column.len()).find(|&r| column.is_null(r)).unwrap_or(0);
            return Err(DbError::InsertError {
                object: table.to_string(),
                detail: format!(
                    "column '{}' is NOT NULL (primary-key columns always are) but row {} is NULL",
                    field.name(),
                    row + 1
                ),
            });
        }
    }
    Ok(())
}
