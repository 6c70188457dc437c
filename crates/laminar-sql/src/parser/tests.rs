//! Parser tests: every statement form and its error positions.

use super::*;

fn parse(sql: &str) -> StreamingStatement {
    parse_statement(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[test]
fn create_source_with_everything() {
    let s = parse(
        "CREATE OR REPLACE SOURCE Readings (sensor VARCHAR NOT NULL, temp DOUBLE, ts BIGINT NOT NULL, \
         WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) FROM FILES (path = 'x/*.csv', 'format' = 'csv') \
         FORMAT CSV WITH (header = true) WITH (buffer_size = 16, backpressure = 'reject')",
    );
    let StreamingStatement::CreateSource(c) = s else {
        panic!("not a source")
    };
    assert_eq!(c.name, "readings");
    assert!(c.or_replace);
    assert_eq!(c.columns.len(), 3);
    assert_eq!(c.watermark.as_ref().unwrap().delay_ms, 2000);
    let conn = c.connector.unwrap();
    assert_eq!(conn.name, "FILES");
    assert_eq!(conn.options[1], ("format".into(), "csv".into()));
    assert_eq!(c.format.unwrap().name, "csv");
    assert_eq!(c.options.len(), 2);
}

#[test]
fn watermark_forms() {
    for (expr, ms) in [
        ("ts", 0),
        ("ts - 500", 500),
        ("ts - INTERVAL '500' MILLISECOND", 500),
        ("ts - INTERVAL '1 minute'", 60_000),
        ("(ts - INTERVAL '3' SECOND)", 3000),
    ] {
        let s = parse(&format!(
            "CREATE SOURCE s (ts BIGINT, WATERMARK FOR ts AS {expr})"
        ));
        let StreamingStatement::CreateSource(c) = s else {
            panic!()
        };
        assert_eq!(c.watermark.unwrap().delay_ms, ms, "{expr}");
    }
    let e =
        parse_statement("CREATE SOURCE s (ts BIGINT, WATERMARK FOR ts AS other - 5)").unwrap_err();
    assert!(e.to_string().contains("must be"), "{e}");
}

#[test]
fn create_stream_with_trailing_clauses() {
    let s = parse("CREATE STREAM t AS SELECT a FROM s WHERE a > 1 EMIT ON WINDOW CLOSE");
    let StreamingStatement::CreateStream(c) = s else {
        panic!()
    };
    assert_eq!(c.clauses.emit.as_deref(), Some("ON WINDOW CLOSE"));
    let s = parse("CREATE STREAM IF NOT EXISTS t AS SELECT a FROM s");
    let StreamingStatement::CreateStream(c) = s else {
        panic!()
    };
    assert!(c.if_not_exists && c.clauses.is_empty());
}

#[test]
fn create_sink_forms() {
    let s = parse("CREATE SINK k FROM t WHERE x > 95 INTO FILES (path = 'out', format = 'csv')");
    let StreamingStatement::CreateSink(c) = s else {
        panic!()
    };
    assert!(matches!(c.input, SinkInput::Object(ref n) if n == "t"));
    assert!(c.filter.is_some());
    assert_eq!(c.connector.unwrap().name, "FILES");
    let s = parse("CREATE SINK k FROM (SELECT a FROM s) INTO BLACKHOLE");
    let StreamingStatement::CreateSink(c) = s else {
        panic!()
    };
    assert!(matches!(c.input, SinkInput::Query(_)));
    assert!(c.connector.unwrap().options.is_empty());
}

#[test]
fn show_describe_drop_explain_insert() {
    assert!(matches!(
        parse("SHOW SOURCES"),
        StreamingStatement::Show(ShowKind::Sources)
    ));
    assert!(matches!(
        parse("show materialized views"),
        StreamingStatement::Show(ShowKind::MaterializedViews)
    ));
    assert!(matches!(
        parse("DESCRIBE EXTENDED s"),
        StreamingStatement::Describe { extended: true, .. }
    ));
    assert!(matches!(
        parse("DROP STREAM IF EXISTS t CASCADE"),
        StreamingStatement::Drop {
            kind: ObjectKind::Stream,
            if_exists: true,
            cascade: true,
            ..
        }
    ));
    assert!(matches!(
        parse("EXPLAIN CREATE STREAM t AS SELECT * FROM s"),
        StreamingStatement::Explain { analyze: false, .. }
    ));
    let StreamingStatement::Insert { table, columns, .. } =
        parse("INSERT INTO S (a, b) VALUES (1, 'x')")
    else {
        panic!()
    };
    assert_eq!((table.as_str(), columns.len()), ("s", 2));
}

#[test]
fn syntax_errors_have_positions() {
    let e = parse_statement("CREATE SOURCE s (x INT,, y INT)").unwrap_err();
    let SqlError::Parse { line, column, .. } = e else {
        panic!("{e}")
    };
    assert_eq!((line, column), (1, 24));
    let e = parse_statement("GARBAGE").unwrap_err();
    assert!(matches!(e, SqlError::Parse { .. }), "{e}");
    let e = parse_statement("SELECT a FROM s\nWHERE").unwrap_err();
    let SqlError::Parse { line, .. } = e else {
        panic!("{e}")
    };
    assert_eq!(line, 2);
}

#[test]
fn unsupported_statements_are_named() {
    let e = parse_statement("UPDATE s SET a = 1").unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let sql = format!("SELECT {}1{} FROM s", "(".repeat(1000), ")".repeat(1000));
    let e = parse_statement(&sql).unwrap_err();
    assert!(
        e.to_string().contains("limit") || e.to_string().contains("recursion"),
        "{e}"
    );
}

#[test]
fn explain_analyze_takes_a_stream_name() {
    let StreamingStatement::Explain {
        analyze: true,
        statement,
    } = parse("EXPLAIN ANALYZE hot")
    else {
        panic!()
    };
    assert!(matches!(*statement, StreamingStatement::Describe { ref name, .. } if name == "hot"));
}

#[test]
fn window_tvfs_parse_in_sinks_too() {
    let statement = parse_statement(
        "CREATE SINK k FROM (SELECT window_start, COUNT(*) FROM TUMBLE(TABLE s, DESCRIPTOR(ts), INTERVAL '1' SECOND) GROUP BY window_start, window_end)",
    )
    .unwrap();
    let text = format!("{statement:?}");
    assert!(
        text.contains("\"tumble\"") || text.contains("\"TUMBLE\""),
        "{text}"
    );
    assert!(!text.contains("DESCRIPTOR"), "{text}");
}

#[test]
fn unknown_emit_forms_are_parse_errors() {
    let e = parse_statement("CREATE STREAM x AS SELECT k, COUNT(*) FROM s GROUP BY k EMIT NEVER")
        .unwrap_err();
    assert!(e.to_string().contains("valid forms"), "{e}");
}

#[test]
fn materialized_views_parse_like_streams() {
    let StreamingStatement::CreateStream(c) = parse(
        "CREATE OR REPLACE MATERIALIZED VIEW v WITH ('memory.budget' = '1MB') AS SELECT k, COUNT(*) FROM s GROUP BY k EMIT CHANGES",
    ) else {
        panic!("expected CREATE MATERIALIZED VIEW")
    };
    assert!(c.materialized && c.or_replace && !c.if_not_exists);
    assert_eq!(c.name, "v");
    assert_eq!(c.options, vec![("memory.budget".into(), "1MB".into())]);
    assert_eq!(c.clauses.emit.as_deref(), Some("CHANGES"));
    let StreamingStatement::CreateStream(c) =
        parse("create materialized view if not exists v as select 1")
    else {
        panic!("expected CREATE MATERIALIZED VIEW")
    };
    assert!(c.materialized && c.if_not_exists);
    let StreamingStatement::CreateStream(c) = parse("CREATE STREAM v AS SELECT 1") else {
        panic!("expected CREATE STREAM")
    };
    assert!(!c.materialized);
    let e = parse_statement("CREATE MATERIALIZED v AS SELECT 1").unwrap_err();
    assert!(e.to_string().contains("VIEW"), "{e}");
}
