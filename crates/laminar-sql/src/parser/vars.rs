//! `${NAME}` substitution, applied to the whole script before parsing.

use std::collections::HashMap;

use crate::error::SqlError;

/// Replaces every `${NAME}` with its configured value. `$` not followed by `{` is kept.
pub fn substitute_vars(sql: &str, vars: &HashMap<String, String>) -> Result<String, SqlError> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(pos) = rest.find("${") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let Some(end) = after.find('}') else {
            return Err(SqlError::Invalid(format!(
                "unterminated config variable reference '${{{}'",
                after.chars().take(20).collect::<String>()
            )));
        };
        let name = &after[..end];
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                return Err(SqlError::UnresolvedConfigVar {
                    name: name.to_string(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_reports_unknown() {
        let vars = HashMap::from([("T".to_string(), "orders".to_string())]);
        assert_eq!(
            substitute_vars("CREATE SOURCE ${T} (id BIGINT)", &vars).unwrap(),
            "CREATE SOURCE orders (id BIGINT)"
        );
        assert!(matches!(
            substitute_vars("x ${NOPE}", &vars),
            Err(SqlError::UnresolvedConfigVar { name }) if name == "NOPE"
        ));
        assert_eq!(substitute_vars("cost $5", &vars).unwrap(), "cost $5");
    }
}
