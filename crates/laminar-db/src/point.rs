//! Point queries: `SELECT columns FROM relation WHERE key = literal [AND ..]` over a table, or
//! a materialized view with a key, that fixes every key column to a literal. They are answered
//! from the relation's key index, under one read of it, without DataFusion planning — the
//! parsing, planning and optimizing of a general snapshot query cost more than the lookup.
//!
//! The fast path takes only the exact form: plain columns (or `*`) in the `SELECT` list, one
//! relation, a `WHERE` of equalities between the key columns and literals of the column's own
//! kind (an integer for an integer column, a string for a string column, `TRUE` / `FALSE` for a
//! boolean one). Anything else — another clause, an expression, a literal DataFusion would
//! coerce, a name that does not resolve — goes the general way, which gives the same answer
//! (and the errors).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray, UInt64Array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use sqlparser::ast::{
    BinaryOperator, Expr, Query, SelectItem, SetExpr, TableFactor, UnaryOperator, Value,
};

use crate::catalog::Catalog;
use crate::error::DbError;
use laminar_sql::parser::normalize_ident;

/// Where a point query reads.
enum Relation {
    Table(laminar_core::table::TableRef),
    View(Arc<laminar_core::operator::ViewStore>),
}

/// A point query, resolved against the catalog.
pub(crate) struct PointQuery {
    /// The relation's name and kind, for EXPLAIN.
    name: String,
    kind: &'static str,
    relation: Relation,
    /// One array of one value per key column, of the column's type.
    keys: Vec<ArrayRef>,
    /// The selected columns (positions in the relation) and their output names.
    columns: Vec<(usize, String)>,
}

impl PointQuery {
    /// The query as a point query, when it is exactly one (see the module docs).
    pub(crate) fn resolve(query: &Query, catalog: &Catalog) -> Option<PointQuery> {
        let SetExpr::Select(select) = query.body.as_ref() else {
            return None;
        };
        let [from] = select.from.as_slice() else {
            return None;
        };
        if !from.joins.is_empty() {
            return None;
        }
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = &from.relation
        else {
            return None;
        };
        let selection = select.selection.as_ref()?;
        // Anything the parts below do not spell out (DISTINCT, GROUP BY, ORDER BY, LIMIT, WITH,
        // hints, ...) makes the query's text differ from theirs.
        let items: Vec<String> = select.projection.iter().map(|i| i.to_string()).collect();
        let expected = format!(
            "SELECT {} FROM {} WHERE {selection}",
            items.join(", "),
            from.relation
        );
        if query.to_string() != expected {
            return None;
        }
        let relation_name = match name.0.as_slice() {
            [part] => normalize_ident(part.as_ident()?),
            _ => return None,
        };
        if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
            return None;
        }
        let alias_name = alias.as_ref().map(|a| normalize_ident(&a.name));
        let qualifier = alias_name.unwrap_or_else(|| relation_name.clone());

        let (kind, relation, schema, key) = if let Some(table) = catalog.tables.get(&relation_name)
        {
            let store = table.store.clone();
            let schema = store.schema().clone();
            let key = store.key_columns().to_vec();
            ("table", Relation::Table(store), schema, key)
        } else {
            let store = catalog
                .streams
                .get(&relation_name)?
                .view
                .as_ref()?
                .store
                .clone();
            let schema = store.schema().clone();
            let key = store.key_columns()?.to_vec();
            ("materialized view", Relation::View(store), schema, key)
        };
        let column = |expr: &Expr| -> Option<usize> {
            let name = match expr {
                Expr::Identifier(ident) => normalize_ident(ident),
                Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                    [q, c] if normalize_ident(q) == qualifier => normalize_ident(c),
                    _ => return None,
                },
                _ => return None,
            };
            schema.index_of(&name).ok()
        };

        let mut columns = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(options) if options.to_string().is_empty() => columns.extend(
                    schema
                        .fields()
                        .iter()
                        .enumerate()
                        .map(|(i, f)| (i, f.name().clone())),
                ),
                SelectItem::UnnamedExpr(expr) => {
                    let i = column(expr)?;
                    columns.push((i, schema.field(i).name().clone()));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    columns.push((column(expr)?, normalize_ident(alias)));
                }
                _ => return None,
            }
        }

        let mut equalities = Vec::new();
        conjuncts(selection, &mut equalities)?;
        let mut values: Vec<Option<ArrayRef>> = vec![None; key.len()];
        for (left, right) in equalities {
            let (c, literal) = match (column(left), column(right)) {
                (Some(c), None) => (c, right),
                (None, Some(c)) => (c, left),
                _ => return None,
            };
            let position = key.iter().position(|&k| k == c)?;
            let value = literal_array(literal, schema.field(c).data_type())?;
            if values[position].replace(value).is_some() {
                return None;
            }
        }
        let keys = values.into_iter().collect::<Option<Vec<_>>>()?;
        Some(PointQuery {
            name: relation_name,
            kind,
            relation,
            keys,
            columns,
        })
    }

    /// `EXPLAIN` rows: the relation and key read, the columns returned.
    pub(crate) fn explain(&self) -> Vec<(String, String)> {
        let schema = match &self.relation {
            Relation::Table(store) => store.schema().clone(),
            Relation::View(store) => store.schema().clone(),
        };
        let key_columns: Vec<usize> = match &self.relation {
            Relation::Table(store) => store.key_columns().to_vec(),
            Relation::View(store) => store.key_columns().unwrap_or_default().to_vec(),
        };
        let key = key_columns
            .iter()
            .zip(&self.keys)
            .map(|(&c, value)| {
                let shown = arrow::util::display::ArrayFormatter::try_new(
                    value.as_ref(),
                    &Default::default(),
                )
                .map(|f| f.value(0).to_string())
                .unwrap_or_default();
                format!("{} = {shown}", schema.field(c).name())
            })
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            (
                "snapshot_query".into(),
                format!(
                    "point lookup: the {} '{}' read by its key ({key}), without a query plan",
                    self.kind, self.name
                ),
            ),
            (
                "columns".into(),
                self.columns
                    .iter()
                    .map(|(i, name)| {
                        let field = schema.field(*i).name();
                        if field == name {
                            field.clone()
                        } else {
                            format!("{field} AS {name}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ]
    }

    /// The rows of the key, with the selected columns.
    pub(crate) fn run(&self) -> Result<RecordBatch, DbError> {
        let rows = match &self.relation {
            Relation::Table(store) => store.lookup(&self.keys).map(|found| found.rows),
            Relation::View(store) => store.lookup(&self.keys),
        }
        .map_err(|e| DbError::Engine(e.to_string()))?;
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|(i, name)| rows.schema().field(*i).clone().with_name(name))
            .collect();
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let columns = self
            .columns
            .iter()
            .map(|(i, _)| rows.column(*i).clone())
            .collect();
        RecordBatch::try_new(schema, columns).map_err(|e| DbError::Engine(e.to_string()))
    }
}

impl crate::LaminarDB {
    /// The query as a point query, when it is one: a `SELECT` without streaming clauses (an
    /// `EMIT` makes it a continuous query) of the form in the module docs.
    pub(crate) fn point_query(
        &self,
        query: &Query,
        clauses: &laminar_sql::parser::StreamingClauses,
    ) -> Option<PointQuery> {
        if !clauses.is_empty() {
            return None;
        }
        PointQuery::resolve(query, &self.inner.catalog.read())
    }
}

/// The `a = b` conjuncts of `expr`; `None` when it holds anything else.
fn conjuncts<'a>(expr: &'a Expr, out: &mut Vec<(&'a Expr, &'a Expr)>) -> Option<()> {
    match expr {
        Expr::Nested(inner) => conjuncts(inner, out),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out)?;
            conjuncts(right, out)
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => {
            out.push((left, right));
            Some(())
        }
        _ => None,
    }
}

/// A literal of the column type's own kind as a one-value array of that type; `None` for a
/// literal DataFusion would coerce (a string for a number column, a fraction, a value out of
/// the type's range, NULL), which the general path then answers.
fn literal_array(expr: &Expr, data_type: &DataType) -> Option<ArrayRef> {
    let (negative, value) = match expr {
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => (true, &v.value),
            _ => return None,
        },
        Expr::Value(v) => (false, &v.value),
        _ => return None,
    };
    let array: ArrayRef = match value {
        Value::Number(digits, _) if data_type.is_integer() => {
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            if negative {
                Arc::new(Int64Array::from(vec![-digits.parse::<i64>().ok()?]))
            } else {
                Arc::new(UInt64Array::from(vec![digits.parse::<u64>().ok()?]))
            }
        }
        Value::SingleQuotedString(s)
            if !negative
                && matches!(
                    data_type,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) =>
        {
            Arc::new(StringArray::from(vec![s.as_str()]))
        }
        Value::Boolean(b) if !negative && *data_type == DataType::Boolean => {
            Arc::new(BooleanArray::from(vec![*b]))
        }
        _ => return None,
    };
    // A value the type cannot hold becomes NULL in a safe cast: the general path decides.
    let cast = cast_with_options(&array, data_type, &CastOptions::default()).ok()?;
    (cast.null_count() == 0).then_some(cast)
}
