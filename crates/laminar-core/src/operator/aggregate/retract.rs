//! Accumulators that can retract rows, for aggregation over changelog input (SPEC 2.11).
//!
//! COUNT, SUM, AVG, the variance family and COUNT DISTINCT use DataFusion's own retracting
//! ("sliding") accumulators. DataFusion's sliding MIN/MAX assume rows leave in arrival order
//! (a moving window), which a changelog does not guarantee, so MIN and MAX keep an ordered
//! multiset of values here: retracting the current extreme yields the next one. Aggregates
//! without a retraction rule are refused, naming the function.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use arrow::array::ArrayRef;
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
            if add {
                *self.values.entry(value).or_insert(0) += 1;
            } else if let Some(count) = self.values.get_mut(&value) {
                *count -= 1;
                if *count == 0 {
                    self.values.remove(&value);
                }
            }
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

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.apply(&states[0], true)
    }
}
