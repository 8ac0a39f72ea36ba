//! The client API's route table, [`ROUTES`]: the one list the daemon's
//! router is built from (`flotilla_node::api::router`) and the OpenAPI
//! document is generated from ([`crate::openapi`], checked in as
//! `docs/openapi.json`).
//!
//! A row names an [`Operation`]; the daemon maps each operation to its
//! handler with an exhaustive `match`, so a route without a handler does
//! not compile, and the node crate's tests probe every row of the table
//! against the router.

use std::borrow::Cow;

use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, ToSchema};

use crate::model::{
    AutolockRequest, BackupScheduleRequest, BackupScheduleView, BackupView, ClientCert,
    ClientCertRequest, ForceQuery, Info, InitRequest, InitResponse, JoinRequest, JoinTokenView,
    LeaderCheck, LogEvent, LogQuery, NetworkView, NodeUpdate, NodeView, Removed, RestoreRequest,
    RestoreResponse, ScaleRequest, ServiceReplace, ServiceView, TaskView, TokenQuery,
    UiTokenRequest, UiTokenView, UnlockKeyView, UnlockRequest,
};
use flotilla_types::{NetworkSpec, ServiceSpec};

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// What a route does; the daemon has one handler per operation. The
/// OpenAPI `operationId` is the name in lower camel case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Info,
    LeaderCheck,
    ClientCert,
    Init,
    Join,
    Leave,
    JoinToken,
    Unlock,
    UnlockKey,
    Autolock,
    Backup,
    BackupSchedule,
    Restore,
    UiToken,
    ListNodes,
    InspectNode,
    RemoveNode,
    UpdateNode,
    PromoteNode,
    DemoteNode,
    ListServices,
    CreateService,
    InspectService,
    ReplaceService,
    RemoveService,
    ScaleService,
    RollbackService,
    ListTasks,
    ServiceLogs,
    ServiceEndpoints,
    MeshStats,
    ListNetworks,
    CreateNetwork,
    InspectNetwork,
    RemoveNetwork,
    Resolve,
    ListSecrets,
    CreateSecret,
    InspectSecret,
    RemoveSecret,
    UpdateSecret,
    ListConfigs,
    CreateConfig,
    InspectConfig,
    RemoveConfig,
    UpdateConfig,
}

/// A schema of the contract with the schemas it refers to, from its type.
#[derive(Clone)]
pub struct NamedSchema {
    pub name: Cow<'static, str>,
    pub schema: RefOr<Schema>,
    /// The schemas it refers to, for the document's components.
    pub nested: Vec<(String, RefOr<Schema>)>,
}

/// Produces a [`NamedSchema`]; a function so that the table stays `const`.
pub type SchemaOf = fn() -> NamedSchema;

/// The [`NamedSchema`] of `T`.
pub fn schema_of<T: ToSchema>() -> NamedSchema {
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    NamedSchema {
        name: T::name(),
        schema: T::schema(),
        nested,
    }
}

/// The query parameters of `T`.
pub fn params_of<T: IntoParams>() -> Vec<Parameter> {
    T::into_params(|| Some(ParameterIn::Query))
}

/// A response body.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// One JSON value of the schema.
    Json(SchemaOf),
    /// A JSON array of the schema.
    List(SchemaOf),
    /// JSON `null`.
    Null,
    /// JSON lines (`application/x-ndjson`), one value of the schema each,
    /// streamed while `follow` is set.
    JsonLines(SchemaOf),
    /// [`crate::model::ErrorBody`].
    Error,
}

/// One route of the client API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: Method,
    /// An axum path: `{name}` is a path parameter.
    pub path: &'static str,
    pub operation: Operation,
    pub summary: &'static str,
    /// Query parameters, if the route takes any.
    pub query: Option<fn() -> Vec<Parameter>>,
    /// The JSON request body, if the route takes one.
    pub body: Option<SchemaOf>,
    /// The 200 answer.
    pub ok: Answer,
    /// The error statuses the handler can give. Every route but the
    /// public ones may also answer 401 and 403 on the remote (TLS) port.
    pub errors: &'static [u16],
    /// The body of an error: [`Answer::Error`] but for the leader check.
    pub error_body: Answer,
    /// Served on the remote port without a client certificate.
    pub public: bool,
    /// A read that may be stale sets the `x-flotilla-warning` header
    /// ([`crate::client::WARNING_HEADER`]).
    pub may_warn: bool,
}

/// Reads of the replicated state, on a manager.
const READ: &[u16] = &[409];
/// Writes through raft: invalid, missing, refused, no leader or quorum,
/// committed but not yet applied on the manager that was asked (504).
const WRITE: &[u16] = &[400, 404, 409, 500, 503, 504];

const fn route(method: Method, path: &'static str, operation: Operation) -> Route {
    Route {
        method,
        path,
        operation,
        summary: "",
        query: None,
        body: None,
        ok: Answer::Null,
        errors: &[],
        error_body: Answer::Error,
        public: false,
        may_warn: false,
    }
}

const fn json(s: SchemaOf) -> Answer {
    Answer::Json(s)
}

const fn list(s: SchemaOf) -> Answer {
    Answer::List(s)
}

use Method::{Delete, Get, Post, Put};
use Operation as Op;

/// Every route of the client API. All bodies are JSON; errors are
/// [`crate::model::ErrorBody`] with a 4xx or 5xx status.
pub const ROUTES: &[Route] = &[
    Route {
        summary: "The cluster and this node: IDs, role, leader, managers, counts",
        ok: json(schema_of::<Info>),
        errors: READ,
        ..route(Get, "/v1/info", Op::Info)
    },
    Route {
        summary: "Whether this node is the raft leader (200) or not (503)",
        ok: json(schema_of::<LeaderCheck>),
        errors: &[503],
        error_body: json(schema_of::<LeaderCheck>),
        public: true,
        ..route(Get, "/v1/leader-check", Op::LeaderCheck)
    },
    Route {
        summary: "A client certificate of the cluster CA, for remote CLIs",
        body: Some(schema_of::<ClientCertRequest>),
        ok: json(schema_of::<ClientCert>),
        errors: &[400, 409, 500],
        ..route(Post, "/v1/client-cert", Op::ClientCert)
    },
    Route {
        summary: "Make a new cluster with this node as its first manager",
        body: Some(schema_of::<InitRequest>),
        ok: json(schema_of::<InitResponse>),
        errors: &[400, 403, 409, 500],
        ..route(Post, "/v1/init", Op::Init)
    },
    Route {
        summary: "Join the cluster of a manager with a join token",
        body: Some(schema_of::<JoinRequest>),
        ok: json(schema_of::<InitResponse>),
        errors: &[400, 403, 409, 500],
        ..route(Post, "/v1/join", Op::Join)
    },
    Route {
        summary: "Leave the cluster",
        query: Some(params_of::<ForceQuery>),
        ok: Answer::Null,
        errors: &[400, 403, 409, 500],
        ..route(Post, "/v1/leave", Op::Leave)
    },
    Route {
        summary: "The join token of a role, optionally rotated first",
        query: Some(params_of::<TokenQuery>),
        ok: json(schema_of::<JoinTokenView>),
        errors: &[400, 409, 500, 503],
        ..route(Get, "/v1/join-token/{role}", Op::JoinToken)
    },
    Route {
        summary: "Unlock this manager (autolock) with the unlock key",
        body: Some(schema_of::<UnlockRequest>),
        ok: Answer::Null,
        errors: &[400, 409, 500],
        ..route(Post, "/v1/unlock", Op::Unlock)
    },
    Route {
        summary: "The unlock key (autolock), optionally rotated first",
        query: Some(params_of::<TokenQuery>),
        ok: json(schema_of::<UnlockKeyView>),
        errors: &[409, 500, 503],
        ..route(Get, "/v1/unlock-key", Op::UnlockKey)
    },
    Route {
        summary: "Turn autolock on (the answer holds the new unlock key) or off",
        body: Some(schema_of::<AutolockRequest>),
        ok: json(schema_of::<UnlockKeyView>),
        errors: &[400, 409, 500, 503],
        ..route(Post, "/v1/autolock", Op::Autolock)
    },
    Route {
        summary: "A backup of the whole state at one raft index (a manager)",
        ok: json(schema_of::<BackupView>),
        errors: READ,
        may_warn: true,
        ..route(Get, "/v1/backup", Op::Backup)
    },
    Route {
        summary: "Backups the leader writes on a schedule, into a directory on its machine",
        body: Some(schema_of::<BackupScheduleRequest>),
        ok: json(schema_of::<BackupScheduleView>),
        errors: &[400, 409, 500, 503],
        ..route(Put, "/v1/backup/schedule", Op::BackupSchedule)
    },
    Route {
        summary: "Restore a backup on this fresh node: it becomes the only manager of the backup's cluster under a new epoch",
        body: Some(schema_of::<RestoreRequest>),
        ok: json(schema_of::<RestoreResponse>),
        errors: &[400, 403, 409, 500],
        ..route(Post, "/v1/restore", Op::Restore)
    },
    Route {
        summary: "A login token for the dashboard (/ui) in a browser without a client certificate, good on every manager until it expires",
        body: Some(schema_of::<UiTokenRequest>),
        ok: json(schema_of::<UiTokenView>),
        errors: &[400, 409, 500, 503],
        ..route(Post, "/v1/ui-token", Op::UiToken)
    },
    Route {
        summary: "Every node",
        ok: list(schema_of::<NodeView>),
        errors: READ,
        may_warn: true,
        ..route(Get, "/v1/nodes", Op::ListNodes)
    },
    Route {
        summary: "One node",
        ok: json(schema_of::<NodeView>),
        errors: &[404, 409],
        ..route(Get, "/v1/nodes/{id}", Op::InspectNode)
    },
    Route {
        summary: "Remove a node from the cluster",
        query: Some(params_of::<ForceQuery>),
        ok: json(schema_of::<Removed>),
        errors: WRITE,
        ..route(Delete, "/v1/nodes/{id}", Op::RemoveNode)
    },
    Route {
        summary: "Change a node's availability, name or labels",
        body: Some(schema_of::<NodeUpdate>),
        ok: json(schema_of::<NodeView>),
        errors: WRITE,
        ..route(Post, "/v1/nodes/{id}/update", Op::UpdateNode)
    },
    Route {
        summary: "Make a worker a manager",
        ok: json(schema_of::<NodeView>),
        errors: WRITE,
        ..route(Post, "/v1/nodes/{id}/promote", Op::PromoteNode)
    },
    Route {
        summary: "Make a manager a worker",
        ok: json(schema_of::<NodeView>),
        errors: WRITE,
        ..route(Post, "/v1/nodes/{id}/demote", Op::DemoteNode)
    },
    Route {
        summary: "Every service, by name",
        ok: list(schema_of::<ServiceView>),
        errors: READ,
        may_warn: true,
        ..route(Get, "/v1/services", Op::ListServices)
    },
    Route {
        summary: "Create a service",
        body: Some(schema_of::<ServiceSpec>),
        ok: json(schema_of::<ServiceView>),
        errors: WRITE,
        ..route(Post, "/v1/services", Op::CreateService)
    },
    Route {
        summary: "One service",
        ok: json(schema_of::<ServiceView>),
        errors: &[404, 409],
        may_warn: true,
        ..route(Get, "/v1/services/{name}", Op::InspectService)
    },
    Route {
        summary: "Replace a service's spec (a rolling update), optionally at a version",
        body: Some(schema_of::<ServiceReplace>),
        ok: json(schema_of::<ServiceView>),
        errors: WRITE,
        ..route(Put, "/v1/services/{name}", Op::ReplaceService)
    },
    Route {
        summary: "Remove a service and its tasks",
        ok: json(schema_of::<Removed>),
        errors: WRITE,
        ..route(Delete, "/v1/services/{name}", Op::RemoveService)
    },
    Route {
        summary: "Set the replica count of a replicated service",
        body: Some(schema_of::<ScaleRequest>),
        ok: json(schema_of::<ServiceView>),
        errors: WRITE,
        ..route(Post, "/v1/services/{name}/scale", Op::ScaleService)
    },
    Route {
        summary: "Return a service to its previous spec",
        ok: json(schema_of::<ServiceView>),
        errors: WRITE,
        ..route(Post, "/v1/services/{name}/rollback", Op::RollbackService)
    },
    Route {
        summary: "A service's tasks, history included",
        ok: list(schema_of::<TaskView>),
        errors: &[404, 409],
        may_warn: true,
        ..route(Get, "/v1/services/{name}/tasks", Op::ListTasks)
    },
    Route {
        summary: "The output of a service's tasks from every node, merged by time, as JSON lines of log events (lines and warnings)",
        query: Some(params_of::<LogQuery>),
        ok: Answer::JsonLines(schema_of::<LogEvent>),
        errors: &[404, 409],
        ..route(Get, "/v1/services/{name}/logs", Op::ServiceLogs)
    },
    Route {
        summary: "Where a service's current tasks answer: one row per task and target port, with its health as passing, warning, critical or none",
        ok: list(schema_of::<crate::model::EndpointView>),
        errors: &[404, 409],
        may_warn: true,
        ..route(Get, "/v1/services/{name}/endpoints", Op::ServiceEndpoints)
    },
    Route {
        summary: "The routing mesh's counters on every node: per published port and per backend (connections, bytes, errors, retries, status)",
        ok: list(schema_of::<flotilla_types::mesh::MeshStats>),
        errors: READ,
        may_warn: true,
        ..route(Get, "/v1/mesh/stats", Op::MeshStats)
    },
    Route {
        summary: "Every network, by name, with its subnet, services and attached tasks",
        ok: list(schema_of::<NetworkView>),
        errors: READ,
        may_warn: true,
        ..route(Get, "/v1/networks", Op::ListNetworks)
    },
    Route {
        summary: "Create a network (the leader allocates its subnet unless one is given)",
        body: Some(schema_of::<NetworkSpec>),
        ok: json(schema_of::<NetworkView>),
        errors: WRITE,
        ..route(Post, "/v1/networks", Op::CreateNetwork)
    },
    Route {
        summary: "One network by name or ID",
        ok: json(schema_of::<NetworkView>),
        errors: &[404, 409],
        may_warn: true,
        ..route(Get, "/v1/networks/{name}", Op::InspectNetwork)
    },
    Route {
        summary: "Remove a network; refused while a service or task uses it",
        ok: json(schema_of::<Removed>),
        errors: WRITE,
        ..route(Delete, "/v1/networks/{name}", Op::RemoveNetwork)
    },
    Route {
        summary: "Every secret, by name, with its version, size and the services that use it (never its data)",
        ok: list(schema_of::<crate::model::SecretView>),
        errors: READ,
        may_warn: true,
        ..route(Get, "/v1/secrets", Op::ListSecrets)
    },
    Route {
        summary: "Create a secret (data base64, at most 500 KB; sealed under the cluster data key)",
        body: Some(schema_of::<crate::model::SecretCreate>),
        ok: json(schema_of::<crate::model::SecretView>),
        errors: WRITE,
        ..route(Post, "/v1/secrets", Op::CreateSecret)
    },
    Route {
        summary: "One secret by name or ID (never its data)",
        ok: json(schema_of::<crate::model::SecretView>),
        errors: &[404, 409],
        may_warn: true,
        ..route(Get, "/v1/secrets/{name}", Op::InspectSecret)
    },
    Route {
        summary: "Remove a secret; refused while a service uses it",
        ok: json(schema_of::<Removed>),
        errors: WRITE,
        ..route(Delete, "/v1/secrets/{name}", Op::RemoveSecret)
    },
    Route {
        summary: "A new version of a secret (data base64); the services that use it roll onto it with their own update config",
        body: Some(schema_of::<crate::model::SecretUpdate>),
        ok: json(schema_of::<crate::model::SecretUpdated>),
        errors: WRITE,
        ..route(Put, "/v1/secrets/{name}", Op::UpdateSecret)
    },
    Route {
        summary: "Every config, by name, with its version, size and the services that use it (never its data)",
        ok: list(schema_of::<crate::model::SecretView>),
        errors: READ,
        may_warn: true,
        ..route(Get, "/v1/configs", Op::ListConfigs)
    },
    Route {
        summary: "Create a config (data base64, at most 500 KB; sealed under the cluster data key)",
        body: Some(schema_of::<crate::model::SecretCreate>),
        ok: json(schema_of::<crate::model::SecretView>),
        errors: WRITE,
        ..route(Post, "/v1/configs", Op::CreateConfig)
    },
    Route {
        summary: "One config by name or ID (never its data)",
        ok: json(schema_of::<crate::model::SecretView>),
        errors: &[404, 409],
        may_warn: true,
        ..route(Get, "/v1/configs/{name}", Op::InspectConfig)
    },
    Route {
        summary: "Remove a config; refused while a service uses it",
        ok: json(schema_of::<Removed>),
        errors: WRITE,
        ..route(Delete, "/v1/configs/{name}", Op::RemoveConfig)
    },
    Route {
        summary: "A new version of a config (data base64); the services that use it roll onto it with their own update config",
        body: Some(schema_of::<crate::model::SecretUpdate>),
        ok: json(schema_of::<crate::model::SecretUpdated>),
        errors: WRITE,
        ..route(Put, "/v1/configs/{name}", Op::UpdateConfig)
    },
    Route {
        summary: "What a task's resolver answers for a name (service names, aliases, tasks.NAME), from the task's networks",
        query: Some(params_of::<crate::model::ResolveQuery>),
        ok: json(schema_of::<crate::model::ResolveView>),
        errors: &[400, 404, 409],
        may_warn: true,
        ..route(Get, "/v1/resolve", Op::Resolve)
    },
];

/// Whether `path` (a request's) is a public route: served on the remote
/// port without a certificate.
pub fn is_public(path: &str) -> bool {
    ROUTES.iter().any(|r| r.public && r.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_method_and_path_and_per_operation() {
        let mut seen = std::collections::BTreeSet::new();
        let mut ops = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.path, r.method.as_str())),
                "{} {} is twice in the table",
                r.method.as_str(),
                r.path
            );
            assert!(ops.insert(format!("{:?}", r.operation)));
            assert!(!r.summary.is_empty(), "{} has no summary", r.path);
        }
    }

    #[test]
    fn only_the_leader_check_is_public() {
        assert!(is_public("/v1/leader-check"));
        assert!(!is_public("/v1/info"));
        assert!(!is_public("/v1/leader-check/x"));
    }
}
