//! Swarm's task templates: `{{.Service.Name}}-{{.Task.Slot}}` in a
//! container's hostname, in environment values and in mount sources and
//! targets, expanded on the node when the task starts, with what only the
//! node knows then (its ID and host name, the task's ID).
//!
//! Only Swarm's placeholders are understood ([`PLACEHOLDERS`]); anything
//! else inside `{{ }}` (another field, a function, a pipeline) is an error,
//! which [`check`] finds when the spec is written, so that a task never
//! starts with a silently empty value. Text outside `{{ }}` is kept as it
//! is, a lone `}}` included, as Go's templates keep it.

/// What a task's templates are expanded with, as Swarm's template context
/// names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateContext {
    pub service_id: String,
    pub service_name: String,
    pub task_id: String,
    /// Swarm's task name: `SERVICE.SLOT.TASK_ID` (the node's ID in place
    /// of the slot for a global service).
    pub task_name: String,
    /// The slot number, or the node's ID for a global service's task, as
    /// Swarm gives it.
    pub task_slot: String,
    pub node_id: String,
    pub node_hostname: String,
    pub node_os: String,
    pub node_arch: String,
}

impl TemplateContext {
    /// The context of task `task_id` of `service_name` in `slot` (0 for a
    /// global service's task) on node `node_id`; the node's host name and
    /// platform are the caller's to fill in.
    pub fn for_task(
        service_id: &str,
        service_name: &str,
        task_id: &str,
        slot: u64,
        node_id: &str,
    ) -> Self {
        let task_slot = if slot == 0 {
            node_id.to_string()
        } else {
            slot.to_string()
        };
        TemplateContext {
            service_id: service_id.to_string(),
            service_name: service_name.to_string(),
            task_id: task_id.to_string(),
            task_name: format!("{service_name}.{task_slot}.{task_id}"),
            task_slot,
            node_id: node_id.to_string(),
            ..TemplateContext::default()
        }
    }

    fn value(&self, placeholder: &str) -> Option<&str> {
        Some(match placeholder {
            ".Service.ID" => &self.service_id,
            ".Service.Name" => &self.service_name,
            ".Task.ID" => &self.task_id,
            ".Task.Name" => &self.task_name,
            ".Task.Slot" => &self.task_slot,
            ".Node.ID" => &self.node_id,
            ".Node.Hostname" => &self.node_hostname,
            ".Node.Platform.OS" => &self.node_os,
            ".Node.Platform.Architecture" => &self.node_arch,
            _ => return None,
        })
    }
}

/// The placeholders a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    ".Service.ID",
    ".Service.Name",
    ".Task.ID",
    ".Task.Name",
    ".Task.Slot",
    ".Node.ID",
    ".Node.Hostname",
    ".Node.Platform.OS",
    ".Node.Platform.Architecture",
];

/// `text` with each `{{.X.Y}}` (spaces inside the braces allowed) replaced
/// by its value in `ctx`. An unknown placeholder or an unclosed `{{` is an
/// error that says which.
pub fn expand(text: &str, ctx: &TemplateContext) -> Result<String, String> {
    expand_with(text, ctx, &|name, _| {
        Err(format!(
            "{{{{ {name} ... }}}} is for the data of a config or secret made with --template-driver golang"
        ))
    })
}

/// The functions a templated config or secret may call:
/// `{{ env "VAR" }}` (the task's environment), `{{ secret "TARGET" }}` and
/// `{{ config "TARGET" }}` (the data of another of the task's files), as
/// Swarm's `golang` template driver has them.
pub const FUNCTIONS: &[&str] = &["env", "secret", "config"];

/// Like [`expand`], and an action `NAME "ARG"` with NAME one of
/// [`FUNCTIONS`] is answered by `call(NAME, ARG)`.
pub fn expand_with(
    text: &str,
    ctx: &TemplateContext,
    call: &dyn Fn(&str, &str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("{:?} has a {{{{ without its }}}}", text))?;
        let action = &after[..close];
        let name = action.trim();
        if let Some((function, arg)) = function_call(name) {
            out.push_str(&call(function, arg)?);
            rest = &after[close + 2..];
            continue;
        }
        let value = ctx.value(name).ok_or_else(|| {
            format!(
                "unknown placeholder {{{{{action}}}}}: a template may use {}",
                PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{{{p}}}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        out.push_str(value);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `env "X"` as `("env", "X")`, for a function of [`FUNCTIONS`] with one
/// quoted argument.
fn function_call(action: &str) -> Option<(&str, &str)> {
    let (name, arg) = action.split_once(char::is_whitespace)?;
    let arg = arg.trim().strip_prefix('"')?.strip_suffix('"')?;
    FUNCTIONS.contains(&name).then_some((name, arg))
}

/// Whether a templated config's data expands, whatever the task and its
/// files: placeholders known, functions of [`FUNCTIONS`] only.
pub fn check_with_functions(text: &str) -> Result<(), String> {
    expand_with(text, &TemplateContext::default(), &|_, _| Ok(String::new())).map(|_| ())
}

/// Whether `text` expands, whatever the task: what the spec's validation
/// asks of a template.
pub fn check(text: &str) -> Result<(), String> {
    if !text.contains("{{") {
        return Ok(());
    }
    expand(text, &TemplateContext::default()).map(|_| ())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ctx() -> TemplateContext {
        TemplateContext {
            node_hostname: "node-a".into(),
            node_os: "linux".into(),
            node_arch: "x86_64".into(),
            ..TemplateContext::for_task("svc1", "web", "t9", 3, "n1")
        }
    }

    #[test]
    fn placeholders_expand() {
        let c = ctx();
        assert_eq!(
            expand("{{.Service.Name}}-{{.Task.Slot}}", &c).as_deref(),
            Ok("web-3")
        );
        assert_eq!(
            expand("{{ .Node.Hostname }}/{{.Node.ID}}/{{.Service.ID}}", &c).as_deref(),
            Ok("node-a/n1/svc1")
        );
        assert_eq!(expand("{{.Task.Name}}", &c).as_deref(), Ok("web.3.t9"));
        assert_eq!(expand("{{.Task.ID}}", &c).as_deref(), Ok("t9"));
        assert_eq!(
            expand("{{.Node.Platform.OS}}-{{.Node.Platform.Architecture}}", &c).as_deref(),
            Ok("linux-x86_64")
        );
        // Text around and between, a lone }}, and no template at all.
        assert_eq!(
            expand("a }} b {{.Task.Slot}}{{.Task.Slot}} c", &c).as_deref(),
            Ok("a }} b 33 c")
        );
        assert_eq!(expand("plain", &c).as_deref(), Ok("plain"));
        assert_eq!(expand("", &c).as_deref(), Ok(""));
    }

    #[test]
    fn a_global_task_has_the_node_for_a_slot() {
        let c = TemplateContext::for_task("s", "agent", "t1", 0, "n7");
        assert_eq!(expand("{{.Task.Slot}}", &c).as_deref(), Ok("n7"));
        assert_eq!(expand("{{.Task.Name}}", &c).as_deref(), Ok("agent.n7.t1"));
    }

    #[test]
    fn unknown_placeholders_and_unclosed_braces_are_errors() {
        let e = expand("{{.Service.Labels}}", &ctx()).unwrap_err();
        assert!(
            e.starts_with(
                "unknown placeholder {{.Service.Labels}}: a template may use {{.Service.ID}}, "
            ),
            "{e}"
        );
        assert!(expand("{{.Task.Slot | printf}}", &ctx()).is_err());
        assert!(expand("{{ }}", &ctx()).is_err());
        assert_eq!(
            expand("x-{{.Task.Slot", &ctx()),
            Err(r#""x-{{.Task.Slot" has a {{ without its }}"#.to_string())
        );
        assert_eq!(check("{{.Node.Hostname}}"), Ok(()));
        assert_eq!(check("no template"), Ok(()));
        assert!(check("{{.Nope}}").is_err());
    }

    #[test]
    fn a_templated_config_calls_env_secret_and_config() {
        let call = |f: &str, a: &str| -> Result<String, String> {
            match (f, a) {
                ("env", "PORT") => Ok("8080".into()),
                ("secret", "db_pw") => Ok("hunter2".into()),
                _ => Err(format!("no {f} {a}")),
            }
        };
        let text =
            "listen {{ env \"PORT\" }}; password {{secret \"db_pw\"}}; host {{.Service.Name}}";
        assert_eq!(
            expand_with(text, &ctx(), &call).unwrap(),
            "listen 8080; password hunter2; host web"
        );
        assert_eq!(
            expand_with("{{ config \"x\" }}", &ctx(), &call).unwrap_err(),
            "no config x"
        );
        // Outside a templated config, a function is an error that says so.
        assert!(expand("{{ env \"PORT\" }}", &ctx())
            .unwrap_err()
            .contains("--template-driver"));
        assert!(check_with_functions("a {{ env \"X\" }} {{.Task.Slot}}").is_ok());
        assert!(check_with_functions("{{ exec \"rm\" }}").is_err());
        assert!(
            check_with_functions("{{ env X }}").is_err(),
            "the argument is quoted"
        );
    }
}
