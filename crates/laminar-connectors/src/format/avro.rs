//! Avro with the Confluent wire format (`0x00`, a 4-byte big-endian schema id, the Avro
//! body) and a Schema Registry client (cargo feature `kafka`).
//!
//! Decoding looks the writer schema up by id (cached) and decodes the bodies straight into
//! Arrow columns with arrow-avro ([`NativeDecoder`]), taking the declared columns by name
//! and casting them to the declared types. Where that mapping fails (a type arrow-avro
//! decodes differently from the declared column), the message is read into Avro values and
//! handed on as a JSON object to the JSON decoder instead (records as structs, arrays as
//! lists, maps as maps, unions as their branch).
//! Encoding derives an Avro record schema from the Arrow schema, registers it under the
//! subject (checking compatibility first), and writes each row through the same JSON form.
//! The registry speaks the Confluent REST API over HTTP or HTTPS, with optional basic
//! authentication (`user:password`, never shown in errors).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema as AvroSchema;
use apache_avro::types::Value as AvroValue;
use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::error::ConnectorError;

/// The first byte of a Confluent-framed message.
const MAGIC: u8 = 0;

fn avro_error(context: impl Into<String>, reason: impl std::fmt::Display) -> ConnectorError {
    ConnectorError::Kafka {
        context: format!("Avro: {}", context.into()),
        reason: reason.to_string(),
    }
}

/// A Schema Registry client with a cache of schemas by id.
pub(crate) struct SchemaRegistry {
    url: String,
    /// `Authorization` header value, when credentials are configured.
    auth: Option<String>,
    agent: ureq::Agent,
    by_id: HashMap<u32, Arc<AvroSchema>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Standard base64 (for the basic-authentication header).
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl SchemaRegistry {
    /// A client of the registry at `url`; `user_info` is `user:password`.
    pub(crate) fn new(url: &str, user_info: Option<&str>) -> SchemaRegistry {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        SchemaRegistry {
            url: url.trim_end_matches('/').to_string(),
            auth: user_info.map(|u| format!("Basic {}", base64(u.as_bytes()))),
            agent,
            by_id: HashMap::new(),
        }
    }

    /// Sends a request; returns the status and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), ConnectorError> {
        let url = format!("{}{path}", self.url);
        let context = format!("schema registry {method} {url}");
        let content = "application/vnd.schemaregistry.v1+json";
        let result = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url).header("Accept", content);
                if let Some(a) = &self.auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, body) => {
                let text = body.map(|b| b.to_string()).unwrap_or_default();
                let mut r = if method == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                }
                .header("Content-Type", content)
                .header("Accept", content);
                if let Some(a) = &self.auth {
                    r = r.header("Authorization", a);
                }
                r.send(text)
            }
        };
        let mut response = result.map_err(|e| avro_error(&context, e))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| avro_error(&context, e))?;
        let value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)
                .map_err(|e| avro_error(&context, format!("not JSON ({e}): {text}")))?
        };
        Ok((status, value))
    }

    fn failed(context: &str, status: u16, body: &serde_json::Value) -> ConnectorError {
        let message = body
            .get("message")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| body.to_string(), str::to_string);
        avro_error(context, format!("HTTP {status}: {message}"))
    }

    fn parse_schema(context: &str, body: &serde_json::Value) -> Result<AvroSchema, ConnectorError> {
        let text = body
            .get("schema")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| avro_error(context, "the answer holds no schema"))?;
        AvroSchema::parse_str(text).map_err(|e| avro_error(context, format!("bad schema: {e}")))
    }

    /// The schema registered under `id` (cached).
    pub(crate) fn schema_by_id(&mut self, id: u32) -> Result<Arc<AvroSchema>, ConnectorError> {
        if let Some(schema) = self.by_id.get(&id) {
            return Ok(schema.clone());
        }
        let context = format!("schema id {id}");
        let (status, body) = self.request("GET", &format!("/schemas/ids/{id}"), None)?;
        if status != 200 {
            return Err(Self::failed(&context, status, &body));
        }
        let schema = Arc::new(Self::parse_schema(&context, &body)?);
        self.by_id.insert(id, schema.clone());
        Ok(schema)
    }

    /// The latest schema of `subject` and its id.
    pub(crate) fn latest(
        &mut self,
        subject: &str,
    ) -> Result<(u32, Arc<AvroSchema>), ConnectorError> {
        let context = format!("subject '{subject}'");
        let (status, body) =
            self.request("GET", &format!("/subjects/{subject}/versions/latest"), None)?;
        if status != 200 {
            return Err(Self::failed(&context, status, &body));
        }
        let id = body
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| avro_error(&context, "the answer holds no id"))? as u32;
        let schema = Arc::new(Self::parse_schema(&context, &body)?);
        self.by_id.insert(id, schema.clone());
        Ok((id, schema))
    }

    /// Registers `schema` under `subject` and returns its id. With `compatibility`, the
    /// subject's compatibility level is set first; a schema the registry finds incompatible
    /// with the subject's latest version is refused.
    pub(crate) fn register(
        &mut self,
        subject: &str,
        schema: &AvroSchema,
        compatibility: Option<&str>,
    ) -> Result<u32, ConnectorError> {
        let context = format!("registering subject '{subject}'");
        if let Some(level) = compatibility {
            let (status, body) = self.request(
                "PUT",
                &format!("/config/{subject}"),
                Some(&serde_json::json!({ "compatibility": level })),
            )?;
            if status != 200 {
                return Err(Self::failed(&context, status, &body));
            }
        }
        // The full form: the canonical form drops logical types (timestamps, dates).
        let text = serde_json::to_string(schema).map_err(|e| avro_error(&context, e))?;
        let payload = serde_json::json!({ "schema": text });
        let (status, body) = self.request(
            "POST",
            &format!("/compatibility/subjects/{subject}/versions/latest"),
            Some(&payload),
        )?;
        match status {
            200 if body.get("is_compatible") == Some(&serde_json::Value::Bool(false)) => {
                return Err(avro_error(
                    &context,
                    format!(
                        "the schema of the sink's columns is not compatible with the subject's latest version: {text}"
                    ),
                ));
            }
            200 | 404 => {}
            _ => return Err(Self::failed(&context, status, &body)),
        }
        let (status, body) = self.request(
            "POST",
            &format!("/subjects/{subject}/versions"),
            Some(&payload),
        )?;
        if status != 200 {
            return Err(Self::failed(&context, status, &body));
        }
        body.get("id")
            .and_then(serde_json::Value::as_u64)
            .map(|id| id as u32)
            .ok_or_else(|| avro_error(&context, "the answer holds no id"))
    }
}

/// The schema id of a Confluent-framed message, and its Avro body.
fn split_frame(payload: &[u8]) -> Result<(u32, &[u8]), String> {
    match payload {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [] => Err("empty message".into()),
        [first, ..] if *first != MAGIC => Err(format!(
            "not in the Confluent wire format (first byte {first:#04x}, expected 0x00)"
        )),
        _ => Err("truncated frame (shorter than 5 bytes)".into()),
    }
}

/// Decodes one Confluent-framed Avro message into a JSON object text (record fields by
/// name), for the JSON decoder.
pub(crate) fn decode_to_json(
    registry: &mut SchemaRegistry,
    payload: &[u8],
) -> Result<Vec<u8>, ConnectorError> {
    let (id, mut body) = split_frame(payload).map_err(|e| avro_error("message", e))?;
    let schema = registry.schema_by_id(id)?;
    let value = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .and_then(|reader| reader.read_value(&mut body))
        .map_err(|e| avro_error(format!("message with schema id {id}"), e))?;
    if !body.is_empty() {
        return Err(avro_error(
            format!("message with schema id {id}"),
            format!("{} bytes left after the record", body.len()),
        ));
    }
    let json = serde_json::Value::try_from(value)
        .map_err(|e| avro_error(format!("message with schema id {id}"), e))?;
    if !json.is_object() {
        return Err(avro_error(
            format!("message with schema id {id}"),
            "the value is not a record",
        ));
    }
    Ok(json.to_string().into_bytes())
}

/// Decodes Confluent-framed Avro messages straight into Arrow columns (arrow-avro's
/// decoder, one per set of writer schemas seen), then takes the declared columns by name
/// and casts them to the declared types. Writer schemas come from the registry by id; a new
/// id rebuilds the decoder. After a failure the decoder is rebuilt (it may hold part of a
/// row).
#[derive(Default)]
pub(crate) struct NativeDecoder {
    /// Writer schemas (full JSON form, logical types included) by id.
    known: BTreeMap<u32, String>,
    decoder: Option<arrow_avro::reader::Decoder>,
}

impl std::fmt::Debug for NativeDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeDecoder")
            .field("schema_ids", &self.known.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why [`NativeDecoder::decode`] failed.
#[derive(Debug)]
pub(crate) enum NativeError {
    /// A message is not in the wire format or names a schema the registry does not have:
    /// no other decoding can do better.
    Final(ConnectorError),
    /// The body or a field could not be decoded into the declared columns this way (the
    /// decoding through Avro values may still succeed).
    Unmapped(ConnectorError),
}

/// Rows an arrow-avro decoder takes before it must be flushed.
const NATIVE_BATCH_ROWS: usize = 1 << 16;

impl NativeDecoder {
    /// One row per payload, in the columns of `target`.
    pub(crate) fn decode(
        &mut self,
        registry: &mut SchemaRegistry,
        payloads: &[&[u8]],
        target: &SchemaRef,
    ) -> Result<RecordBatch, NativeError> {
        for payload in payloads {
            let (id, _) =
                split_frame(payload).map_err(|e| NativeError::Final(avro_error("message", e)))?;
            if let std::collections::btree_map::Entry::Vacant(entry) = self.known.entry(id) {
                let schema = registry.schema_by_id(id).map_err(NativeError::Final)?;
                let text = serde_json::to_string(&*schema)
                    .map_err(|e| NativeError::Final(avro_error(format!("schema id {id}"), e)))?;
                entry.insert(text);
                self.decoder = None;
            }
        }
        let result = self.decode_batches(payloads).and_then(|batches| {
            let conformed = batches
                .iter()
                .map(|b| conform_to(b, target))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(arrow::compute::concat_batches(target, &conformed)?)
        });
        result.map_err(|e| {
            self.decoder = None;
            NativeError::Unmapped(e)
        })
    }

    fn decode_batches(&mut self, payloads: &[&[u8]]) -> Result<Vec<RecordBatch>, ConnectorError> {
        if self.decoder.is_none() {
            let mut store = arrow_avro::schema::SchemaStore::new_with_type(
                arrow_avro::schema::FingerprintAlgorithm::Id,
            );
            for (id, text) in &self.known {
                store
                    .set(
                        arrow_avro::schema::Fingerprint::Id(*id),
                        arrow_avro::schema::AvroSchema::new(text.clone()),
                    )
                    .map_err(|e| avro_error(format!("schema id {id}"), e))?;
            }
            self.decoder = Some(
                arrow_avro::reader::ReaderBuilder::new()
                    .with_writer_schema_store(store)
                    .with_batch_size(NATIVE_BATCH_ROWS)
                    .build_decoder()
                    .map_err(|e| avro_error("writer schemas", e))?,
            );
        }
        let decoder = self.decoder.as_mut().expect("built above");
        let mut batches = Vec::new();
        let mut rows = 0usize;
        // Rows finished so far: flushed, plus those the decoder holds (exact between two
        // messages; a pending schema switch empties the capacity and is flushed below).
        let finished = |rows: usize, d: &arrow_avro::reader::Decoder| {
            rows + (NATIVE_BATCH_ROWS - d.capacity())
        };
        for payload in payloads {
            let before = finished(rows, decoder);
            let mut rest: &[u8] = payload;
            while !rest.is_empty() {
                let used = decoder.decode(rest).map_err(|e| avro_error("message", e))?;
                if used == 0 {
                    // A full batch or a schema change: take the rows so far, then go on.
                    match decoder.flush().map_err(|e| avro_error("message", e))? {
                        Some(batch) => {
                            rows += batch.num_rows();
                            batches.push(batch);
                        }
                        None => {
                            return Err(avro_error(
                                "message",
                                "truncated (the record ends before its last field)",
                            ));
                        }
                    }
                }
                rest = &rest[used..];
            }
            // Exactly one record per message: a frame without a body, or a second frame in
            // the same message, would shift every later row against its message.
            let got = finished(rows, decoder) - before;
            if got != 1 {
                return Err(avro_error(
                    "message",
                    format!("holds {got} records, expected exactly one"),
                ));
            }
        }
        if let Some(batch) = decoder.flush().map_err(|e| avro_error("message", e))? {
            rows += batch.num_rows();
            batches.push(batch);
        }
        if rows != payloads.len() {
            return Err(avro_error(
                "message",
                format!("{} messages gave {rows} records", payloads.len()),
            ));
        }
        Ok(batches)
    }
}

/// The columns of `target` taken by name from `batch` (missing nullable columns as NULL) and
/// cast to their declared types.
fn conform_to(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ConnectorError> {
    let options = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut columns = Vec::with_capacity(target.fields().len());
    for field in target.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(c) if c.data_type() == field.data_type() => c.clone(),
            Some(c) => {
                let context = || format!("field '{}'", field.name());
                if let Some(reason) = lossy_cast(c.data_type(), field.data_type()) {
                    return Err(avro_error(context(), reason));
                }
                arrow::compute::cast_with_options(c, field.data_type(), &options)
                    .map_err(|e| avro_error(context(), e))?
            }
            None if field.is_nullable() => {
                arrow::array::new_null_array(field.data_type(), batch.num_rows())
            }
            None => {
                return Err(avro_error(
                    format!("field '{}'", field.name()),
                    "declared NOT NULL but missing from the message's schema",
                ));
            }
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// Encodes rows straight from Arrow (arrow-avro's encoder), each row one Confluent-framed
/// message of the registered schema.
pub(crate) struct NativeEncoder {
    encoder: arrow_avro::writer::Encoder,
    /// The column types the encoder takes (each input column is cast to its one first).
    fields: Fields,
}

impl std::fmt::Debug for NativeEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeEncoder").finish_non_exhaustive()
    }
}

/// The Arrow type arrow-avro encodes as the Avro type [`avro_type`] gives `data_type`.
fn encodable_type(data_type: &DataType) -> DataType {
    let utc = || Some(Arc::from("+00:00"));
    match data_type {
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _) => {
            DataType::Timestamp(TimeUnit::Millisecond, utc())
        }
        DataType::Timestamp(TimeUnit::Microsecond | TimeUnit::Nanosecond, _) => {
            DataType::Timestamp(TimeUnit::Microsecond, utc())
        }
        other => other.clone(),
    }
}

impl NativeEncoder {
    /// An encoder of rows of `input` as records of `schema` (registered under `id`); `None`
    /// when arrow-avro cannot encode these columns (rows then go through JSON values).
    pub(crate) fn new(input: &Schema, schema: &AvroSchema, id: u32) -> Option<NativeEncoder> {
        let text = serde_json::to_string(schema).ok()?;
        let fields: Fields = input
            .fields()
            .iter()
            .map(|f| {
                Field::new(f.name(), encodable_type(f.data_type()), f.is_nullable())
                    .with_metadata(f.metadata().clone())
            })
            .collect();
        let arrow = Schema::new_with_metadata(
            fields.clone(),
            HashMap::from([(arrow_avro::schema::SCHEMA_METADATA_KEY.to_string(), text)]),
        );
        let encoder = arrow_avro::writer::WriterBuilder::new(arrow)
            .with_fingerprint_strategy(arrow_avro::schema::FingerprintStrategy::Id(id))
            .build_encoder::<arrow_avro::writer::format::AvroSoeFormat>()
            .map_err(|e| tracing::debug!(error = %e, "Avro rows are encoded through JSON values"))
            .ok()?;
        Some(NativeEncoder { encoder, fields })
    }

    /// One framed message per row of `batch` (in the input schema given to `new`).
    pub(crate) fn encode(
        &mut self,
        batch: &RecordBatch,
    ) -> Result<Vec<Option<Vec<u8>>>, ConnectorError> {
        let columns = batch
            .columns()
            .iter()
            .zip(self.fields.iter())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    arrow::compute::cast(c, f.data_type())
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let batch = RecordBatch::try_new(Arc::new(Schema::new(self.fields.clone())), columns)?;
        let encoded = self
            .encoder
            .encode(&batch)
            .map(|()| self.encoder.flush())
            .map_err(|e| avro_error("row", e))?;
        if encoded.len() != batch.num_rows() {
            return Err(avro_error(
                "rows",
                format!("{} rows gave {} messages", batch.num_rows(), encoded.len()),
            ));
        }
        Ok(encoded.iter().map(|row| Some(row.to_vec())).collect())
    }
}

/// Why arrow's cast from `from` to `to` would lose or misplace values silently: a struct
/// cast with differing field names goes by position, and a cast from a union keeps one
/// branch and nulls the others.
fn lossy_cast(from: &DataType, to: &DataType) -> Option<String> {
    if !fields_align(from, to) {
        Some(format!(
            "record fields ({from}) differ from the declared ones ({to})"
        ))
    } else if holds_union(from) {
        Some(format!("a union ({from}) is not read into {to}"))
    } else {
        None
    }
}

/// Whether every struct inside `from` has the field names, in order, of the struct at the
/// same place in `to` (what a cast by position needs to be a cast by name).
fn fields_align(from: &DataType, to: &DataType) -> bool {
    match (from, to) {
        (DataType::Struct(a), DataType::Struct(b)) => {
            a.len() == b.len()
                && a.iter().zip(b.iter()).all(|(x, y)| {
                    x.name() == y.name() && fields_align(x.data_type(), y.data_type())
                })
        }
        (
            DataType::List(a) | DataType::LargeList(a),
            DataType::List(b) | DataType::LargeList(b),
        ) => fields_align(a.data_type(), b.data_type()),
        // Map entries are (key, value) by position whatever their names.
        (DataType::Map(a, _), DataType::Map(b, _)) => match (a.data_type(), b.data_type()) {
            (DataType::Struct(x), DataType::Struct(y)) if x.len() == y.len() => x
                .iter()
                .zip(y.iter())
                .all(|(x, y)| fields_align(x.data_type(), y.data_type())),
            _ => false,
        },
        (DataType::Dictionary(_, a), b) => fields_align(a, b),
        _ => true,
    }
}

/// Whether `data_type` is or contains a union.
fn holds_union(data_type: &DataType) -> bool {
    match data_type {
        DataType::Union(..) => true,
        DataType::Struct(fields) => fields.iter().any(|f| holds_union(f.data_type())),
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => holds_union(f.data_type()),
        DataType::Dictionary(_, value) => holds_union(value),
        _ => false,
    }
}

/// The Avro type of an Arrow type (`name` names nested records).
fn avro_type(data_type: &DataType, name: &str) -> Result<serde_json::Value, String> {
    use serde_json::json;
    Ok(match data_type {
        DataType::Boolean => json!("boolean"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            json!("int")
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => json!("long"),
        DataType::Float16 | DataType::Float32 => json!("float"),
        DataType::Float64 => json!("double"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!("string"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => json!("bytes"),
        DataType::Decimal128(precision, scale) if *scale >= 0 => json!({
            "type": "bytes",
            "logicalType": "decimal",
            "precision": precision,
            "scale": scale,
        }),
        DataType::Date32 => json!({"type": "int", "logicalType": "date"}),
        DataType::Timestamp(TimeUnit::Second | TimeUnit::Millisecond, _) => {
            json!({"type": "long", "logicalType": "timestamp-millis"})
        }
        DataType::Timestamp(TimeUnit::Microsecond | TimeUnit::Nanosecond, _) => {
            json!({"type": "long", "logicalType": "timestamp-micros"})
        }
        DataType::Struct(fields) => avro_record(fields, name)?,
        DataType::List(item) | DataType::LargeList(item) => {
            json!({"type": "array", "items": avro_field_type(item, &format!("{name}_item"))?})
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 && kv[0].data_type() == &DataType::Utf8 => {
                json!({"type": "map", "values": avro_field_type(&kv[1], &format!("{name}_value"))?})
            }
            other => return Err(format!("a map with keys other than VARCHAR ({other})")),
        },
        other => return Err(format!("type {other} has no Avro mapping yet")),
    })
}

/// A field's Avro type: nullable fields are a union with null.
fn avro_field_type(field: &Field, name: &str) -> Result<serde_json::Value, String> {
    let t = avro_type(field.data_type(), name)?;
    Ok(if field.is_nullable() {
        serde_json::json!(["null", t])
    } else {
        t
    })
}

fn avro_record(fields: &Fields, name: &str) -> Result<serde_json::Value, String> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        let mut field = serde_json::json!({
            "name": f.name(),
            "type": avro_field_type(f, &format!("{name}_{}", f.name()))?,
        });
        if f.is_nullable() {
            field["default"] = serde_json::Value::Null;
        }
        out.push(field);
    }
    Ok(serde_json::json!({"type": "record", "name": name, "fields": out}))
}

/// The Avro record schema of rows of `schema`.
pub(crate) fn avro_schema_of(schema: &Schema, name: &str) -> Result<AvroSchema, ConnectorError> {
    let record = avro_record(schema.fields(), name).map_err(|e| avro_error("sink columns", e))?;
    AvroSchema::parse(&record).map_err(|e| avro_error("sink columns", e))
}

/// The Arrow type of an Avro schema (unions with null become nullable fields).
fn arrow_type(schema: &AvroSchema) -> Result<(DataType, bool), String> {
    use apache_avro::schema::Schema as S;
    Ok(match schema {
        S::Boolean => (DataType::Boolean, false),
        S::Int => (DataType::Int32, false),
        S::Long => (DataType::Int64, false),
        S::Float => (DataType::Float32, false),
        S::Double => (DataType::Float64, false),
        S::String | S::Enum(_) | S::Uuid(_) => (DataType::Utf8, false),
        S::Date => (DataType::Date32, false),
        S::Bytes | S::Fixed(_) => (DataType::Binary, false),
        S::Decimal(decimal) if decimal.precision <= 38 => (
            DataType::Decimal128(decimal.precision as u8, decimal.scale as i8),
            false,
        ),
        S::TimestampMillis | S::LocalTimestampMillis => {
            (DataType::Timestamp(TimeUnit::Millisecond, None), false)
        }
        S::TimestampMicros | S::LocalTimestampMicros => {
            (DataType::Timestamp(TimeUnit::Microsecond, None), false)
        }
        S::Union(union) => {
            let variants = union.variants();
            let non_null: Vec<&AvroSchema> = variants.iter().filter(|v| **v != S::Null).collect();
            match non_null.as_slice() {
                [one] => (arrow_type(one)?.0, true),
                _ => return Err("unions of several non-null types are not supported".into()),
            }
        }
        S::Record(record) => {
            let fields: Vec<Field> = record
                .fields
                .iter()
                .map(|f| {
                    arrow_type(&f.schema).map(|(t, nullable)| Field::new(&f.name, t, nullable))
                })
                .collect::<Result<_, _>>()?;
            (DataType::Struct(fields.into()), false)
        }
        S::Array(array) => {
            let (t, nullable) = arrow_type(&array.items)?;
            (
                DataType::List(Arc::new(Field::new("item", t, nullable))),
                false,
            )
        }
        S::Map(map) => {
            let (t, nullable) = arrow_type(&map.types)?;
            let entries = Field::new(
                "entries",
                DataType::Struct(
                    vec![
                        Field::new("keys", DataType::Utf8, false),
                        Field::new("values", t, nullable),
                    ]
                    .into(),
                ),
                false,
            );
            (DataType::Map(Arc::new(entries), false), false)
        }
        other => return Err(format!("Avro type {other:?} has no column mapping yet")),
    })
}

/// The columns of a source whose messages carry records of `schema`.
pub(crate) fn arrow_schema_of(schema: &AvroSchema) -> Result<SchemaRef, ConnectorError> {
    match arrow_type(schema).map_err(|e| avro_error("registry schema", e))? {
        (DataType::Struct(fields), _) => Ok(Arc::new(Schema::new(fields))),
        (other, _) => Err(avro_error(
            "registry schema",
            format!("a source's messages must be records, not {other}"),
        )),
    }
}

/// Encodes each row of `batch` as a Confluent-framed Avro message of `schema` (id `id`).
pub(crate) fn encode_rows(
    batch: &RecordBatch,
    schema: &AvroSchema,
    id: u32,
) -> Result<Vec<Option<Vec<u8>>>, ConnectorError> {
    // Times as numbers (the JSON writer would write them as text).
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => {
                let ms =
                    arrow::compute::cast(c, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
                arrow::compute::cast(&ms, &DataType::Int64)
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                let us =
                    arrow::compute::cast(c, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
                arrow::compute::cast(&us, &DataType::Int64)
            }
            DataType::Timestamp(_, _) => arrow::compute::cast(c, &DataType::Int64),
            DataType::Date32 => arrow::compute::cast(c, &DataType::Int32),
            _ => Ok(c.clone()),
        })
        .collect::<Result<_, _>>()?;
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), f.is_nullable()))
        .collect();
    let plain = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(Vec::new());
    writer.write(&plain)?;
    writer.finish()?;
    let lines = writer.into_inner();
    let datum_writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .map_err(|e| avro_error("sink schema", e))?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let json: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| avro_error("row", e))?;
        let value = AvroValue::try_from(json)
            .and_then(|v| v.resolve(schema))
            .map_err(|e| avro_error("row", e))?;
        let mut message = vec![MAGIC];
        message.extend_from_slice(&id.to_be_bytes());
        datum_writer
            .write_value(&mut message, value)
            .map_err(|e| avro_error("row", e))?;
        out.push(Some(message));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b""), "");
    }

    #[test]
    fn frames_are_checked() {
        assert_eq!(
            split_frame(&[0, 0, 0, 0, 7, 1, 2]).unwrap(),
            (7, &[1u8, 2][..])
        );
        assert!(split_frame(&[]).unwrap_err().contains("empty"));
        assert!(split_frame(&[1, 0, 0, 0, 7]).unwrap_err().contains("0x01"));
        assert!(split_frame(&[0, 0]).unwrap_err().contains("truncated"));
    }

    #[test]
    fn arrow_and_avro_schemas_map_both_ways() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "address",
                DataType::Struct(
                    vec![
                        Field::new("city", DataType::Utf8, false),
                        Field::new("zip", DataType::Int32, true),
                    ]
                    .into(),
                ),
                true,
            ),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                false,
            ),
        ]);
        let avro = avro_schema_of(&schema, "row").unwrap();
        let back = arrow_schema_of(&avro).unwrap();
        assert_eq!(back.as_ref(), &schema);
        let bytes_and_decimals = Schema::new(vec![
            Field::new("b", DataType::Binary, true),
            Field::new("d", DataType::Decimal128(10, 2), false),
        ]);
        let avro = avro_schema_of(&bytes_and_decimals, "row").unwrap();
        assert_eq!(
            arrow_schema_of(&avro).unwrap().as_ref(),
            &bytes_and_decimals
        );
        let e = avro_schema_of(
            &Schema::new(vec![Field::new(
                "d",
                DataType::Duration(TimeUnit::Second),
                false,
            )]),
            "row",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no Avro mapping"), "{e}");
    }
}
