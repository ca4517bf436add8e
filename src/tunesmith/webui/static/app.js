// tunesmith ui: the runs list, a run's page, the comparison and the launch form.
// Plain JavaScript, no build step, nothing fetched from elsewhere; every text from a run is set as
// text (never as HTML). Pages poll the JSON of the app while a run trains.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const POLL_MS = 1000; // a run's page and a comparison while something trains
const LIST_POLL_MS = 2500; // the runs list reads every run's files
let pollTimer = null;
let pageToken = 0; // a page left behind stops polling and drawing

// ---------------------------------------------------------------------------------------------
// Helpers

function h(tag, attrs, ...children) {
  const el = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(data.error || data.detail || response.statusText);
  return data;
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  if (Number.isInteger(value)) return String(value);
  const size = Math.abs(value);
  return size !== 0 && (size < 1e-3 || size >= 1e5) ? value.toExponential(2) : value.toFixed(4);
}

function duration(seconds) {
  if (typeof seconds !== "number") return "–";
  if (seconds < 60) return `${Math.round(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${String(Math.round(seconds % 60)).padStart(2, "0")}s`;
  return `${Math.floor(seconds / 3600)}h ${String(Math.floor((seconds % 3600) / 60)).padStart(2, "0")}m`;
}

function stateBadge(state) {
  return h("span", { class: `state state-${state}`, text: state });
}

function headlineCell(headline) {
  if (!headline || !headline.metric) return "–";
  const { metric, before, after, higher_is_better: higher } = headline;
  if (before === null && after === null) return h("span", { class: "muted", text: `${metric}: not evaluated` });
  let cls = "";
  if (before !== null && after !== null) cls = (after > before) === higher ? "better" : "worse";
  return h("span", {}, `${metric} ${fmt(before)} → `, h("span", { class: cls, text: fmt(after) }));
}

function runLink(id) {
  return `#/run/${id}`;
}

function schedule(fn, ms = POLL_MS) {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(fn, ms);
}

function showError(where, error) {
  where.replaceChildren(h("div", { class: "error", text: error.message || String(error) }));
}

// ---------------------------------------------------------------------------------------------
// A line chart in SVG: series of [x, y] points over shared axes

function chart(id, title, series, xLabel = "step") {
  const W = 520, H = 230, L = 52, R = 12, T = 10, B = 30;
  const points = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
  const svg = h("svg:svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": title });
  const figure = h("figure", { class: "chart", id }, h("figcaption", { text: title }), svg);
  if (!points.length) {
    svg.append(h("svg:text", { x: W / 2 - 40, y: H / 2, text: "no data yet" }));
    return figure;
  }
  let [x0, x1] = [Math.min(...points.map((p) => p[0])), Math.max(...points.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...points.map((p) => p[1])), Math.max(...points.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.05 || 1; y1 += Math.abs(y1) * 0.05 || 1; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad; y1 += pad;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  let lastLabel = null;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    svg.append(h("svg:line", { class: "grid", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }));
    svg.append(h("svg:text", { x: 4, y: sy(y) + 3, text: fmt(y) }));
    const x = Math.round(x0 + ((x1 - x0) * i) / 4);  // steps are whole numbers: each label once
    if (x !== lastLabel) svg.append(h("svg:text", { x: sx(x) - 8, y: H - 14, text: fmt(x) }));
    lastLabel = x;
  }
  svg.append(h("svg:line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  svg.append(h("svg:line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  svg.append(h("svg:text", { x: W - R - 30, y: H - 2, text: xLabel }));
  const legend = h("div", { class: "legend" });
  series.forEach((s, index) => {
    const valid = s.points.filter((p) => Number.isFinite(p[1]));
    if (!valid.length) return;
    const color = `s${(s.color ?? index) % 6}`;
    const d = valid.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg.append(h("svg:path", { class: `series ${color}${s.dashed ? " dashed" : ""}`, d, "data-points": valid.length }));
    if (valid.length === 1) {  // a line needs two points: one logged step is a dot
      svg.append(h("svg:circle", { class: `dot ${color}`, cx: sx(valid[0][0]), cy: sy(valid[0][1]), r: 3 }));
    }
    legend.append(h("span", {}, h("i", { class: `${color}${s.dashed ? " dashed" : ""}` }), s.label));
  });
  figure.append(legend);
  return figure;
}

function curve(metrics, key) {
  return metrics.filter((r) => typeof r[key] === "number").map((r) => [r.step, r[key]]);
}

function heldOutLoss(run) {
  // The base model's held-out loss at step 0, the evaluations during training, the tuned model's at the end.
  const metrics = run.metrics || [];
  const points = curve(metrics, "eval_loss");
  if (typeof (run.before || {}).loss === "number") points.unshift([0, run.before.loss]);
  if (typeof (run.after || {}).loss === "number") points.push([run.step || 0, run.after.loss]);
  return points;
}

function runCharts(run) {
  const metrics = run.metrics || [];
  const charts = [chart("chart-loss", "loss", [
    { label: "train loss", points: curve(metrics, "loss") },
    { label: "held-out loss", points: heldOutLoss(run), dashed: true, color: 1 },
  ])];
  const accuracyKeys = ["token_accuracy", "eval_token_accuracy", "eval_accuracy", "eval_reward_accuracy"];
  const accuracy = accuracyKeys.filter((k) => metrics.some((r) => typeof r[k] === "number"));
  if (accuracy.length) {
    charts.push(chart("chart-accuracy", "accuracy", accuracy.map((k, i) => (
      { label: k, points: curve(metrics, k), dashed: k.startsWith("eval_"), color: i + 2 }))));
  }
  charts.push(chart("chart-lr", "learning rate", [{ label: "lr", points: curve(metrics, "lr"), color: 3 }]));
  return h("div", { class: "charts" }, charts);
}

// ---------------------------------------------------------------------------------------------
// Runs list

async function runsPage(main, token) {
  main.replaceChildren(
    h("h1", {}, "Runs"),
    h("div", { class: "actions" },
      h("button", { id: "compare", class: "primary", onclick: () => {
        const chosen = [...document.querySelectorAll("input.pick:checked")].map((i) => i.value);
        if (chosen.length >= 2) location.hash = `#/compare/${chosen.join(",")}`;
        else document.getElementById("runs-message").replaceChildren(h("p", { class: "error", text: "choose two or more runs to compare" }));
      } }, "Compare selected"),
      h("a", { href: "#/launch" }, h("button", { id: "new-run" }, "New run"))),
    h("div", { id: "runs-message" }),
    h("div", { id: "runs" }, h("p", { class: "muted", text: "loading…" })));
  const checked = new Set();
  async function refresh() {
    if (token !== pageToken) return;
    document.querySelectorAll("input.pick:checked").forEach((i) => checked.add(i.value));
    document.querySelectorAll("input.pick:not(:checked)").forEach((i) => checked.delete(i.value));
    try {
      const data = await api("/api/runs");
      if (token !== pageToken) return;
      const rows = data.runs.map((run) => h("tr", { "data-run": run.id, "data-state": run.state },
        h("td", {}, h("input", { type: "checkbox", class: "pick", value: run.id, checked: checked.has(run.id) })),
        h("td", {}, h("a", { href: runLink(run.id), text: run.name })),
        h("td", {}, stateBadge(run.state), run.error ? h("div", { class: "muted", text: run.error }) : null),
        h("td", { text: run.task || "–" }),
        h("td", { text: run.model || "–" }),
        h("td", {}, headlineCell(run.headline)),
        h("td", { class: "num step", text: run.max_steps ? `${run.step} / ${run.max_steps}` : String(run.step) }),
        h("td", { class: "muted", text: (run.created || "").replace("T", " ").slice(0, 16) }),
        h("td", { class: "num muted", text: duration(run.seconds) })));
      const folders = h("p", { class: "muted", text: `output folders: ${data.roots.join(", ")}` });
      document.getElementById("runs").replaceChildren(folders, rows.length ? h("table", { id: "runs-table" },
        h("thead", {}, h("tr", {}, ["", "run", "state", "task", "model", "headline: before → after", "step", "created", "time"]
          .map((t) => h("th", { text: t })))),
        h("tbody", {}, rows)) : h("p", { class: "muted", text: "no runs yet: start one with New run" }));
    } catch (error) {
      showError(document.getElementById("runs"), error);
    }
    schedule(refresh, LIST_POLL_MS);
  }
  await refresh();
}

// ---------------------------------------------------------------------------------------------
// A run's page

function metricsTable(before, after) {
  const keys = [...new Set([...Object.keys(before || {}), ...Object.keys(after || {})])].sort();
  if (!keys.length) return h("p", { class: "muted", text: "no before/after evaluation (eval.before / eval.after off, or not reached yet)" });
  return h("table", { id: "before-after" },
    h("thead", {}, h("tr", {}, h("th", { text: "metric" }), h("th", { class: "num", text: "before" }), h("th", { class: "num", text: "after" }))),
    h("tbody", {}, keys.map((k) => h("tr", {}, h("td", { text: k }),
      h("td", { class: "num", text: fmt(before[k]) }), h("td", { class: "num", text: fmt(after[k]) })))));
}

function findingsBlock(check) {
  if (!check) return h("p", { class: "muted", text: "no data check recorded yet" });
  if (check.skipped) return h("p", { class: "muted", text: "data.check: false (the doctor did not run)" });
  const verdict = check.verdict || "";
  return h("div", {},
    h("p", {}, "verdict: ", h("span", { class: `verdict verdict-${verdict.replaceAll(" ", "-")}`, id: "verdict", text: verdict })),
    (check.findings || []).length ? h("table", {},
      h("thead", {}, h("tr", {}, ["severity", "finding", "count", "examples"].map((t) => h("th", { text: t })))),
      h("tbody", {}, check.findings.map((f) => h("tr", {},
        h("td", { class: `sev-${f.severity}`, text: f.severity }), h("td", { text: f.title }),
        h("td", { class: "num", text: f.count }), h("td", { class: "muted", text: (f.examples || []).slice(0, 3).join(", ") })))))
      : h("p", { class: "muted", text: "no findings" }));
}

function generationsBlock(generations) {
  if (!generations || !generations.length) return h("p", { class: "muted", text: "no generations recorded" });
  return h("table", { class: "gen" },
    h("thead", {}, h("tr", {}, ["prompt", "before", "after", "reference"].map((t) => h("th", { text: t })))),
    h("tbody", {}, generations.map((g) => h("tr", {}, [g.prompt, g.before, g.after, g.reference].map((t) => h("td", { text: t ?? "–" }))))));
}

async function runPage(main, token, id) {
  const [root, name] = id.split("/");
  const live = h("div", { id: "live" }, h("p", { class: "muted", text: "loading…" }));
  const message = h("div", { id: "action-message" });
  const stopButton = h("button", { id: "stop", class: "danger", onclick: async () => {
    stopButton.disabled = true;
    try {
      const done = await api(`/api/runs/${root}/${name}/stop`, {});
      message.replaceChildren(h("p", { class: "muted", text: `SIGTERM sent to ${done.signalled}: it finishes its step, writes a checkpoint and exits` }));
    } catch (error) { showError(message, error); }
  } }, "Stop");
  const resumeExtra = h("input", { id: "resume-extra", type: "text", placeholder: "overrides, e.g. train.max_steps=300 (optional)" });
  const resumeButton = h("button", { id: "resume", class: "primary", onclick: async () => {
    resumeButton.disabled = true;
    try {
      const done = await api(`/api/runs/${root}/${name}/resume`, { extra: resumeExtra.value.split(/\s+/).join("\n") });
      message.replaceChildren(h("pre", { class: "command", text: done.command }));
      refresh();
    } catch (error) { showError(message, error); resumeButton.disabled = false; }
  } }, "Resume");
  const report = h("a", { id: "report", href: `/runs/${root}/${name}/files/report.html`, target: "_blank", rel: "noopener" }, "report.html");
  const badge = h("span", { id: "state" });
  main.replaceChildren(
    h("h1", {}, h("span", { text: name }), badge),
    h("div", { class: "actions" }, stopButton, resumeExtra, resumeButton, report,
      h("a", { href: `#/launch/run:${id}` }, "new run from this config")),
    message, live);
  async function refresh() {
    if (token !== pageToken) return;
    let run;
    try {
      run = await api(`/api/runs/${root}/${name}`);
    } catch (error) {
      showError(live, error);
      schedule(refresh);
      return;
    }
    if (token !== pageToken) return;
    const active = ["running", "starting", "stopping"].includes(run.state);
    badge.replaceChildren(stateBadge(run.state));
    stopButton.hidden = !active;
    stopButton.disabled = !active || run.state === "stopping";
    // A finished run has nothing to resume; a stopped or failed one goes on from its newest checkpoint.
    resumeButton.hidden = !["stopped", "failed"].includes(run.state) || !(run.checkpoints || []).length;
    resumeButton.disabled = active;
    resumeExtra.hidden = resumeButton.hidden;
    report.hidden = !run.has_report;
    const job = run.job;
    const parts = [
      h("section", { class: "facts" },
        h("div", {}, h("span", { text: "step" }), h("b", { id: "step", text: run.step ?? 0 }), run.max_steps ? ` / ${run.max_steps}` : ""),
        h("div", {}, h("span", { text: "loss" }), h("b", { id: "loss", text: fmt(run.loss) })),
        h("div", {}, h("span", { text: "task" }), h("b", { text: run.task || "–" })),
        h("div", {}, h("span", { text: "model" }), h("b", { text: run.model || "–" })),
        h("div", {}, h("span", { text: "headline" }), h("b", {}, headlineCell(run.headline))),
        h("div", {}, h("span", { text: "checkpoints" }), h("b", { id: "checkpoints", text: (run.checkpoints || []).join(", ") || "none" })),
        h("div", {}, h("span", { text: "held by" }), h("b", { text: run.holder || "nobody" }))),
      runCharts(run),
      h("h2", { text: "before → after (held-out data)" }), h("section", {}, metricsTable(run.before, run.after)),
      h("h2", { text: "generations" }), h("section", {}, generationsBlock(run.generations)),
      h("h2", { text: "data check" }), h("section", {}, findingsBlock(run.data_check)),
      job ? h("div", {}, h("h2", { text: "process started from this page" }),
        h("pre", { class: "command", text: job.command }),
        h("pre", { id: "output", text: (job.output || []).join("\n") || "(no output yet)" }),
        h("p", { class: "muted", text: `${job.exit_code !== null ? `exit code ${job.exit_code} · ` : ""}log: ${job.log}` })) : null,
      run.config ? h("details", {}, h("summary", { text: "config.yaml" }), h("pre", { text: run.config })) : null];
    live.replaceChildren(...parts.filter(Boolean));
    if (active) schedule(refresh);
  }
  await refresh();
}

// ---------------------------------------------------------------------------------------------
// Comparing runs

async function comparePage(main, token, ids) {
  main.replaceChildren(h("h1", {}, "Compare"), h("div", { id: "compare-body" }, h("p", { class: "muted", text: "loading…" })));
  async function refresh() {
    if (token !== pageToken) return;
    const body = document.getElementById("compare-body");
    let data;
    try {
      data = await api(`/api/compare?${ids.map((id) => `run=${encodeURIComponent(id)}`).join("&")}`);
    } catch (error) { showError(body, error); return; }
    if (token !== pageToken) return;
    const names = data.runs.map((r) => r.name);
    const losses = data.runs.flatMap((r, i) => [
      { label: `${r.name}`, points: curve(r.metrics || [], "loss"), color: i },
      { label: `${r.name} held-out`, points: heldOutLoss(r), color: i, dashed: true },
    ]);
    body.replaceChildren(
      h("table", { id: "compare-runs" },
        h("thead", {}, h("tr", {}, ["run", "state", "task", "model", "headline", "step"].map((t) => h("th", { text: t })))),
        h("tbody", {}, data.runs.map((r) => h("tr", {},
          h("td", {}, h("a", { href: runLink(r.id), text: r.name })), h("td", {}, stateBadge(r.state)),
          h("td", { text: r.task || "–" }), h("td", { text: r.model || "–" }),
          h("td", {}, headlineCell(r.headline)), h("td", { class: "num", text: r.step }))))),
      h("div", { class: "charts" }, chart("chart-compare-loss", "loss, overlaid", losses),
        chart("chart-compare-accuracy", "token accuracy, overlaid", data.runs.map((r, i) => (
          { label: r.name, points: curve(r.metrics || [], "token_accuracy"), color: i })))),
      h("h2", { text: "config difference" }),
      h("section", {}, data.config_diff.length ? h("table", { id: "config-diff" },
        h("thead", {}, h("tr", {}, h("th", { text: "key" }), names.map((n) => h("th", { text: n })))),
        h("tbody", {}, data.config_diff.map((row) => h("tr", {}, h("td", { text: row.key }),
          row.values.map((v) => h("td", { text: v === undefined || v === null ? "–" : JSON.stringify(v) }))))))
        : h("p", { class: "muted", text: "the configs are the same" })),
      h("h2", { text: "metrics side by side (before → after)" }),
      h("section", {}, data.metrics.length ? h("table", { id: "compare-metrics" },
        h("thead", {}, h("tr", {}, h("th", { text: "metric" }), names.map((n) => h("th", { class: "num", text: n })))),
        h("tbody", {}, data.metrics.map((row) => h("tr", {}, h("td", { text: row.key }),
          row.values.map((v) => h("td", { class: "num", text: `${fmt(v.before)} → ${fmt(v.after)}` }))))))
        : h("p", { class: "muted", text: "no before/after evaluations to compare" })));
    if (data.runs.some((r) => ["running", "starting", "stopping"].includes(r.state))) schedule(refresh);
  }
  await refresh();
}

// ---------------------------------------------------------------------------------------------
// The launch form, generated from the config schema

async function launchPage(main, token, baseId) {
  let schema;
  try {
    schema = await api("/api/schema");
  } catch (error) { showError(main, error); return; }
  if (!schema.bases.length) {
    main.replaceChildren(h("h1", {}, "New run"), h("p", { class: "muted", text: "no example configs or runs to start from: pass --examples DIR" }));
    return;
  }
  baseId = baseId || schema.bases[0].id;
  const baseSelect = h("select", { id: "base", onchange: () => { location.hash = `#/launch/${baseSelect.value}`; } },
    schema.bases.map((b) => h("option", { value: b.id, selected: b.id === baseId, text: b.label })));
  const command = h("pre", { class: "command", id: "command", text: "…" });
  const errorBox = h("div", { id: "form-error" });
  const extra = h("textarea", { id: "extra", rows: 3, placeholder: "more overrides, one key=value per line (as on the command line), e.g. train.learning_rate=1e-3" });
  const preflightBox = h("div", { id: "preflight" });
  const form = h("form", { id: "launch-form", onsubmit: (event) => event.preventDefault() });
  const startButton = h("button", { id: "start", class: "primary", type: "button" }, "Start");
  const checkButton = h("button", { id: "check", type: "button" }, "Check data (preview + doctor)");
  main.replaceChildren(
    h("h1", {}, "New run"),
    h("div", { class: "actions" }, h("label", { for: "base", text: "start from" }), baseSelect),
    h("p", { class: "muted", text: "Every key of the config, with its description and default. Changed fields become dotted overrides of the command below; the same checks as the command line apply." }),
    h("h2", { text: "equivalent command line" }), command, errorBox,
    h("div", { class: "actions" }, checkButton, startButton),
    preflightBox, form,
    h("h2", { text: "more overrides" }), extra);

  let start;
  try {
    start = await api(`/api/bases?base=${encodeURIComponent(baseId)}`);
  } catch (error) { showError(errorBox, error); return; }
  if (token !== pageToken) return;
  const inputs = {};
  const sections = {};
  for (const field of schema.fields) {
    const value = start.values[field.key] ?? "";
    let input;
    if (field.kind === "bool") {
      input = h("input", { type: "checkbox", name: field.key, checked: value === "true" });
    } else if (field.kind === "choice") {
      input = h("select", { name: field.key }, field.choices.map((c) => h("option", { value: String(c), selected: String(c) === value, text: String(c) })));
    } else {
      input = h("input", { type: "text", name: field.key, value, placeholder: field.optional ? "(none)" : "" });
    }
    inputs[field.key] = { input, start: value, kind: field.kind };
    const row = h("div", { class: "field", "data-key": field.key },
      h("label", { for: `f-${field.key}`, text: field.key }), input,
      h("small", { text: `${field.description} (default: ${field.default === "" ? "none" : field.default})` }));
    input.id = `f-${field.key}`;
    if (!sections[field.section]) {
      sections[field.section] = h("fieldset", { "data-section": field.section }, h("legend", { text: field.section }));
      form.append(sections[field.section]);
    }
    sections[field.section].append(row);
  }

  function body() {
    const values = {};
    for (const [key, { input, kind }] of Object.entries(inputs)) {
      values[key] = kind === "bool" ? (input.checked ? "true" : "false") : input.value;
    }
    return { base: baseId, values, extra: extra.value };
  }

  let planTimer = null;
  async function plan() {
    for (const [key, { input, start: initial, kind }] of Object.entries(inputs)) {
      const now = kind === "bool" ? (input.checked ? "true" : "false") : input.value;
      input.closest(".field").classList.toggle("changed", now !== initial);
    }
    try {
      const planned = await api("/api/launch/plan", body());
      command.textContent = planned.command;
      errorBox.replaceChildren();
      startButton.disabled = false;
      return planned;
    } catch (error) {
      showError(errorBox, error);
      startButton.disabled = true;
      return null;
    }
  }
  function planSoon() {
    clearTimeout(planTimer);
    planTimer = setTimeout(plan, 250);
  }
  form.addEventListener("input", planSoon);
  form.addEventListener("change", planSoon);
  extra.addEventListener("input", planSoon);

  checkButton.addEventListener("click", async () => {
    checkButton.disabled = true;
    preflightBox.replaceChildren(h("p", { class: "muted", text: "reading and tokenizing the data, running the doctor…" }));
    try {
      const result = await api("/api/launch/preflight", body());
      preflightBox.replaceChildren(
        h("h2", { text: "data preview: which tokens train" }),
        h("pre", { class: "command", text: result.commands[0] }),
        h("section", { id: "preview" }, result.preview.map((sample) => h("div", { class: "sample" },
          h("div", { class: "muted", text: `${sample.source}${sample.label !== null && sample.label !== undefined ? `  label: ${JSON.stringify(sample.label)}` : ""}` }),
          h("div", { class: "text" }, sample.pieces.map(([text, trained]) => trained ? h("mark", { text }) : h("span", { class: "untrained", text })))))),
        h("h2", { text: "the data doctor" }),
        h("pre", { class: "command", text: result.commands[1] }),
        h("section", { id: "doctor" }, findingsBlock(result.check)));
    } catch (error) { showError(preflightBox, error); }
    checkButton.disabled = false;
  });

  startButton.addEventListener("click", async () => {
    startButton.disabled = true;
    try {
      const started = await api("/api/launch/start", body());
      location.hash = runLink(started.run);
    } catch (error) {
      showError(errorBox, error);
      startButton.disabled = false;
    }
  });
  await plan();
}

// ---------------------------------------------------------------------------------------------
// Routing: #/ · #/run/<root>/<name> · #/compare/<id>,<id> · #/launch[/<base id>]

async function route() {
  clearTimeout(pollTimer);
  const token = ++pageToken;
  const main = document.getElementById("main");
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [page, ...rest] = hash.split("/");
  document.body.dataset.page = page || "runs";
  if (page === "run") return runPage(main, token, rest.join("/"));
  if (page === "compare") return comparePage(main, token, rest.join("/").split(",").filter(Boolean));
  if (page === "launch") return launchPage(main, token, rest.join("/"));
  return runsPage(main, token);
}

window.addEventListener("hashchange", route);
route();
