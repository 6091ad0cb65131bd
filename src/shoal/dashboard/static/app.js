// shoal dashboard: one script for every page. Every value from a run goes into the page as
// text (textContent, attribute values), never as markup: task names, tags, logs and
// tracebacks are the users' own strings.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const STATES = ["pending", "ready", "queued", "running", "retrying", "succeeded", "failed",
  "dep_failed", "cancelled", "skipped"];
const COLOURS = {
  pending: "#d9d9d9", ready: "#c6dbef", queued: "#9ecae1", running: "#fdd49e",
  retrying: "#fdae6b", succeeded: "#a1d99b", failed: "#fb6a4a", dep_failed: "#fcbba1",
  cancelled: "#bdbdbd", skipped: "#efedf5", live: "#fdd49e", finished: "#a1d99b",
  interrupted: "#c6dbef", crashed: "#fb6a4a", lost: "#fcbba1", unreadable: "#bdbdbd",
};

// ---- small helpers ----------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "style") e.style.cssText = String(v); // CSSOM: allowed by the page's CSP
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function badge(state) {
  return el("span", { class: "badge", style: `background:${COLOURS[state] || "#eee"}` }, state);
}
function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "-";
}
function took(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function runLink(key, path, extra) {
  const q = new URLSearchParams({ run: key, ...(extra || {}) });
  return `${path}?${q}`;
}
const params = new URLSearchParams(location.search);
const RUN = params.get("run");
const main = () => document.getElementById("main");
function toast(text, bad) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.style.background = bad ? "#a00" : "#333";
  t.style.display = "block";
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.style.display = "none"; }, 8000);
}

// ---- the token: from the link's #token=..., kept in this browser -------------------------
(function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    localStorage.setItem("shoal-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();
function token() { return localStorage.getItem("shoal-token") || ""; }
function headers() { return token() ? { "X-Shoal-Token": token() } : {}; }

async function api(path, query) {
  const url = query ? `${path}?${new URLSearchParams(query)}` : path;
  const r = await fetch(url, { headers: headers() });
  const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}
async function act(body) {
  const r = await fetch("/api/action", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers() },
    body: JSON.stringify({ run: RUN, ...body }),
  });
  const out = await r.json().catch(() => ({ error: `${r.status}` }));
  if (!r.ok) { toast(out.error || `refused (${r.status})`, true); return null; }
  toast(`request ${out.request}: ${out.answer || "queued"}`, out.refused);
  return out;
}
function actionButton(label, body, confirmText, danger) {
  return el("button", {
    class: danger ? "danger" : null,
    "data-action": body.action,
    onclick: async () => {
      if (confirmText && !confirm(confirmText)) return;
      if (await act(body)) setTimeout(route, 800);
    },
  }, label);
}
function showLock() {
  const lock = document.getElementById("lock");
  lock.textContent = token() ? "actions: unlocked" : "actions: locked (set token)";
  lock.onclick = () => {
    const t = prompt("The dashboard's token (printed when it started); empty to forget it:", "");
    if (t === null) return;
    if (t) localStorage.setItem("shoal-token", t); else localStorage.removeItem("shoal-token");
    showLock();
  };
}

// ---- live updates: server-sent events read through fetch (so that the token can go in a
// header), reconnecting after a pause ------------------------------------------------------
function follow(query, onUpdate) {
  const dot = document.getElementById("live");
  let stopped = false;
  async function loop() {
    while (!stopped) {
      try {
        const r = await fetch(`/api/events?${new URLSearchParams(query)}`, { headers: headers() });
        if (!r.ok) throw new Error(String(r.status));
        dot.textContent = "live";
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const chunk = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            const line = chunk.split("\n").find((l) => l.startsWith("data: "));
            if (line) onUpdate(JSON.parse(line.slice(6)));
          }
        }
      } catch (e) {
        dot.textContent = "reconnecting";
      }
      await new Promise((ok) => setTimeout(ok, 3000));
    }
  }
  loop();
  return () => { stopped = true; };
}

// ---- charts (SVG) -----------------------------------------------------------------------
function chart(title, xs, lines, opts) {
  const W = 640, H = 200, L = 48, B = 28, T = 20, R = 10;
  const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "chart" });
  s.append(svg("text", { x: L, y: 13, "font-weight": "bold" }, title));
  const xmax = Math.max(1e-9, ...xs, opts.xmax || 0);
  let ymax = Math.max(1e-9, ...lines.flatMap((l) => l.ys), ...(opts.refs || []).map((r) => r.y));
  ymax *= 1.08;
  const X = (x) => L + (x / xmax) * (W - L - R);
  const Y = (y) => H - B - (y / ymax) * (H - B - T);
  s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999" }));
  s.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" }));
  for (let i = 0; i <= 4; i++) {
    const y = (ymax / 1.08) * i / 4;
    s.append(svg("text", { x: L - 4, y: Y(y) + 3, "text-anchor": "end" }, +y.toPrecision(3)));
    const x = xmax * i / 4;
    s.append(svg("text", { x: X(x), y: H - B + 14, "text-anchor": "middle" }, took(x)));
  }
  for (const ref of opts.refs || []) {
    s.append(svg("line", { x1: L, x2: W - R, y1: Y(ref.y), y2: Y(ref.y), stroke: ref.colour,
      "stroke-dasharray": "4 3" }));
    s.append(svg("text", { x: W - R - 2, y: Y(ref.y) - 3, "text-anchor": "end" }, ref.label));
  }
  let lx = W - R;  // the legend: right-aligned in the title's row
  for (const line of [...lines].reverse()) {
    const pts = line.xs.map((x, i) => `${X(x).toFixed(1)},${Y(line.ys[i]).toFixed(1)}`);
    if (pts.length) {
      s.append(svg("polyline", { points: pts.join(" "), fill: "none", stroke: line.colour,
        "stroke-width": 1.5 }));
    }
    const label = svg("text", { x: lx, y: 13, fill: line.colour, "text-anchor": "end" }, `- ${line.label}`);
    s.append(label);
    lx -= 10 + 6 * line.label.length;
  }
  return s;
}
function gantt(g, span) {
  const rows = [...new Set(g.bars.flatMap((b) => b[0]))].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const W = 900, L = 70, R = 10, T = 20, B = 28, RH = Math.max(3, Math.min(14, 300 / Math.max(1, rows.length)));
  const H = T + B + RH * rows.length;
  const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "gantt" });
  const note = g.sampled ? ` (sampled: ${g.bars.length} of ${g.of} attempts)` : "";
  s.append(svg("text", { x: L, y: 13, "font-weight": "bold" }, `Tasks on nodes and cores${note}`));
  const X = (x) => L + (x / Math.max(span, 1e-9)) * (W - L - R);
  rows.forEach((r, i) => {
    if (RH >= 8 || i % Math.ceil(8 / RH) === 0) {
      s.append(svg("text", { x: L - 4, y: T + i * RH + RH - 2, "text-anchor": "end" }, r));
    }
  });
  const index = new Map(rows.map((r, i) => [r, i]));
  for (const [where, a, b, outcome, task] of g.bars) {
    for (const row of where) {  // one bar on each core the attempt held
      const rect = svg("rect", { x: X(a), y: T + index.get(row) * RH, width: Math.max(1, X(b) - X(a)),
        height: RH - 1, fill: COLOURS[outcome] || "#fb6a4a" });
      rect.append(svg("title", {}, `task #${task} ${outcome}, ${took(b - a)}`));
      s.append(rect);
    }
  }
  for (let i = 0; i <= 4; i++) {
    s.append(svg("text", { x: X(span * i / 4), y: H - 10, "text-anchor": "middle" }, took(span * i / 4)));
  }
  return s;
}

// ---- pages ------------------------------------------------------------------------------
function crumbs(...items) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren(...items.map(([label, href]) => (href ? el("a", { href }, label) : el("span", {}, label))));
}
function countsBar(counts, total) {
  const bar = el("div", { class: "bar", title: STATES.filter((s) => counts[s]).map((s) => `${s} ${counts[s]}`).join(", ") });
  for (const s of STATES) {
    if (counts[s]) bar.append(el("span", { style: `background:${COLOURS[s]};width:${(100 * counts[s]) / Math.max(1, total)}%` }));
  }
  return bar;
}

async function runsPage() {
  crumbs(["runs"]);
  const body = await api("/api/runs");
  const table = el("table", { id: "runs" },
    el("tr", {}, ["run", "life", "outcome", "tasks", "", "counts", "started", "duration", "tasks/s"].map((h) => el("th", {}, h))));
  for (const r of body.runs) {
    const counts = r.counts || {};
    const shown = STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`).join(", ");
    table.append(el("tr", { "data-run": r.key || "" },
      el("td", {}, r.key ? el("a", { href: runLink(r.key, "/run") }, r.run || r.key) : (r.run || "?")),
      el("td", {}, badge(r.life)),
      el("td", {}, r.life === "finished" ? r.state : (r.error || "-")),
      el("td", { class: "num" }, r.total ?? "-"),
      el("td", {}, countsBar(counts, r.total || 0)),
      el("td", { class: "counts" }, shown),
      el("td", {}, when(r.created)),
      el("td", {}, took(r.duration)),
      el("td", { class: "num" }, (r.throughput || {}).overall ?? "-")));
  }
  main().replaceChildren(
    el("h1", {}, `Runs under ${body.base}`),
    body.runs.length ? table : el("p", { class: "muted" }, "No runs here yet."),
  );
  if (!runsPage.following) {
    let last = 0;
    runsPage.following = follow({}, () => {
      if (Date.now() - last > 1500) { last = Date.now(); runsPage().catch(showError); }
    });
  }
}

function tiles(counts, total) {
  const box = el("div", { class: "tiles", id: "counts" },
    el("div", { class: "tile" }, el("b", {}, total ?? 0), "tasks"));
  for (const s of STATES) {
    if (!counts[s]) continue;
    box.append(el("a", { class: "tile", href: runLink(RUN, "/tasks", { state: s }), "data-state": s,
      style: `border-left:6px solid ${COLOURS[s]}` }, el("b", {}, counts[s]), s));
  }
  return box;
}

async function runPage() {
  const st = await api("/api/run", { run: RUN });
  crumbs(["runs", "/"], [st.run || RUN]);
  const head = el("h1", {}, `Run ${st.run} `, badge(st.life), " ",
    el("span", { class: "muted" }, st.life === "finished" ? st.state : ""));
  const facts = el("p", { class: "muted", id: "facts" },
    `${st.dir} - started ${when(st.created)} - ${took(st.duration)} - backend ${st.backend} - `
    + `throughput ${(st.throughput || {}).overall ?? "-"} tasks/s`
    + (st.deadline ? ` - stops starting tasks in ${took(st.deadline - st.now)}` : "")
    + (st.allocation_end ? ` - allocation ends in ${took(st.allocation_end - st.now)}` : ""));
  const acts = el("p", {},
    el("a", { href: runLink(RUN, "/tasks") }, "all tasks"), " - ",
    el("a", { href: runLink(RUN, "/graph") }, "graph"), " ",
    st.life === "live" ? actionButton("stop the run", { action: "stop" }, "Stop this run? Running tasks finish; nothing new starts.", true) : null,
    st.counts && st.counts.failed ? actionButton("retry every failed task", { action: "retry", failed: true }) : null);
  const parts = [head, facts, acts, tiles(st.counts || {}, st.total)];
  if (st.crash_reason) parts.push(el("p", { class: "error" }, `crashed: ${st.crash_reason}`));
  if ((st.failures || []).length) {
    const t = el("table", { id: "failures" }, el("tr", {}, ["task", "name", "kind", "exit", "reason"].map((h) => el("th", {}, h))));
    for (const f of st.failures) {
      t.append(el("tr", {}, el("td", {}, el("a", { href: runLink(RUN, "/task", { id: f.id }) }, `#${f.id}`)),
        el("td", {}, f.name), el("td", {}, f.kind ?? "-"), el("td", {}, f.exit_code ?? ""), el("td", {}, f.reason ?? "")));
    }
    parts.push(el("h2", {}, `Failures (first ${st.failures.length} of ${st.counts.failed})`), t);
  }
  const chartsBox = el("div", { class: "row", id: "charts" }, el("p", { class: "muted" }, "reading the run's history..."));
  parts.push(el("h2", {}, "Over time"), chartsBox, el("div", { id: "tags" }));
  if ((st.running || []).length) {
    const t = el("table", {}, el("tr", {}, ["task", "name", "attempt", "since"].map((h) => el("th", {}, h))));
    for (const r of st.running) {
      t.append(el("tr", {}, el("td", {}, el("a", { href: runLink(RUN, "/task", { id: r.id }) }, `#${r.id}`)),
        el("td", {}, r.name), el("td", {}, r.attempt), el("td", {}, when(r.dispatched))));
    }
    parts.push(el("h2", {}, "Running (first 20)"), t);
  }
  if ((st.rules || []).length) {
    const t = el("table", {}, el("tr", {}, ["rule", "trigger", "calls", "errors", "seconds", "last error"].map((h) => el("th", {}, h))));
    for (const r of st.rules) {
      t.append(el("tr", {}, el("td", {}, r.rule), el("td", {}, r.trigger), el("td", { class: "num" }, r.calls),
        el("td", { class: "num" }, r.errors), el("td", { class: "num" }, (+r.seconds).toFixed(3)), el("td", {}, r.last_error ?? "")));
    }
    parts.push(el("h2", {}, "Rules and strategies"), t);
  }
  if ((st.nodes || []).length) {
    parts.push(el("p", { class: "muted" }, "Nodes: " + st.nodes.map((n) => `${n.name} (${n.cores} cores, ${n.gpus} GPUs)`).join(", ")));
  }
  main().replaceChildren(...parts);
  drawCharts().catch((e) => chartsBox.replaceChildren(el("p", { class: "error" }, String(e.message || e))));
  if (!runPage.following && st.life === "live") {
    let last = Date.now();
    runPage.following = follow({ run: RUN }, (u) => {
      if (u.counts) {
        const c = {};
        for (const [k, v] of Object.entries(u.counts)) if (v) c[k] = v;
        document.getElementById("counts").replaceWith(tiles(c, Object.values(c).reduce((a, b) => a + b, 0)));
      }
      if (u.state && u.state !== "running") { setTimeout(() => { runPage.following(); runPage.following = null; runPage(); }, 500); }
      else if (Date.now() - last > 10000) { last = Date.now(); runPage().catch(showError); }
    });
  }
}

async function drawCharts() {
  const c = await api("/api/charts", { run: RUN });
  const box = document.getElementById("charts");
  if (!box) return;
  const xs = c.time.concat(c.live.map((s) => s[0]));
  const cores = c.cores.concat(c.live.map((s) => s[1]));
  const lines = [{ label: "cores in use", xs, ys: cores, colour: "#3182bd" }];
  const refs = [{ y: c.capacity.cores, label: `${c.capacity.cores} cores`, colour: "#333" }];
  if (c.capacity.gpus) {
    lines.push({ label: "GPUs in use", xs, ys: c.gpus.concat(c.live.map((s) => s[2])), colour: "#e6550d" });
    refs.push({ y: c.capacity.gpus, label: `${c.capacity.gpus} GPUs`, colour: "#e6550d" });
  }
  const perSecond = (n) => n / c.width;
  const rate = [{ label: "succeeded / s", xs: c.time, ys: c.succeeded.map(perSecond), colour: "#31a354" },
    { label: "failed / s", xs: c.time, ys: c.failed.map(perSecond), colour: "#de2d26" }];
  const eff = c.efficiency === null ? "" : ` - efficiency ${(100 * c.efficiency).toFixed(1)}%`;
  box.replaceChildren(
    el("div", { class: "card", id: "utilization" }, chart(`Utilization${eff}`, xs, lines, { refs })),
    el("div", { class: "card", id: "throughput" }, chart("Throughput", c.time, rate, {})),
    el("div", { class: "card", id: "gantt" }, gantt(c.gantt, c.span)),
    el("p", { class: "muted" }, `${c.attempts} attempts read in ${c.read_s} s`
      + (c.live.length ? `; ${c.live.length} live samples since` : "")));
  const tags = el("table", {}, el("tr", {}, ["tag", "attempts", "succeeded", "failed", "running", "mean run time", "longest"].map((h) => el("th", {}, h))));
  for (const t of c.tags) {
    tags.append(el("tr", {}, el("td", {}, el("a", { href: runLink(RUN, "/tasks", { tag: t.tag }) }, t.tag)),
      ...[t.attempts, t.succeeded, t.failed, t.running].map((v) => el("td", { class: "num" }, v)),
      ...[t.mean, t.max].map((v) => el("td", { class: "num" }, took(v)))));
  }
  document.getElementById("tags").replaceChildren(el("h2", {}, "By tag"), tags);
}

async function tasksPage() {
  const q = Object.fromEntries(params);
  crumbs(["runs", "/"], [RUN, runLink(RUN, "/run")], ["tasks"]);
  const field = (name, label, value, extra) => el("label", {}, label, el("input", { name, value: value || "", ...(extra || {}) }));
  const sort = el("select", { name: "sort" }, ...["id", "-id", "name", "state", "attempts", "start", "-start", "runtime", "-runtime"].map((s) => el("option", { value: s, selected: (q.sort || "id") === s }, s)));
  const form = el("form", { class: "filters", id: "filters" },
    field("state", "states (comma-separated)", q.state, { list: "states" }),
    el("datalist", { id: "states" }, STATES.map((s) => el("option", { value: s }))),
    field("tag", "tag", q.tag), field("name", "name (glob: relax*)", q.name), field("text", "text in name or reason", q.text),
    el("label", {}, "sort", sort), el("button", { type: "submit" }, "filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const next = new URLSearchParams({ run: RUN });
    for (const [k, v] of new FormData(form)) if (v) next.set(k, String(v));
    location.search = String(next);
  });
  const offset = Number(q.offset || 0), limit = Number(q.limit || 50);
  const query = { run: RUN, offset, limit };
  for (const k of ["state", "tag", "name", "text", "sort"]) if (q[k]) query[k] = q[k];
  const page = await api("/api/tasks", query);
  const table = el("table", { id: "tasks" }, el("tr", {}, ["id", "name", "state", "attempts", "started", "run time", "tags", "reason"].map((h) => el("th", {}, h))));
  for (const t of page.rows) {
    table.append(el("tr", { "data-task": t.id },
      el("td", {}, el("a", { href: runLink(RUN, "/task", { id: t.id }) }, `#${t.id}`)),
      el("td", {}, t.name), el("td", {}, badge(t.state)), el("td", { class: "num" }, t.attempts),
      el("td", {}, when(t.started)), el("td", { class: "num" }, took(t.runtime)),
      el("td", {}, t.tags.join(", ")), el("td", {}, t.reason ?? "")));
  }
  const total = el("span", { id: "total" }, "counting...");
  const move = (to) => { const n = new URLSearchParams(location.search); n.set("offset", String(Math.max(0, to))); location.search = String(n); };
  const pager = el("p", {},
    el("button", { disabled: offset === 0, onclick: () => move(offset - limit) }, "previous"), " ",
    `rows ${page.rows.length ? offset + 1 : 0}-${offset + page.rows.length} of `, total, " ",
    el("button", { disabled: page.rows.length < limit, onclick: () => move(offset + limit) }, "next"));
  const sel = {};
  for (const k of ["state", "tag"]) if (q[k]) sel[k] = q[k];
  const graphLink = el("a", { href: runLink(RUN, "/graph", sel) }, Object.keys(sel).length ? "graph of this selection" : "graph");
  main().replaceChildren(el("h1", {}, "Tasks"), form, el("p", {}, graphLink), pager, table);
  const counted = await api("/api/count", query).catch(() => ({ total: "?" }));
  total.textContent = String(counted.total);
}

async function taskPage() {
  const id = params.get("id");
  const t = await api("/api/task", { run: RUN, id });
  const task = t.task;
  crumbs(["runs", "/"], [RUN, runLink(RUN, "/run")], ["tasks", runLink(RUN, "/tasks")], [`#${task.id}`]);
  const ended = t.ended;
  const buttons = el("p", {},
    ["failed", "cancelled"].includes(task.state) ? actionButton("retry", { action: "retry", tasks: [task.id] }) : null, " ",
    ended ? actionButton("rerun", { action: "rerun", tasks: [task.id] }) : null, " ",
    !ended ? actionButton("cancel", { action: "cancel", tasks: [task.id] }, `Cancel task #${task.id}?`, true) : null);
  const story = el("table", { id: "story" }, el("tr", {}, ["time", "from", "to", "event", "reason"].map((h) => el("th", {}, h))));
  for (const s of t.story) {
    story.append(el("tr", {}, el("td", {}, when(s.time)), el("td", {}, s.old ?? "-"), el("td", {}, badge(s.new)),
      el("td", {}, s.event), el("td", {}, s.reason ?? "")));
  }
  const attempts = el("table", { id: "attempts" }, el("tr", {}, ["attempt", "outcome", "where", "run time", "kind", "exit", "worker", "error"].map((h) => el("th", {}, h))));
  for (const a of t.attempts) {
    attempts.append(el("tr", {}, el("td", {}, a.attempt), el("td", {}, a.outcome ?? "running"), el("td", {}, a.where),
      el("td", {}, a.started && a.ended ? took(a.ended - a.started) : "-"), el("td", {}, a.kind ?? ""),
      el("td", {}, a.exit_code ?? ""), el("td", {}, a.worker ?? ""), el("td", {}, a.error ?? "")));
  }
  const list = (items, more) => el("p", {}, items.length ? items.flatMap((d) => [el("a", { href: runLink(RUN, "/task", { id: d.id }) }, `#${d.id} ${d.name}`), " ", badge(d.state), "  "]) : "none", more ? ` and ${more} more` : "");
  const result = t.result ? el("div", { id: "result" }, el("p", { class: "muted" }, `${t.result.size} bytes${t.result.type ? `, ${t.result.type}` : ""}`),
    t.result.preview !== null ? el("pre", {}, t.result.preview + (t.result.cut ? " ..." : "")) : el("p", { class: "muted" }, t.result.note)) : el("p", { class: "muted" }, "no stored result");
  const logs = el("div", { class: "logs", id: "logs" });
  main().replaceChildren(
    el("h1", {}, `#${task.id} ${task.name} `, badge(task.state)),
    el("pre", { id: "explain" }, t.explain.join("\n")), buttons,
    el("p", { class: "muted" }, `tags: ${task.tags.join(", ") || "-"}; added by ${task.origin}`),
    el("h2", {}, "Logs"), logs,
    el("h2", {}, "Story"), story, el("h2", {}, "Attempts"), attempts,
    el("h2", {}, "Depends on"), list(t.deps, t.more_deps), el("h2", {}, "Needed by"), list(t.dependents, 0),
    el("h2", {}, "Result"), result, el("h2", {}, "Options"), el("pre", {}, JSON.stringify(t.options, null, 1)));
  for (const stream of ["stdout", "stderr", "traceback"]) followLog(logs, task.id, stream, ended);
}

async function followLog(box, id, stream, ended) {
  const pre = el("pre", { id: `log-${stream}` });
  const head = el("div", { class: "muted" }, stream);
  box.append(head, pre);
  let offset = null;
  for (;;) {
    const q = { run: RUN, id, stream };
    if (offset !== null) q.offset = offset;
    let got;
    try { got = await api("/api/log", q); } catch (e) { pre.textContent = String(e.message || e); return; }
    if (offset === null && got.skipped) pre.textContent = `(first ${got.skipped} bytes not shown)\n`;
    pre.textContent += got.text;
    if (got.text) pre.scrollTop = pre.scrollHeight;
    offset = got.offset;
    if (!pre.textContent) pre.textContent = "";
    head.textContent = `${stream}${got.ended ? "" : " (following)"}${pre.textContent ? "" : ": empty"}`;
    pre.hidden = !pre.textContent;
    if (got.ended || ended) return;
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

async function graphPage() {
  crumbs(["runs", "/"], [RUN, runLink(RUN, "/run")], ["graph"]);
  const query = { run: RUN, group: params.get("group") || "auto" };
  for (const k of ["state", "tag"]) if (params.get(k)) query[k] = params.get(k);
  const g = await api("/api/graph", query);
  const byLevel = new Map();
  for (const b of g.boxes) { if (!byLevel.has(b.level)) byLevel.set(b.level, []); byLevel.get(b.level).push(b); }
  const BW = g.grouped ? 190 : 120, BH = g.grouped ? 46 : 28, GX = 16, GY = 44;
  // each layer in rows of at most PER boxes, layers top to bottom
  const PER = Math.max(1, Math.floor(1240 / (BW + GX)));
  const widest = Math.min(PER, Math.max(1, ...[...byLevel.values()].map((l) => l.length)));
  const W = widest * (BW + GX) + GX;
  const pos = new Map();
  let y = GY / 2;
  for (const level of [...byLevel.keys()].sort((a, b) => a - b)) {
    const boxes = byLevel.get(level);
    for (let i = 0; i < boxes.length; i += PER) {
      const row = boxes.slice(i, i + PER);
      const off = (W - row.length * (BW + GX)) / 2;
      row.forEach((b, j) => pos.set(b.key, [off + j * (BW + GX) + GX / 2, y]));
      y += BH + GX;
    }
    y += GY - GX;
  }
  const H = y + GY / 2;
  const s = svg("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, id: "dag" });
  for (const [a, b, n] of g.edges) {
    const [x1, y1] = pos.get(a), [x2, y2] = pos.get(b);
    s.append(svg("line", { x1: x1 + BW / 2, y1: y1 + BH, x2: x2 + BW / 2, y2, stroke: "#888" }));
    if (g.grouped) s.append(svg("text", { x: (x1 + x2) / 2 + BW / 2 + 3, y: (y1 + BH + y2) / 2 }, n));
  }
  for (const b of g.boxes) {
    const [x, y] = pos.get(b.key);
    const grp = svg("g", { class: "box", "data-key": b.key });
    grp.append(svg("rect", { x, y, width: BW, height: BH, rx: 5, fill: g.colours[b.state] || "#fff", stroke: "#555" }));
    grp.append(svg("text", { x: x + 5, y: y + (g.grouped ? 12 : 17) }, b.label.length > 28 ? b.label.slice(0, 27) + "..." : b.label));
    if (g.grouped) {
      const total = Object.values(b.counts).reduce((p, q) => p + q, 0);
      grp.append(svg("text", { x: x + 5, y: y + 26 }, `${total} tasks`));
      grp.append(svg("text", { x: x + 5, y: y + 39 }, Object.entries(b.counts).map(([k, v]) => `${v} ${k}`).join(", ").slice(0, 34)));
    }
    grp.append(svg("title", {}, `${b.label}: ${Object.entries(b.counts).map(([k, v]) => `${v} ${k}`).join(", ")}`));
    if (b.task !== null) {
      const a = svg("a", { href: runLink(RUN, "/task", { id: b.task }) });
      a.append(grp);
      s.append(a);
    } else s.append(grp);
  }
  const chosen = ["state", "tag"].filter((k) => params.get(k)).map((k) => `${k} ${params.get(k)}`).join(", ");
  const keep = Object.fromEntries(["state", "tag"].filter((k) => params.get(k)).map((k) => [k, params.get(k)]));
  const switcher = el("p", {}, chosen ? `Selection (${chosen}): ` : "", g.grouped ? `${g.tasks} tasks, one box per task name. ` : `${g.tasks} tasks. `,
    el("a", { href: runLink(RUN, "/graph", { ...keep, group: g.grouped ? "task" : "name" }) }, g.grouped ? "draw every task" : "group by name"),
    chosen ? el("span", {}, " - ", el("a", { href: runLink(RUN, "/graph") }, "the whole run")) : null);
  main().replaceChildren(el("h1", {}, "Graph"), switcher, el("div", { class: "graph" }, s));
}

function showError(e) {
  main().replaceChildren(el("p", { class: "error", id: "error" }, String(e.message || e)));
}

function route() {
  showLock();
  const pages = { "/": runsPage, "/run": runPage, "/tasks": tasksPage, "/task": taskPage, "/graph": graphPage };
  (pages[location.pathname] || runsPage)().catch(showError);
}
document.addEventListener("DOMContentLoaded", route);
