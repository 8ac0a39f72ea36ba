//! Compose variable interpolation: `${VAR}`, `$VAR`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`,
//! `${VAR+alt}` and `$$` for a literal `$`.
//!
//! A `$` that starts none of these forms (a trailing `$`, `$1`, `$ `) is kept
//! as it is, because shell snippets in `command:` often contain them and
//! refusing them would be more surprising than helpful.

use thiserror::Error;

/// Defaults may themselves contain `${...}`; this caps how deep, so a
/// hostile input cannot exhaust the stack.
const MAX_NESTING: usize = 16;

/// Why a value could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InterpolationError {
    // Messages are one line whatever the text holds (errors are printed as
    // `file:line: key: message`), so the message and the text are escaped.
    #[error("required variable {name} is missing a value{}", if .message.is_empty() { String::new() } else { format!(": {}", super::one_line(.message)) })]
    Missing { name: String, message: String },
    #[error("invalid interpolation format in {0:?}: unclosed \"${{\"")]
    Unclosed(String),
    #[error("invalid interpolation format in {:?}", format!("${{{}}}", .0))]
    Invalid(String),
    #[error("interpolation nested more than {MAX_NESTING} levels deep")]
    TooDeep,
}

/// Replaces variable references in `text`; `lookup` gives a variable's value
/// or `None` when it is unset.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    expand(text, lookup, 0)
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, InterpolationError> {
    if depth > MAX_NESTING {
        return Err(InterpolationError::TooDeep);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        match rest.chars().next() {
            Some('$') => {
                out.push('$');
                rest = &rest[1..];
            }
            Some('{') => {
                let inner = &rest[1..];
                let end = closing_brace(inner)
                    .ok_or_else(|| InterpolationError::Unclosed(text.to_string()))?;
                out.push_str(&braced(&inner[..end], lookup, depth)?);
                rest = &inner[end + 1..];
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                let n = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
                out.push_str(&lookup(&rest[..n]).unwrap_or_default());
                rest = &rest[n..];
            }
            _ => out.push('$'),
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Byte index of the `}` closing a `${`, skipping nested `${...}` and `$$`.
fn closing_brace(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn braced(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    depth: usize,
) -> Result<String, InterpolationError> {
    let n = body.find(|c| !is_name_char(c)).unwrap_or(body.len());
    let name = &body[..n];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(InterpolationError::Invalid(body.to_string()));
    }
    let op = &body[n..];
    let value = lookup(name);
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let sub = |t: &str| expand(t, lookup, depth + 1);
    let (cond_default, arg) = if let Some(a) = op.strip_prefix(":-") {
        (Some(!non_empty), a)
    } else if let Some(a) = op.strip_prefix('-') {
        (Some(!set), a)
    } else {
        (None, "")
    };
    if let Some(use_default) = cond_default {
        return if use_default {
            sub(arg)
        } else {
            Ok(value.unwrap_or_default())
        };
    }
    if let Some((missing, a)) = op
        .strip_prefix(":?")
        .map(|a| (!non_empty, a))
        .or_else(|| op.strip_prefix('?').map(|a| (!set, a)))
    {
        if missing {
            return Err(InterpolationError::Missing {
                name: name.to_string(),
                message: sub(a)?,
            });
        }
        return Ok(value.unwrap_or_default());
    }
    if let Some((present, a)) = op
        .strip_prefix(":+")
        .map(|a| (non_empty, a))
        .or_else(|| op.strip_prefix('+').map(|a| (set, a)))
    {
        return if present { sub(a) } else { Ok(String::new()) };
    }
    if op.is_empty() {
        return Ok(value.unwrap_or_default());
    }
    Err(InterpolationError::Invalid(body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("1.25".into()),
            "EMPTY" => Some(String::new()),
            "PORT" => Some("8080".into()),
            _ => None,
        }
    }

    fn i(text: &str) -> Result<String, InterpolationError> {
        interpolate(text, &env)
    }

    #[test]
    fn substitutes_plain_and_braced() {
        assert_eq!(i("nginx:${TAG}").ok().as_deref(), Some("nginx:1.25"));
        assert_eq!(
            i("nginx:$TAG-alpine").ok().as_deref(),
            Some("nginx:1.25-alpine")
        );
        assert_eq!(i("${UNSET}x$UNSET").ok().as_deref(), Some("x"));
        assert_eq!(i("no vars").ok().as_deref(), Some("no vars"));
    }

    #[test]
    fn defaults_distinguish_unset_and_empty() {
        assert_eq!(i("${UNSET:-d}").ok().as_deref(), Some("d"));
        assert_eq!(i("${EMPTY:-d}").ok().as_deref(), Some("d"));
        assert_eq!(i("${EMPTY-d}").ok().as_deref(), Some(""));
        assert_eq!(i("${UNSET-d}").ok().as_deref(), Some("d"));
        assert_eq!(i("${TAG:-d}").ok().as_deref(), Some("1.25"));
        assert_eq!(i("${UNSET:-${PORT}}").ok().as_deref(), Some("8080"));
        assert_eq!(i("${TAG:+set}${UNSET:+no}").ok().as_deref(), Some("set"));
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        let e = i("${UNSET:?set UNSET please}").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("required variable UNSET is missing a value: set UNSET please")
        );
        assert!(i("${EMPTY:?x}").is_err());
        assert_eq!(i("${EMPTY?x}").ok().as_deref(), Some(""));
        assert!(i("${UNSET?}").is_err());
    }

    #[test]
    fn dollars_escape_and_stray_dollars_stay() {
        assert_eq!(i("$$TAG").ok().as_deref(), Some("$TAG"));
        assert_eq!(
            i("echo $$HOME $1 $").ok().as_deref(),
            Some("echo $HOME $1 $")
        );
        assert_eq!(i("${UNSET:-$$}").ok().as_deref(), Some("$"));
    }

    #[test]
    fn refuses_bad_formats() {
        assert!(matches!(i("${TAG"), Err(InterpolationError::Unclosed(_))));
        assert!(matches!(i("${}"), Err(InterpolationError::Invalid(_))));
        assert!(matches!(i("${1A}"), Err(InterpolationError::Invalid(_))));
        assert!(matches!(i("${TAG!x}"), Err(InterpolationError::Invalid(_))));
        // Found by compose_fuzz: a newline inside `${...}` made a two-line
        // error.
        let e = i("${\n}").err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(e, "invalid interpolation format in \"${\\n}\"");
        let e = i("${UNSET:?two\nlines}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(e, "required variable UNSET is missing a value: two\\nlines");
        let deep = format!("{}x{}", "${U:-".repeat(40), "}".repeat(40));
        assert_eq!(i(&deep), Err(InterpolationError::TooDeep));
    }
}
