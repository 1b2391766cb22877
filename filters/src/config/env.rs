//! `${VAR}` and `${VAR:-default}` substitution on the raw YAML text.

/// Replaces every `${VAR}` / `${VAR:-default}`. A variable that is unset and has no
/// default is an error naming the line, except on comment lines, which are left alone.
pub fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (lineno, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("line {}: unterminated `${{`", lineno + 1));
            };
            let expr = &after[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "line {}: `${{{expr}}}` is not a valid variable reference",
                    lineno + 1
                ));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "line {}: environment variable {name} is not set (write ${{{name}:-default}} for a fallback)",
                        lineno + 1
                    ))
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "sk-123".to_string())
    }

    #[test]
    fn substitutes_and_defaults() {
        let s = substitute("a: ${KEY}\nb: ${NOPE:-x}\nc: ${NOPE:-}\n", env).unwrap();
        assert_eq!(s, "a: sk-123\nb: x\nc: \n");
    }

    #[test]
    fn missing_variable_names_the_line() {
        let e = substitute("a: 1\nb: ${MISSING}\n", env).unwrap_err();
        assert!(e.contains("line 2") && e.contains("MISSING"), "{e}");
    }

    #[test]
    fn comments_are_left_alone() {
        let s = substitute("# redis: ${MISSING}\na: 1\n", env).unwrap();
        assert_eq!(s, "# redis: ${MISSING}\na: 1\n");
    }

    #[test]
    fn rejects_bad_references() {
        assert!(substitute("a: ${}\n", env).is_err());
        assert!(substitute("a: ${A B}\n", env).is_err());
        assert!(substitute("a: ${OPEN\n", env).is_err());
    }
}
