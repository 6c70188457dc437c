//! Connector options (`FROM FILES (path = '..', ..)`): normalized keys and typed getters.
//!
//! [`ConnectorOptions`] holds the raw `key = 'value'` pairs of a connector clause.
//! Keys are case-insensitive and `-` equals `_` (`Batch-Size` is `batch_size`);
//! dots are kept (`rollover.size`). Values stay as written; typed getters parse
//! them and return [`ConnectorError::InvalidOption`] naming the connector, key,
//! value and the accepted forms. [`ConnectorOptions::check_known`] rejects
//! unknown keys with a "did you mean" from [`did_you_mean`].

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::ConnectorError;

/// The `key = 'value'` options of one connector clause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorOptions {
    /// normalized key -> (key as written, value)
    entries: BTreeMap<String, (String, String)>,
    /// Name of the object (source or sink) the options belong to, when known: connectors
    /// derive identifiers from it (the Kafka sink's transactional id).
    object: Option<String>,
}

/// Normalizes an option key: lower case, `-` replaced by `_`, surrounding
/// whitespace removed. Dots are kept.
pub fn normalize_key(key: &str) -> String {
    key.trim().to_ascii_lowercase().replace('-', "_")
}

/// Normalizes an enumerated option value the same way as keys
/// (`Exactly-Once` == `exactly_once`).
pub(crate) fn normalize_value(value: &str) -> String {
    normalize_key(value)
}

impl ConnectorOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds options from pairs; a later duplicate key replaces an earlier one.
    pub fn from_pairs<K: AsRef<str>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut options = Self::new();
        for (k, v) in pairs {
            options.insert(k.as_ref(), v);
        }
        options
    }

    /// The same options, belonging to the object named `name`.
    pub fn for_object(mut self, name: &str) -> Self {
        self.object = Some(name.to_string());
        self
    }

    /// Name of the object the options belong to, when known.
    pub fn object(&self) -> Option<&str> {
        self.object.as_deref()
    }

    /// Sets `key` (normalized) to `value`, returning the previous value.
    pub fn insert(&mut self, key: &str, value: impl Into<String>) -> Option<String> {
        self.entries
            .insert(normalize_key(key), (key.trim().to_string(), value.into()))
            .map(|(_, v)| v)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.entries.remove(&normalize_key(key)).map(|(_, v)| v)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(&normalize_key(key))
    }

    /// Number of options.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no options.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(normalized key, value)` pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(k, (_, v))| (k.as_str(), v.as_str()))
    }

    /// The raw value of `key`.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.entries
            .get(&normalize_key(key))
            .map(|(_, v)| v.as_str())
    }

    /// `key` as a boolean: `true|false|yes|no|on|off|1|0` (any case).
    pub fn get_bool(&self, connector: &str, key: &str) -> Result<Option<bool>, ConnectorError> {
        self.parse(connector, key, |v| {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                _ => Err("expected true or false".to_string()),
            }
        })
    }

    /// `key` as an unsigned integer (`_` digit separators allowed: `1_000_000`).
    pub fn get_u64(&self, connector: &str, key: &str) -> Result<Option<u64>, ConnectorError> {
        self.parse(connector, key, |v| {
            v.trim()
                .replace('_', "")
                .parse::<u64>()
                .map_err(|_| "expected a non-negative integer".to_string())
        })
    }

    /// `key` as a duration: `200ms`, `1s`, `5m`, `1h`, `2d`, or a bare number of
    /// milliseconds.
    pub fn get_duration(
        &self,
        connector: &str,
        key: &str,
    ) -> Result<Option<Duration>, ConnectorError> {
        self.parse(connector, key, parse_duration)
    }

    /// `key` as a byte size: `128MiB`, `64KB`, `1G`, or a bare number of bytes.
    /// `KB/MB/GB` are powers of 1000; `KiB/MiB/GiB` and the short `K/M/G` are
    /// powers of 1024.
    pub fn get_size(&self, connector: &str, key: &str) -> Result<Option<u64>, ConnectorError> {
        self.parse(connector, key, parse_size)
    }

    /// `key` as a single character (for CSV delimiters and quotes). Accepts
    /// one ASCII character, or `\t` / `tab` for a tab.
    pub fn get_char(&self, connector: &str, key: &str) -> Result<Option<u8>, ConnectorError> {
        self.parse(connector, key, |v| match v {
            "\\t" | "tab" | "TAB" => Ok(b'\t'),
            _ if v.len() == 1 && v.is_ascii() => Ok(v.as_bytes()[0]),
            _ => Err("expected a single ASCII character (or '\\t')".to_string()),
        })
    }

    /// `key` as one of `choices` (compared normalized, so `exactly-once` ==
    /// `EXACTLY_ONCE`); returns the matching entry of `choices`.
    pub fn get_choice(
        &self,
        connector: &str,
        key: &str,
        choices: &[&'static str],
    ) -> Result<Option<&'static str>, ConnectorError> {
        self.parse(connector, key, |v| {
            let n = normalize_value(v);
            choices
                .iter()
                .find(|c| normalize_value(c) == n)
                .copied()
                .ok_or_else(|| format!("expected one of: {}", choices.join(", ")))
        })
    }

    /// Errors on the first key (in key order) that is not in `known` (compared
    /// normalized), with a "did you mean" suggestion and the list of valid keys.
    pub fn check_known(&self, connector: &str, known: &[&str]) -> Result<(), ConnectorError> {
        let known_norm: Vec<String> = known.iter().map(|k| normalize_key(k)).collect();
        for (norm, (written, _)) in &self.entries {
            if !known_norm.contains(norm) {
                return Err(ConnectorError::UnknownOption {
                    connector: connector.to_string(),
                    key: written.clone(),
                    suggestion: did_you_mean(norm, known.iter().copied()),
                    valid: known.iter().map(|k| k.to_string()).collect(),
                });
            }
        }
        Ok(())
    }

    /// Errors with [`ConnectorError::MissingOption`] when `key` is absent.
    pub fn require_str(&self, connector: &str, key: &str) -> Result<&str, ConnectorError> {
        self.get_str(key)
            .ok_or_else(|| ConnectorError::MissingOption {
                connector: connector.to_string(),
                key: key.to_string(),
            })
    }

    fn parse<T>(
        &self,
        connector: &str,
        key: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConnectorError> {
        let Some((written, value)) = self.entries.get(&normalize_key(key)) else {
            return Ok(None);
        };
        f(value)
            .map(Some)
            .map_err(|reason| ConnectorError::InvalidOption {
                connector: connector.to_string(),
                key: written.clone(),
                value: value.clone(),
                reason,
            })
    }
}

/// Parses `200ms`, `1s`, `5m`, `1h`, `2d` or a bare number of milliseconds.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a duration like 200ms, 1s, 5m, 1h or a number of milliseconds";
    let (number, unit) = split_number(value).ok_or_else(|| HINT.to_string())?;
    let n: u64 = number.parse().map_err(|_| HINT.to_string())?;
    let ms_per_unit: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "ms" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return Err(HINT.to_string()),
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| "duration too large".to_string())
}

/// Parses `128MiB`, `64KB`, `1G` or a bare number of bytes.
pub fn parse_size(value: &str) -> Result<u64, String> {
    const HINT: &str = "expected a size like 128MiB, 64KB, 1G or a number of bytes";
    let (number, unit) = split_number(value).ok_or_else(|| HINT.to_string())?;
    let n: u64 = number.parse().map_err(|_| HINT.to_string())?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(HINT.to_string()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size too large".to_string())
}

/// Splits `"128 MiB"` into `("128", "MiB")`; `None` when there are no digits.
fn split_number(value: &str) -> Option<(String, &str)> {
    let v = value.trim();
    let end = v
        .find(|c: char| !(c.is_ascii_digit() || c == '_'))
        .unwrap_or(v.len());
    let digits: String = v[..end].chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return None;
    }
    Some((digits, v[end..].trim()))
}

/// The candidate closest to `word` if it is close enough to be a likely typo:
/// edit distance at most 2 (1 for words of 3 characters or fewer), or one is a
/// prefix of the other. Comparison is case-insensitive with `-` == `_`.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let w = normalize_key(word);
    if w.is_empty() {
        return None;
    }
    let max = if w.chars().count() <= 3 { 1 } else { 2 };
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let cn = normalize_key(c);
        if cn == w {
            continue;
        }
        let d = levenshtein(&w, &cn);
        let prefix = cn.starts_with(&w) || w.starts_with(&cn);
        let score = if d <= max {
            d
        } else if prefix && w.len().min(cn.len()) >= 2 {
            max + 1
        } else {
            continue;
        };
        if best.is_none_or(|(b, _)| score < b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// Levenshtein edit distance over chars.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_case_insensitive_and_dash_equals_underscore() {
        let o = ConnectorOptions::from_pairs([("Batch-Size", "10"), ("rollover.size", "1KiB")]);
        assert_eq!(o.get_str("batch_size"), Some("10"));
        assert_eq!(o.get_str("BATCH_SIZE"), Some("10"));
        assert_eq!(o.get_u64("X", "batch-size").unwrap(), Some(10));
        assert_eq!(o.get_size("X", "Rollover.Size").unwrap(), Some(1024));
        assert!(o.contains("rollover.size"));
    }

    #[test]
    fn durations_and_sizes_parse() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("200ms"), Duration::from_millis(200));
        assert_eq!(d("1s"), Duration::from_secs(1));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("1500"), Duration::from_millis(1500));
        assert_eq!(d(" 2 s "), Duration::from_secs(2));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("1y").is_err());
        assert_eq!(parse_size("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_size("64KB").unwrap(), 64_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn invalid_value_names_connector_key_and_value() {
        let o = ConnectorOptions::from_pairs([("watch", "maybe")]);
        let e = o.get_bool("FILES", "watch").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid value 'maybe' for option 'watch' of connector FILES: expected true or false"
        );
        let o = ConnectorOptions::from_pairs([("delivery.guarantee", "Exactly-Once")]);
        let g = o.get_choice(
            "FILES",
            "delivery.guarantee",
            &["exactly-once", "at-least-once"],
        );
        assert_eq!(g.unwrap(), Some("exactly-once"));
    }

    #[test]
    fn unknown_key_gets_did_you_mean() {
        let o = ConnectorOptions::from_pairs([("pathh", "x")]);
        let e = o.check_known("FILES", &["path", "format"]).unwrap_err();
        match e {
            ConnectorError::UnknownOption {
                key,
                suggestion,
                valid,
                ..
            } => {
                assert_eq!(key, "pathh");
                assert_eq!(suggestion.as_deref(), Some("path"));
                assert_eq!(valid, vec!["path", "format"]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn did_you_mean_uses_distance_and_prefix() {
        let keys = ["rollover.size", "rollover.interval", "path"];
        assert_eq!(
            did_you_mean("rollover.sise", keys).as_deref(),
            Some("rollover.size")
        );
        assert_eq!(
            did_you_mean("rollover.int", keys).as_deref(),
            Some("rollover.interval")
        );
        assert_eq!(did_you_mean("PATH", ["paths"]).as_deref(), Some("paths"));
        assert_eq!(did_you_mean("zzz", keys), None);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }
}
