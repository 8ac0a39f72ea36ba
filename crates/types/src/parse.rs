//! Parsing of the units and shapes people type: memory sizes (`512M`) and
//! command lines (`sh -c 'echo hi'`). Durations are in [`crate::duration`].
//! The CLI and the Compose crate both use these, so that a flag and a stack
//! file key accept the same text.

/// Memory sizes as Compose writes them: bytes, or a number with b, k, m, g
/// (optionally followed by b), any case: `512M`, `1.5g`, `1024kb`.
pub fn parse_memory(text: &str) -> Option<u64> {
    let s = text.trim().to_ascii_lowercase();
    let s = s
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && !r.ends_with('b'))
        .unwrap_or(&s);
    let (num, factor) = match s.char_indices().last() {
        Some((i, 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'm')) => (&s[..i], 1 << 20),
        Some((i, 'g')) => (&s[..i], 1 << 30),
        Some((i, 't')) => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let n: f64 = num.trim().parse().ok()?;
    let bytes = n * factor as f64;
    (n.is_finite() && n >= 0.0 && bytes < 1.8e19).then_some(bytes as u64)
}

/// Splits a command string the way a shell would for simple cases: words on
/// white space, with single and double quotes and backslash escapes.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => match chars.next() {
                Some(n) => current.push(n),
                None => return Err("command ends with a backslash".into()),
            },
            (Some(_), c) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (None, c) => {
                current.push(c);
                in_word = true;
            }
        }
        if quote.is_some() {
            in_word = true;
        }
    }
    if quote.is_some() {
        return Err("command has an unclosed quote".into());
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Some(512 << 20));
        assert_eq!(parse_memory("1g"), Some(1 << 30));
        assert_eq!(parse_memory("1024kb"), Some(1 << 20));
        assert_eq!(parse_memory("100"), Some(100));
        assert_eq!(parse_memory("100b"), Some(100));
        assert_eq!(parse_memory("1.5G"), Some(3 << 29));
        for bad in ["", "M", "-1M", "12Q", "1e30g", "NaN", "bb"] {
            assert_eq!(parse_memory(bad), None, "{bad}");
        }
    }

    #[test]
    fn splits_commands_like_a_shell() {
        assert_eq!(
            split_command("sleep 10").ok(),
            Some(vec!["sleep".into(), "10".into()])
        );
        assert_eq!(
            split_command(r#"sh -c 'echo "a b"; exit 3'"#).ok(),
            Some(vec![
                "sh".into(),
                "-c".into(),
                r#"echo "a b"; exit 3"#.into()
            ])
        );
        assert_eq!(
            split_command(r#"a "" b"#).ok(),
            Some(vec!["a".into(), "".into(), "b".into()])
        );
        assert!(split_command("echo 'oops").is_err());
    }
}
