//! When is a pipeline run over? `laminardb run` and the shell reading a script wait here
//! until every source has ended, a signal arrives, or the pipeline fails.
//!
//! A source with a connector has ended when the library says the whole pipeline finished
//! ([`LaminarDB::is_finished`]: every source ended and every sink committed) or when its
//! watermark reached the end of time (a finite source that ended stops holding the
//! pipeline back; this also covers pipelines that mix connector and push-only sources). A
//! source without a connector is fed only through the push API, which the CLI does not
//! expose: once the script has run, it can receive nothing more, so it counts as ended.

use std::time::Duration;

use arrow::array::{Array, StringArray};
use laminar_db::{ExecuteResult, LaminarDB};

use crate::signals::Signals;
use crate::units::END_OF_TIME;

/// How often the state is checked.
const POLL: Duration = Duration::from_millis(100);
/// How long to wait for queued rows to reach subscriptions and sinks at the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How the wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every source ended and the rows they produced reached subscriptions and sinks.
    Finished,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// Sources, operators or sinks failed.
    Failed(Vec<String>),
}

/// The sources of a pipeline whose end the CLI waits for.
#[derive(Debug)]
pub(crate) struct Completion {
    /// Sources reading a connector.
    connector_sources: Vec<String>,
}

impl Completion {
    /// Looks at the sources defined now (`DESCRIBE EXTENDED` names their connector).
    pub(crate) fn new(runtime: &tokio::runtime::Runtime, db: &LaminarDB) -> Self {
        let connector_sources = db
            .sources()
            .into_iter()
            .filter(|name| has_connector(runtime, db, name))
            .collect();
        Completion { connector_sources }
    }

    /// True when nothing more can arrive: see the module docs.
    pub(crate) fn sources_ended(&self, db: &LaminarDB) -> bool {
        db.is_finished()
            || self.connector_sources.iter().all(|name| {
                db.source_metrics(name)
                    .map_or(true, |m| m.watermark == Some(END_OF_TIME))
            })
    }

    /// Waits for the end of the run, calling `tick` about every 100 ms. On
    /// [`Outcome::Finished`] the queued rows have reached subscriptions and sinks.
    pub(crate) fn wait(
        &self,
        db: &LaminarDB,
        signals: &Signals,
        mut tick: impl FnMut(),
    ) -> Outcome {
        loop {
            let failures = db.failures();
            if !failures.is_empty() {
                return Outcome::Failed(failures);
            }
            if signals.received() {
                return Outcome::Interrupted;
            }
            if self.sources_ended(db) {
                db.wait_idle(DRAIN_TIMEOUT);
                return Outcome::Finished;
            }
            tick();
            std::thread::sleep(POLL);
        }
    }
}

/// Whether source `name` reads a connector (unknown: assumed yes, so the CLI waits).
fn has_connector(runtime: &tokio::runtime::Runtime, db: &LaminarDB, name: &str) -> bool {
    let sql = format!("DESCRIBE EXTENDED \"{}\"", name.replace('"', "\"\""));
    let Ok(ExecuteResult::Metadata(batch)) = runtime.block_on(db.execute(&sql)) else {
        return true;
    };
    let Some(column) = batch
        .column_by_name("connector")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
    else {
        return true;
    };
    column.is_empty() || column.is_valid(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_only_sources_count_as_ended() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let db = runtime
            .block_on(LaminarDB::builder().workers(1).build())
            .unwrap();
        runtime
            .block_on(db.execute(
                "CREATE SOURCE pushed (x BIGINT); \
                 CREATE SOURCE \"Gen\" (auction BIGINT) FROM DATAGEN (rate = '10')",
            ))
            .unwrap();
        runtime.block_on(db.start()).unwrap();
        let c = Completion::new(&runtime, &db);
        assert_eq!(c.connector_sources, vec!["Gen".to_string()]);
        assert!(!c.sources_ended(&db));
        db.shutdown_sync();
    }
}
