//! Reading event time from Arrow batches.

use arrow::array::{Array, AsArray};
use arrow::compute::kernels::aggregate::max;
use arrow::datatypes::{
    DataType, Int64Type, Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow::record_batch::RecordBatch;

/// How an event-time column stores time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventTimeKind {
    /// `BIGINT` epoch milliseconds.
    EpochMillis,
    /// `TIMESTAMP` with the given unit.
    Timestamp(TimeUnit),
}

impl EventTimeKind {
    /// The kind for a data type, or `None` when the type cannot hold event time.
    pub fn for_type(data_type: &DataType) -> Option<EventTimeKind> {
        match data_type {
            DataType::Int64 => Some(EventTimeKind::EpochMillis),
            DataType::Timestamp(unit, _) => Some(EventTimeKind::Timestamp(*unit)),
            _ => None,
        }
    }

    /// Converts a raw column value to epoch milliseconds (flooring sub-millisecond units).
    pub fn to_millis(self, raw: i64) -> i64 {
        match self {
            EventTimeKind::EpochMillis | EventTimeKind::Timestamp(TimeUnit::Millisecond) => raw,
            EventTimeKind::Timestamp(TimeUnit::Second) => raw.saturating_mul(1000),
            EventTimeKind::Timestamp(TimeUnit::Microsecond) => raw.div_euclid(1000),
            EventTimeKind::Timestamp(TimeUnit::Nanosecond) => raw.div_euclid(1_000_000),
        }
    }

    /// Converts epoch milliseconds to a raw column value (saturating).
    pub fn from_millis(self, millis: i64) -> i64 {
        match self {
            EventTimeKind::EpochMillis | EventTimeKind::Timestamp(TimeUnit::Millisecond) => millis,
            EventTimeKind::Timestamp(TimeUnit::Second) => millis.div_euclid(1000),
            EventTimeKind::Timestamp(TimeUnit::Microsecond) => millis.saturating_mul(1000),
            EventTimeKind::Timestamp(TimeUnit::Nanosecond) => millis.saturating_mul(1_000_000),
        }
    }
}

/// The event-time column of a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTimeColumn {
    /// Column name.
    pub name: String,
    /// Storage kind.
    pub kind: EventTimeKind,
}

impl EventTimeColumn {
    /// Looks the column up in `schema`; the error says why it cannot be an event-time column.
    pub fn resolve(schema: &Schema, name: &str) -> Result<EventTimeColumn, String> {
        let (_, field) = schema
            .column_with_name(name)
            .ok_or_else(|| format!("column '{name}' does not exist"))?;
        let kind = EventTimeKind::for_type(field.data_type()).ok_or_else(|| {
            format!(
                "column '{name}' has type {} but an event-time column must be TIMESTAMP or BIGINT (epoch milliseconds)",
                field.data_type()
            )
        })?;
        Ok(EventTimeColumn {
            name: name.to_string(),
            kind,
        })
    }

    /// Checks that the column exists and holds no NULL (the cheap part of
    /// [`EventTimeColumn::max_millis`], for validation before enqueueing).
    pub fn check_not_null(&self, batch: &RecordBatch) -> Result<(), String> {
        let column = batch
            .column_by_name(&self.name)
            .ok_or_else(|| format!("batch has no event-time column '{}'", self.name))?;
        if column.null_count() > 0 {
            let row = (0..column.len()).find(|&i| column.is_null(i)).unwrap_or(0);
            return Err(format!(
                "NULL event time in column '{}' at row {row}",
                self.name
            ));
        }
        Ok(())
    }

    /// Maximum event time of the batch in epoch ms (`None` for an empty batch).
    ///
    /// Errors when the column is missing, has another type, or holds a NULL (NULL event time is
    /// a bad record, never silently windowed); the message names the first NULL row.
    pub fn max_millis(&self, batch: &RecordBatch) -> Result<Option<i64>, String> {
        self.check_not_null(batch)?;
        let column = batch
            .column_by_name(&self.name)
            .ok_or_else(|| format!("batch has no event-time column '{}'", self.name))?;
        let raw = match (self.kind, column.data_type()) {
            (EventTimeKind::EpochMillis, DataType::Int64) => {
                max(column.as_primitive::<Int64Type>())
            }
            (
                EventTimeKind::Timestamp(TimeUnit::Second),
                DataType::Timestamp(TimeUnit::Second, _),
            ) => max(column.as_primitive::<TimestampSecondType>()),
            (
                EventTimeKind::Timestamp(TimeUnit::Millisecond),
                DataType::Timestamp(TimeUnit::Millisecond, _),
            ) => max(column.as_primitive::<TimestampMillisecondType>()),
            (
                EventTimeKind::Timestamp(TimeUnit::Microsecond),
                DataType::Timestamp(TimeUnit::Microsecond, _),
            ) => max(column.as_primitive::<TimestampMicrosecondType>()),
            (
                EventTimeKind::Timestamp(TimeUnit::Nanosecond),
                DataType::Timestamp(TimeUnit::Nanosecond, _),
            ) => max(column.as_primitive::<TimestampNanosecondType>()),
            (_, other) => {
                return Err(format!(
                    "event-time column '{}' has type {other}, expected {:?}",
                    self.name, self.kind
                ));
            }
        };
        Ok(raw.map(|v| self.kind.to_millis(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, TimestampNanosecondArray};
    use arrow::datatypes::Field;
    use std::sync::Arc;

    fn batch(col: ArrayRef) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("ts", col.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![col]).unwrap()
    }

    #[test]
    fn max_of_millis_and_nanos() {
        let b = batch(Arc::new(Int64Array::from(vec![5, 9, 1])));
        let c = EventTimeColumn::resolve(&b.schema(), "ts").unwrap();
        assert_eq!(c.max_millis(&b).unwrap(), Some(9));
        let b = batch(Arc::new(TimestampNanosecondArray::from(vec![
            1_500_000, 2_999_999,
        ])));
        let c = EventTimeColumn::resolve(&b.schema(), "ts").unwrap();
        assert_eq!(c.max_millis(&b).unwrap(), Some(2));
    }

    #[test]
    fn null_event_time_is_an_error_naming_the_row() {
        let b = batch(Arc::new(Int64Array::from(vec![Some(1), None])));
        let c = EventTimeColumn::resolve(&b.schema(), "ts").unwrap();
        let err = c.max_millis(&b).unwrap_err();
        assert!(err.contains("row 1"), "{err}");
    }

    #[test]
    fn non_time_column_is_rejected() {
        let schema = Schema::new(vec![Field::new("ts", DataType::Utf8, true)]);
        let err = EventTimeColumn::resolve(&schema, "ts").unwrap_err();
        assert!(err.contains("TIMESTAMP or BIGINT"), "{err}");
    }
}
