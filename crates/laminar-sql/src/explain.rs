//! `EXPLAIN`: the streaming operator graph of a plan as `plan_key, plan_value` rows.

use crate::plan::StreamPlan;

/// Rows describing a continuous query `name` planned as `plan`.
pub fn explain_stream(name: &str, plan: &StreamPlan) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    rows.push(("stream".to_string(), name.to_string()));
    let mut dag: Vec<String> = plan.inputs.clone();
    dag.sort();
    dag.dedup();
    rows.push(("dag".to_string(), format!("{} -> {name}", dag.join(", "))));
    for (i, (input, steps)) in plan.inputs.iter().zip(&plan.chain_descriptions).enumerate() {
        let chain = if steps.is_empty() {
            "pass-through".to_string()
        } else {
            steps.join(" -> ")
        };
        rows.push((format!("input_{}", i + 1), format!("{input}: {chain}")));
    }
    rows.push((
        "operator".to_string(),
        format!(
            "StatelessOperator (fused filter/projection, {} input{}), state: none",
            plan.inputs.len(),
            if plan.inputs.len() == 1 { "" } else { "s" }
        ),
    ));
    rows.push((
        "output_schema".to_string(),
        schema_text(&plan.output_schema),
    ));
    rows.push((
        "event_time".to_string(),
        plan.event_time
            .clone()
            .unwrap_or_else(|| "none".to_string()),
    ));
    rows.push((
        "emit".to_string(),
        "append-only, as each batch is processed".to_string(),
    ));
    rows
}

/// `name TYPE [NOT NULL], ...` for a schema.
pub fn schema_text(schema: &arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "{} {}{}",
                f.name(),
                f.data_type(),
                if f.is_nullable() { "" } else { " NOT NULL" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
