//! `docs/openapi.json` is the document the code generates: a change to the
//! model or the route table must come with the regenerated file.

use std::path::PathBuf;

use serde_json::Value;

fn checked_in() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(flotilla_api::openapi::DOCUMENT_PATH)
}

#[test]
fn the_checked_in_document_is_up_to_date() {
    let generated = flotilla_api::openapi::document_json().expect("serialize the document");
    let path = checked_in();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "docs/openapi.json is out of date: run `cargo run -p flotilla-api --bin openapi` \
         (or `UPDATE_OPENAPI=1 cargo test -p flotilla-api --test openapi`) and commit it"
    );
}

#[test]
fn generation_is_deterministic() {
    let a = flotilla_api::openapi::document_json().expect("serialize");
    let b = flotilla_api::openapi::document_json().expect("serialize");
    assert_eq!(a, b);
}

/// Every `$ref` of the document names one of its components.
#[test]
fn every_reference_resolves() {
    let doc: Value =
        serde_json::from_str(&flotilla_api::openapi::document_json().expect("serialize"))
            .expect("parse");
    let schemas = doc["components"]["schemas"]
        .as_object()
        .expect("components.schemas")
        .clone();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(schemas.contains_key(name), "{r} is not in the components");
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(s)) => out.push(s.clone()),
                    _ => collect_refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// Every route of the table is a path and method of the document.
#[test]
fn every_route_is_documented() {
    let doc = flotilla_api::openapi::document();
    for r in flotilla_api::routes::ROUTES {
        let item = doc
            .paths
            .paths
            .get(r.path)
            .unwrap_or_else(|| panic!("{} is not documented", r.path));
        let op = match r.method {
            flotilla_api::routes::Method::Get => &item.get,
            flotilla_api::routes::Method::Post => &item.post,
            flotilla_api::routes::Method::Put => &item.put,
            flotilla_api::routes::Method::Delete => &item.delete,
        };
        assert!(
            op.is_some(),
            "{} {} is not documented",
            r.method.as_str(),
            r.path
        );
    }
}
