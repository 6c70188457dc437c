//! The built-in connectors by SQL name, and the functions that validate
//! options and build connectors from `FROM <C> (..)` / `INTO <C> (..)` clauses.
//!
//! Names are case-insensitive (`FILE` is an alias of `FILES`). All options are
//! validated when a connector is created, before any I/O except checking that
//! a read-once FILES source's path matches files: unknown keys get a "did you
//! mean", missing required keys and bad values name the connector and key.
//! A format can be given as the option `format = 'csv'` or as the separate
//! `format` argument (a `FORMAT CSV` clause); giving both with different
//! values is an error.

use arrow::datatypes::SchemaRef;

use crate::connector::{SinkConnector, SourceConnector};
use crate::error::ConnectorError;
use crate::format::FileFormat;
use crate::options::{ConnectorOptions, normalize_value};
use crate::sink::blackhole::BlackholeSink;
use crate::sink::files::{FilesSink, FilesSinkConfig};
use crate::sink::stdout::{StdoutFormat, StdoutSink};
use crate::source::RUNTIME_KEYS;
use crate::source::datagen::{DatagenConfig, DatagenSource};
use crate::source::files::{FilesSource, FilesSourceConfig};

/// Whether a connector produces or consumes data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorKind {
    /// Used in `CREATE SOURCE .. FROM`.
    Source,
    /// Used in `CREATE SINK .. INTO`.
    Sink,
}

/// One option a connector accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigKey {
    /// The key (normalized spelling).
    pub key: &'static str,
    /// Whether the connector cannot be created without it.
    pub required: bool,
    /// The default, as the user would write it.
    pub default: Option<&'static str>,
    /// One line for `SHOW CONNECTORS`-style listings and docs.
    pub description: &'static str,
}

/// A built-in connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorInfo {
    /// SQL name, upper case (`FILES`).
    pub name: &'static str,
    /// Human-readable name.
    pub display_name: &'static str,
    /// Source or sink.
    pub kind: ConnectorKind,
    /// Every option it accepts.
    pub config_keys: Vec<ConfigKey>,
    /// Options under this prefix (`kafka.`) are passed to the client library unchecked.
    pub passthrough_prefix: Option<&'static str>,
}

const FORMAT_IGNORED: ConfigKey = ConfigKey {
    key: "format",
    required: false,
    default: None,
    description: "accepted and ignored",
};

/// The built-in source connectors.
pub fn source_connectors() -> Vec<ConnectorInfo> {
    let with_runtime = |keys: &[ConfigKey]| keys.iter().chain(RUNTIME_KEYS).copied().collect();
    #[allow(unused_mut)]
    let mut connectors = vec![
        ConnectorInfo {
            name: "DATAGEN",
            display_name: "Nexmark-style data generator",
            kind: ConnectorKind::Source,
            config_keys: with_runtime(crate::source::datagen::CONFIG_KEYS),
            passthrough_prefix: None,
        },
        ConnectorInfo {
            name: "FILES",
            display_name: "Files (CSV, JSON lines, Parquet)",
            kind: ConnectorKind::Source,
            config_keys: with_runtime(crate::source::files::CONFIG_KEYS),
            passthrough_prefix: None,
        },
    ];
    #[cfg(feature = "kafka")]
    connectors.push(ConnectorInfo {
        name: "KAFKA",
        display_name: "Apache Kafka (JSON, CSV or raw messages)",
        kind: ConnectorKind::Source,
        config_keys: with_runtime(crate::kafka::SOURCE_KEYS),
        passthrough_prefix: Some(crate::kafka::PASSTHROUGH),
    });
    connectors
}

/// The built-in sink connectors.
pub fn sink_connectors() -> Vec<ConnectorInfo> {
    #[allow(unused_mut)]
    let mut connectors = vec![
        ConnectorInfo {
            name: "FILES",
            display_name: "Files (CSV, JSON lines, Parquet)",
            kind: ConnectorKind::Sink,
            config_keys: crate::sink::files::CONFIG_KEYS.to_vec(),
            passthrough_prefix: None,
        },
        ConnectorInfo {
            name: "STDOUT",
            display_name: "Standard output",
            kind: ConnectorKind::Sink,
            config_keys: crate::sink::stdout::CONFIG_KEYS.to_vec(),
            passthrough_prefix: None,
        },
        ConnectorInfo {
            name: "BLACKHOLE",
            display_name: "Discard (benchmarking)",
            kind: ConnectorKind::Sink,
            config_keys: vec![FORMAT_IGNORED],
            passthrough_prefix: None,
        },
    ];
    #[cfg(feature = "kafka")]
    connectors.push(ConnectorInfo {
        name: "KAFKA",
        display_name: "Apache Kafka (JSON, CSV or raw messages, at-least-once)",
        kind: ConnectorKind::Sink,
        config_keys: crate::kafka::SINK_KEYS.to_vec(),
        passthrough_prefix: Some(crate::kafka::PASSTHROUGH),
    });
    connectors
}

/// Finds a connector by SQL name (case-insensitive, `FILE` = `FILES`).
fn lookup(name: &str, connectors: Vec<ConnectorInfo>) -> Result<ConnectorInfo, ConnectorError> {
    let wanted = match name.trim().to_ascii_uppercase().replace('-', "_").as_str() {
        "FILE" => "FILES".to_string(),
        other => other.to_string(),
    };
    let valid: Vec<String> = connectors.iter().map(|c| c.name.to_string()).collect();
    connectors
        .into_iter()
        .find(|c| c.name == wanted)
        .ok_or_else(|| ConnectorError::UnknownConnector {
            name: name.to_string(),
            valid,
        })
}

/// Checks keys (unknown, missing required) after merging the `format`
/// argument into the options; returns the merged options.
fn check_options(
    info: &ConnectorInfo,
    options: &ConnectorOptions,
    format: Option<&str>,
) -> Result<ConnectorOptions, ConnectorError> {
    let mut merged = options.clone();
    if let Some(arg) = format {
        if !info.config_keys.iter().any(|k| k.key == "format") {
            return Err(ConnectorError::InvalidOption {
                connector: info.name.to_string(),
                key: "format".to_string(),
                value: arg.to_string(),
                reason: format!(
                    "{} produces typed columns; FORMAT does not apply",
                    info.name
                ),
            });
        }
        match options.get_str("format") {
            Some(opt) if normalize_value(opt) != normalize_value(arg) => {
                return Err(ConnectorError::InvalidOption {
                    connector: info.name.to_string(),
                    key: "format".to_string(),
                    value: opt.to_string(),
                    reason: format!("conflicts with FORMAT {arg}"),
                });
            }
            _ => {
                merged.insert("format", arg);
            }
        }
    }
    let keys: Vec<&str> = info.config_keys.iter().map(|k| k.key).collect();
    let mut checked = merged.clone();
    if let Some(prefix) = info.passthrough_prefix {
        let passthrough: Vec<String> = checked
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.to_string())
            .collect();
        for key in passthrough {
            checked.remove(&key);
        }
    }
    checked.check_known(info.name, &keys)?;
    if let Some(missing) = info
        .config_keys
        .iter()
        .find(|k| k.required && !merged.contains(k.key))
    {
        return Err(ConnectorError::MissingOption {
            connector: info.name.to_string(),
            key: missing.key.to_string(),
        });
    }
    Ok(merged)
}

/// Parses the FILES `format` option.
fn file_format(
    connector: &str,
    options: &ConnectorOptions,
) -> Result<Option<FileFormat>, ConnectorError> {
    let Some(name) = options.get_str("format") else {
        return Ok(None);
    };
    FileFormat::parse(name)
        .map(Some)
        .ok_or_else(|| ConnectorError::InvalidOption {
            connector: connector.to_string(),
            key: "format".to_string(),
            value: name.to_string(),
            reason: format!("expected one of: {}", FileFormat::NAMES.join(", ")),
        })
}

enum SourceConfig {
    Datagen(DatagenConfig),
    Files(FilesSourceConfig),
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka::KafkaSourceConfig),
}

fn source_config(
    connector: &str,
    options: &ConnectorOptions,
    format: Option<&str>,
) -> Result<SourceConfig, ConnectorError> {
    let info = lookup(connector, source_connectors())?;
    let options = check_options(&info, options, format)?;
    Ok(match info.name {
        "DATAGEN" => SourceConfig::Datagen(DatagenConfig::from_options(&options)?),
        #[cfg(feature = "kafka")]
        "KAFKA" => SourceConfig::Kafka(crate::kafka::KafkaSourceConfig::from_options(&options)?),
        _ => SourceConfig::Files(FilesSourceConfig::from_options(
            &options,
            file_format(info.name, &options)?,
        )?),
    })
}

/// Validates a source clause without opening anything.
pub fn validate_source(
    connector: &str,
    options: &ConnectorOptions,
    format: Option<&str>,
) -> Result<(), ConnectorError> {
    source_config(connector, options, format).map(|_| ())
}

/// Builds a source. `declared` is the `CREATE SOURCE` column list; every batch
/// the source returns has exactly this schema. An empty `declared` asks the
/// connector for its own schema (DATAGEN's table, a FILES file's columns).
pub fn create_source(
    connector: &str,
    options: &ConnectorOptions,
    format: Option<&str>,
    declared: SchemaRef,
) -> Result<Box<dyn SourceConnector>, ConnectorError> {
    Ok(match source_config(connector, options, format)? {
        SourceConfig::Datagen(c) => Box::new(DatagenSource::new(c, declared)?),
        SourceConfig::Files(c) => Box::new(FilesSource::open(c, declared)?),
        #[cfg(feature = "kafka")]
        SourceConfig::Kafka(c) => Box::new(crate::kafka::KafkaSource::open(c, declared)?),
    })
}

enum SinkConfig {
    Files(FilesSinkConfig),
    Stdout(StdoutFormat),
    Blackhole,
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka::KafkaSinkConfig),
}

fn sink_config(
    connector: &str,
    options: &ConnectorOptions,
    format: Option<&str>,
    input_schema: &SchemaRef,
) -> Result<SinkConfig, ConnectorError> {
    let info = lookup(connector, sink_connectors())?;
    let options = check_options(&info, options, format)?;
    Ok(match info.name {
        "FILES" => SinkConfig::Files(FilesSinkConfig::from_options(
            &options,
            file_format(info.name, &options)?,
            input_schema,
        )?),
        "STDOUT" => SinkConfig::Stdout(StdoutFormat::parse(options.get_str("format"))?),
        #[cfg(feature = "kafka")]
        "KAFKA" => SinkConfig::Kafka(crate::kafka::KafkaSinkConfig::from_options(
            &options,
            input_schema,
        )?),
        _ => SinkConfig::Blackhole,
    })
}

/// Whether a sink clause takes an updating (changelog) input: `KAFKA` in the `debezium`
/// format or with `upsert = 'true'`, `FILES` with `changelog = 'true'` (the `_op` column is
/// written with each row), and `BLACKHOLE`. Errors like [`validate_sink`].
pub fn sink_accepts_changelog(
    connector: &str,
    options: &ConnectorOptions,
    format: Option<&str>,
    input_schema: &SchemaRef,
) -> Result<bool, ConnectorError> {
    Ok(
        match sink_config(connector, options, format, input_schema)? {
            SinkConfig::Files(c) => c.changelog,
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(c) => c.accepts_changelog(),
            // It discards every row, changes included.
            SinkConfig::Blackhole => true,
            SinkConfig::Stdout(_) => false,
        },
    )
}

/// Validates a sink clause without creating files.
pub fn validate_sink(
    connector: &str,
    options: &ConnectorOptions,
    format: Option<&str>,
    input_schema: &SchemaRef,
) -> Result<(), ConnectorError> {
    sink_config(connector, options, format, input_schema).map(|_| ())
}

/// Builds a sink for batches of `input_schema`.
pub fn create_sink(
    connector: &str,
    options: &ConnectorOptions,
    format: Option<&str>,
    input_schema: SchemaRef,
) -> Result<Box<dyn SinkConnector>, ConnectorError> {
    Ok(
        match sink_config(connector, options, format, &input_schema)? {
            SinkConfig::Files(c) => Box::new(FilesSink::open(c, input_schema)?),
            SinkConfig::Stdout(f) => Box::new(StdoutSink::new(f)),
            SinkConfig::Blackhole => Box::new(BlackholeSink::new()),
            #[cfg(feature = "kafka")]
            SinkConfig::Kafka(c) => Box::new(crate::kafka::KafkaSink::open(c, &input_schema)?),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::SourcePoll;
    use arrow::array::RecordBatch;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn opts(pairs: &[(&str, &str)]) -> ConnectorOptions {
        ConnectorOptions::from_pairs(pairs.iter().copied())
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            "auction",
            DataType::Int64,
            false,
        )]))
    }

    #[test]
    fn unknown_connector_lists_valid_ones() {
        let e = create_source("kafkaa", &opts(&[]), None, schema())
            .err()
            .unwrap();
        let valid = if cfg!(feature = "kafka") {
            "DATAGEN, FILES, KAFKA"
        } else {
            "DATAGEN, FILES"
        };
        assert_eq!(
            e.to_string(),
            format!("unknown connector 'kafkaa'; valid connectors: {valid}")
        );
        let e = create_sink("nowhere", &opts(&[]), None, schema())
            .err()
            .unwrap();
        assert!(e.to_string().contains("FILES, STDOUT, BLACKHOLE"), "{e}");
    }

    #[test]
    fn unknown_option_gets_did_you_mean() {
        let e = validate_source("datagen", &opts(&[("evnets", "5")]), None).unwrap_err();
        match &e {
            ConnectorError::UnknownOption {
                suggestion, valid, ..
            } => {
                assert_eq!(suggestion.as_deref(), Some("events"));
                assert!(valid.iter().any(|k| k == "batch.size"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("did you mean 'events'?"), "{e}");
        let e = validate_sink(
            "FILES",
            &opts(&[("path", "x"), ("format", "csv"), ("rollover_sise", "1")]),
            None,
            &schema(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("did you mean 'rollover.size'?"),
            "{e}"
        );
    }

    #[test]
    fn names_are_case_insensitive_and_file_is_an_alias() {
        let mut s = create_source(
            "DataGen",
            &opts(&[("events", "3"), ("Batch.Size", "2")]),
            None,
            schema(),
        )
        .unwrap();
        let SourcePoll::Batch(b) = s.poll_batch(100).unwrap() else {
            panic!("expected a batch")
        };
        assert_eq!(b.num_rows(), 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let mut sink =
            create_sink("file", &opts(&[("path", path)]), Some("CSV"), schema()).unwrap();
        sink.write_batch(&b).unwrap();
        sink.close().unwrap();
        let mut src =
            create_source("FILES", &opts(&[("PATH", path)]), Some("csv"), schema()).unwrap();
        let SourcePoll::Batch(back) = src.poll_batch(100).unwrap() else {
            panic!("expected a batch")
        };
        assert_eq!(back, b);
    }

    #[test]
    fn format_argument_and_option_must_agree() {
        let o = opts(&[("path", "x"), ("format", "json")]);
        let e = validate_sink("FILES", &o, Some("csv"), &schema()).unwrap_err();
        assert!(e.to_string().contains("conflicts with FORMAT csv"), "{e}");
        assert!(validate_sink("FILES", &o, Some("JSON"), &schema()).is_ok());
        let e = validate_sink("FILES", &opts(&[("path", "x")]), None, &schema()).unwrap_err();
        assert_eq!(e.to_string(), "connector FILES requires option 'format'");
        let e = validate_sink(
            "FILES",
            &opts(&[("path", "x"), ("format", "avro")]),
            None,
            &schema(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("csv, json, parquet"), "{e}");
        let e = validate_source("DATAGEN", &opts(&[]), Some("json")).unwrap_err();
        assert!(e.to_string().contains("FORMAT does not apply"), "{e}");
        assert!(validate_sink("BLACKHOLE", &opts(&[]), Some("json"), &schema()).is_ok());
        let e = validate_sink("STDOUT", &opts(&[("format", "xml")]), None, &schema()).unwrap_err();
        assert!(e.to_string().contains("table, json, csv"), "{e}");
    }

    #[test]
    fn missing_required_and_bad_values() {
        let e = validate_source("FILES", &opts(&[]), None).unwrap_err();
        assert_eq!(e.to_string(), "connector FILES requires option 'path'");
        let e = validate_source(
            "FILES",
            &opts(&[("path", "x"), ("watch", "sometimes")]),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("'watch'"), "{e}");
        let e = validate_source(
            "FILES",
            &opts(&[("path", "x"), ("error.policy", "dlq")]),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, ConnectorError::Unsupported(_)));
        assert!(
            validate_source(
                "FILES",
                &opts(&[("path", "x"), ("watermark.idle_timeout", "5s")]),
                None
            )
            .is_ok()
        );
        let e = create_source(
            "FILES",
            &opts(&[("path", "/definitely/not/here.csv")]),
            None,
            schema(),
        )
        .err()
        .unwrap();
        assert!(matches!(e, ConnectorError::Io { .. }), "{e}");
    }

    #[test]
    fn registry_lists_keys() {
        let files = source_connectors()
            .into_iter()
            .find(|c| c.name == "FILES")
            .unwrap();
        assert!(
            files
                .config_keys
                .iter()
                .any(|k| k.key == "path" && k.required)
        );
        let sinks = if cfg!(feature = "kafka") { 4 } else { 3 };
        assert_eq!(sink_connectors().len(), sinks);
        let _ = RecordBatch::new_empty(schema());
    }
}
