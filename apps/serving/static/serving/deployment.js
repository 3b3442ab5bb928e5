// The deployment page: live plotly charts fed by polling the metrics endpoint every 2 s (the
// history comes from the replica jobs' metric rows), the replica table kept current from the same
// poll (a stop shows as draining, then stopped, without a reload), and the try-it box, which
// streams one chat answer over SSE with fetch (EventSource cannot POST).
(function () {
  "use strict";
  const urls = document.getElementById("deployment-urls").dataset;
  const POLL_MS = 2000;
  const MAX_POINTS = 600;
  const EMPTY_WINDOW_MS = 10 * 60 * 1000;  // the x axis of a chart with no point yet: the last 10 minutes
  const MIN_WINDOW_MS = 2 * 60 * 1000;  // the narrowest x axis once points come (see fitAxis)
  // Requests: running (decoding in a replica), waiting (claimed by a replica, waiting for a
  // slot) and queued (in the deployment's stream, claimed by no replica yet) are disjoint.
  // KV cache: percent, on an axis that fits the values: one request on a CPU replica holds well
  // under 1% of the cache, which a 0-1 axis drew as a flat 0.
  // Titles, units, series names (data-series, split at "|") and empty-state texts come translated
  // from the template, on each chart's element.
  const charts = {
    "chart-requests": {fields: ["running", "waiting", "queued"]},
    "chart-latency": {fields: ["ttft_p50_s", "tpot_p50_s"]},
    "chart-throughput": {fields: ["tokens_per_s"]},
    "chart-kv": {fields: ["kv_cache_used"], scale: 100, hover: "%{y:.2f}%"},
  };
  // history metric names (recorded by replica jobs) → live field, with a unit conversion
  const HISTORY = {running: ["running", 1], waiting: ["waiting", 1], ttft_p50_ms: ["ttft_p50_s", 0.001],
                   tpot_ms: ["tpot_p50_s", 0.001], tokens_per_s: ["tokens_per_s", 1], kv_cache_used: ["kv_cache_used", 1]};
  const empty = {};  // chart id → true while it has no point

  function emptyLayout(element) {
    const now = Date.now();
    return {"xaxis.range": [new Date(now - EMPTY_WINDOW_MS).toISOString(), new Date(now).toISOString()],
            "xaxis.autorange": false,
            annotations: [{text: element.dataset.empty, xref: "paper", yref: "paper", x: 0.5, y: 0.5, showarrow: false,
                           font: {size: 15, color: "#888"}}]};
  }

  // Until a chart's points span MIN_WINDOW_MS, show that much: with one or two points plotly's
  // autorange zooms to milliseconds ("18:37:55.3816" ticks) on a chart that just started.
  const first = {};  // chart id → time of its first point (ms)

  function fitAxis(id, latest) {
    const end = new Date(latest).getTime();
    if (first[id] === undefined) first[id] = end;
    if (end - first[id] < MIN_WINDOW_MS) {
      Plotly.relayout(id, {"xaxis.range": [new Date(end - MIN_WINDOW_MS).toISOString(), new Date(end).toISOString()],
                           "xaxis.autorange": false});
    } else if (first[id] !== null) {
      first[id] = null;  // spans the window: let plotly fit it from now on
      Plotly.relayout(id, {"xaxis.autorange": true});
    }
  }

  function initCharts(history) {
    for (const [id, chart] of Object.entries(charts)) {
      const element = document.getElementById(id);
      const names = element.dataset.series.split("|");
      let points = 0;
      const traces = chart.fields.map((field, index) => {
        const x = [], y = [];
        for (const [hname, [target, scale]] of Object.entries(HISTORY)) {
          if (target !== field) continue;
          for (const [t, value] of (history[hname] || [])) { x.push(t); y.push(value * scale * (chart.scale || 1)); }
        }
        points += x.length;
        const trace = {x, y, name: names[index], mode: "lines+markers", type: "scatter"};
        if (chart.hover) trace.hovertemplate = chart.hover;
        return trace;
      });
      const layout = {title: {text: element.dataset.title}, margin: {t: 40, r: 10}, xaxis: {type: "date"},
                      yaxis: {title: element.dataset.unit, rangemode: "tozero"}, legend: {orientation: "h"}};
      empty[id] = points === 0;
      if (empty[id]) {
        const blank = emptyLayout(element);
        layout.xaxis.range = blank["xaxis.range"]; layout.xaxis.autorange = false; layout.annotations = blank.annotations;
      }
      Plotly.newPlot(id, traces, layout, {displaylogo: false, responsive: true});
      if (!empty[id]) {
        const times = traces.flatMap((trace) => trace.x.map((t) => new Date(t).getTime()));
        first[id] = Math.min(...times);
        fitAxis(id, Math.max(...times));
      }
    }
  }

  function statusCell(className, text, extra) {
    const span = document.createElement("span");
    span.className = className + " " + extra;
    span.textContent = text;
    return span;
  }

  function replicaRow(replica) {
    const row = document.createElement("tr");
    row.dataset.replica = replica.replica_id;
    const id = document.createElement("td");
    const code = document.createElement("code"); code.textContent = replica.replica_id; id.append(code);
    const version = document.createElement("td"); version.textContent = replica.version;
    const state = document.createElement("td");
    const reason = document.createElement("div"); reason.className = "muted replica-reason";
    state.append(statusCell("status replica-state", "", ""), reason);
    const job = document.createElement("td");
    const link = document.createElement("a"); link.href = replica.job_url; link.textContent = "#" + replica.job_id;
    const jobStatus = document.createElement("span"); jobStatus.className = "replica-job-status";
    job.append(link, " ", jobStatus);
    row.append(id, version, state, job);
    return row;
  }

  function updateReplicas(replicas) {
    const body = document.querySelector("#replica-table tbody");
    const placeholder = document.getElementById("replica-empty");
    if (placeholder) placeholder.hidden = replicas.length > 0;
    // Newest first, as the server renders them; rows of replicas started since the page loaded are added.
    let previous = placeholder;
    for (const replica of replicas) {
      let row = body.querySelector(`tr[data-replica="${CSS.escape(replica.replica_id)}"]`);
      if (!row) row = replicaRow(replica);
      if (previous) previous.after(row); else body.prepend(row);
      previous = row;
      const cell = row.querySelector(".replica-state");
      cell.textContent = replica.state_display || replica.state; cell.className = "status replica-state " + replica.state;
      row.querySelector(".replica-reason").textContent = replica.waiting_reason || "";
      row.querySelector(".replica-job-status").textContent = (replica.job_status_display || "").toLowerCase();
    }
  }

  function extend(snapshot) {
    for (const [id, chart] of Object.entries(charts)) {
      const values = chart.fields.map((field) => snapshot.totals[field]);
      const indices = [], xs = [], ys = [];
      values.forEach((value, index) => {
        if (value === null || value === undefined) return;
        indices.push(index); xs.push([snapshot.t]); ys.push([value * (chart.scale || 1)]);
      });
      if (!indices.length) continue;
      Plotly.extendTraces(id, {x: xs, y: ys}, indices, MAX_POINTS);
      if (empty[id]) {  // the first point: drop the empty-state text
        empty[id] = false;
        Plotly.relayout(id, {annotations: []});
      }
      if (first[id] !== null) fitAxis(id, snapshot.t);
    }
    const badge = document.getElementById("deployment-state");
    badge.textContent = snapshot.state_display || snapshot.state;
    badge.className = "status " + snapshot.state;
    document.getElementById("deployment-reason").textContent = snapshot.waiting_reason || snapshot.state_reason || "—";
    document.getElementById("deployment-restarts").textContent = snapshot.restarts;
    updateReplicas(snapshot.replicas);
  }

  async function poll() {
    try {
      const response = await fetch(urls.metrics, {headers: {Accept: "application/json"}});
      if (response.ok) extend(await response.json());
    } catch (error) { /* the next poll tries again */ }
    setTimeout(poll, POLL_MS);
  }

  async function tryIt(event) {
    event.preventDefault();
    const form = event.target;
    const output = document.getElementById("try-output");
    const status = document.getElementById("try-status");
    output.hidden = false; output.textContent = ""; status.textContent = gettext("waiting for a replica…");
    const body = {messages: [{role: "user", content: form.message.value}], max_tokens: Number(form.max_tokens.value),
                  temperature: Number(form.temperature.value)};
    const response = await fetch(urls.try, {method: "POST", body: JSON.stringify(body),
                                            headers: {"Content-Type": "application/json", "X-CSRFToken": urls.csrf}});
    if (!response.ok) {
      const error = await response.json().catch(() => ({error: {message: response.statusText}}));
      status.textContent = interpolate(gettext("error %(status)s: %(message)s"), {status: response.status, message: error.error.message}, true);
      return;
    }
    status.textContent = gettext("streaming…");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        if (line === "[DONE]") continue;
        const chunk = JSON.parse(line);
        if (chunk.error) { status.textContent = interpolate(gettext("error: %(message)s"), {message: chunk.error.message}, true); continue; }
        if (chunk.usage) status.textContent = interpolate(gettext("done: %(prompt)s prompt + %(completion)s completion tokens"),
                                                   {prompt: chunk.usage.prompt_tokens, completion: chunk.usage.completion_tokens}, true);
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) output.textContent += choice.delta.content;
          if (choice.delta && choice.delta.tool_calls) output.textContent += JSON.stringify(choice.delta.tool_calls);
        }
      }
    }
    output.dataset.done = "1";
  }

  window.addEventListener("load", () => {
    initCharts(JSON.parse(document.getElementById("history-data").textContent));
    // The first snapshot updates the table and badges only: its point is as old as the page, and
    // a chart with no history keeps its empty state until the first poll brings a real one.
    const first = JSON.parse(document.getElementById("live-data").textContent);
    extend({...first, totals: {}});
    setTimeout(poll, POLL_MS);
    document.getElementById("try-form").addEventListener("submit", tryIt);
  });
})();
