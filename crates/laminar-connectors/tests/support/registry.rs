//! A small Schema Registry for tests: the part of the Confluent REST API the Avro format
//! uses (schemas by id, a subject's latest version, registration, compatibility checks
//! with BACKWARD / FORWARD / FULL / NONE, the subject's compatibility level), served over
//! HTTP on a free local port, optionally behind basic authentication. No registry server
//! can be installed on the test machines, so the client is tested against this one.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;

#[derive(Default)]
struct State {
    /// Schema texts; the id of `schemas[i]` is `i + 1`.
    schemas: Vec<String>,
    /// Subject → ids of its versions, oldest first.
    subjects: HashMap<String, Vec<usize>>,
    /// Subject → compatibility level.
    levels: HashMap<String, String>,
}

/// A running registry; it serves until the test process ends.
pub struct TestRegistry {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl TestRegistry {
    /// Starts a registry; with `credentials` (`user:password`) every request must carry
    /// them as basic authentication.
    pub fn start(credentials: Option<&str>) -> TestRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let expected = credentials.map(|c| format!("Basic {}", encode_base64(c.as_bytes())));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                let expected = expected.clone();
                std::thread::spawn(move || serve(stream, &state, expected.as_deref()));
            }
        });
        TestRegistry { url, state }
    }

    /// Registers `schema` under `subject` directly; returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> usize {
        register(&mut self.state.lock().unwrap(), subject, schema)
    }
}

fn encode_base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                TABLE[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn register(state: &mut State, subject: &str, schema: &str) -> usize {
    let id = match state.schemas.iter().position(|s| s == schema) {
        Some(i) => i + 1,
        None => {
            state.schemas.push(schema.to_string());
            state.schemas.len()
        }
    };
    let versions = state.subjects.entry(subject.to_string()).or_default();
    if !versions.contains(&id) {
        versions.push(id);
    }
    id
}

fn compatible(level: &str, latest: &Schema, candidate: &Schema) -> bool {
    let reads =
        |writer: &Schema, reader: &Schema| SchemaCompatibility::can_read(writer, reader).is_ok();
    match level {
        "NONE" => true,
        "FORWARD" | "FORWARD_TRANSITIVE" => reads(candidate, latest),
        "FULL" | "FULL_TRANSITIVE" => reads(latest, candidate) && reads(candidate, latest),
        _ => reads(latest, candidate),
    }
}

fn respond(stream: &mut TcpStream, status: u16, body: serde_json::Value) {
    let text = body.to_string();
    let reason = if status == 200 { "OK" } else { "Error" };
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn serve(mut stream: TcpStream, state: &Mutex<State>, expected_auth: Option<&str>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0usize;
    let mut auth = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "authorization" => auth = Some(value.trim().to_string()),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    if let Some(expected) = expected_auth
        && auth.as_deref() != Some(expected)
    {
        return respond(
            &mut stream,
            401,
            serde_json::json!({"error_code": 401, "message": "Unauthorized"}),
        );
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let mut state = state.lock().unwrap();
    let not_found = |what: &str| {
        (
            404,
            serde_json::json!({"error_code": 40401, "message": format!("{what} not found")}),
        )
    };
    let (status, answer) = match (method, segments.as_slice()) {
        ("GET", ["schemas", "ids", id]) => match id
            .parse::<usize>()
            .ok()
            .and_then(|i| state.schemas.get(i.wrapping_sub(1)))
        {
            Some(schema) => (200, serde_json::json!({ "schema": schema })),
            None => (
                404,
                serde_json::json!({"error_code": 40403, "message": "Schema not found"}),
            ),
        },
        ("GET", ["subjects", subject, "versions", "latest"]) => {
            match state.subjects.get(*subject).and_then(|v| v.last()) {
                Some(&id) => (
                    200,
                    serde_json::json!({
                        "subject": subject,
                        "id": id,
                        "version": state.subjects[*subject].len(),
                        "schema": state.schemas[id - 1],
                    }),
                ),
                None => not_found("Subject"),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let schema = json["schema"].as_str().unwrap_or_default().to_string();
            let id = register(&mut state, subject, &schema);
            (200, serde_json::json!({ "id": id }))
        }
        ("POST", ["compatibility", "subjects", subject, "versions", "latest"]) => {
            match state.subjects.get(*subject).and_then(|v| v.last()) {
                Some(&id) => {
                    let latest = Schema::parse_str(&state.schemas[id - 1]).unwrap();
                    let candidate =
                        Schema::parse_str(json["schema"].as_str().unwrap_or("")).unwrap();
                    let level = state
                        .levels
                        .get(*subject)
                        .cloned()
                        .unwrap_or_else(|| "BACKWARD".into());
                    (
                        200,
                        serde_json::json!({ "is_compatible": compatible(&level, &latest, &candidate) }),
                    )
                }
                None => not_found("Subject"),
            }
        }
        ("PUT", ["config", subject]) => {
            let level = json["compatibility"]
                .as_str()
                .unwrap_or("BACKWARD")
                .to_string();
            state.levels.insert(subject.to_string(), level.clone());
            (200, serde_json::json!({ "compatibility": level }))
        }
        _ => not_found("Endpoint"),
    };
    drop(state);
    respond(&mut stream, status, answer);
}
