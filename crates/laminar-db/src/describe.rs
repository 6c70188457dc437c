//! `DESCRIBE [EXTENDED]` and `EXPLAIN [ANALYZE]` results.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{ArrayRef, BooleanArray, StringArray};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use laminar_sql::SqlError;
use laminar_sql::explain::{explain_stream, schema_text};
use laminar_sql::parser::{ConnectorSpec, SinkInput, StreamingStatement};
use laminar_sql::plan::SchemaCatalog;

use crate::db::LaminarDB;
use crate::error::DbError;
use crate::execute::batch;

/// Keys whose values are secrets (SPEC 5.12).
const SECRET_KEYS: [&str; 10] = [
    "password",
    "secret",
    "token",
    "account_key",
    "private_key",
    "sas_token",
    "session_token",
    "client_secret",
    "service_account_key",
    "basic.auth.user.info",
];

/// `NAME (k = 'v', ...)` with secret values masked.
pub(crate) fn describe_connector(spec: &ConnectorSpec) -> String {
    let options = spec
        .options
        .iter()
        .map(|(k, v)| {
            let lower = k.to_lowercase();
            let value = if SECRET_KEYS.iter().any(|s| lower.contains(s)) {
                "***".to_string()
            } else {
                mask_url_userinfo(v)
            };
            format!("{k} = '{value}'")
        })
        .collect::<Vec<_>>();
    if options.is_empty() {
        spec.name.clone()
    } else {
        format!("{} ({})", spec.name, options.join(", "))
    }
}

/// Replaces the `user:pass@` part of every URL in `v` with `***@`.
fn mask_url_userinfo(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(scheme_end) = rest.find("://") {
        out.push_str(&rest[..scheme_end + 3]);
        rest = &rest[scheme_end + 3..];
        let authority_end = rest
            .find(['/', '\'', ' ', '"', ',', ')'])
            .unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            out.push_str("***@");
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn pairs(rows: Vec<(String, String)>) -> Result<RecordBatch, DbError> {
    let (keys, values): (Vec<String>, Vec<String>) = rows.into_iter().unzip();
    batch(
        &[("plan_key", DataType::Utf8), ("plan_value", DataType::Utf8)],
        vec![
            Arc::new(StringArray::from(keys)),
            Arc::new(StringArray::from(values)),
        ],
    )
}

impl LaminarDB {
    pub(crate) fn describe(&self, name: &str, extended: bool) -> Result<RecordBatch, DbError> {
        let catalog = self.inner.catalog.read();
        let (schema, watermark, connector, sql, spec) = if let Some(s) = catalog.sources.get(name) {
            (
                s.schema.clone(),
                s.watermark
                    .as_ref()
                    .map(|w| format!("{} AS {}", w.column, w.expression)),
                s.connector.as_ref().map(|c| match &s.format {
                    Some(f) => {
                        format!("{} FORMAT {}", describe_connector(c), f.name.to_uppercase())
                    }
                    None => describe_connector(c),
                }),
                s.sql.clone(),
                s.connector.as_ref(),
            )
        } else if let Some(s) = catalog.streams.get(name).filter(|s| s.query_id.is_none()) {
            (
                s.plan.output_schema.clone(),
                s.plan
                    .event_time
                    .as_ref()
                    .map(|c| format!("{c} (from inputs)")),
                None,
                s.sql.clone(),
                None,
            )
        } else if let Some(s) = catalog.sinks.get(name) {
            let schema = s
                .node
                .as_ref()
                .map(|n| n.schema())
                .or_else(|| catalog.relation(&s.input).map(|r| r.schema))
                .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty()));
            (
                schema,
                None,
                s.connector.as_ref().map(describe_connector),
                s.sql.clone(),
                s.connector.as_ref(),
            )
        } else if let Some(t) = catalog.tables.get(name) {
            (t.store.schema().clone(), None, None, t.sql.clone(), None)
        } else {
            return Err(DbError::NotFound {
                kind: "object",
                name: name.to_string(),
                suggestion: laminar_sql::did_you_mean(
                    name,
                    catalog.names().iter().map(String::as_str),
                ),
            });
        };
        let emit = catalog
            .streams
            .get(name)
            .and_then(|s| {
                s.plan.aggregate.as_ref().map(|a| {
                    format!(
                        "{} ({})",
                        a.emit_text,
                        if s.plan.is_updating() {
                            "updating: changelog with _op"
                        } else {
                            "append-only"
                        }
                    )
                })
            })
            .unwrap_or_else(|| "append-only".to_string());
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let types: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| f.data_type().to_string())
            .collect();
        let nullable: Vec<bool> = schema.fields().iter().map(|f| f.is_nullable()).collect();
        let mut fields = vec![
            ("column_name", DataType::Utf8),
            ("data_type", DataType::Utf8),
            ("nullable", DataType::Boolean),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(names.clone())),
            Arc::new(StringArray::from(types)),
            Arc::new(BooleanArray::from(nullable)),
        ];
        if extended {
            let n = names.len();
            let repeat = |v: Option<String>| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
            fields.extend([
                ("watermark", DataType::Utf8),
                ("emit", DataType::Utf8),
                ("connector", DataType::Utf8),
                ("sql", DataType::Utf8),
            ]);
            columns.extend([
                repeat(watermark),
                repeat(Some(emit)),
                repeat(connector),
                repeat(Some(mask_statement(&sql, spec))),
            ]);
        }
        batch(&fields, columns)
    }

    pub(crate) fn explain(
        &self,
        statement: StreamingStatement,
        analyze: bool,
    ) -> Result<RecordBatch, DbError> {
        if analyze {
            let name = match &statement {
                StreamingStatement::Query { query, .. } => query.to_string().trim().to_string(),
                StreamingStatement::Describe { name, .. } => name.clone(),
                _ => String::new(),
            };
            return self.explain_analyze(&name);
        }
        let rows = match statement {
            StreamingStatement::CreateStream(c) => {
                let settings = crate::views::view_settings(c.materialized, &c.name, &c.options)?;
                let clauses = laminar_sql::parser::StreamingClauses {
                    state_ttl_ms: settings.state_ttl_ms,
                    max_partitions: settings.max_partitions,
                    ..c.clauses.clone()
                };
                let plan = self.plan(&c.query, &clauses)?;
                self.with_parallelism(explain_stream(&c.name, &plan), &plan)
            }
            StreamingStatement::Query { query, clauses } => {
                let point = self.point_query(&query, &clauses);
                if let Some(point) = point {
                    return pairs(point.explain());
                }
                let plan = self.plan(&query, &clauses)?;
                self.with_parallelism(explain_stream("query", &plan), &plan)
            }
            StreamingStatement::CreateSource(c) => {
                let schema = self.inner.planner.build_schema(&c.columns)?;
                let mut rows: Vec<(String, String)> = vec![
                    ("source".into(), c.name.clone()),
                    ("schema".into(), schema_text(&Arc::new(schema))),
                    (
                        "watermark".into(),
                        c.watermark
                            .as_ref()
                            .map(|w| {
                                format!(
                                    "{} - {} ms (bounded out-of-orderness)",
                                    w.column, w.delay_ms
                                )
                            })
                            .unwrap_or_else(|| "none".into()),
                    ),
                ];
                let connector_options = c.connector.iter().flat_map(|spec| spec.options.iter());
                for (key, value) in c.options.iter().chain(connector_options) {
                    let k = crate::execute::normalized_option(key);
                    if crate::execute::is_time_option(&k) {
                        rows.push((k, value.clone()));
                    }
                }
                if crate::execute::reads_files(&c)
                    && c.watermark.is_some()
                    && !rows.iter().any(|(k, _)| k == "alignment.group")
                {
                    rows.push((
                        "alignment.group".into(),
                        format!(
                            "{} (max_drift 10 s, pause: FILES sources replay in event-time alignment)",
                            crate::execute::FILES_ALIGNMENT_GROUP
                        ),
                    ));
                }
                rows.push((
                    "connector".into(),
                    c.connector
                        .as_ref()
                        .map(describe_connector)
                        .unwrap_or_else(|| "push API (embedded)".into()),
                ));
                rows
            }
            StreamingStatement::CreateSink(c) => {
                let input = match &c.input {
                    SinkInput::Object(n) => n.clone(),
                    SinkInput::Query(q) => format!("({q})"),
                };
                vec![
                    ("sink".into(), c.name.clone()),
                    ("dag".into(), format!("{input} -> {}", c.name)),
                    (
                        "filter".into(),
                        c.filter
                            .as_ref()
                            .map(|f| f.to_string())
                            .unwrap_or_else(|| "none".into()),
                    ),
                    (
                        "connector".into(),
                        c.connector
                            .as_ref()
                            .map(describe_connector)
                            .unwrap_or_else(|| "in-memory endpoint".into()),
                    ),
                ]
            }
            other => vec![("statement".into(), other.statement_type().to_string())],
        };
        pairs(rows)
    }

    /// Adds the parallelism of an aggregation, top-N or analytic query (after its
    /// `operator` row) when it runs as several instances.
    fn with_parallelism(
        &self,
        mut rows: Vec<(String, String)>,
        plan: &laminar_sql::StreamPlan,
    ) -> Vec<(String, String)> {
        let instances = crate::execute::parallel_instances(plan, self.inner.runtime.workers());
        if let (true, Some(partitioning)) = (instances > 1, crate::execute::partition_keys(plan)) {
            let key = partitioning.key;
            let at = rows
                .iter()
                .position(|(k, _)| k == "operator")
                .map_or(rows.len(), |i| i + 1);
            rows.insert(
                at,
                (
                    "parallelism".into(),
                    format!(
                        "{instances} instances (one per worker) behind a hash exchange on the {key}; outputs merged",
                    ),
                ),
            );
        }
        rows
    }

    fn explain_analyze(&self, name: &str) -> Result<RecordBatch, DbError> {
        let catalog = self.inner.catalog.read();
        let Some(stream) = catalog.streams.get(name) else {
            return Err(SqlError::Invalid(format!(
                "EXPLAIN ANALYZE takes the name of a running stream; '{name}' is not one"
            ))
            .into());
        };
        let mut rows = Vec::new();
        for input in &stream.plan.relations() {
            if let Some(node) = catalog.relation_node(input) {
                rows.push((
                    format!("input {input}"),
                    format!(
                        "rows_out={} watermark={}",
                        node.metrics.rows_out.load(Ordering::Relaxed),
                        node.output_watermark()
                            .map_or("none".into(), |w| w.to_string())
                    ),
                ));
            }
        }
        let mut size = stream.state_size();
        if let Some(view) = &stream.view {
            let held = view.node.state_size();
            size.rows -= held.rows;
            size.bytes -= held.bytes;
        }
        for (index, (_, metrics)) in stream.exchanges.iter().enumerate() {
            rows.push((
                match stream.exchanges.len() {
                    1 => format!("exchange {}", stream.name),
                    _ => format!("exchange {} (input {index})", stream.name),
                },
                format!(
                    "hash exchange rows_in={} rows_routed={}",
                    metrics.rows_in.load(Ordering::Relaxed),
                    metrics.rows_out.load(Ordering::Relaxed)
                ),
            ));
        }
        for (index, (node, metrics)) in stream.instances.iter().enumerate() {
            let size = node.state_size();
            rows.push((
                format!("instance {}[{index}]", stream.name),
                format!(
                    "{} rows_in={} rows_out={} state_rows={} state_bytes={}",
                    operator_kinds(&stream.plan),
                    metrics.rows_in.load(Ordering::Relaxed),
                    metrics.rows_out.load(Ordering::Relaxed),
                    size.rows,
                    size.bytes
                ),
            ));
        }
        rows.push((
            format!("operator {}", stream.name),
            format!(
                "{} rows_in={} rows_out={} state_rows={} state_bytes={} watermark={}",
                match stream.instances.len() {
                    0 => operator_kinds(&stream.plan),
                    n => format!("{} x{n} (merged)", operator_kinds(&stream.plan)),
                },
                stream.rows_in(),
                stream.metrics.rows_out.load(Ordering::Relaxed),
                size.rows,
                size.bytes,
                stream
                    .node
                    .output_watermark()
                    .map_or("none".into(), |w| w.to_string())
            ),
        ));
        if let Some(view) = &stream.view {
            let size = view.store.size();
            let schema = view.store.schema();
            let key = view.store.key_columns().map_or("none".to_string(), |key| {
                let names: Vec<&str> = key
                    .iter()
                    .map(|&i| schema.field(i).name().as_str())
                    .collect();
                format!("({})", names.join(", "))
            });
            let (key_reads, full_reads) = view.store.reads();
            rows.push((
                format!("view {}", stream.name),
                format!(
                    "ViewOperator rows_in={} view_rows={} state_bytes={} key={key} key_reads={key_reads} full_reads={full_reads} watermark={}",
                    view.metrics.rows_in.load(Ordering::Relaxed),
                    size.rows,
                    size.bytes,
                    view.node
                        .output_watermark()
                        .map_or("none".into(), |w| w.to_string())
                ),
            ));
        }
        for sink in catalog.sinks.values().filter(|s| s.input == name) {
            rows.push((
                format!("sink {}", sink.name),
                format!(
                    "rows_in={} rows_written={}",
                    sink.metrics.rows_in.load(Ordering::Relaxed),
                    sink.runner.connector_metrics().records_written
                ),
            ));
        }
        pairs(rows)
    }
}

/// An object's SQL with URL credentials and secret option values masked.
fn mask_statement(sql: &str, connector: Option<&ConnectorSpec>) -> String {
    let mut masked = mask_url_userinfo(sql);
    if let Some(spec) = connector {
        for (k, v) in &spec.options {
            let lower = k.to_lowercase();
            if SECRET_KEYS.iter().any(|s| lower.contains(s)) && !v.is_empty() {
                masked = masked.replace(v.as_str(), "***");
            }
        }
    }
    masked
}

/// The operators running a plan, its stages' first (`JoinOperator -> AggregateOperator`;
/// `[AggregateOperator, AggregateOperator] -> JoinOperator` for two stages).
fn operator_kinds(plan: &laminar_sql::StreamPlan) -> String {
    let own = if plan.aggregate.is_some() {
        "AggregateOperator"
    } else if plan.join.is_some() {
        "JoinOperator"
    } else if plan.topn.is_some() {
        "TopNOperator"
    } else if plan.analytic.is_some() {
        "AnalyticOperator"
    } else {
        "StatelessOperator"
    };
    let below: Vec<String> = plan.stages.iter().flatten().map(operator_kinds).collect();
    match below.len() {
        0 => own.to_string(),
        1 => format!("{} -> {own}", below[0]),
        _ => format!("[{}] -> {own}", below.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::mask_url_userinfo;

    #[test]
    fn url_credentials_are_masked() {
        assert_eq!(
            mask_url_userinfo("x = 's3://key:secret@bucket/path', y = 'http://h:1/a'"),
            "x = 's3://***@bucket/path', y = 'http://h:1/a'"
        );
        assert_eq!(mask_url_userinfo("no url"), "no url");
    }
}
