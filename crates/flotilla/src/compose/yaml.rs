//! A YAML document as a tree whose nodes remember their file and line, so
//! that errors found after parsing (types, interpolation, validation) can
//! still point at the source.
//!
//! serde-saphyr does the YAML work: anchors, aliases and `<<` merge keys are
//! expanded by it, and its budget (nesting depth 64, alias counts) keeps
//! hostile documents from exhausting the stack or memory. Lines are those
//! where a value is *used*: for an alias or a merged key that is the line of
//! the `*alias` or `<<:` entry, not of the anchored definition.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::ComposeError;

/// A YAML value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in document order; serde-saphyr refuses duplicates.
    Map(Vec<(Key, Node)>),
}

/// A mapping key (scalar keys only, as text) and its line.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub line: u64,
}

/// A value with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub file: Arc<str>,
    /// 1-based; 0 when serde-saphyr did not know.
    pub line: u64,
}

impl Node {
    /// The entry for `key` when this is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(m) => m.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn stamp(&mut self, file: &Arc<str>) {
        self.file = file.clone();
        match &mut self.value {
            Value::Seq(items) => items.iter_mut().for_each(|n| n.stamp(file)),
            Value::Map(entries) => entries.iter_mut().for_each(|(_, n)| n.stamp(file)),
            _ => {}
        }
    }
}

/// How a value is named in "expected X, found Y" messages.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => format!("{s:?}"),
        Value::Seq(_) => "a list".into(),
        Value::Map(_) => "a mapping".into(),
    }
}

/// Parses one file's text into a tree. An empty document is `Null`.
pub fn parse(file: &str, text: &str) -> Result<Node, ComposeError> {
    let name: Arc<str> = Arc::from(file);
    if text.trim().is_empty() {
        return Ok(Node {
            value: Value::Null,
            file: name,
            line: 1,
        });
    }
    let parsed: Spanned<Value> = serde_saphyr::from_str(text).map_err(|e| {
        let full = e.to_string();
        ComposeError::Yaml {
            file: file.to_string(),
            line: e.location().map(|l| l.line()).unwrap_or(0),
            // The rendered error carries a source snippet on later lines;
            // the first line is the message.
            reason: full.lines().next().unwrap_or("").trim().to_string(),
        }
    })?;
    let mut node = Node {
        value: parsed.value,
        file: name.clone(),
        line: parsed.referenced.line(),
    };
    node.stamp(&name);
    Ok(node)
}

/// Merges `over` onto `base` the way later Compose files override earlier
/// ones: mappings key by key, everything else replaced.
pub fn merge(base: &mut Node, over: Node) {
    match (&mut base.value, over.value) {
        (Value::Map(b), Value::Map(o)) => {
            for (k, v) in o {
                match b.iter_mut().find(|(bk, _)| bk.name == k.name) {
                    Some((_, bv)) => merge(bv, v),
                    None => b.push((k, v)),
                }
            }
        }
        (_, value) => {
            *base = Node {
                value,
                file: over.file,
                line: over.line,
            };
        }
    }
}

fn node(s: Spanned<Value>) -> Node {
    Node {
        value: s.value,
        file: Arc::from(""),
        line: s.referenced.line(),
    }
}

/// Nesting allowed in a document. serde-saphyr's own depth budget did not
/// stop deeply nested flow mappings before the stack ran out, so the tree
/// builder counts levels itself. 24 is far beyond real Compose files (about
/// 8 levels) and was found to fit a 2 MiB test-thread stack in debug builds.
const MAX_DEPTH: usize = 24;

thread_local! {
    static DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let depth = DEPTH.with(|c| {
            let n = c.get() + 1;
            c.set(n);
            n
        });
        let result = if depth > MAX_DEPTH {
            Err(de::Error::custom(format!(
                "nested more than {MAX_DEPTH} levels deep"
            )))
        } else {
            d.deserialize_any(ValueVisitor)
        };
        DEPTH.with(|c| c.set(c.get().saturating_sub(1)));
        result
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(Key, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let value = map.next_value::<Spanned<Value>>()?;
            let key = Key {
                name: key.value.0,
                line: key.referenced.line(),
            };
            if entries.iter().any(|(k, _)| k.name == key.name) {
                return Err(de::Error::custom(format!("duplicate key {:?}", key.name)));
            }
            entries.push((key, node(value)));
        }
        Ok(Value::Map(entries))
    }
}

/// A scalar mapping key as text; Compose keys are strings, but `80:` or
/// `true:` are valid YAML and are read as their text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Str(s) => Ok(KeyText(s)),
            Value::Null => Ok(KeyText(String::new())),
            Value::Seq(_) | Value::Map(_) => Err(de::Error::custom("mapping keys must be scalars")),
            other => Ok(KeyText(describe(&other))),
        }
    }
}
