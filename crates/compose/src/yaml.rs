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
        // `2.0`, not `2`: "expected an integer, found 2" would be puzzling.
        Value::Float(f) => format!("{f:?}"),
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
    // YAML 1.2 booleans only, as Compose reads YAML: `N`, `no` or `on` are
    // strings (an environment variable named `N` is not `false`).
    let options = serde_saphyr::options! { strict_booleans: true };
    let parsed: Spanned<Value> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let full = e.to_string();
            ComposeError::Yaml {
                file: file.to_string(),
                line: e.location().map(|l| l.line()).unwrap_or(0),
                // The rendered error carries a source snippet on later lines;
                // the first line is the message.
                reason: super::one_line(&yaml_reason(&full)),
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

/// serde-saphyr's message for a user: the first line (a source snippet
/// follows), without the `error: line N` the caller already shows as
/// `file:N:` and without hints about serde-saphyr's own API.
fn yaml_reason(full: &str) -> String {
    let first = full.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let first = match first.strip_prefix("line ") {
        Some(rest) => match rest.split_once(' ') {
            Some((n, after)) if n.parse::<u64>().is_ok() => after,
            _ => first,
        },
        None => first,
    };
    let cut = [", set DuplicateKeyPolicy", "; use from_str_multiple"]
        .iter()
        .filter_map(|hint| first.find(hint))
        .min()
        .unwrap_or(first.len());
    first[..cut].to_string()
}

/// Merges `over` onto `base` the way later Compose files override earlier
/// ones: mappings key by key; a service's `environment`, `labels` and
/// `deploy.labels`, and a network's `labels`, key by key whether written as
/// mappings or `KEY=VALUE` lists; `ports` appended, an entry equal to one
/// of the earlier file replacing it (see `port_key`), as Compose merges
/// them; `volumes` of a service by target path; a service's `networks` by
/// network whether written as a list or a mapping (a network named with
/// no options keeps the earlier file's), their `aliases` appended without
/// repeats; a network's `ipam.config` by subnet; everything else replaced.
pub fn merge(base: &mut Node, over: Node) {
    merge_at(base, over, &mut Vec::new());
}

/// How the value at a key path merges.
enum Rule {
    Keys,
    /// List entries that are the same one when this key of theirs is.
    Entries(fn(&Node) -> Option<(String, String)>),
    /// A mapping of names, or a list of them (names without options).
    Names,
    /// A list, appended without repeating an entry.
    Append,
    Replace,
}

fn rule(path: &[String]) -> Rule {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["services", _, "environment" | "labels"]
        | ["services", _, "deploy", "labels"]
        | ["networks" | "secrets" | "configs", _, "labels"] => Rule::Keys,
        ["services", _, "ports"] => Rule::Entries(port_key),
        ["services", _, "volumes"] => Rule::Entries(volume_key),
        ["services", _, "secrets"] => Rule::Entries(secret_target_key),
        ["services", _, "configs"] => Rule::Entries(config_target_key),
        ["services", _, "networks"] => Rule::Names,
        ["services", _, "networks", _, "aliases"] => Rule::Append,
        ["networks", _, "ipam", "config"] => Rule::Entries(subnet_key),
        _ => Rule::Replace,
    }
}

fn merge_at(base: &mut Node, over: Node, path: &mut Vec<String>) {
    match rule(path) {
        Rule::Names => {
            if let (Some(mut b), Some(o)) = (as_name_map(&base.value), as_name_map(&over.value)) {
                for (k, v) in o {
                    match b.iter_mut().find(|(bk, _)| bk.name == k.name) {
                        // Named again without options: still attached,
                        // with what the earlier file said.
                        Some(_) if matches!(v.value, Value::Null) => {}
                        Some((_, bv)) => {
                            path.push(k.name.clone());
                            merge_at(bv, v, path);
                            path.pop();
                        }
                        None => b.push((k, v)),
                    }
                }
                base.value = Value::Map(b);
                return;
            }
        }
        Rule::Append => {
            if let (Value::Seq(b), Value::Seq(o)) = (&mut base.value, &over.value) {
                for item in o {
                    if !b.iter().any(|x| x.value == item.value) {
                        b.push(item.clone());
                    }
                }
                return;
            }
        }
        Rule::Keys => {
            if let (Some(b), Some(o)) = (as_key_map(&base.value), as_key_map(&over.value)) {
                base.value = Value::Map(b);
                let over = Node {
                    value: Value::Map(o),
                    ..over
                };
                return merge_maps(base, over, path);
            }
        }
        Rule::Entries(entry_key) => {
            if let (Value::Seq(b), Value::Seq(o)) = (&mut base.value, &over.value) {
                for item in o {
                    let key = entry_key(item);
                    match b.iter_mut().find(|x| key.is_some() && entry_key(x) == key) {
                        Some(slot) => *slot = item.clone(),
                        None => b.push(item.clone()),
                    }
                }
                return;
            }
        }
        Rule::Replace => {}
    }
    merge_maps(base, over, path)
}

fn merge_maps(base: &mut Node, over: Node, path: &mut Vec<String>) {
    match (&mut base.value, over.value) {
        (Value::Map(b), Value::Map(o)) => {
            for (k, v) in o {
                match b.iter_mut().find(|(bk, _)| bk.name == k.name) {
                    Some((_, bv)) => {
                        path.push(k.name.clone());
                        merge_at(bv, v, path);
                        path.pop();
                    }
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

/// A mapping as it is, or a `KEY=VALUE` list as a mapping (`KEY` alone is a
/// null value, which `environment` fills from the variables). None for
/// anything else, which is then replaced whole and refused later.
fn as_key_map(value: &Value) -> Option<Vec<(Key, Node)>> {
    match value {
        Value::Map(m) => Some(m.clone()),
        Value::Seq(items) => {
            let mut out: Vec<(Key, Node)> = Vec::new();
            for n in items {
                let Value::Str(s) = &n.value else {
                    return None;
                };
                let (k, v) = match s.split_once('=') {
                    Some((k, v)) => (k, Value::Str(v.to_string())),
                    None => (s.as_str(), Value::Null),
                };
                if k.is_empty() {
                    return None;
                }
                let entry = (
                    Key {
                        name: k.to_string(),
                        line: n.line,
                    },
                    Node {
                        value: v,
                        file: n.file.clone(),
                        line: n.line,
                    },
                );
                // A list may repeat a key; the last one wins, as in Compose.
                match out.iter_mut().find(|(ek, _)| ek.name == k) {
                    Some(slot) => *slot = entry,
                    None => out.push(entry),
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// A mapping of names as it is, or a list of names as a mapping of each
/// to null. None for anything else, which is then replaced whole and
/// refused later.
fn as_name_map(value: &Value) -> Option<Vec<(Key, Node)>> {
    match value {
        Value::Map(m) => Some(m.clone()),
        Value::Seq(items) => {
            let mut out: Vec<(Key, Node)> = Vec::new();
            for n in items {
                let Value::Str(s) = &n.value else {
                    return None;
                };
                if out.iter().any(|(k, _)| k.name == *s) {
                    continue;
                }
                out.push((
                    Key {
                        name: s.clone(),
                        line: n.line,
                    },
                    Node {
                        value: Value::Null,
                        file: n.file.clone(),
                        line: n.line,
                    },
                ));
            }
            Some(out)
        }
        _ => None,
    }
}

/// What makes two IPAM config entries of a network the same one across
/// files: their subnet, as compose-go merges them.
fn subnet_key(node: &Node) -> Option<(String, String)> {
    match node.get("subnet").map(|s| &s.value) {
        Some(Value::Str(s)) => Some((s.clone(), String::new())),
        _ => None,
    }
}

/// What makes two entries of a service's `secrets` the same one across
/// files, as Compose indexes them: the path in the task (a short entry's
/// `/run/secrets/NAME`, a long entry's `target`, relative ones under
/// `/run/secrets`, or `/run/secrets/SOURCE`).
fn secret_target_key(node: &Node) -> Option<(String, String)> {
    let path = match reference_target(node)? {
        t if t.starts_with('/') => t,
        t => format!("/run/secrets/{t}"),
    };
    Some((path, String::new()))
}

/// What makes two entries of a service's `configs` the same one across
/// files: the path in the task (`/NAME` unless a `target` says otherwise).
fn config_target_key(node: &Node) -> Option<(String, String)> {
    let path = match reference_target(node)? {
        t if t.starts_with('/') => t,
        t => format!("/{t}"),
    };
    Some((path, String::new()))
}

/// The target of a `secrets`/`configs` entry as written, or its source.
fn reference_target(node: &Node) -> Option<String> {
    let text = |n: Option<&Node>| match n.map(|n| &n.value) {
        Some(Value::Str(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        Value::Map(_) => text(node.get("target")).or_else(|| text(node.get("source"))),
        _ => None,
    }
}

/// What makes two volume entries the same one across files: the target
/// path (short syntax `SRC:TARGET[:MODE]` or `TARGET`, or `target:`).
fn volume_key(node: &Node) -> Option<(String, String)> {
    let target = match &node.value {
        Value::Str(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            match parts.as_slice() {
                [t] => t.to_string(),
                [_, t] | [_, t, _] => t.to_string(),
                _ => return None,
            }
        }
        Value::Map(_) => match node.get("target").map(|t| &t.value) {
            Some(Value::Str(t)) => t.clone(),
            _ => return None,
        },
        _ => return None,
    };
    Some((target, String::new()))
}

/// What makes two port entries the same one across files, as Compose
/// indexes them: a short entry's text (a number as its text), a long
/// entry's host IP, published port, target and protocol. A later file's
/// entry replaces the same one in place; any other is appended. The model
/// then de-duplicates what this cannot see (a short and a long entry for
/// the same port, ranges, values that only interpolation makes equal).
fn port_key(node: &Node) -> Option<(String, String)> {
    let text = |n: Option<&Node>| match n.map(|n| &n.value) {
        Some(Value::Str(s)) => Some(s.clone()),
        Some(Value::Int(i)) => Some(i.to_string()),
        _ => None,
    };
    match &node.value {
        Value::Str(s) => Some((s.clone(), String::new())),
        Value::Int(i) => Some((i.to_string(), String::new())),
        Value::Map(_) => {
            let target = text(node.get("target"))?;
            let published = text(node.get("published")).unwrap_or_default();
            let host = text(node.get("host_ip")).unwrap_or_else(|| "0.0.0.0".into());
            let proto = text(node.get("protocol")).unwrap_or_else(|| "tcp".into());
            Some((format!("{host}:{published}:{target}"), proto))
        }
        _ => None,
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
            Value::Float(f) => Ok(KeyText(f.to_string())),
            other => Ok(KeyText(describe(&other))),
        }
    }
}

/// Whether the key `key` of the mapping reached through `keys` is an
/// extension field (`x-...`), which Compose ignores and which is neither
/// interpolated nor written back. `x-flotilla` is ours, and in mappings whose
/// keys are names or data (services, environment and labels, networks, ...)
/// an `x-` key is a name like any other: a label `x-team` or a service
/// `x-web` stays.
pub fn is_extension(keys: &[String], key: &str) -> bool {
    if !key.starts_with("x-") || key == "x-flotilla" {
        return false;
    }
    let k: Vec<&str> = keys.iter().map(String::as_str).collect();
    let names = match k.as_slice() {
        ["services" | "networks" | "volumes" | "configs" | "secrets"] => true,
        ["services", _, "deploy", "labels"] => true,
        ["services", _, rest @ ..] => {
            matches!(
                rest.last(),
                Some(
                    &("environment"
                        | "labels"
                        | "depends_on"
                        | "networks"
                        | "sysctls"
                        | "extra_hosts"
                        | "args"
                        | "annotations"
                        | "driver_opts")
                )
            ) && rest.len() == 1
        }
        [_, _, "labels" | "driver_opts" | "options"] => true,
        _ => false,
    };
    !names
}

/// Writes the tree back as YAML, for `stack config`: extension fields (see
/// [`is_extension`]) are left out (they were not interpolated and only hold
/// anchors, already expanded), and `$` is written as `$$` so that the output
/// reads back as the same values.
pub struct Emit<'a> {
    node: &'a Node,
    keys: Vec<String>,
}

impl<'a> Emit<'a> {
    pub fn new(node: &'a Node) -> Self {
        Emit {
            node,
            keys: Vec::new(),
        }
    }
}

impl serde::Serialize for Emit<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match &self.node.value {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => match i64::try_from(*i) {
                Ok(i) => s.serialize_i64(i),
                Err(_) => s.serialize_str(&i.to_string()),
            },
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(text) => s.serialize_str(&text.replace('$', "$$")),
            Value::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Emit {
                        node: item,
                        keys: self.keys.clone(),
                    })?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let kept: Vec<&(Key, Node)> = entries
                    .iter()
                    .filter(|(k, _)| !is_extension(&self.keys, &k.name))
                    .collect();
                let mut map = s.serialize_map(Some(kept.len()))?;
                for (k, v) in kept {
                    let mut keys = self.keys.clone();
                    keys.push(k.name.clone());
                    map.serialize_entry(&k.name, &Emit { node: v, keys })?;
                }
                map.end()
            }
        }
    }
}
