//! Splitting a script into statements at `;`, ignoring semicolons inside quotes and comments.

/// One statement of a script and where it starts (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementText {
    /// The statement text, trimmed, without the `;`.
    pub text: String,
    /// Line of its first character.
    pub line: u64,
    /// Column of its first character.
    pub column: u64,
}

/// Splits `sql` into statements. Empty statements (and comment-only ones) are skipped.
pub fn split_statements(sql: &str) -> Vec<StatementText> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start: Option<(u64, u64)> = None;
    let (mut line, mut column) = (1u64, 1u64);
    let mut i = 0;
    let mut has_code = false;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        // Comments: copied through (they may hold positions users count), never split.
        let comment = (c == '-' && next == Some('-')) || (c == '/' && next == Some('*'));
        if comment && start.is_none() {
            start = Some((line, column));
        }
        if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                current.push(chars[i]);
                advance(chars[i], &mut line, &mut column);
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    if depth == 0 {
                        for _ in 0..2 {
                            current.push(chars[i]);
                            advance(chars[i], &mut line, &mut column);
                            i += 1;
                        }
                        break;
                    }
                }
                current.push(chars[i]);
                advance(chars[i], &mut line, &mut column);
                i += 1;
            }
            continue;
        }
        if c == ';' {
            if has_code {
                push(&mut out, &current, start);
            }
            current.clear();
            start = None;
            has_code = false;
            advance(c, &mut line, &mut column);
            i += 1;
            continue;
        }
        if !c.is_whitespace() && start.is_none() {
            start = Some((line, column));
        }
        if !c.is_whitespace() {
            has_code = true;
        }
        if c == '\'' || c == '"' || c == '`' {
            // Quoted: copy up to the matching quote (doubled quotes escape).
            current.push(c);
            advance(c, &mut line, &mut column);
            i += 1;
            while i < chars.len() {
                let q = chars[i];
                current.push(q);
                advance(q, &mut line, &mut column);
                i += 1;
                if q == c {
                    if chars.get(i) == Some(&c) {
                        current.push(c);
                        advance(c, &mut line, &mut column);
                        i += 1;
                    } else {
                        break;
                    }
                }
            }
            continue;
        }
        if start.is_some() {
            current.push(c);
        }
        advance(c, &mut line, &mut column);
        i += 1;
    }
    if has_code {
        push(&mut out, &current, start);
    }
    out
}

fn push(out: &mut Vec<StatementText>, text: &str, start: Option<(u64, u64)>) {
    let (line, column) = start.unwrap_or((1, 1));
    let trimmed = text.trim();
    if !trimmed.is_empty() {
        out.push(StatementText {
            text: trimmed.to_string(),
            line,
            column,
        });
    }
}

fn advance(c: char, line: &mut u64, column: &mut u64) {
    if c == '\n' {
        *line += 1;
        *column = 1;
    } else {
        *column += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_outside_quotes_and_comments() {
        let s = split_statements(
            "CREATE SOURCE a (x INT);\n  SELECT ';' FROM a -- c;\n; /* ; */ SELECT 1",
        );
        let texts: Vec<_> = s.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            vec![
                "CREATE SOURCE a (x INT)",
                "SELECT ';' FROM a -- c;",
                "/* ; */ SELECT 1"
            ]
        );
        assert_eq!((s[1].line, s[1].column), (2, 3));
    }

    #[test]
    fn empty_and_comment_only_scripts_have_no_statements() {
        assert!(split_statements("  ;; -- nothing\n").is_empty());
    }

    #[test]
    fn doubled_quotes_do_not_end_a_string() {
        let s = split_statements("SELECT 'a'';b'; SELECT 2");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].text, "SELECT 'a'';b'");
    }
}
