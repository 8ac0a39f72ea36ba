// Flotilla's dashboard: asks /ui/state every second (?every=MS to change
// it) and draws the answer. No framework and no HTML from strings: every
// name a user chose is set as text. One request at a time; each drawing
// replaces the last, so nothing grows while the page stays open.
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const every = Math.max(100, Number(params.get("every")) || 1000);
  // What a test (or a curious operator) can read: polls so far, the last
  // answer, the level shown.
  const page = (window.flotilla = { polls: 0, failures: 0, level: "unknown", last: null });

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("data-")) el.setAttribute(k, v);
      else el[k] = v;
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const $ = (id) => document.getElementById(id);

  function ago(ms) {
    if (ms === null || ms === undefined) return "never";
    const s = Math.round(ms / 1000);
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    return Math.round(s / 3600) + "h ago";
  }

  function clock(unixMs) {
    return new Date(unixMs).toLocaleTimeString([], { hour12: false });
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function table(el, head, rows) {
    el.replaceChildren(
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { class: c.num ? "num" : "" }, c.label || c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { class: "empty", colSpan: head.length }, "none")))
    );
  }

  function stateTag(text, kind) {
    return h("span", { class: "state " + kind }, text);
  }

  function drawHeader(d) {
    const level = d.health.level;
    page.level = level;
    const health = $("health");
    health.dataset.level = level;
    health.textContent = level;
    const i = d.info;
    const running = (i.tasks && i.tasks.running) || 0;
    $("summary").replaceChildren(
      h("span", {}, "cluster ", h("b", {}, (i.cluster_id || "").slice(0, 12))),
      h("span", {}, "leader ", h("b", {}, i.leader || "none")),
      h("span", {}, "managers ", h("b", {}, i.managers_reachable + "/" + i.managers), " reachable"),
      h("span", {}, "nodes ", h("b", {}, i.nodes)),
      h("span", {}, "services ", h("b", {}, i.services)),
      h("span", {}, "tasks running ", h("b", {}, running))
    );
    $("updated").textContent = "from " + i.node_name + " at " + clock(d.at);
    $("reasons").replaceChildren(
      ...d.health.reasons.map((r) =>
        h("li", { class: r.startsWith("no quorum") || r.includes("none of its") ? "red" : "" }, r)
      )
    );
    $("warnings").replaceChildren(...d.warnings.map((w) => h("li", {}, w)));
  }

  function drawNodes(d) {
    const count = {};
    for (const t of d.tasks) if (t.node_id) count[t.node_id] = (count[t.node_id] || 0) + 1;
    const rows = d.nodes.map((n) => {
      const ms = n.manager_status;
      let role = n.role;
      let roleKind = "";
      if (ms) {
        role = ms === "leader" ? "manager (leader)" : "manager (" + ms.replace("_", " ") + ")";
        roleKind = ms === "unreachable" ? "bad" : ms === "catching_up" ? "warn" : "good";
      }
      const res = n.resources || {};
      const cpus = res.nano_cpus ? (res.nano_cpus / 1e9).toFixed(1) + " CPU" : "";
      const mem = res.memory_bytes ? bytes(res.memory_bytes) : "";
      return h(
        "tr",
        { "data-node": n.name },
        h("td", {}, h("b", {}, n.name), n.is_self ? " (this one)" : ""),
        h("td", {}, stateTag(role, roleKind)),
        h("td", {}, stateTag(n.status, n.status === "ready" ? "good" : "bad"),
          n.status !== "ready" && n.last_heard_ms !== null ? " last heard " + ago(n.last_heard_ms) : ""),
        h("td", {}, stateTag(n.availability, n.availability === "active" ? "" : "warn")),
        h("td", {}, n.addr),
        h("td", { class: "num" }, count[n.id] || 0),
        h("td", {}, [cpus, mem].filter(Boolean).join(", ")),
        h("td", {}, n.version)
      );
    });
    table(
      $("nodes"),
      ["Name", "Role", "Status", "Availability", "Address", { label: "Tasks", num: true }, "Resources", "Version"],
      rows
    );
  }

  // A bar of ready (green) and running but not ready (yellow) replicas
  // over the desired count; its widths are set through the style object,
  // as the page's policy allows no inline style attribute.
  function replicaBar(r) {
    const total = Math.max(r.desired, r.running, 1);
    const ready = Math.min(r.ready, total);
    const notReady = Math.max(0, Math.min(r.running, total) - ready);
    const readyPart = h("span", { class: "ready" });
    const runningPart = h("span", { class: "running" });
    readyPart.style.width = (100 * ready) / total + "%";
    runningPart.style.width = (100 * notReady) / total + "%";
    return h(
      "span",
      {},
      h("span", { class: "bar" }, readyPart, runningPart),
      h("span", { class: "bar-label" }, r.ready + "/" + r.desired + " ready")
    );
  }

  function drawServices(d) {
    const rows = d.services.map((s) => {
      const r = s.replicas;
      const bar = replicaBar(r);
      const u = s.update_status;
      const ports = (s.published || []).map((p) => p.published + "→" + p.target + "/" + p.protocol).join(", ");
      let kind = "good";
      if (r.desired > 0 && r.running === 0) kind = "bad";
      else if (r.ready < r.desired) kind = "warn";
      return h(
        "tr",
        { "data-service": s.name, "data-ready": r.ready, "data-desired": r.desired },
        h("td", {}, h("b", {}, s.name)),
        h("td", {}, s.mode),
        h("td", {}, bar, " ", stateTag(kind === "good" ? "ok" : kind === "warn" ? "degraded" : "down", kind)),
        h("td", {}, u ? stateTag(u.state.replace("_", " "), u.state.includes("paused") ? "bad" : "") : ""),
        h("td", {}, ports),
        h("td", {}, s.command)
      );
    });
    table($("services"), ["Name", "Mode", "Replicas", "Update", "Ports", "Command"], rows);
  }

  function drawPlacement(d) {
    const byNode = new Map(d.nodes.map((n) => [n.id, []]));
    const pending = [];
    for (const t of d.tasks) {
      if (t.node_id && byNode.has(t.node_id)) byNode.get(t.node_id).push(t);
      else pending.push(t);
    }
    const taskBox = (t) =>
      h(
        "div",
        { class: "task " + t.state, title: t.message || t.state },
        h("b", {}, t.service + "." + t.slot),
        " ",
        h("span", { class: "sub" }, t.state, t.health ? " · " + t.health : "")
      );
    const columns = d.nodes.map((n) => {
      const tasks = byNode.get(n.id);
      return h(
        "div",
        { class: "column" + (n.status === "ready" ? "" : " down"), "data-node": n.name },
        h("h3", {}, n.name, " ", h("small", {}, n.role + (n.status === "ready" ? "" : " · down"))),
        tasks.length ? tasks.map(taskBox) : h("div", { class: "empty" }, "no tasks")
      );
    });
    if (pending.length) {
      columns.push(h("div", { class: "column down" }, h("h3", {}, "not placed"), pending.map(taskBox)));
    }
    $("placement").replaceChildren(...columns);
  }

  function drawMesh(d) {
    // One block per published port: each node's listener, then the
    // backends it balances over, as HAProxy's stats page shows them.
    const blocks = [];
    const nodeName = new Map(d.nodes.map((n) => [n.id, n.name]));
    for (const node of d.mesh) {
      for (const l of node.listeners) {
        const rows = l.backends.map((b) =>
          h(
            "tr",
            {},
            h("td", {}, b.addr),
            h("td", {}, stateTag(b.in_rotation ? "in rotation" : "out", b.in_rotation ? "good" : "warn")),
            h("td", { class: "num" }, b.current),
            h("td", { class: "num" }, b.max),
            h("td", { class: "num" }, b.total),
            h("td", { class: "num" }, bytes(b.bytes_in)),
            h("td", { class: "num" }, bytes(b.bytes_out)),
            h("td", { class: "num" }, b.errors),
            h("td", { class: "num" }, b.retries)
          )
        );
        const t = h("table", {});
        table(
          t,
          [
            "Backend",
            "State",
            { label: "Now", num: true },
            { label: "Max", num: true },
            { label: "Total", num: true },
            { label: "In", num: true },
            { label: "Out", num: true },
            { label: "Errors", num: true },
            { label: "Retries", num: true },
          ],
          rows
        );
        blocks.push(
          h(
            "div",
            { class: "mesh-listener" },
            h(
              "h3",
              {},
              l.service_name + " :" + l.published + "/" + l.protocol + " on " + (nodeName.get(node.node_id) || node.node_id),
              " ",
              h(
                "small",
                {},
                l.listening ? "" : "not listening: " + (l.error || "") + " · ",
                "now " + l.current + ", max " + l.max + ", total " + l.total + ", refused " + l.refused
              )
            ),
            t
          )
        );
      }
    }
    $("mesh").replaceChildren(...(blocks.length ? blocks : [h("div", { class: "empty" }, "no published ports")]));
  }

  function drawEvents(d) {
    $("events").replaceChildren(
      ...(d.events.length
        ? d.events.map((e) => h("li", { class: e.kind }, h("time", {}, clock(e.at)), e.text))
        : [h("li", { class: "empty" }, "nothing yet (events since this manager started)")])
    );
  }

  function draw(d) {
    // Managers first, then by name: rows keep their places between polls.
    d.nodes.sort((a, b) => (a.role === b.role ? a.name.localeCompare(b.name) : a.role === "manager" ? -1 : 1));
    d.services.sort((a, b) => a.name.localeCompare(b.name));
    page.last = d;
    drawHeader(d);
    drawNodes(d);
    drawServices(d);
    drawPlacement(d);
    drawMesh(d);
    drawEvents(d);
  }

  function unreachable(why) {
    page.failures++;
    page.level = "unknown";
    const health = $("health");
    health.dataset.level = "unknown";
    health.textContent = "no answer";
    $("reasons").replaceChildren(h("li", { class: "red" }, "no answer from this manager: " + why));
  }

  async function poll() {
    try {
      const r = await fetch("/ui/state", { credentials: "same-origin", cache: "no-store" });
      if (r.ok) {
        draw(await r.json());
      } else {
        let why = "HTTP " + r.status;
        try {
          why = (await r.json()).error || why;
        } catch (_) {}
        unreachable(why);
      }
    } catch (e) {
      unreachable(String(e));
    }
    page.polls++;
    setTimeout(poll, every);
  }

  poll();
})();
