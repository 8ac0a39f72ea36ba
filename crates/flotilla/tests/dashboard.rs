//! The dashboard (`/ui`, issue 13) in a headless Chromium against a real
//! 3-manager cluster: without a login the page and its state are refused;
//! with the address `flotilla ui-token` prints, the page shows what the
//! API says (nodes, services and their replicas, tasks by node, the
//! mesh); a manager stopped turns it yellow, and back green once the
//! manager returns, without a reload. Each state is saved as a
//! screenshot, and the colour of the health badge is read off the PNG.
//!
//! Screenshots go to `$CARGO_TARGET_TMPDIR/dashboard`, or to
//! `$FLOTILLA_SCREENSHOTS` (docs/images holds the ones docs/dashboard.md
//! shows).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use flotilla_testkit::browser::Browser;
use flotilla_testkit::{free_port, http_get, metric, wait_until, Daemon};
use serde_json::Value;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn screenshots() -> PathBuf {
    std::env::var_os("FLOTILLA_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard"))
}

/// A manager named `name` that serves `/metrics` plainly on its own port
/// (kept across restarts), and that port.
fn start(name: &str) -> Result<(Daemon, String)> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let d = Daemon::start_named(bin(), name, &["--metrics-listen", &metrics])?;
    Ok((d, metrics))
}

fn manager(first: &Daemon, name: &str) -> Result<(Daemon, String)> {
    let (d, metrics) = start(name)?;
    d.join_cluster_of(first, "manager")?;
    Ok((d, metrics))
}

fn ready(d: &Daemon, name: &str, want: u64) -> Result<()> {
    d.wait_ready(name, want, Duration::from_secs(30))
}

/// The login address `flotilla ui-token EXTRA...` prints on `d`.
fn login_url(d: &Daemon, extra: &[&str]) -> Result<String> {
    let mut args = vec!["ui-token"];
    args.extend_from_slice(extra);
    let out = d.ok(&args)?.stdout;
    out.split_whitespace()
        .find(|w| w.starts_with("https://") && w.contains("/ui/login?token="))
        .map(String::from)
        .ok_or_else(|| anyhow!("no login address in {out:?}"))
}

/// The colour of element `id` in a screenshot of the page: at its middle
/// height, just inside its left edge (its text is in the centre).
fn colour_of(browser: &mut Browser, png: &[u8], id: &str) -> Result<(u8, u8, u8)> {
    let rect = browser.eval(&format!(
        "(() => {{ const r = document.getElementById('{id}').getBoundingClientRect(); return [r.x + 4, r.y + r.height / 2]; }})()"
    ))?;
    let x = rect[0].as_f64().context("x")? as usize;
    let y = rect[1].as_f64().context("y")? as usize;
    let decoder = png::Decoder::new(png);
    let mut reader = decoder.read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf)?;
    let channels = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => bail!("a screenshot in {other:?}"),
    };
    if x >= frame.width as usize || y >= frame.height as usize {
        bail!(
            "{id} at ({x}, {y}) is outside the {}x{} screenshot",
            frame.width,
            frame.height
        );
    }
    let at = (y * frame.width as usize + x) * channels;
    Ok((buf[at], buf[at + 1], buf[at + 2]))
}

/// Saves a screenshot as `file` and checks the health badge's colour in
/// it with `is`, named `colour`.
fn screenshot_shows(
    browser: &mut Browser,
    file: &Path,
    colour: &str,
    is: fn((u8, u8, u8)) -> bool,
) -> Result<()> {
    let png = browser.screenshot(file)?;
    let c = colour_of(browser, &png, "health")?;
    if !is(c) {
        bail!("the badge in {} is {c:?}, not {colour}", file.display());
    }
    Ok(())
}

/// Fails if the page was loaded again since `window.loadMark` was set.
fn not_reloaded(browser: &mut Browser) -> Result<()> {
    let mark = browser.eval("window.loadMark")?;
    if mark != "first load" {
        bail!("the page was reloaded (loadMark is {mark})");
    }
    Ok(())
}

fn is_green((r, g, b): (u8, u8, u8)) -> bool {
    g as i32 > r as i32 + 60 && g as i32 > b as i32 + 40
}

fn is_yellow((r, g, b): (u8, u8, u8)) -> bool {
    r > 180 && g > 120 && (b as i32) < (g as i32) - 80
}

/// What the page shows in one of its lists, as JSON.
fn page(browser: &mut Browser, expression: &str) -> Result<Value> {
    browser
        .eval(&format!("JSON.stringify({expression})"))
        .and_then(|v| {
            let text = v.as_str().ok_or_else(|| anyhow!("{expression} gave {v}"))?;
            Ok(serde_json::from_str(text)?)
        })
}

#[test]
fn the_dashboard_shows_the_cluster_and_turns_yellow_while_a_manager_is_down() -> Result<()> {
    let shots = screenshots();
    let (m1, m1_metrics) = start("m1")?;
    m1.ok(&["init"])?;
    let (m2, m2_metrics) = manager(&m1, "m2")?;
    let (mut m3, _) = manager(&m1, "m3")?;
    let published = free_port()?;
    let flotilla = bin().display().to_string();
    m1.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        "--publish",
        &format!("{published}:8080"),
        "-d",
        "--",
        &flotilla,
        "demo",
        "http",
    ])?;
    m1.create_sleeping("worker", 2, &[])?;
    ready(&m1, "web", 3)?;
    ready(&m1, "worker", 2)?;
    // Traffic through the mesh, for its counters.
    let addr = format!("127.0.0.1:{published}");
    wait_until(
        "the published port to answer",
        Duration::from_secs(10),
        || {
            Ok(http_get(&addr, "/", Duration::from_secs(2))
                .ok()
                .filter(|(c, _)| *c == 200))
        },
    )?;
    for _ in 0..20 {
        http_get(&addr, "/", Duration::from_secs(2))?;
    }

    let mut browser = Browser::start(1280, 900)?;
    let api = m1.ok(&["info", "--format", "json"])?.json()?;
    let nodes = m1.ok(&["node", "ls", "--format", "json"])?.json()?;
    let api_addr = nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "m1"))
        .and_then(|n| n["api_addr"].as_str())
        .ok_or_else(|| anyhow!("no API address for m1 in {nodes}"))?
        .to_string();
    assert!(api["cluster_id"].is_string());

    // Without a login: refused, and told how to get one.
    browser.goto(&format!("https://{api_addr}/ui"))?;
    browser.wait_for(
        "the refusal page",
        "document.body && document.body.innerText.includes(\"run 'flotilla ui-token'\")",
        Duration::from_secs(10),
    )?;
    let status = browser.eval("fetch('/ui/state').then(r => r.status)")?;
    assert_eq!(status, 401, "the state without a login");
    browser.goto(&format!(
        "https://{api_addr}/ui/login?token=FLTUI-1-99999999999-00"
    ))?;
    browser.wait_for(
        "a forged token refused",
        "document.body && document.body.innerText.includes('not valid for this cluster')",
        Duration::from_secs(10),
    )?;

    // The address ui-token prints logs the browser in.
    let url = login_url(&m1, &["--ttl", "1h"])?;
    browser.goto(&url)?;
    browser.wait_for(
        "the dashboard to show green",
        "location.pathname === '/ui' && window.flotilla && flotilla.level === 'green'",
        Duration::from_secs(30),
    )?;
    // A reload would drop this.
    browser.eval("window.loadMark = 'first load'")?;

    // What the page shows is what the API says.
    let shown_nodes = page(
        &mut browser,
        "[...document.querySelectorAll('#nodes tr[data-node]')].map(r => r.dataset.node).sort()",
    )?;
    let mut api_nodes: Vec<String> = nodes
        .as_array()
        .context("node ls")?
        .iter()
        .filter_map(|n| n["name"].as_str().map(String::from))
        .collect();
    api_nodes.sort();
    assert_eq!(shown_nodes, serde_json::json!(api_nodes));
    let services = m1.ok(&["service", "ls", "--format", "json"])?.json()?;
    for s in services.as_array().context("service ls")? {
        let name = s["name"].as_str().context("name")?;
        let shown = page(
            &mut browser,
            &format!("(() => {{ const r = document.querySelector('#services tr[data-service=\"{name}\"]'); return r && [Number(r.dataset.ready), Number(r.dataset.desired)]; }})()"),
        )?;
        assert_eq!(
            shown,
            serde_json::json!([s["replicas"]["ready"], s["replicas"]["desired"]]),
            "replicas of {name}"
        );
    }
    let mut api_placed = std::collections::BTreeMap::<String, u64>::new();
    for name in ["web", "worker"] {
        for t in m1.tasks(name)? {
            if t["desired_state"] == "running" {
                *api_placed
                    .entry(t["node"].as_str().unwrap_or("").to_string())
                    .or_default() += 1;
            }
        }
    }
    let shown_placed = page(
        &mut browser,
        "Object.fromEntries([...document.querySelectorAll('#placement .column[data-node]')].map(c => [c.dataset.node, c.querySelectorAll('.task').length]).filter(([_, n]) => n > 0))",
    )?;
    assert_eq!(shown_placed, serde_json::json!(api_placed), "tasks by node");
    assert_eq!(api_placed.values().sum::<u64>(), 5);
    browser.wait_for(
        "the mesh's counters of web",
        &format!("document.getElementById('mesh').innerText.includes('web :{published}/tcp')"),
        Duration::from_secs(10),
    )?;

    screenshot_shows(
        &mut browser,
        &shots.join("dashboard-green.png"),
        "green",
        is_green,
    )?;

    // A manager stopped: yellow, without a reload, saying which.
    m3.kill9()?;
    browser.wait_for(
        "the dashboard to turn yellow",
        "flotilla.level === 'yellow' && document.getElementById('reasons').innerText.includes('manager m3 unreachable')",
        Duration::from_secs(15),
    )?;
    not_reloaded(&mut browser)?;
    browser.wait_for(
        "the event of m3 down",
        "document.getElementById('events').innerText.includes('node m3 down')",
        Duration::from_secs(15),
    )?;
    // The leader that declared m3 down counted it.
    let timeouts = metric(&m1_metrics, "flotilla_node_heartbeat_timeouts_total")?
        + metric(&m2_metrics, "flotilla_node_heartbeat_timeouts_total")?;
    assert_eq!(timeouts, 1.0, "nodes declared down for missed heartbeats");
    screenshot_shows(
        &mut browser,
        &shots.join("dashboard-yellow.png"),
        "yellow",
        is_yellow,
    )?;

    // Back: green again.
    m3.restart()?;
    browser.wait_for(
        "the dashboard to turn green again",
        "flotilla.level === 'green'",
        Duration::from_secs(30),
    )?;
    not_reloaded(&mut browser)?;
    screenshot_shows(
        &mut browser,
        &shots.join("dashboard-green-again.png"),
        "green",
        is_green,
    )?;
    drop(m2);
    Ok(())
}

/// The resident memory of a process, from `/proc`.
fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// The page's live DOM nodes and script heap after a garbage collection.
fn page_memory(browser: &mut Browser) -> Result<(f64, f64)> {
    browser.call("HeapProfiler.collectGarbage", serde_json::json!({}))?;
    let m = browser.call("Performance.getMetrics", serde_json::json!({}))?;
    let metric = |name: &str| {
        m["metrics"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name))
            .and_then(|x| x["value"].as_f64())
            .ok_or_else(|| anyhow!("no {name} in {m}"))
    };
    Ok((metric("Nodes")?, metric("JSHeapUsedSize")?))
}

/// "A dashboard left open for a day": the page polls every 50 ms here
/// instead of every second, so that 350 polls (six minutes of a real
/// page) take half a minute; after the first 50, neither the page's DOM
/// and script heap nor the daemon's memory may grow with the number of
/// polls.
#[test]
fn a_dashboard_left_open_grows_neither_the_page_nor_the_daemon() -> Result<()> {
    let d = Daemon::start_named(bin(), "solo", &[])?;
    d.ok(&["init"])?;
    d.create_sleeping("web", 3, &[])?;
    ready(&d, "web", 3)?;
    let url = login_url(&d, &[])?;
    let pid = d.pid().context("daemon pid")?;
    let mut browser = Browser::start(1280, 900)?;
    browser.call("Performance.enable", serde_json::json!({}))?;
    browser.goto(&url)?;
    browser.wait_for(
        "the dashboard",
        "location.pathname === '/ui' && window.flotilla && flotilla.polls > 0",
        Duration::from_secs(20),
    )?;
    // Now poll fast: the same page with ?every=50.
    browser.goto(&url.replace("/ui/login?", "/ui?every=50&"))?;
    browser.wait_for(
        "50 polls",
        "window.flotilla && flotilla.polls >= 50",
        Duration::from_secs(60),
    )?;
    let (nodes_before, heap_before) = page_memory(&mut browser)?;
    let rss_before = rss_bytes(pid)?;
    browser.wait_for(
        "350 more polls",
        "flotilla.polls >= 400",
        Duration::from_secs(120),
    )?;
    let failures = browser.eval("flotilla.failures")?;
    assert_eq!(failures, 0, "every poll answered");
    let (nodes_after, heap_after) = page_memory(&mut browser)?;
    let rss_after = rss_bytes(pid)?;
    eprintln!(
        "dashboard memory over 350 polls: page DOM nodes {nodes_before} -> {nodes_after}, \
         script heap {:.0} -> {:.0} KiB, daemon RSS {} -> {} KiB",
        heap_before / 1024.0,
        heap_after / 1024.0,
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(
        nodes_after <= nodes_before * 1.05 + 20.0,
        "the page's DOM grew from {nodes_before} to {nodes_after} nodes"
    );
    assert!(
        heap_after <= heap_before + 512.0 * 1024.0,
        "the page's script heap grew from {heap_before} to {heap_after} bytes"
    );
    assert!(
        rss_after <= rss_before + 4 * 1024 * 1024,
        "the daemon grew from {rss_before} to {rss_after} bytes"
    );
    Ok(())
}
