//! Output formatting: tables the way docker prints them (a header in
//! capitals, columns left-aligned and three spaces apart), the service and
//! task tables, `service inspect`'s text, and JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use flotilla_api::model::{ServiceView, TaskView};
use flotilla_types::TaskState;
use flotilla_types::{format_duration_ms, HealthTest, SecretKind, SecretRef};

/// Renders rows under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i < last {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 3;
                text.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// "3 seconds ago", "2 minutes ago", as docker says it.
pub fn ago(then_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = now.saturating_sub(then_ms) / 1000;
    let (n, unit) = match secs {
        0 => return "less than a second ago".to_string(),
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s => (s / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    format!("{n} {unit}{plural} ago")
}

/// Capitalizes the first letter: "running" -> "Running".
pub fn title(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) fn task_name(t: &TaskView) -> String {
    if t.slot > 0 {
        format!("{}.{}", t.service, t.slot)
    } else {
        format!("{}.{}", t.service, t.node_id.as_deref().unwrap_or("-"))
    }
}

pub(crate) fn task_error(t: &TaskView) -> String {
    match (&t.error, t.exit_code) {
        (Some(e), _) => e.clone(),
        (None, Some(code)) if t.state == TaskState::Failed => format!("exit code {code}"),
        _ => String::new(),
    }
}

/// `service ls` (and `stack services`): one row per service.
pub fn services_table(services: &[ServiceView]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.id.chars().take(12).collect(),
                s.name.clone(),
                s.mode.as_str().to_string(),
                replicas_text(s),
                s.spec
                    .task
                    .image
                    .clone()
                    .unwrap_or_else(|| s.command.clone()),
                s.update_status
                    .as_ref()
                    .map(|u| u.state.as_str().to_string())
                    .unwrap_or_default(),
                ports_text(s),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "MODE",
            "REPLICAS",
            "IMAGE/COMMAND",
            "UPDATE",
            "PORTS",
        ],
        &rows,
    )
}

/// `*:18080->8080/tcp, *:30000->80/tcp`, as Docker's `service ls`; a
/// port still waiting for the allocator shows as `*:?->80/tcp`.
pub fn ports_text(s: &ServiceView) -> String {
    let wanted = &s.spec.task.ports;
    let mut out: Vec<String> = s.published.iter().map(ToString::to_string).collect();
    let allocated = |p: &flotilla_types::PortConfig| {
        s.published.iter().any(|q| {
            q.target == p.target
                && q.protocol == p.protocol
                && p.published.is_none_or(|n| n == q.published)
        })
    };
    for p in wanted.iter().filter(|p| !allocated(p)) {
        out.push(format!("*:?->{}/{}", p.target, p.protocol.as_str()));
    }
    out.join(", ")
}

/// `flotilla list`.
pub fn endpoints_table(rows: &[flotilla_api::model::EndpointView]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                if e.address.is_empty() {
                    "-".into()
                } else {
                    e.address.clone()
                },
                e.task_id.chars().take(12).collect(),
                e.node.clone(),
                e.status.as_str().to_string(),
                e.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table(
        &["NAME", "ADDRESS", "TASK ID", "NODE", "STATUS", "LABELS"],
        &rows,
    )
}

/// `mesh stats`: a row per published port on each node, then one per
/// backend under it, as HAProxy's stats page lists frontends and servers.
pub fn mesh_stats_table(stats: &[flotilla_types::mesh::MeshStats]) -> String {
    let mut rows = Vec::new();
    for node in stats {
        for l in &node.listeners {
            let status = match (&l.error, l.listening) {
                (Some(e), _) => format!("DOWN: {e}"),
                (None, true) => "OPEN".to_string(),
                (None, false) => "CLOSED".to_string(),
            };
            rows.push(vec![
                node.node_id.chars().take(12).collect(),
                format!(
                    "{} :{}/{}",
                    l.service_name,
                    l.published,
                    l.protocol.as_str()
                ),
                status,
                l.current.to_string(),
                l.max.to_string(),
                l.total.to_string(),
                String::new(),
                String::new(),
                l.refused.to_string(),
                String::new(),
            ]);
            for b in &l.backends {
                let status = match (b.in_rotation, b.last_check, b.last_ok) {
                    (false, _, _) => "LEAVING",
                    (true, None, _) => "UP (not used yet)",
                    (true, Some(_), true) => "UP",
                    (true, Some(_), false) => "UP (last connect failed)",
                };
                rows.push(vec![
                    String::new(),
                    format!(
                        "  {} {}",
                        b.task_id.chars().take(12).collect::<String>(),
                        b.addr
                    ),
                    status.to_string(),
                    b.current.to_string(),
                    b.max.to_string(),
                    b.total.to_string(),
                    b.bytes_in.to_string(),
                    b.bytes_out.to_string(),
                    b.errors.to_string(),
                    b.retries.to_string(),
                ]);
            }
        }
    }
    table(
        &[
            "NODE",
            "PORT / BACKEND",
            "STATUS",
            "CUR",
            "MAX",
            "TOTAL",
            "BYTES IN",
            "BYTES OUT",
            "ERRORS",
            "RETRIES",
        ],
        &rows,
    )
}

/// `3/3`, or `3/3 (2 healthy)` for a service whose tasks are checked.
pub fn replicas_text(s: &ServiceView) -> String {
    // A job: `2/3 (3/3 completed)`, as Docker shows it.
    if let Some(done) = s.replicas.completed {
        return format!(
            "{}/{} ({done}/{} completed)",
            s.replicas.running, s.replicas.desired, s.replicas.desired
        );
    }
    match s.replicas.healthy {
        Some(h) => format!(
            "{}/{} ({h} healthy)",
            s.replicas.running, s.replicas.desired
        ),
        None => format!("{}/{}", s.replicas.running, s.replicas.desired),
    }
}

/// `service inspect --format table`.
pub fn inspect_text(s: &ServiceView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16}{v}\n"));
    let t = &s.spec.task;
    line("ID:", s.id.clone());
    line("Name:", s.name.clone());
    line("Mode:", s.mode.as_str().to_string());
    line("Replicas:", replicas_text(s));
    line("Driver:", t.driver.as_str().to_string());
    if let Some(image) = &t.image {
        line("Image:", image.clone());
    }
    if let Some(e) = &t.entrypoint {
        line("Entrypoint:", e.join(" "));
    }
    line("Command:", s.command.clone());
    if !t.ports.is_empty() {
        line("Ports:", ports_text(s));
    }
    if !s.networks.is_empty() {
        line("Endpoint mode:", s.spec.endpoint_mode.as_str().to_string());
    }
    for n in &s.networks {
        let mut text = n.network.clone();
        if let Some(vip) = &n.virtual_ip {
            text.push_str(&format!(" (virtual IP {vip})"));
        }
        if !n.aliases.is_empty() {
            text.push_str(&format!(", aliases {}", n.aliases.join(", ")));
        }
        line("Network:", text);
    }
    for (what, kind, refs) in [
        ("Secret:", SecretKind::Secret, &t.secrets),
        ("Config:", SecretKind::Config, &t.configs),
    ] {
        for r in refs {
            line(what, secret_ref_text(kind, r));
        }
    }
    line("Restart:", t.restart.condition.as_str().to_string());
    if let Some(h) = &t.health {
        line("Health check:", health_test_text(&h.test));
        line(
            "  every:",
            format!(
                "{} (timeout {}, retries {}, start period {})",
                format_duration_ms(h.interval_ms),
                format_duration_ms(h.timeout_ms),
                h.retries,
                format_duration_ms(h.start_period_ms)
            ),
        );
    }
    for (what, u) in [("Update:", &s.spec.update), ("Rollback:", &s.spec.rollback)] {
        line(
            what,
            format!(
                "parallelism {}, delay {}, order {}, on failure {}, monitor {}, max failure ratio {}",
                u.parallelism,
                format_duration_ms(u.delay_ms),
                u.order.as_str(),
                u.failure_action.as_str(),
                format_duration_ms(u.monitor_ms),
                u.max_failure_ratio.0
            ),
        );
    }
    if let Some(u) = &s.update_status {
        line("UpdateStatus:", String::new());
        line(" State:", u.state.as_str().to_string());
        line(" Started:", ago(u.started_at));
        if let Some(done) = u.completed_at {
            line(" Completed:", ago(done));
        }
        line(" Message:", u.message.clone());
    }
    out
}

/// A secret or config of a service as `inspect` shows it: its name,
/// where the task finds it and how; never its data.
/// `db_pass -> /run/secrets/db_pass (mode 0444, version 1)`.
pub fn secret_ref_text(kind: SecretKind, r: &SecretRef) -> String {
    let mut how = vec![format!("mode {:04o}", r.mode)];
    if r.uid != "0" || r.gid != "0" {
        how.push(format!("uid {}, gid {}", r.uid, r.gid));
    }
    if r.version > 0 {
        how.push(format!("version {}", r.version));
    }
    format!(
        "{} -> {} ({})",
        r.source,
        r.path_in_task(kind),
        how.join(", ")
    )
}

/// A health test as Docker writes it.
fn health_test_text(test: &HealthTest) -> String {
    match test {
        HealthTest::None => "none".to_string(),
        HealthTest::Image => "the image's own".to_string(),
        HealthTest::Exec { argv } => format!("CMD {}", argv.join(" ")),
        HealthTest::Shell { command } => format!("CMD-SHELL {command}"),
        HealthTest::Http { port, path } => format!("HTTP GET :{port}{path}"),
        HealthTest::Tcp { port } => format!("TCP :{port}"),
    }
}

/// `service ps` (and `stack ps`): the table, with an IMAGE column when
/// any task runs an image.
pub fn ps_table(tasks: &[TaskView]) -> String {
    let with_image = tasks.iter().any(|t| t.image.is_some());
    let with_files = tasks.iter().any(|t| !t.files.is_empty());
    let mut header = ps_header(with_image);
    if with_files {
        header.push("SECRETS AND CONFIGS");
    }
    table(&header, &ps_rows_full(tasks, with_image, with_files))
}

/// `db_pw@2, nginx@1`: which version of each secret and config a task
/// has.
pub fn files_text(t: &TaskView) -> String {
    t.files
        .iter()
        .map(|f| format!("{}@{}", f.name, f.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The header of `service ps`, with or without the IMAGE column.
pub fn ps_header(with_image: bool) -> Vec<&'static str> {
    let mut header = vec!["ID", "NAME"];
    if with_image {
        header.push("IMAGE");
    }
    header.extend(["NODE", "DESIRED STATE", "CURRENT STATE", "HEALTH", "ERROR"]);
    header
}

/// Rows of `service ps`: per slot, the current task and then its history
/// marked `\_`, as Swarm prints it.
pub fn ps_rows(tasks: &[TaskView]) -> Vec<Vec<String>> {
    ps_rows_with(tasks, false)
}

/// Rows of `service ps`, with the IMAGE column when `with_image`.
pub fn ps_rows_with(tasks: &[TaskView], with_image: bool) -> Vec<Vec<String>> {
    ps_rows_full(tasks, with_image, false)
}

/// Rows of `service ps`, with the IMAGE column when `with_image` and the
/// versions of the secrets and configs when `with_files`.
fn ps_rows_full(tasks: &[TaskView], with_image: bool, with_files: bool) -> Vec<Vec<String>> {
    let mut sorted: Vec<&TaskView> = tasks.iter().collect();
    // Global tasks have slot 0 and are told apart by node.
    let key = |t: &TaskView| (t.slot, if t.slot == 0 { t.node_id.clone() } else { None });
    sorted.sort_by(|a, b| {
        (key(a), !a.current, std::cmp::Reverse(a.created_at), &a.id).cmp(&(
            key(b),
            !b.current,
            std::cmp::Reverse(b.created_at),
            &b.id,
        ))
    });
    let mut rows = Vec::new();
    let mut last_slot: Option<(u64, Option<String>)> = None;
    for t in sorted {
        let key = (t.slot, if t.slot == 0 { t.node_id.clone() } else { None });
        let first = last_slot.as_ref() != Some(&key);
        last_slot = Some(key);
        let name = if first {
            task_name(t)
        } else {
            format!(" \\_ {}", task_name(t))
        };
        let mut row = vec![t.id.chars().take(12).collect(), name];
        if with_image {
            row.push(t.image.clone().unwrap_or_default());
        }
        row.extend([
            t.node.clone().unwrap_or_default(),
            title(t.desired_state.as_str()),
            format!("{} {}", title(t.state.as_str()), ago(t.timestamp)),
            t.health.map(|h| h.as_str().to_string()).unwrap_or_default(),
            task_error(t),
        ]);
        if with_files {
            row.push(files_text(t));
        }
        rows.push(row);
    }
    rows
}

/// How long ago a manager last heard a node, as `info` and `node ls`
/// show it: "last heard 12s ago", "last heard 1m 5s ago", or "not heard
/// since this manager started".
pub fn heard_ago(age_ms: Option<u64>) -> String {
    match age_ms {
        None => "not heard since this manager started".to_string(),
        Some(ms) => {
            let s = ms / 1000;
            match s {
                0..=59 => format!("last heard {s}s ago"),
                60..=3599 => format!("last heard {}m {}s ago", s / 60, s % 60),
                _ => format!("last heard {}h {}m ago", s / 3600, (s % 3600) / 60),
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn heard_ago_says_how_long() {
        use super::heard_ago;
        assert_eq!(heard_ago(Some(12_400)), "last heard 12s ago");
        assert_eq!(heard_ago(Some(65_000)), "last heard 1m 5s ago");
        assert_eq!(heard_ago(Some(7_300_000)), "last heard 2h 1m ago");
        assert_eq!(heard_ago(None), "not heard since this manager started");
    }

    use super::*;
    use flotilla_types::DesiredState;

    /// A task view for tests.
    pub(crate) fn tv(id: &str, slot: u64, current: bool, created_at: u64) -> TaskView {
        TaskView {
            id: id.into(),
            service: "web".into(),
            service_id: "s".into(),
            slot,
            node: Some("n".into()),
            node_id: Some("n".into()),
            desired_state: if current {
                DesiredState::Running
            } else {
                DesiredState::Shutdown
            },
            state: if current {
                TaskState::Running
            } else {
                TaskState::Failed
            },
            timestamp: 0,
            message: String::new(),
            error: None,
            exit_code: if current { None } else { Some(137) },
            pid: None,
            health: None,
            image: None,
            container_id: None,
            up_to_date: true,
            created_at,
            current,
            endpoints: Vec::new(),
            networks: Vec::new(),
            files: Vec::new(),
        }
    }

    #[test]
    fn ps_marks_history_under_its_slot() {
        let rows = ps_rows(&[
            tv("b", 1, false, 1),
            tv("c", 2, true, 3),
            tv("a", 1, true, 2),
        ]);
        let names: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
        assert_eq!(names, ["web.1", " \\_ web.1", "web.2"]);
        assert_eq!(rows[1][6], "exit code 137");
    }

    #[test]
    fn aligns_columns() {
        let t = table(
            &["NAME", "REPLICAS"],
            &[
                vec!["web".into(), "3/3".into()],
                vec!["database".into(), "1/1".into()],
            ],
        );
        assert_eq!(t, "NAME       REPLICAS\nweb        3/3\ndatabase   1/1\n");
    }

    #[test]
    fn secrets_show_name_and_path_never_data() {
        let short = SecretRef::parse(SecretKind::Secret, "db_pass").expect("short");
        assert_eq!(
            secret_ref_text(SecretKind::Secret, &short),
            "db_pass -> /run/secrets/db_pass (mode 0444)"
        );
        let mut long = SecretRef::parse(
            SecretKind::Config,
            "source=nginx,target=/etc/nginx.conf,uid=101,gid=101,mode=0440",
        )
        .expect("long");
        long.version = 3;
        assert_eq!(
            secret_ref_text(SecretKind::Config, &long),
            "nginx -> /etc/nginx.conf (mode 0440, uid 101, gid 101, version 3)"
        );
    }

    #[test]
    fn titles() {
        assert_eq!(title("running"), "Running");
        assert_eq!(title(""), "");
    }

    #[test]
    fn ps_shows_each_tasks_secret_versions_only_when_there_are_some() {
        let plain = ps_table(&[tv("t1", 1, true, 1)]);
        assert!(!plain.contains("SECRETS"), "{plain}");
        let mut t = tv("t2", 1, true, 1);
        t.files = vec![flotilla_api::model::TaskFileVersion {
            kind: flotilla_types::SecretKind::Secret,
            name: "db_pw".into(),
            version: 2,
            target: "/run/secrets/db_pw".into(),
        }];
        let with = ps_table(&[t]);
        assert!(
            with.contains("SECRETS AND CONFIGS") && with.contains("db_pw@2"),
            "{with}"
        );
    }
}
