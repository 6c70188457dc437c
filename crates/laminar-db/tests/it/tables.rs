//! Reference tables through the Rust API and populated from files (SPEC 2.6, 5.10), and
//! lookup joins reading them.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use laminar_db::{DbError, ExecuteResult, LaminarDB, Record};

use crate::util::rows;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Record, Clone, Debug)]
struct Customer {
    id: i64,
    tier: Option<String>,
}

fn db() -> LaminarDB {
    LaminarDB::builder().workers(2).build_sync().unwrap()
}

async fn snapshot(db: &LaminarDB, sql: &str) -> Vec<Vec<String>> {
    match db.execute(sql).await.unwrap() {
        ExecuteResult::Metadata(batch) => {
            let mut r = rows(std::slice::from_ref(&batch));
            r.sort();
            r
        }
        other => panic!("expected rows, got {other:?}"),
    }
}

#[tokio::test]
async fn rust_api_upserts_deletes_and_lookups_see_the_current_row() {
    let db = db();
    db.execute(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, tier VARCHAR);
         CREATE SOURCE orders (id BIGINT, customer_id BIGINT, ts BIGINT, WATERMARK FOR ts AS ts);
         CREATE STREAM enriched AS SELECT o.id, c.tier FROM orders o LEFT JOIN customers c ON o.customer_id = c.id",
    )
    .await
    .unwrap();
    let mut out = db.subscribe_arrow("enriched").unwrap();
    let table = db.table("customers").unwrap();
    table
        .upsert(&[
            Customer {
                id: 7,
                tier: Some("gold".into()),
            },
            Customer {
                id: 8,
                tier: Some("silver".into()),
            },
        ])
        .unwrap();
    assert_eq!(table.len(), 2);
    db.execute("INSERT INTO orders VALUES (1, 7, 0)")
        .await
        .unwrap();
    db.wait_idle(WAIT);
    table
        .upsert(&[Customer {
            id: 7,
            tier: Some("platinum".into()),
        }])
        .unwrap();
    let keys = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![8, 99])) as ArrayRef],
    )
    .unwrap();
    assert_eq!(table.delete_arrow(keys).unwrap(), 1);
    db.execute("INSERT INTO orders VALUES (2, 7, 1), (3, 8, 2)")
        .await
        .unwrap();
    db.wait_idle(WAIT);
    let mut got = Vec::new();
    while let Some(b) = out.poll() {
        got.extend(rows(&[b]));
    }
    assert_eq!(
        got,
        vec![
            vec!["1".to_string(), "gold".into()],
            vec!["2".to_string(), "platinum".into()],
            vec!["3".to_string(), "NULL".into()],
        ]
    );
    // Snapshot queries see the same rows.
    assert_eq!(
        snapshot(&db, "SELECT id, tier FROM customers").await,
        vec![vec!["7".to_string(), "platinum".into()]]
    );
    let counted = db.query("SELECT count(*) FROM customers").await.unwrap();
    assert_eq!(rows(&counted), vec![vec!["1".to_string()]]);
}

#[tokio::test]
async fn rust_api_rejects_null_keys_and_unknown_tables() {
    let db = db();
    db.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, name VARCHAR) WITH ('max_rows' = '1')")
        .await
        .unwrap();
    let table = db.table("t").unwrap();
    let batch = |ids: Vec<Option<i64>>| {
        let n = ids.len();
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("name", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(ids)) as ArrayRef,
                Arc::new(StringArray::from(vec!["x"; n])),
            ],
        )
        .unwrap()
    };
    let err = table.upsert_arrow(batch(vec![None])).unwrap_err();
    assert!(err.to_string().contains("id"), "{err}");
    table.upsert_arrow(batch(vec![Some(1)])).unwrap();
    let err = table.upsert_arrow(batch(vec![Some(2)])).unwrap_err();
    assert!(err.to_string().contains("max_rows"), "{err}");
    assert_eq!(table.len(), 1);
    assert!(matches!(
        db.table("tt").unwrap_err(),
        DbError::NotFound { .. }
    ));
}

#[tokio::test]
async fn table_loaded_from_csv_files_then_watched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.csv"),
        "id,tier\n7,gold\n8,silver\n7,platinum\n",
    )
    .unwrap();
    let db = db();
    db.execute(&format!(
        "CREATE TABLE customers (id BIGINT PRIMARY KEY, tier VARCHAR)
           FROM FILES (path = '{}/*.csv', watch = 'true') FORMAT CSV",
        dir.path().display()
    ))
    .await
    .unwrap();
    // Loaded before CREATE TABLE returned: the later row of key 7 wins.
    assert_eq!(
        snapshot(&db, "SELECT id, tier FROM customers").await,
        vec![
            vec!["7".to_string(), "platinum".into()],
            vec!["8".to_string(), "silver".into()],
        ]
    );
    let shown = match db.execute("SHOW TABLES").await.unwrap() {
        ExecuteResult::Metadata(b) => rows(&[b]),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        shown,
        vec![vec![
            "customers".to_string(),
            "id".into(),
            "2".into(),
            "FILES".into()
        ]]
    );
    // A new file upserts.
    std::fs::write(dir.path().join("b.csv"), "id,tier\n8,bronze\n9,gold\n").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = snapshot(&db, "SELECT id, tier FROM customers").await;
        if now.len() == 3 {
            assert_eq!(
                now,
                vec![
                    vec!["7".to_string(), "platinum".into()],
                    vec!["8".to_string(), "bronze".into()],
                    vec!["9".to_string(), "gold".into()],
                ]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "watched file not loaded: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn table_file_with_null_key_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "id,tier\n7,gold\n,silver\n").unwrap();
    let db = db();
    let err = db
        .execute(&format!(
            "CREATE TABLE customers (id BIGINT PRIMARY KEY, tier VARCHAR)
               FROM FILES (path = '{}/*.csv') FORMAT CSV",
            dir.path().display()
        ))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not created"), "{err}");
    assert!(db.table("customers").is_err());
}
