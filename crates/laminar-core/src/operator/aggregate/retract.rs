//! Accumulators that can retract rows, for aggregation over changelog input (SPEC 2.11).
//!
//! COUNT, SUM, AVG, the variance family and COUNT DISTINCT use DataFusion's own retracting
//! ("sliding") accumulators. DataFusion's sliding MIN/MAX assume rows leave in arrival order
//! (a moving window), which a changelog does not guarantee, so MIN and MAX keep an ordered
//! multiset of values here: retracting the current extreme yields the next one. FIRST_VALUE
//! and LAST_VALUE (ordered by event time unless the query orders them) keep a multiset of
//! (ordering key, value) pairs the same way. Aggregates without a retraction rule are
//! refused, naming the function.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::scalar::ScalarValue;

/// Functions whose DataFusion sliding accumulator retracts any row correctly.
const SLIDING: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "var",
    "var_samp",
    "var_pop",
    "variance",
    "variance_samp",
    "variance_pop",
];

/// A retracting accumulator for `function`, or the reason there is none.
pub fn retractable(function: &AggregateFunctionExpr) -> Result<Box<dyn Accumulator>, String> {
    let name = function.fun().name().to_ascii_lowercase();
    let refuse = || {
        format!(
            "the aggregate {}() cannot retract rows, so it cannot consume an updating (changelog) input; use it over an append-only input",
            name.to_ascii_uppercase()
        )
    };
    if (name == "first_value" || name == "last_value")
        && !function.is_distinct()
        && !function.order_bys().is_empty()
    {
        let directions: Vec<(bool, bool)> = function
            .order_bys()
            .iter()
            .map(|s| (s.options.descending, s.options.nulls_first))
            .collect();
        // FIRST_VALUE / LAST_VALUE list their ORDER BY fields after the value in their
        // state fields.
        let state_fields = function.state_fields().map_err(|e| e.to_string())?;
        let order_types = (0..directions.len())
            .map(|i| {
                state_fields
                    .get(1 + i)
                    .map_or(DataType::Null, |f| f.data_type().clone())
            })
            .collect();
        return Ok(Box::new(MultisetOrdered {
            entries: BTreeMap::new(),
            directions,
            order_types,
            last: name == "last_value",
            ignore_nulls: function.ignore_nulls(),
            data_type: function.field().data_type().clone(),
        }));
    }
    if !function.order_bys().is_empty() {
        return Err(refuse());
    }
    if (name == "min" || name == "max") && !function.is_distinct() {
        let data_type = function.field().data_type().clone();
        return Ok(Box::new(MultisetExtreme {
            values: BTreeMap::new(),
            max: name == "max",
            data_type,
        }));
    }
    if SLIDING.contains(&name.as_str()) || (name == "count" && function.is_distinct()) {
        return function.create_sliding_accumulator().map_err(|_| refuse());
    }
    Err(refuse())
}

/// A value ordered by `ScalarValue::partial_cmp` (values of one column are comparable).
#[derive(Debug, Clone, PartialEq)]
struct Ordered(ScalarValue);

impl Eq for Ordered {}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal)
    }
}

/// Adds one occurrence of `key` to a counted multiset, or removes one (a key that is not
/// there is ignored: retracting a row never seen changes nothing).
fn adjust<K: Ord>(multiset: &mut BTreeMap<K, u64>, key: K, add: bool) {
    if add {
        *multiset.entry(key).or_insert(0) += 1;
    } else if let Some(count) = multiset.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            multiset.remove(&key);
        }
    }
}

/// MIN or MAX over a multiset of values with counts.
#[derive(Debug)]
struct MultisetExtreme {
    values: BTreeMap<Ordered, u64>,
    max: bool,
    data_type: DataType,
}

impl MultisetExtreme {
    fn apply(&mut self, values: &ArrayRef, add: bool) -> DfResult<()> {
        for row in 0..values.len() {
            if values.is_null(row) {
                continue;
            }
            let value = Ordered(ScalarValue::try_from_array(values, row)?);
            adjust(&mut self.values, value, add);
        }
        Ok(())
    }
}

impl Accumulator for MultisetExtreme {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.apply(&values[0], true)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.apply(&values[0], false)
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let extreme = if self.max {
            self.values.keys().next_back()
        } else {
            self.values.keys().next()
        };
        match extreme {
            Some(v) => Ok(v.0.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }

    fn size(&self) -> usize {
        size_of::<Self>() + self.values.len() * (size_of::<Ordered>() + 16)
    }

    /// The whole multiset (each value repeated by its count) as one list, so a merged or
    /// restored accumulator can still retract any of its values.
    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let values = expand(self.values.iter().map(|(v, &n)| (&v.0, n)));
        Ok(vec![list_of(&values, &self.data_type)])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        for_each_list_row(states, |columns| self.apply(&columns[0], true))
    }
}

/// Each value repeated by its count.
fn expand<'a>(entries: impl Iterator<Item = (&'a ScalarValue, u64)>) -> Vec<ScalarValue> {
    let mut out = Vec::new();
    for (value, count) in entries {
        for _ in 0..count {
            out.push(value.clone());
        }
    }
    out
}

/// A list scalar of `values` (all of `data_type`).
fn list_of(values: &[ScalarValue], data_type: &DataType) -> ScalarValue {
    ScalarValue::List(ScalarValue::new_list_nullable(values, data_type))
}

/// Calls `f` with the elements of row `r` of every list column, for every row.
fn for_each_list_row(
    states: &[ArrayRef],
    mut f: impl FnMut(&[ArrayRef]) -> DfResult<()>,
) -> DfResult<()> {
    let lists = states
        .iter()
        .map(|s| {
            s.as_list_opt::<i32>().ok_or_else(|| {
                datafusion::error::DataFusionError::Internal(format!(
                    "retracting accumulator state must be a list, found {}",
                    s.data_type()
                ))
            })
        })
        .collect::<DfResult<Vec<_>>>()?;
    let rows = lists.first().map_or(0, |l| l.len());
    for row in 0..rows {
        let columns: Vec<ArrayRef> = lists.iter().map(|l| l.value(row)).collect();
        f(&columns)?;
    }
    Ok(())
}

/// One ORDER BY value with its direction: ascending or descending, NULLs first or last.
#[derive(Debug, Clone, PartialEq)]
struct SortPart {
    value: ScalarValue,
    descending: bool,
    nulls_first: bool,
}

impl Eq for SortPart {}

impl PartialOrd for SortPart {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SortPart {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.value.is_null(), other.value.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => {
                if self.nulls_first {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (false, true) => {
                if self.nulls_first {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (false, false) => {
                let order = self
                    .value
                    .partial_cmp(&other.value)
                    .unwrap_or(Ordering::Equal);
                if self.descending {
                    order.reverse()
                } else {
                    order
                }
            }
        }
    }
}

/// FIRST_VALUE / LAST_VALUE over a multiset of (ORDER BY key, value) pairs with counts:
/// the value of the smallest (first) or largest (last) key; retracting it yields the next.
/// Ties on the key are broken by the value, so the result does not depend on arrival order.
#[derive(Debug)]
struct MultisetOrdered {
    entries: BTreeMap<(Vec<SortPart>, Ordered), u64>,
    /// `(descending, nulls_first)` per ORDER BY expression.
    directions: Vec<(bool, bool)>,
    /// Type of each ORDER BY expression.
    order_types: Vec<DataType>,
    last: bool,
    ignore_nulls: bool,
    data_type: DataType,
}

impl MultisetOrdered {
    /// `columns`: the value, then one column per ORDER BY expression.
    fn apply(&mut self, columns: &[ArrayRef], add: bool) -> DfResult<()> {
        let Some(values) = columns.first() else {
            return Ok(());
        };
        for row in 0..values.len() {
            if self.ignore_nulls && values.is_null(row) {
                continue;
            }
            let key = self
                .directions
                .iter()
                .zip(&columns[1..])
                .map(|(&(descending, nulls_first), column)| {
                    Ok(SortPart {
                        value: ScalarValue::try_from_array(column, row)?,
                        descending,
                        nulls_first,
                    })
                })
                .collect::<DfResult<Vec<_>>>()?;
            let entry = (key, Ordered(ScalarValue::try_from_array(values, row)?));
            adjust(&mut self.entries, entry, add);
        }
        Ok(())
    }

    fn extreme(&self) -> Option<&(Vec<SortPart>, Ordered)> {
        if self.last {
            self.entries.keys().next_back()
        } else {
            self.entries.keys().next()
        }
    }
}

impl Accumulator for MultisetOrdered {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.apply(values, true)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.apply(values, false)
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        match self.extreme() {
            Some((_, value)) => Ok(value.0.clone()),
            None => ScalarValue::try_from(&self.data_type),
        }
    }

    fn size(&self) -> usize {
        size_of::<Self>()
            + self.entries.len()
                * (size_of::<Ordered>() + (1 + self.directions.len()) * size_of::<SortPart>() + 16)
    }

    /// The whole multiset as lists: the values, then one list per ORDER BY expression
    /// (entries repeated by their counts).
    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let mut values = Vec::new();
        let mut orders: Vec<Vec<ScalarValue>> = vec![Vec::new(); self.directions.len()];
        for ((key, value), &count) in &self.entries {
            for _ in 0..count {
                values.push(value.0.clone());
                for (column, part) in orders.iter_mut().zip(key) {
                    column.push(part.value.clone());
                }
            }
        }
        let mut state = vec![list_of(&values, &self.data_type)];
        for (column, data_type) in orders.iter().zip(&self.order_types) {
            state.push(list_of(column, data_type));
        }
        Ok(state)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        for_each_list_row(states, |columns| self.apply(columns, true))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn ordered(last: bool, descending: bool) -> MultisetOrdered {
        MultisetOrdered {
            entries: BTreeMap::new(),
            directions: vec![(descending, false)],
            order_types: vec![DataType::Int64],
            last,
            ignore_nulls: false,
            data_type: DataType::Utf8,
        }
    }

    fn rows(values: &[&str], ts: &[i64]) -> Vec<ArrayRef> {
        vec![
            Arc::new(StringArray::from(values.to_vec())),
            Arc::new(Int64Array::from(ts.to_vec())),
        ]
    }

    #[test]
    fn first_and_last_value_retract_to_the_next_in_order() {
        let mut first = ordered(false, false);
        let mut last = ordered(true, false);
        for acc in [&mut first, &mut last] {
            acc.update_batch(&rows(&["b", "a", "c"], &[20, 10, 30]))
                .unwrap();
        }
        assert_eq!(first.evaluate().unwrap(), ScalarValue::from("a"));
        assert_eq!(last.evaluate().unwrap(), ScalarValue::from("c"));
        first.retract_batch(&rows(&["a"], &[10])).unwrap();
        last.retract_batch(&rows(&["c"], &[30])).unwrap();
        assert_eq!(first.evaluate().unwrap(), ScalarValue::from("b"));
        assert_eq!(last.evaluate().unwrap(), ScalarValue::from("b"));
        first.retract_batch(&rows(&["b", "c"], &[20, 30])).unwrap();
        assert_eq!(first.evaluate().unwrap(), ScalarValue::Utf8(None));
        // Retracting a row that is not there changes nothing.
        last.retract_batch(&rows(&["zz"], &[99])).unwrap();
        assert_eq!(last.evaluate().unwrap(), ScalarValue::from("b"));
    }

    #[test]
    fn descending_order_reverses_first_and_last() {
        let mut first_desc = ordered(false, true);
        first_desc
            .update_batch(&rows(&["b", "a", "c"], &[20, 10, 30]))
            .unwrap();
        assert_eq!(first_desc.evaluate().unwrap(), ScalarValue::from("c"));
    }
}
