//! The OpenAPI 3 document of the client API, generated from the route
//! table ([`crate::routes::ROUTES`]) and the schemas that the model's types
//! derive with utoipa. It is checked in as `docs/openapi.json`; the test
//! `crates/api/tests/openapi.rs` fails when that file is stale, and
//! `cargo run -p flotilla-api --bin openapi` (or `UPDATE_OPENAPI=1 cargo
//! test -p flotilla-api --test openapi`) writes it anew.
//!
//! The maps of the document are `BTreeMap`s (utoipa without its
//! `preserve_order` features), so the output is the same on every run.

use std::collections::BTreeMap;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::info::{InfoBuilder, LicenseBuilder};
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ComponentsBuilder, ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, OpenApiBuilder, PathsBuilder, Ref, RefOr, Required, Schema};

use crate::client::WARNING_HEADER;
use crate::model::ErrorBody;
use crate::routes::{Answer, Method, NamedSchema, Route, SchemaOf, ROUTES};

/// Where the document is checked in, from the workspace root.
pub const DOCUMENT_PATH: &str = "docs/openapi.json";

/// The document.
pub fn document() -> OpenApi {
    let mut schemas: BTreeMap<String, RefOr<Schema>> = BTreeMap::new();
    let mut register = |of: SchemaOf| -> RefOr<Schema> {
        let NamedSchema {
            name,
            schema,
            nested,
        } = of();
        schemas.extend(nested);
        schemas.insert(name.to_string(), schema);
        Ref::from_schema_name(name).into()
    };
    let error = register(crate::routes::schema_of::<ErrorBody>);
    let mut paths = PathsBuilder::new();
    for route in ROUTES {
        let operation = operation(route, &error, &mut register);
        paths = paths.path(
            route.path,
            PathItem::new(http_method(route.method), operation),
        );
    }
    let components = schemas
        .into_iter()
        .fold(ComponentsBuilder::new(), |c, (name, schema)| {
            c.schema(name, schema)
        })
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Flotilla client API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The daemon's client API, over its Unix socket, or HTTPS with a client \
                     certificate of the cluster CA on a manager's client API port. Generated \
                     from the route table in crates/api/src/routes.rs.",
                ))
                .license(Some(LicenseBuilder::new().name("Apache-2.0").build())),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

/// The document as it is checked in: pretty JSON with a final newline.
pub fn document_json() -> Result<String, serde_json::Error> {
    let mut text = serde_json::to_string_pretty(&document())?;
    text.push('\n');
    Ok(text)
}

fn http_method(m: Method) -> HttpMethod {
    match m {
        Method::Get => HttpMethod::Get,
        Method::Post => HttpMethod::Post,
        Method::Put => HttpMethod::Put,
        Method::Delete => HttpMethod::Delete,
    }
}

/// `ListNodes` → `listNodes`.
fn operation_id(route: &Route) -> String {
    let name = format!("{:?}", route.operation);
    let mut chars = name.chars();
    chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// `/v1/nodes/{id}/update` → `nodes`; the rest is `cluster`.
fn tag(route: &Route) -> &'static str {
    match route.path.split('/').nth(2) {
        Some("nodes") => "nodes",
        Some("services") => "services",
        _ => "cluster",
    }
}

fn path_parameter(name: &str) -> ParameterBuilder {
    let (description, schema): (&str, RefOr<Schema>) = match name {
        "id" => (
            "A node's ID, unique ID prefix, name or host name",
            ObjectBuilder::new().schema_type(Type::String).into(),
        ),
        "name" => (
            "A service's name or ID",
            ObjectBuilder::new().schema_type(Type::String).into(),
        ),
        "role" => (
            "`worker` or `manager`",
            <flotilla_types::NodeRole as utoipa::PartialSchema>::schema(),
        ),
        _ => ("", ObjectBuilder::new().schema_type(Type::String).into()),
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(description))
        .schema(Some(schema))
}

fn error_description(status: u16) -> &'static str {
    match status {
        400 => "The request is invalid",
        401 => "Remote port only: no client certificate of the cluster",
        403 => "Refused (remote port: a worker's certificate)",
        404 => "No such node or service",
        409 => "Not in a cluster, not a manager, or the state forbids it",
        500 => "The daemon failed",
        503 => "No leader or no quorum",
        _ => "Error",
    }
}

fn operation(
    route: &Route,
    error: &RefOr<Schema>,
    register: &mut impl FnMut(SchemaOf) -> RefOr<Schema>,
) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new()
        .operation_id(Some(operation_id(route)))
        .summary(Some(route.summary))
        .tag(tag(route));
    for name in route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
    {
        op = op.parameter(path_parameter(name));
    }
    for p in route.query.map(|q| q()).unwrap_or_default() {
        op = op.parameter(p);
    }
    if let Some(body) = route.body {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(register(body))).build(),
                )
                .build(),
        ));
    }
    let mut ok = response("OK", route.ok, error, register);
    if route.may_warn {
        ok = ok.header(
            WARNING_HEADER,
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(
                    "Set when the read could not be made linearizable: the answer may be stale",
                ))
                .build(),
        );
    }
    op = op.response("200", ok);
    let mut errors: Vec<u16> = route.errors.to_vec();
    if !route.public {
        errors.extend([401, 403]);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        let description = if route.public {
            "Not the leader"
        } else {
            error_description(status)
        };
        op = op.response(
            status.to_string(),
            response(description, route.error_body, error, register),
        );
    }
    op.build()
}

fn response(
    description: &str,
    answer: Answer,
    error: &RefOr<Schema>,
    register: &mut impl FnMut(SchemaOf) -> RefOr<Schema>,
) -> ResponseBuilder {
    let json = |schema: RefOr<Schema>| ContentBuilder::new().schema(Some(schema)).build();
    let builder = ResponseBuilder::new().description(description);
    match answer {
        Answer::Json(of) => builder.content("application/json", json(register(of))),
        Answer::List(of) => builder.content(
            "application/json",
            json(ArrayBuilder::new().items(register(of)).into()),
        ),
        Answer::Null => builder.content(
            "application/json",
            json(ObjectBuilder::new().schema_type(Type::Null).into()),
        ),
        Answer::JsonLines(of) => builder.content("application/x-ndjson", json(register(of))),
        Answer::Error => builder.content("application/json", json(error.clone())),
    }
}
