//! Property tests for the Compose parser: the laws of interpolation; no
//! panic (or stack overflow) on arbitrary bytes, YAML-ish token soup,
//! documents generated from a grammar of real Swarm keys with random values
//! in random places, and mutations of valid files; the shape of every error
//! (one line, file first, `file:line:` for YAML and type errors, the line of
//! the bad value); and, for valid documents, deterministic conversion, values
//! read as written, and `stack config` output reading back as the same stack.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};

use flotilla_compose::stack::{parse_stack_files, StackError};
use flotilla_compose::{interpolate, merged_yaml, parse_compose, ComposeError, InterpolationError};
use flotilla_types::{PortConfig, ServiceMode};

const FILE: &str = "fuzz.yml";
/// For `parse_stack_files`, which reads `.env` beside the first file: a
/// directory that does not exist keeps the developer's `.env` out.
const STACK_FILE: &str = "no-such-dir-for-fuzz/fuzz.yml";

/// `cases` per property, or `PROPTEST_CASES` for a longer hunt.
fn cfg(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Failures are reported with their minimal input; no files are
        // written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn vars() -> BTreeMap<String, String> {
    [
        ("FUZZ_SET", "set-value"),
        ("FUZZ_EMPTY", ""),
        ("FUZZ_N", "3"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Checks the shape every error shares: one line, the file first, and for
/// YAML and type errors a real line within the text.
fn check_error(e: &ComposeError, files: &[(&str, &str)]) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(
        !text.contains('\n') && !text.contains('\r'),
        "error is not one line: {text:?}"
    );
    prop_assert!(
        files
            .iter()
            .any(|(f, _)| text.starts_with(&format!("{f}:"))),
        "error does not start with the file name: {text:?}"
    );
    if let ComposeError::Yaml { file, line, .. } | ComposeError::Invalid { file, line, .. } = e {
        let lines = files
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, t)| yaml_lines(t) + 1)
            .unwrap_or(0);
        prop_assert!(
            *line >= 1 && *line <= lines,
            "line {line} outside 1..={lines}: {text:?}"
        );
        prop_assert!(text.starts_with(&format!("{file}:{line}:")), "{text:?}");
    }
    Ok(())
}

/// Lines as YAML counts them: a lone `\r` breaks a line too (`str::lines`
/// does not count it, which once made this check fail on random bytes).
fn yaml_lines(text: &str) -> u64 {
    text.replace("\r\n", "\n").matches(['\r', '\n']).count() as u64 + 1
}

fn check_stack_error(e: &StackError, files: &[(&str, &str)]) -> Result<(), TestCaseError> {
    let text = e.to_string();
    match e {
        StackError::Compose(c) => check_error(c, files),
        _ => {
            prop_assert!(!text.contains('\n'), "error is not one line: {text:?}");
            prop_assert!(
                files
                    .iter()
                    .any(|(f, _)| text.starts_with(&format!("{f}:"))),
                "error does not start with the file name: {text:?}"
            );
            Ok(())
        }
    }
}

/// Parses one text as a Compose file and as a stack; any error must have
/// the common shape. Returns whether the Compose parse succeeded.
fn parse_any(text: &str) -> Result<bool, TestCaseError> {
    let files = [(FILE, text)];
    let ok = match parse_compose(&files, &vars()) {
        Ok(_) => true,
        Err(e) => {
            check_error(&e, &files)?;
            false
        }
    };
    let files = [(STACK_FILE, text)];
    if let Err(e) = parse_stack_files(&files) {
        check_stack_error(&e, &files)?;
    }
    Ok(ok)
}

// ---------------------------------------------------------------------------
// Interpolation

fn var_name() -> impl Strategy<Value = String> {
    select(vec!["A", "B", "TAG", "_X", "A1", "ab"]).prop_map(str::to_string)
}

fn var_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(var_name(), "\\PC{0,6}", 0..5)
}

/// Text made of the pieces interpolation cares about.
fn dollar_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        select(vec![
            "$", "$$", "${", "}", "{", ":", "-", "?", "+", ":-", ":?", ":+", "${A", "${TAG}", "$A",
            "$1", " ", "\n", "é", "x"
        ])
        .prop_map(str::to_string),
        var_name(),
        "\\PC{0,3}",
    ];
    vec(piece, 0..24).prop_map(|p| p.concat())
}

fn lookup(vars: &BTreeMap<String, String>) -> impl Fn(&str) -> Option<String> + '_ {
    move |n| vars.get(n).cloned()
}

proptest! {
    #![proptest_config(cfg(512))]

    #[test]
    fn interpolation_never_panics(text in prop_oneof![dollar_soup(), any::<String>()], vars in var_map()) {
        if let Err(e) = interpolate(&text, &lookup(&vars)) {
            // Messages quote the text; they stay on one line.
            prop_assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn double_dollars_become_one(parts in vec("[^$]{0,6}", 1..6), vars in var_map()) {
        let text = parts.join("$$");
        prop_assert_eq!(interpolate(&text, &lookup(&vars)), Ok(parts.join("$")));
    }

    #[test]
    fn text_without_dollars_is_unchanged(text in "[^$]{0,40}", vars in var_map()) {
        prop_assert_eq!(interpolate(&text, &lookup(&vars)), Ok(text.clone()));
    }

    #[test]
    fn a_set_variable_gives_its_value(
        name in var_name(),
        value in any::<String>(),
        before in "[^$]{0,5}",
        after in "[^$]{0,5}",
        braced in any::<bool>(),
    ) {
        let vars = BTreeMap::from([(name.clone(), value.clone())]);
        // `$NAME` ends at the first character that cannot be in a name.
        let reference = if braced || after.starts_with(|c: char| c == '_' || c.is_ascii_alphanumeric()) {
            format!("${{{name}}}")
        } else {
            format!("${name}")
        };
        let text = format!("{before}{reference}{after}");
        prop_assert_eq!(interpolate(&text, &lookup(&vars)), Ok(format!("{before}{value}{after}")));
    }

    #[test]
    fn a_required_unset_variable_is_an_error_naming_it(
        name in var_name(),
        message in "[^${}]{0,12}",
        colon in any::<bool>(),
        vars in var_map(),
    ) {
        let mut vars = vars;
        vars.remove(&name);
        let op = if colon { ":?" } else { "?" };
        let r = interpolate(&format!("x${{{name}{op}{message}}}y"), &lookup(&vars));
        match r {
            Err(InterpolationError::Missing { name: n, message: m }) => {
                prop_assert_eq!(&n, &name);
                prop_assert_eq!(m, message);
                let shown = InterpolationError::Missing { name: n, message: String::new() }.to_string();
                prop_assert!(shown.contains(&name), "{}", shown);
            }
            other => prop_assert!(false, "expected Missing, got {:?}", other),
        }
    }

    #[test]
    fn escaping_dollars_round_trips(value in prop_oneof![any::<String>(), dollar_soup()], vars in var_map()) {
        let escaped = value.replace('$', "$$");
        prop_assert_eq!(interpolate(&escaped, &lookup(&vars)), Ok(value));
    }
}

// ---------------------------------------------------------------------------
// A YAML tree that can be rendered with the line of every scalar recorded.

#[derive(Debug, Clone)]
enum Y {
    /// A scalar exactly as written in YAML (quoted, plain, an `*alias`).
    S(String),
    /// Items; rendered in flow style when `true`.
    Seq(Vec<Y>, bool),
    Map(Vec<(String, Y)>, bool),
    /// `&name` before a block mapping.
    Anchor(String, Box<Y>),
}

fn q(t: &str) -> Y {
    Y::S(serde_json::to_string(t).unwrap_or_default())
}

fn p(t: &str) -> Y {
    Y::S(t.to_string())
}

fn m(entries: Vec<(&str, Y)>) -> Y {
    Y::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        false,
    )
}

fn key_text(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.<".contains(c))
    {
        k.to_string()
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

fn flow(y: &Y) -> String {
    match y {
        Y::S(s) => s.clone(),
        Y::Seq(items, _) => format!(
            "[{}]",
            items.iter().map(flow).collect::<Vec<_>>().join(", ")
        ),
        Y::Map(entries, _) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", key_text(k), flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Y::Anchor(name, inner) => format!("&{name} {}", flow(inner)),
    }
}

/// Whether `y` is written on the line of its key.
fn inline(y: &Y) -> bool {
    match y {
        Y::S(_) => true,
        Y::Seq(items, f) => *f || items.is_empty(),
        Y::Map(entries, f) => *f || entries.is_empty(),
        Y::Anchor(..) => false,
    }
}

#[derive(Default)]
struct Rendered {
    text: String,
    /// Key path (as errors write it) of every inline value -> its line.
    lines: BTreeMap<String, u64>,
}

impl Rendered {
    fn line(&self) -> u64 {
        self.text.matches('\n').count() as u64 + 1
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn render_entries(entries: &[(String, Y)], indent: usize, path: &str, out: &mut Rendered) {
    let pad = " ".repeat(indent);
    for (k, v) in entries {
        let p = join(path, k);
        match v {
            Y::Anchor(name, inner) => {
                out.text
                    .push_str(&format!("{pad}{}: &{name}\n", key_text(k)));
                render_block(inner, indent + 2, &p, out);
            }
            v if inline(v) => {
                out.lines.insert(p.clone(), out.line());
                out.text
                    .push_str(&format!("{pad}{}: {}\n", key_text(k), flow(v)));
            }
            v => {
                out.text.push_str(&format!("{pad}{}:\n", key_text(k)));
                render_block(v, indent + 2, &p, out);
            }
        }
    }
}

fn render_block(y: &Y, indent: usize, path: &str, out: &mut Rendered) {
    let pad = " ".repeat(indent);
    match y {
        Y::Map(entries, _) => render_entries(entries, indent, path, out),
        Y::Seq(items, _) => {
            for (i, item) in items.iter().enumerate() {
                out.lines.insert(format!("{path}[{i}]"), out.line());
                out.text.push_str(&format!("{pad}- {}\n", flow(item)));
            }
        }
        other => {
            out.lines.insert(path.to_string(), out.line());
            out.text.push_str(&format!("{pad}{}\n", flow(other)));
        }
    }
}

fn render(doc: &Y) -> Rendered {
    let mut out = Rendered::default();
    render_block(doc, 0, "", &mut out);
    out
}

/// Every key path in the tree, in document order.
fn paths(y: &Y, path: &str, out: &mut Vec<String>) {
    match y {
        Y::Map(entries, _) => {
            for (k, v) in entries {
                let p = join(path, k);
                out.push(p.clone());
                paths(v, &p, out);
            }
        }
        Y::Seq(items, _) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push(p.clone());
                paths(v, &p, out);
            }
        }
        Y::Anchor(_, inner) => paths(inner, path, out),
        Y::S(_) => {}
    }
}

fn node_at<'a>(y: &'a mut Y, path: &str, at: &str) -> Option<&'a mut Y> {
    if path == at {
        return Some(y);
    }
    match y {
        Y::Map(entries, _) => entries
            .iter_mut()
            .find_map(|(k, v)| {
                let p = join(path, k);
                (at == p || at.starts_with(&format!("{p}.")) || at.starts_with(&format!("{p}[")))
                    .then_some((p, v))
            })
            .and_then(|(p, v)| node_at(v, &p, at)),
        Y::Seq(items, _) => items
            .iter_mut()
            .enumerate()
            .find_map(|(i, v)| {
                let p = format!("{path}[{i}]");
                (at == p || at.starts_with(&format!("{p}.")) || at.starts_with(&format!("{p}[")))
                    .then_some((p, v))
            })
            .and_then(|(p, v)| node_at(v, &p, at)),
        Y::Anchor(_, inner) => node_at(inner, path, at),
        Y::S(_) => None,
    }
}

// ---------------------------------------------------------------------------
// Valid documents from a grammar of real Swarm keys, with what each service
// must read as.

#[derive(Debug, Clone)]
struct Expect {
    name: String,
    image: Option<String>,
    command: Option<Vec<String>>,
    mode: ServiceMode,
    env: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    ports: Vec<PortConfig>,
}

/// `x-web` is a service like any other: only keys where Compose has fixed
/// ones are extension fields.
const NAMES: &[&str] = &["web", "api", "db", "vote-worker", "x-web"];

/// A scalar value as written and as it must read (as text).
fn scalar_value() -> impl Strategy<Value = (Y, String)> {
    prop_oneof![
        4 => "[a-z0-9 ./=:-]{0,10}".prop_map(|s| (q(&s), s)),
        1 => "[a-z]{0,4}".prop_map(|s| (q(&format!("{s}$${s}")), format!("{s}${s}"))),
        1 => Just((q("${FUZZ_UNSET_VAR_1:-dflt}"), "dflt".to_string())),
        1 => Just((q("pre-${FUZZ_SET}"), "pre-set-value".to_string())),
        1 => any::<u16>().prop_map(|n| (p(&n.to_string()), n.to_string())),
        1 => any::<bool>().prop_map(|b| (p(&b.to_string()), b.to_string())),
    ]
}

/// `environment:`/`labels:` as a mapping or a `KEY=VALUE` list.
fn pairs(key: &'static str) -> impl Strategy<Value = (Y, BTreeMap<String, String>)> {
    (
        btree_map(key, scalar_value(), 0..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(entries, as_list, flow_style)| {
            let read: BTreeMap<String, String> = entries
                .iter()
                .map(|(k, (_, r))| (k.clone(), r.clone()))
                .collect();
            let y = if as_list {
                Y::Seq(
                    entries
                        .iter()
                        .map(|(k, (w, _))| match w {
                            // A quoted scalar: put KEY= inside the quotes.
                            Y::S(s) if s.starts_with('"') => Y::S(format!("\"{k}={}", &s[1..])),
                            Y::S(s) => q(&format!("{k}={s}")),
                            _ => q(k),
                        })
                        .collect(),
                    flow_style,
                )
            } else {
                Y::Map(
                    entries.into_iter().map(|(k, (w, _))| (k, w)).collect(),
                    flow_style,
                )
            };
            (y, read)
        })
}

fn duration() -> impl Strategy<Value = Y> {
    select(vec!["1s", "30s", "1m30s", "500ms", "2h", "10s", "0"]).prop_map(q)
}

fn positive_duration() -> impl Strategy<Value = Y> {
    select(vec!["1s", "30s", "1m30s", "500ms", "2h", "10s"]).prop_map(q)
}

/// Optional `key: value` entries, in order.
fn entries(items: Vec<(&'static str, Option<Y>)>) -> Vec<(String, Y)> {
    items
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect()
}

fn update_config(rollback: bool) -> impl Strategy<Value = Y> {
    let actions = if rollback {
        vec!["continue", "pause"]
    } else {
        vec!["continue", "pause", "rollback"]
    };
    (
        proptest::option::of((0u64..5).prop_map(|n| p(&n.to_string()))),
        proptest::option::of(duration()),
        proptest::option::of(select(actions).prop_map(p)),
        proptest::option::of(duration()),
        proptest::option::of(select(vec!["0", "0.25", "1", "\"0.5\""]).prop_map(p)),
        proptest::option::of(select(vec!["start-first", "stop-first"]).prop_map(p)),
        any::<bool>(),
    )
        .prop_map(|(par, delay, action, monitor, ratio, order, flow_style)| {
            Y::Map(
                entries(vec![
                    ("parallelism", par),
                    ("delay", delay),
                    ("failure_action", action),
                    ("monitor", monitor),
                    ("max_failure_ratio", ratio),
                    ("order", order),
                ]),
                flow_style,
            )
        })
}

fn resources() -> impl Strategy<Value = Y> {
    let one = (
        proptest::option::of(select(vec!["\"0.5\"", "1", "0.25", "2"]).prop_map(p)),
        proptest::option::of(
            select(vec!["512M", "1g", "1024", "64MiB", "100m"]).prop_map(|m| {
                // `64MiB` is not a Compose size; keep only the valid ones.
                if m == "64MiB" {
                    q("64m")
                } else {
                    q(m)
                }
            }),
        ),
    )
        .prop_map(|(cpus, memory)| m_opt(vec![("cpus", cpus), ("memory", memory)]));
    (proptest::option::of(one.clone()), proptest::option::of(one))
        .prop_map(|(l, r)| m_opt(vec![("limits", l), ("reservations", r)]))
}

fn m_opt(items: Vec<(&'static str, Option<Y>)>) -> Y {
    Y::Map(entries(items), false)
}

fn placement() -> impl Strategy<Value = Y> {
    (
        proptest::option::of(
            btree_set(
                select(vec![
                    "node.role == worker",
                    "node.role==manager",
                    "node.labels.zone != b",
                    "node.hostname == n1",
                    "node.id != abc",
                ]),
                0..3,
            )
            .prop_map(|c| Y::Seq(c.into_iter().map(q).collect(), false)),
        ),
        proptest::option::of(Just(Y::Seq(
            vec![Y::Map(vec![("spread".into(), p("node.labels.zone"))], true)],
            false,
        ))),
        proptest::option::of((0u64..4).prop_map(|n| p(&n.to_string()))),
    )
        .prop_map(|(c, pref, max)| {
            m_opt(vec![
                ("constraints", c),
                ("preferences", pref),
                ("max_replicas_per_node", max),
            ])
        })
}

fn restart_policy() -> impl Strategy<Value = Y> {
    (
        proptest::option::of(select(vec!["none", "on-failure", "any"]).prop_map(p)),
        proptest::option::of(duration()),
        proptest::option::of((0u64..9).prop_map(|n| p(&n.to_string()))),
        proptest::option::of(duration()),
    )
        .prop_map(|(c, d, a, w)| {
            m_opt(vec![
                ("condition", c),
                ("delay", d),
                ("max_attempts", a),
                ("window", w),
            ])
        })
}

/// `deploy:` and the mode it must read as.
fn deploy() -> impl Strategy<Value = (Y, ServiceMode)> {
    let mode = prop_oneof![
        (1u64..5).prop_map(|n| (
            vec![("replicas", p(&n.to_string()))],
            ServiceMode::Replicated { replicas: n }
        )),
        (0u64..5).prop_map(|n| (
            vec![("mode", q("replicated")), ("replicas", q(&n.to_string()))],
            ServiceMode::Replicated { replicas: n }
        )),
        Just((vec![("mode", p("global"))], ServiceMode::Global)),
        Just((vec![], ServiceMode::Replicated { replicas: 1 })),
    ];
    (
        mode,
        any::<bool>(),
        proptest::option::of(update_config(false)),
        proptest::option::of(update_config(true)),
        proptest::option::of(resources()),
        proptest::option::of(placement()),
        proptest::option::of(restart_policy()),
        proptest::option::of(pairs("[a-z][a-z0-9.]{0,6}|x-[a-z]{1,3}").prop_map(|(y, _)| y)),
        proptest::option::of(select(vec!["vip", "dnsrr"]).prop_map(p)),
    )
        .prop_map(
            |((mode_keys, mode), merge, u, r, res, pl, rp, labels, ep)| {
                let mut e: Vec<(String, Y)> = Vec::new();
                if merge {
                    e.push(("<<".into(), p("*deploy")));
                }
                e.extend(mode_keys.into_iter().map(|(k, v)| (k.to_string(), v)));
                e.extend(entries(vec![
                    ("update_config", u),
                    ("rollback_config", r),
                    ("resources", res),
                    ("placement", pl),
                    ("restart_policy", rp),
                    ("labels", labels),
                    ("endpoint_mode", ep),
                ]));
                (Y::Map(e, false), mode)
            },
        )
}

fn healthcheck() -> impl Strategy<Value = Y> {
    let test = prop_oneof![
        Just(Y::Seq(vec![q("CMD"), q("true")], true)),
        "[a-z]{1,5}( [a-z]{1,3}){0,2}".prop_map(|s| q(&s)),
        Just(Y::Seq(
            vec![q("CMD-SHELL"), q("curl -f http://localhost/ || exit 1")],
            false
        )),
    ];
    (
        test,
        proptest::option::of(positive_duration()),
        proptest::option::of(positive_duration()),
        proptest::option::of((1u64..5).prop_map(|n| p(&n.to_string()))),
        proptest::option::of(duration()),
    )
        .prop_map(|(t, i, to, r, sp)| {
            m_opt(vec![
                ("test", Some(t)),
                ("interval", i),
                ("timeout", to),
                ("retries", r),
                ("start_period", sp),
            ])
        })
}

fn command() -> impl Strategy<Value = (Y, Vec<String>)> {
    prop_oneof![
        "[a-z]{1,5}( [a-z0-9]{1,5}){0,3}"
            .prop_map(|s| (q(&s), s.split_whitespace().map(str::to_string).collect())),
        // The program is not empty (a rule of the spec); its arguments may be.
        (
            "[a-z0-9][a-z0-9 ]{0,4}",
            vec("[a-z0-9 ]{0,5}", 0..3),
            any::<bool>()
        )
            .prop_map(|(program, args, f)| {
                let w: Vec<String> = std::iter::once(program).chain(args).collect();
                (Y::Seq(w.iter().map(|x| q(x)).collect(), f), w)
            }),
    ]
}

/// `ports:` in both syntaxes, and the ports the service must publish. The
/// published ports differ between entries and services, and so do the
/// targets within a service, so that no entry repeats another.
fn ports(idx: usize) -> impl Strategy<Value = (Y, Vec<PortConfig>)> {
    (vec(0u8..8, 0..4), 1u16..1000).prop_map(move |(forms, base)| {
        let mut items = Vec::new();
        let mut want = Vec::new();
        for (i, form) in forms.into_iter().enumerate() {
            let i = i as u16;
            let published = 20_000 + idx as u16 * 50 + 2 * i;
            let target = base + 2 * i;
            let port = |published, target| PortConfig {
                published,
                ..PortConfig::target(target)
            };
            let (y, ports) = match form {
                0 => (
                    q(&format!("{published}:{target}")),
                    vec![port(Some(published), target)],
                ),
                1 => (q(&target.to_string()), vec![port(None, target)]),
                // A number.
                2 => (p(&target.to_string()), vec![port(None, target)]),
                3 => (
                    q(&format!("{published}:{target}/tcp")),
                    vec![port(Some(published), target)],
                ),
                4 => (
                    q(&format!(
                        "{published}-{}:{target}-{}",
                        published + 1,
                        target + 1
                    )),
                    vec![
                        port(Some(published), target),
                        port(Some(published + 1), target + 1),
                    ],
                ),
                5 => (
                    q(&format!("${{FUZZ_UNSET_PORT:-{published}}}:{target}")),
                    vec![port(Some(published), target)],
                ),
                6 => (
                    Y::Map(
                        vec![
                            ("target".into(), p(&target.to_string())),
                            ("published".into(), q(&published.to_string())),
                            ("protocol".into(), p("tcp")),
                            ("mode".into(), p("ingress")),
                        ],
                        true,
                    ),
                    vec![port(Some(published), target)],
                ),
                _ => (
                    Y::Map(vec![("target".into(), p(&target.to_string()))], true),
                    vec![port(None, target)],
                ),
            };
            items.push(y);
            want.extend(ports);
        }
        (Y::Seq(items, false), want)
    })
}

fn anchor_env() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("ANCHOR_A".to_string(), "1".to_string()),
        ("ANCHOR_B".to_string(), "$x".to_string()),
    ])
}

fn service(idx: usize, earlier: Vec<&'static str>) -> impl Strategy<Value = (Y, Expect)> {
    let name = NAMES[idx];
    let env = prop_oneof![
        3 => pairs("[A-Z][A-Z0-9_]{0,5}|x-[a-z]{1,3}").prop_map(|(y, r)| (Some(y), r)),
        1 => Just((Some(p("*env")), anchor_env())),
        1 => Just((None, BTreeMap::new())),
    ];
    let depends = proptest::sample::subsequence(earlier.clone(), 0..=earlier.len());
    (
        (
            proptest::option::of(select(vec![
                "nginx:1.25",
                "example/app",
                "redis:${FUZZ_UNSET_TAG:-7}",
            ])),
            command(),
            any::<bool>(),
            env,
            pairs("[a-z][a-z0-9.]{0,6}|x-[a-z.]{1,4}"),
        ),
        (
            proptest::option::of(healthcheck()),
            deploy(),
            ports(idx),
            depends,
            any::<bool>(),
            proptest::option::of(positive_duration()),
            any::<bool>(),
        ),
    )
        .prop_map(
            move |(
                (image, (cmd_y, cmd), with_command, (env_y, env), (labels_y, labels)),
                (health, (deploy_y, mode), (ports_y, ports), depends, deps_as_map, grace, extras),
            )| {
                // Without an image a service needs a command (process driver).
                let with_command = with_command || image.is_none();
                let mut e: Vec<(String, Y)> = Vec::new();
                if let Some(i) = image {
                    e.push(("image".into(), q(i)));
                }
                if with_command {
                    e.push(("command".into(), cmd_y));
                }
                if let Some(y) = env_y {
                    e.push(("environment".into(), y));
                }
                e.push(("labels".into(), labels_y));
                if let Some(h) = health {
                    e.push(("healthcheck".into(), h));
                }
                e.push(("deploy".into(), deploy_y));
                e.push(("ports".into(), ports_y));
                if !depends.is_empty() {
                    let d = if deps_as_map {
                        Y::Map(
                            depends
                                .iter()
                                .map(|d| {
                                    (
                                        d.to_string(),
                                        Y::Map(
                                            vec![("condition".into(), p("service_started"))],
                                            true,
                                        ),
                                    )
                                })
                                .collect(),
                            false,
                        )
                    } else {
                        Y::Seq(depends.iter().map(|d| p(d)).collect(), true)
                    };
                    e.push(("depends_on".into(), d));
                }
                if let Some(g) = grace {
                    e.push(("stop_grace_period".into(), g));
                }
                if extras {
                    e.push((
                        "x-note".into(),
                        Y::Map(vec![("any".into(), p("[1, {a: b}]"))], false),
                    ));
                    e.push(("networks".into(), Y::Seq(vec![p("front")], false)));
                    // Containers only; a bind needs no top-level entry.
                    if image.is_some() {
                        e.push(("volumes".into(), Y::Seq(vec![q("./data:/data:ro")], false)));
                    }
                }
                let expect = Expect {
                    name: name.to_string(),
                    image: image.map(|i| i.replace("${FUZZ_UNSET_TAG:-7}", "7")),
                    command: with_command.then_some(cmd),
                    mode,
                    env,
                    labels,
                    ports,
                };
                (Y::Map(e, false), expect)
            },
        )
}

fn valid_doc() -> impl Strategy<Value = (Y, Vec<Expect>)> {
    (1..=NAMES.len(), any::<bool>(), any::<bool>())
        .prop_flat_map(|(n, version, sections)| {
            let services: Vec<_> = (0..n).map(|i| service(i, NAMES[..i].to_vec())).collect();
            (services, Just(version), Just(sections))
        })
        .prop_map(|(services, version, sections)| {
            let mut top: Vec<(String, Y)> = Vec::new();
            if version {
                top.push(("version".into(), q("3.8")));
            }
            top.push((
                "x-deploy".into(),
                Y::Anchor(
                    "deploy".into(),
                    Box::new(m(vec![(
                        "restart_policy",
                        m(vec![
                            ("condition", p("on-failure")),
                            ("max_attempts", p("3")),
                        ]),
                    )])),
                ),
            ));
            top.push((
                "x-env".into(),
                Y::Anchor(
                    "env".into(),
                    Box::new(m(vec![("ANCHOR_A", q("1")), ("ANCHOR_B", q("$$x"))])),
                ),
            ));
            let mut expects = Vec::new();
            let mut entries = Vec::new();
            for (y, e) in services {
                entries.push((e.name.clone(), y));
                expects.push(e);
            }
            // A service naming `front` needs it declared (else the file is
            // refused, as Compose refuses it).
            let uses_front = entries
                .iter()
                .any(|(_, y)| matches!(y, Y::Map(e, _) if e.iter().any(|(k, _)| k == "networks")));
            top.push(("services".into(), Y::Map(entries, false)));
            if sections || uses_front {
                top.push((
                    "networks".into(),
                    m(vec![("front", m(vec![("driver", p("overlay"))]))]),
                ));
            }
            if sections {
                top.push(("volumes".into(), m(vec![("data", p("{}"))])));
                top.push((
                    "configs".into(),
                    m(vec![("cfg", m(vec![("file", q("./cfg.txt"))]))]),
                ));
                top.push((
                    "secrets".into(),
                    m(vec![("pw", m(vec![("external", p("true"))]))]),
                ));
            }
            (Y::Map(top, false), expects)
        })
}

// ---------------------------------------------------------------------------
// Random values in random places, and text mutations.

fn chaos_value() -> impl Strategy<Value = Y> {
    let plain = select(vec![
        "3",
        "-1",
        "0",
        "-0",
        "99999999999999999999999",
        "1.5",
        "1e400",
        ".inf",
        "-.inf",
        ".nan",
        "0x1F",
        "0o17",
        "true",
        "false",
        "null",
        "~",
        "[]",
        "{}",
        "[a, 1]",
        "{a: 1}",
        "*deploy",
        "*env",
        "!!binary aGk=",
        "!!str 5",
        "'it''s'",
        "|",
        ">-",
        "&z 1",
        "yes",
        "on",
        "N",
        "{<<: *env}",
        "[*env, *deploy]",
        "- x",
        "? a",
        "\"\\ud800\"",
    ])
    .prop_map(p);
    let quoted = select(vec![
        "",
        "three",
        "${FUZZ_UNSET:?boom}",
        "${",
        "${}",
        "$$",
        "$",
        "0",
        "10s",
        "512M",
        "node.role == worker",
        "CMD",
        "CMD-SHELL",
        "NONE",
        "8080:80",
        "1-65535:1-65535",
        "80:80/quic",
        "a\nb",
        "=x",
        "\u{0}",
        "é",
        "${FUZZ_SET:+alt}",
        "global",
        "-1",
        "1e3",
    ])
    .prop_map(q);
    prop_oneof![
        3 => plain,
        3 => quoted,
        1 => "\\PC{0,8}".prop_map(|s| q(&s)),
        1 => Just(Y::Seq(vec![p("a"), p("1")], false)),
        1 => Just(Y::Map(vec![("a".into(), p("1")), ("\"k\\ney\"".into(), p("2"))], false)),
        1 => Just(Y::Map(vec![("<<".into(), p("*deploy"))], false)),
    ]
}

fn replace_at(doc: &mut Y, at: &str, with: Y) {
    if let Some(node) = node_at(doc, "", at) {
        *node = with;
    }
}

fn all_paths(doc: &Y) -> Vec<String> {
    let mut out = Vec::new();
    paths(doc, "", &mut out);
    out
}

/// One edit of a file's text.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteChar(Index),
    DuplicateLine(Index),
    DeleteLine(Index),
    Indent(Index, i8),
    /// Replaces the value after the `: ` of a line.
    SwapScalar(Index, String),
    Insert(Index, char),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::DeleteChar),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        any::<Index>().prop_map(Mutation::DeleteLine),
        (any::<Index>(), -3i8..4).prop_map(|(i, n)| Mutation::Indent(i, n)),
        (any::<Index>(), chaos_value()).prop_map(|(i, y)| Mutation::SwapScalar(i, flow(&y))),
        (
            any::<Index>(),
            select(vec![
                ':', '-', '[', ']', '{', '}', '&', '*', '"', '\'', '\n', ' ', '\t', '$', '#', '<',
                '|', '>', '!', '%', '@', '`', ','
            ])
        )
            .prop_map(|(i, c)| Mutation::Insert(i, c)),
    ]
}

fn mutate(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let chars: Vec<char> = text.chars().collect();
    match m {
        Mutation::DeleteChar(i) if !chars.is_empty() => {
            let at = i.index(chars.len());
            chars[..at].iter().chain(&chars[at + 1..]).collect()
        }
        Mutation::Insert(i, c) => {
            let at = i.index(chars.len() + 1);
            let mut out: String = chars[..at].iter().collect();
            out.push(*c);
            out.extend(&chars[at..]);
            out
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let at = i.index(lines.len());
            lines.insert(at, lines[at].clone());
            lines.join("\n")
        }
        Mutation::DeleteLine(i) if !lines.is_empty() => {
            lines.remove(i.index(lines.len()));
            lines.join("\n")
        }
        Mutation::Indent(i, n) if !lines.is_empty() => {
            let at = i.index(lines.len());
            let line = &lines[at];
            lines[at] = if *n >= 0 {
                format!("{}{line}", " ".repeat(*n as usize))
            } else {
                let strip = line.len() - line.trim_start_matches(' ').len();
                line[strip.min(n.unsigned_abs() as usize)..].to_string()
            };
            lines.join("\n")
        }
        Mutation::SwapScalar(i, value) => {
            let with_value: Vec<usize> = (0..lines.len())
                .filter(|&j| lines[j].contains(": "))
                .collect();
            if with_value.is_empty() {
                return text.to_string();
            }
            let at = with_value[i.index(with_value.len())];
            let cut = lines[at].find(": ").unwrap_or(0);
            lines[at] = format!("{}: {value}", &lines[at][..cut]);
            lines.join("\n")
        }
        _ => text.to_string(),
    }
}

/// YAML-ish fragments, so that random text is often almost a stack file.
fn yaml_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => select(vec![
            "services:", "\n", "  ", "    ", "- ", ": ", "&a ", "*a", "<<: ", "[", "]", "{", "}",
            ", ", "\"", "'", "# c", "${A}", "$$", "x-", "web", "image", "deploy", "replicas",
            "environment", "labels", "ports", "healthcheck", "test", "update_config", "resources",
            "limits", "memory", "cpus", "placement", "constraints", "3", "-1", "true", "null",
            "~", "|", ">", "!!str ", "!!int ", "!!map ", "%YAML 1.2\n", "---\n", "...\n", "? ",
            "\t", "\u{feff}", "é", "\r\n", "\r", "\\", "&b [*a, *a]\n", "8080:80",
        ])
        .prop_map(str::to_string),
        1 => "\\PC{0,4}",
    ];
    vec(piece, 0..60).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(cfg(512))]

    #[test]
    fn parser_never_panics_on_bytes(bytes in vec(any::<u8>(), 0..400)) {
        parse_any(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn parser_never_panics_on_yaml_soup(text in yaml_soup()) {
        parse_any(&text)?;
    }
}

proptest! {
    #![proptest_config(cfg(192))]

    #[test]
    fn parser_never_panics_on_random_values_in_random_places(
        (doc, _) in valid_doc(),
        swaps in vec((any::<Index>(), chaos_value()), 1..6),
    ) {
        let mut doc = doc;
        for (i, value) in swaps {
            let paths = all_paths(&doc);
            if paths.is_empty() {
                break;
            }
            replace_at(&mut doc, &paths[i.index(paths.len())], value);
        }
        parse_any(&render(&doc).text)?;
    }

    #[test]
    fn parser_never_panics_on_mutated_files(
        (doc, _) in valid_doc(),
        edits in vec(mutation(), 1..5),
    ) {
        let mut text = render(&doc).text;
        for m in &edits {
            text = mutate(&text, m);
        }
        parse_any(&text)?;
    }
}

// ---------------------------------------------------------------------------
// Errors point at the bad value.

/// A value that is wrong for the key at `path`, if the key is one this test
/// knows.
fn bad_value(path: &str, current: &Y) -> Option<Y> {
    let rest = path.strip_prefix("services.")?;
    let (_, rest) = rest.split_once('.')?;
    let last = rest.rsplit('.').next().unwrap_or(rest);
    let is_scalar = matches!(current, Y::S(s) if !s.starts_with('*'));
    let v = match rest {
        "image" => p("[x]"),
        "command" => p("{a: 1}"),
        "depends_on" | "ports" | "deploy" | "healthcheck" => p("7"),
        "stop_grace_period" => q("10 parsecs"),
        "deploy.labels" | "labels" | "environment" => p("7"),
        r if r.starts_with("environment[")
            || r.starts_with("labels[")
            || r.starts_with("deploy.labels[") =>
        {
            q("=x")
        }
        r if r.starts_with("environment.")
            || r.starts_with("labels.")
            || r.starts_with("deploy.labels.") =>
        {
            p("[a]")
        }
        r if r.starts_with("ports[") && !r.contains('.') && is_scalar => q("99999:80"),
        "deploy.placement.constraints" | "deploy.placement.preferences" => p("7"),
        r if r.starts_with("deploy.placement.constraints[") => q("node.x == 1"),
        _ => match last {
            "replicas" | "retries" | "max_attempts" | "max_replicas_per_node" => q("three"),
            "mode" if rest == "deploy.mode" => q("sometimes"),
            "endpoint_mode" => q("x"),
            "parallelism" => p("-1"),
            "delay" | "monitor" | "interval" | "timeout" | "start_period" | "window" => {
                q("10 parsecs")
            }
            "failure_action" => q("explode"),
            "max_failure_ratio" => p("2"),
            "order" => q("random-first"),
            "cpus" => p("-1"),
            "memory" => q("lots"),
            "condition" if rest.starts_with("deploy.restart_policy") => q("sometimes"),
            "test" => p("{}"),
            _ => return None,
        },
    };
    Some(v)
}

proptest! {
    #![proptest_config(cfg(192))]

    #[test]
    fn errors_name_the_line_and_key_of_the_bad_value(
        (doc, _) in valid_doc(),
        pick in any::<Index>(),
        interpolation in any::<bool>(),
    ) {
        let mut doc = doc;
        let mut sites: Vec<(String, Y)> = Vec::new();
        for path in all_paths(&doc) {
            if path.ends_with("<<") {
                continue;
            }
            let Some(node) = node_at(&mut doc, "", &path) else { continue };
            let is_string = matches!(&*node, Y::S(s) if s.starts_with('"'));
            if interpolation && is_string && path.starts_with("services.") {
                sites.push((path, q("a${FUZZ_UNSET_Q:?needed}")));
            } else if let Some(bad) = bad_value(&path, node) {
                sites.push((path, bad));
            }
        }
        prop_assume!(!sites.is_empty());
        let (path, bad) = sites.swap_remove(pick.index(sites.len()));
        replace_at(&mut doc, &path, bad);
        let r = render(&doc);
        let Some(&line) = r.lines.get(&path) else {
            // Inside a flow collection: no line of its own to check.
            return Ok(());
        };
        let files = [(FILE, r.text.as_str())];
        match parse_compose(&files, &vars()) {
            Err(ComposeError::Invalid { file, line: l, path: ep, reason }) => {
                prop_assert_eq!(
                    (file.as_str(), l, ep.as_str()),
                    (FILE, line, path.as_str()),
                    "reason: {}\n{}", reason, r.text
                );
            }
            other => prop_assert!(false, "{path}: expected an error at line {line}, got {other:?}\n{}", r.text),
        }
    }

}

proptest! {
    #![proptest_config(cfg(128))]

    #[test]
    fn spec_errors_name_the_line_and_key(
        (doc, expects) in valid_doc(),
        pick in any::<Index>(),
        which in 0usize..3,
    ) {
        // Values the Compose model accepts but no spec can be made of.
        let name = expects[pick.index(expects.len())].name.clone();
        let (key, value, reason) = [
            ("retries", p("9999999999"), "9999999999 is too large"),
            ("test", Y::Seq(vec![q("CMD-SHELL")], true), "CMD-SHELL needs a command after it"),
            ("test", Y::Seq(vec![q("CMD")], true), "CMD needs a command after it"),
        ][which].clone();
        let mut doc = doc;
        let path = format!("services.{name}.healthcheck");
        let Some(Y::Map(entries, _)) = node_at(&mut doc, "", &path) else {
            return Ok(());
        };
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => entries.push((key.to_string(), value)),
        }
        let r = render(&doc);
        let full = format!("{path}.{key}");
        let line = r.lines.get(&full).copied().unwrap_or(0);
        let e = parse_stack_files(&[(STACK_FILE, r.text.as_str())])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        prop_assert_eq!(e, format!("{STACK_FILE}:{line}: {full}: {reason}"), "{}", r.text);
    }

    #[test]
    fn udp_ports_are_read_in_both_forms(
        (doc, expects) in valid_doc(),
        pick in any::<Index>(),
        long in any::<bool>(),
    ) {
        // A UDP entry, long or short, added to a valid document becomes a
        // UDP port of its service.
        let name = expects[pick.index(expects.len())].name.clone();
        let (entry, published) = if long {
            (
                Y::Map(vec![
                    ("target".into(), p("53")),
                    ("published".into(), p("40001")),
                    ("protocol".into(), p("udp")),
                ], true),
                40001,
            )
        } else {
            (q("40000:53/udp"), 40000)
        };
        let mut doc = doc;
        let path = format!("services.{name}.ports");
        let Some(Y::Seq(items, _)) = node_at(&mut doc, "", &path) else {
            return Ok(());
        };
        items.push(entry);
        let r = render(&doc);
        let stack = parse_stack_files(&[(STACK_FILE, r.text.as_str())]);
        let stack = match stack {
            Ok(s) => s,
            Err(e) => {
                prop_assert!(false, "{e}: {}", r.text);
                return Ok(());
            }
        };
        let service = stack.services.iter().find(|s| s.name == name);
        prop_assert!(service.is_some(), "{name} in {}", r.text);
        let udp = flotilla_types::PortConfig {
            published: Some(published),
            protocol: flotilla_types::Protocol::Udp,
            ..flotilla_types::PortConfig::target(53)
        };
        prop_assert!(
            service.is_some_and(|s| s.task.ports.contains(&udp)),
            "{:?}", service.map(|s| &s.task.ports)
        );
    }

    #[test]
    fn errors_in_a_later_file_name_it(
        (doc, expects) in valid_doc(),
        pick in any::<Index>(),
        blank in 0usize..4,
    ) {
        let base = render(&doc).text;
        let name = &expects[pick.index(expects.len())].name;
        let over = format!("{}services:\n  {name}:\n    deploy:\n      replicas: three\n", "# comment\n".repeat(blank));
        let files = [(FILE, base.as_str()), ("over.yml", over.as_str())];
        let e = parse_compose(&files, &vars()).err().map(|e| e.to_string()).unwrap_or_default();
        prop_assert_eq!(
            e,
            format!("over.yml:{}: services.{name}.deploy.replicas: expected an integer, found \"three\"", blank + 4)
        );
    }
}

// ---------------------------------------------------------------------------
// Valid documents: read as written, deterministic, `stack config` reads back.

fn check_expect(
    stack: &flotilla_compose::ComposeStack,
    expects: &[Expect],
    text: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(stack.services.len(), expects.len());
    for e in expects {
        let s = stack.services.iter().find(|s| s.name == e.name);
        let Some(s) = s else {
            prop_assert!(false, "service {} missing", e.name);
            continue;
        };
        prop_assert_eq!(&s.image, &e.image, "{}", text);
        prop_assert_eq!(&s.command, &e.command, "{}", text);
        prop_assert_eq!(&s.deploy.mode, &e.mode, "{}", text);
        prop_assert_eq!(&s.environment, &e.env, "{}", text);
        prop_assert_eq!(&s.labels, &e.labels, "{}", text);
        prop_assert_eq!(&s.ports, &e.ports, "{}", text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg(96))]

    #[test]
    fn valid_documents_convert_deterministically_and_config_reads_back((doc, expects) in valid_doc()) {
        let text = render(&doc).text;
        let files = [(FILE, text.as_str())];
        let stack = match parse_compose(&files, &vars()) {
            Ok(s) => s,
            Err(e) => {
                prop_assert!(false, "{e}\n{text}");
                return Ok(());
            }
        };
        check_expect(&stack, &expects, &text)?;
        let again = parse_compose(&files, &vars()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again, &stack);

        let yaml = merged_yaml(&files, &vars()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = parse_compose(&[("config.yml", yaml.as_str())], &vars())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&back, &stack, "{}", yaml);

        let specs = parse_stack_files(&[(STACK_FILE, text.as_str())])
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let specs2 = parse_stack_files(&[(STACK_FILE, text.as_str())])
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&specs.services, &specs2.services);
        for (c, spec) in specs.compose.iter().zip(&specs.services) {
            prop_assert_eq!(&spec.task.ports, &c.ports, "{}", text);
        }
        prop_assert_eq!(&specs.warnings, &specs2.warnings);
        // `stack config` interpolates with the variables a deploy uses.
        let env = flotilla_compose::variables_for(flotilla_compose::dir_of(STACK_FILE))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let yaml = merged_yaml(&[(STACK_FILE, text.as_str())], &env)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_config = parse_stack_files(&[(STACK_FILE, yaml.as_str())])
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&from_config.services, &specs.services, "{}", yaml);
    }

    #[test]
    fn later_files_merge_and_config_reads_back(
        (doc, expects) in valid_doc(),
        overrides in vec((any::<Index>(), btree_map("[A-Z]{1,3}", "[a-z0-9]{0,4}", 0..3), 0u64..4, any::<bool>(), any::<bool>()), 1..3),
    ) {
        let base = render(&doc).text;
        let mut expects = expects;
        // One override per service; a later pick of the same one wins.
        let overrides: BTreeMap<usize, _> = overrides
            .into_iter()
            .map(|(i, env, replicas, as_list, ports)| (i.index(expects.len()), (env, replicas, as_list, ports)))
            .collect();
        let mut over = Vec::new();
        let mut base_doc = doc.clone();
        for (i, (env, replicas, as_list, ports)) in overrides {
            let e = &mut expects[i];
            let mut entries = Vec::new();
            if ports {
                // Ports are appended, as Compose merges them, and entries
                // that repeat the base file's are one port.
                let path = format!("services.{}.ports", e.name);
                let Some(Y::Seq(items, _)) = node_at(&mut base_doc, "", &path) else {
                    return Err(TestCaseError::fail(format!("no {path}")));
                };
                let mut items = items.clone();
                let published = 30_000 + i as u16;
                items.push(q(&format!("{published}:1")));
                entries.push(("ports".to_string(), Y::Seq(items, false)));
                e.ports.push(PortConfig {
                    published: Some(published),
                    ..PortConfig::target(1)
                });
            }
            if !env.is_empty() {
                let y = if as_list {
                    Y::Seq(env.iter().map(|(k, v)| q(&format!("{k}={v}"))).collect(), false)
                } else {
                    Y::Map(env.iter().map(|(k, v)| (k.clone(), q(v))).collect(), false)
                };
                entries.push(("environment".to_string(), y));
            }
            if matches!(e.mode, ServiceMode::Replicated { .. }) {
                entries.push(("deploy".to_string(), m(vec![("replicas", p(&replicas.to_string()))])));
                e.mode = ServiceMode::Replicated { replicas };
            }
            e.env.extend(env);
            over.push((e.name.clone(), Y::Map(entries, false)));
        }
        let over_text = render(&m(vec![("services", Y::Map(over, false))])).text;
        let files = [(FILE, base.as_str()), ("over.yml", over_text.as_str())];
        let stack = parse_compose(&files, &vars())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{base}\n{over_text}")))?;
        check_expect(&stack, &expects, &format!("{base}\n---\n{over_text}"))?;
        let yaml = merged_yaml(&files, &vars()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back = parse_compose(&[("config.yml", yaml.as_str())], &vars())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&back, &stack, "{}", yaml);
    }
}
