//! Swarm's rule for service and node names.

use thiserror::Error;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("invalid name: the name is empty")]
    Empty,
    #[error("invalid name {0:?}: at most 63 characters are allowed")]
    TooLong(String),
    #[error("invalid name {0:?}: it must start with a letter or a digit")]
    BadStart(String),
    #[error("invalid name {0:?}: only letters, digits, '-', '_' and '.' are allowed")]
    BadChar(String),
}

/// Letters, digits, `-`, `_`, `.`; at most 63; starts with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if name.len() > 63 {
        return Err(NameError::TooLong(name.to_string()));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart(name.to_string()));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(NameError::BadChar(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_swarm_names() {
        for n in ["web", "a", "Web-1_x.y", "9lives", &"a".repeat(63)] {
            assert_eq!(validate_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_name(&"a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        assert!(matches!(validate_name("-web"), Err(NameError::BadStart(_))));
        assert!(matches!(validate_name(".web"), Err(NameError::BadStart(_))));
        assert!(matches!(validate_name("we b"), Err(NameError::BadChar(_))));
        assert!(matches!(validate_name("web/1"), Err(NameError::BadChar(_))));
        assert!(matches!(validate_name("wéb"), Err(NameError::BadChar(_))));
    }
}
