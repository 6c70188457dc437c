//! `EXPLAIN`: the streaming operator graph of a plan as `plan_key, plan_value` rows.

use crate::plan::StreamPlan;

/// Rows describing a continuous query `name` planned as `plan`.
pub fn explain_stream(name: &str, plan: &StreamPlan) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    rows.push(("stream".to_string(), name.to_string()));
    let mut dag: Vec<String> = plan.relations();
    dag.sort();
    dag.dedup();
    rows.push(("dag".to_string(), format!("{} -> {name}", dag.join(", "))));
    // Stages run first, in the same node: their rows (all but the two above), prefixed
    // with the name the plan reads them by.
    for (input, stage) in plan.inputs.iter().zip(&plan.stages) {
        if let Some(stage) = stage {
            for (key, value) in explain_stream(name, stage).into_iter().skip(2) {
                rows.push((format!("{input}.{key}"), value));
            }
        }
    }
    for (i, (input, steps)) in plan.inputs.iter().zip(&plan.chain_descriptions).enumerate() {
        let chain = if steps.is_empty() {
            "pass-through".to_string()
        } else {
            steps.join(" -> ")
        };
        rows.push((format!("input_{}", i + 1), format!("{input}: {chain}")));
    }
    if let Some(j) = &plan.join {
        rows.push((
            "operator".to_string(),
            format!(
                "JoinOperator ({} step{}, left-deep in written order), state: {}",
                j.steps.len(),
                if j.steps.len() == 1 { "" } else { "s" },
                if j.steps.iter().all(|s| s.right_relation.is_none()) {
                    "none (lookups read the current table rows)"
                } else if j.updating {
                    "the current rows of each input, by key (an updating join emits a changelog)"
                } else {
                    "rows kept until the other input's watermark rules out further matches"
                }
            ),
        ));
        for (i, d) in j.step_descriptions.iter().enumerate() {
            let (key, text) = d.split_once(": ").unwrap_or(("", d));
            let key = if key.is_empty() {
                format!("join_step_{}", i + 1)
            } else {
                key.to_string()
            };
            rows.push((key, text.to_string()));
        }
        if !j.post_descriptions.is_empty() {
            rows.push(("after_join".to_string(), j.post_descriptions.join(" -> ")));
        }
    }
    if let Some(t) = &plan.topn {
        rows.push((
            "operator".to_string(),
            format!("TopNOperator: {}", t.description),
        ));
        if !t.post_descriptions.is_empty() {
            rows.push(("after_rank".to_string(), t.post_descriptions.join(" -> ")));
        }
    }
    if let Some(a) = &plan.analytic {
        rows.push((
            "operator".to_string(),
            format!("AnalyticOperator: {}", a.description),
        ));
        if !a.post_descriptions.is_empty() {
            rows.push(("after_window".to_string(), a.post_descriptions.join(" -> ")));
        }
    }
    match &plan.aggregate {
        None if plan.join.is_some() || plan.topn.is_some() || plan.analytic.is_some() => {}
        None => rows.push((
            "operator".to_string(),
            format!(
                "StatelessOperator (fused filter/projection, {} input{}), state: none",
                plan.inputs.len(),
                if plan.inputs.len() == 1 { "" } else { "s" }
            ),
        )),
        Some(a) => {
            rows.push((
                "operator".to_string(),
                format!(
                    "AggregateOperator ({} group key{}, {} aggregate{}), state: {}",
                    a.keys.len(),
                    if a.keys.len() == 1 { "" } else { "s" },
                    a.aggregates.len(),
                    if a.aggregates.len() == 1 { "" } else { "s" },
                    match a.window {
                        Some(w) if w.is_session() =>
                            "sessions per key, freed at W >= end + lateness",
                        Some(_) => "groups per open window, freed at W >= end + lateness",
                        None => "one entry per group (unbounded by time)",
                    }
                ),
            ));
            rows.push((
                "window".to_string(),
                match (&a.window, &a.window_text) {
                    (Some(w), Some(text)) => format!("{text} = {w:?}"),
                    _ => "none".to_string(),
                },
            ));
            rows.push(("lateness".to_string(), format!("{} ms", a.lateness)));
            if let Some((_, k)) = &a.keyed_watermark {
                rows.push((
                    "keyed_watermark".to_string(),
                    format!(
                        "{} - {} ms per key: each key's windows close by its own watermark",
                        k.column, k.delay_ms
                    ),
                ));
            }
            if let Some(late) = &a.late_data_to {
                rows.push(("late_data_to".to_string(), late.clone()));
            }
        }
    }
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
        match &plan.aggregate {
            None if plan.is_updating() => {
                "updating: changelog with _op, as each batch is processed".to_string()
            }
            None => "append-only, as each batch is processed".to_string(),
            Some(a) => format!(
                "{} ({})",
                a.emit_text,
                if plan.is_updating() {
                    "updating: changelog with _op"
                } else {
                    "append-only"
                }
            ),
        },
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
