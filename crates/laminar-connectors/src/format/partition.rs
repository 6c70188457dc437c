//! Hive-style partition directories (`col=value/`), shared by the FILES sink
//! (which routes rows into them) and the FILES source (which restores the
//! partition columns from them).
//!
//! Names and values are percent-encoded like Hive does (`:` -> `%3A`, `/` ->
//! `%2F`, ...); a NULL value is the directory `col=__HIVE_DEFAULT_PARTITION__`.
//! Values are rendered with Arrow's display format (timestamps as ISO-8601).

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, ArrayRef};
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};

/// Hive's directory value for a NULL partition value.
pub(crate) const HIVE_NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Groups the rows of a batch by their partition directory
/// (`a=1/b=x`, relative to the sink directory), in directory order.
pub(crate) fn group_rows(
    names: &[&str],
    columns: &[&ArrayRef],
) -> Result<BTreeMap<String, Vec<u32>>, ArrowError> {
    let options = FormatOptions::default();
    let formatters = columns
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = names.iter().map(|n| escape(n)).collect();
    let rows = columns.first().map_or(0, |c| c.len());
    let mut groups: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut key = String::new();
    // Per-row loop: routing needs each row's key; partitioned file output is
    // bound by I/O, not by this formatting.
    for row in 0..rows {
        key.clear();
        for (k, ((name, fmt), col)) in names.iter().zip(&formatters).zip(columns).enumerate() {
            if k > 0 {
                key.push('/');
            }
            key.push_str(name);
            key.push('=');
            if col.is_null(row) {
                key.push_str(HIVE_NULL_PARTITION);
            } else {
                key.push_str(&escape(&fmt.value(row).to_string()));
            }
        }
        match groups.get_mut(&key) {
            Some(rows) => rows.push(row as u32),
            None => {
                groups.insert(key.clone(), vec![row as u32]);
            }
        }
    }
    Ok(groups)
}

/// `col=value` pairs from the directories between `base` and `file`
/// (decoded; the NULL partition is `None`).
pub(crate) fn values_from_path(base: &Path, file: &Path) -> Vec<(String, Option<String>)> {
    let rel = file.strip_prefix(base).unwrap_or(file);
    let Some(parent) = rel.parent() else {
        return Vec::new();
    };
    parent
        .components()
        .filter_map(|c| {
            let s = c.as_os_str().to_str()?;
            let (k, v) = s.split_once('=')?;
            let value = (v != HIVE_NULL_PARTITION).then(|| unescape(v));
            Some((unescape(k), value))
        })
        .collect()
}

/// Characters Hive percent-encodes in partition directory names.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
        )
}

/// Percent-encodes a partition name or value the way Hive does.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if needs_escape(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Reverses [`escape`] (invalid escapes are kept as written).
pub(crate) fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 3 <= bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn escaping_round_trips() {
        let raw = "2024-01-01T00:00:00/a=b%c";
        let esc = escape(raw);
        assert_eq!(esc, "2024-01-01T00%3A00%3A00%2Fa%3Db%25c");
        assert_eq!(unescape(&esc), raw);
        assert_eq!(unescape("50%"), "50%");
        assert_eq!(unescape("%zz"), "%zz");
    }

    #[test]
    fn groups_rows_by_directory() {
        let a: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(1)]));
        let b: ArrayRef = Arc::new(StringArray::from(vec!["x:y", "x:y", "z"]));
        let groups = group_rows(&["a", "b"], &[&a, &b]).unwrap();
        let keys: Vec<_> = groups
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("a=1/b=x%3Ay", vec![0]),
                ("a=1/b=z", vec![2]),
                ("a=__HIVE_DEFAULT_PARTITION__/b=x%3Ay", vec![1]),
            ]
        );
    }

    #[test]
    fn values_come_from_directories_below_base() {
        let v = values_from_path(
            Path::new("/out/k=9"),
            Path::new("/out/k=9/a=1/b=__HIVE_DEFAULT_PARTITION__/c=x%3Ay/part-0.csv"),
        );
        assert_eq!(
            v,
            vec![
                ("a".to_string(), Some("1".to_string())),
                ("b".to_string(), None),
                ("c".to_string(), Some("x:y".to_string())),
            ]
        );
    }
}
