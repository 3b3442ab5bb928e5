// Live job page: renders the snapshot embedded in the page, then follows the job's websocket.
// On every (re)connect the server sends a fresh snapshot from the database, so a reload or a
// dropped connection never loses state; log lines and metric points are de-duplicated.
(function () {
  "use strict";
  const script = document.currentScript;
  const jobId = script.dataset.jobId;
  const FINISHED = ["SUCCEEDED", "FAILED", "CANCELLED"];
  const MAX_LOG_LINES = 500;
  const $ = (id) => document.getElementById(id);

  const state = { status: null, metrics: {}, logSeq: 0, chartPending: false };
  // The job states as the page names them (apps/jobs/models.py JobStatus), in the page's language.
  const STATUS_LABELS = {QUEUED: gettext("Queued"), RUNNING: gettext("Running"), SUCCEEDED: gettext("Succeeded"),
                         FAILED: gettext("Failed"), CANCELLED: gettext("Cancelled")};

  function fmtEta(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 60) return interpolate(gettext("ETA %(s)s s"), {s: Math.round(seconds)}, true);
    const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    return m < 60 ? interpolate(gettext("ETA %(m)s min %(s)s s"), {m, s}, true)
      : interpolate(gettext("ETA %(h)s h %(m)s min"), {h: Math.floor(m / 60), m: m % 60}, true);
  }

  function setStatus(data) {
    state.status = data.status;
    const el = $("job-status");
    el.textContent = STATUS_LABELS[data.status] || data.status;
    el.className = "status " + data.status.toLowerCase();
    // The attempts the cap counts; a warm shutdown's hand-backs are shown beside them, not counted.
    $("job-attempts").textContent = data.counted_attempts;
    $("job-released").hidden = !data.released_attempts;
    $("job-released-count").textContent = data.released_attempts;
    const finished = FINISHED.includes(data.status);
    $("job-cancel-requested").hidden = !data.cancel_requested || finished;
    const cancel = $("cancel-form"), retry = $("retry-form");
    if (cancel) cancel.hidden = finished;
    if (retry) retry.hidden = !finished;
    $("job-error").hidden = !data.error;
    $("job-error").textContent = data.error || "";
    setProgress(data);
  }

  function setProgress(data) {
    if (data.progress !== undefined) {
      $("job-progress").value = data.progress;
      $("job-progress-text").textContent = Math.floor(data.progress * 100) + "%";
    }
    $("job-eta").textContent = FINISHED.includes(state.status) ? "" : fmtEta(data.eta_seconds);
    if (data.message !== undefined) $("job-message").textContent = data.message || "";
  }

  function addLog(line) {
    if (line.seq <= state.logSeq) return;
    state.logSeq = line.seq;
    const pre = $("job-log");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const row = document.createElement("span");
    row.className = "log-" + line.level;
    row.textContent = line.message + "\n";
    pre.appendChild(row);
    while (pre.childNodes.length > MAX_LOG_LINES) pre.removeChild(pre.firstChild);
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  function addMetric(point) {
    // step → value: a point seen twice (snapshot and live event) is drawn once; a resumed job
    // that re-reports a step replaces it.
    const series = (state.metrics[point.name] ||= new Map());
    series.set(point.step, point.value);
    scheduleChart();
  }

  function scheduleChart() {
    if (state.chartPending) return;
    state.chartPending = true;
    requestAnimationFrame(drawChart);
  }

  function drawChart() {
    state.chartPending = false;
    if (!window.Plotly) { setTimeout(scheduleChart, 100); return; }
    const names = Object.keys(state.metrics).sort();
    if (!names.length) return;
    if ($("job-chart").dataset.split === "1") { drawSplitCharts(names); return; }
    // One y-axis per metric: their units differ (GFLOP/s vs GB/s vs loss).
    // Fresh, step-sorted arrays on every draw: Plotly.react compares arrays by identity.
    const traces = names.map((name, i) => {
      const steps = [...state.metrics[name].keys()].sort((a, b) => a - b);
      return { x: steps, y: steps.map((s) => state.metrics[name].get(s)), name: name, mode: "lines+markers",
               yaxis: i === 0 ? "y" : "y" + (i + 1) };
    });
    const layout = { margin: { t: 40, r: 60, b: 45, l: 60 }, xaxis: { title: { text: gettext("step") } },
                     legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" }, height: 320 };
    names.forEach((name, i) => {
      const axis = { title: { text: name } };
      if (i > 0) Object.assign(axis, { overlaying: "y", side: i % 2 ? "right" : "left", anchor: "x" });
      layout[i === 0 ? "yaxis" : "yaxis" + (i + 1)] = axis;
    });
    Plotly.react($("job-chart"), traces, layout, { displaylogo: false, responsive: true });
    $("job-chart").dataset.points = String(names.reduce((n, k) => n + state.metrics[k].size, 0));
  }

  // One small chart per metric (data-split="1", e.g. training: loss, learning rate and tokens/s
  // have unrelated scales), in child elements created on first sight of each metric.
  function drawSplitCharts(names) {
    const host = $("job-chart");
    names.forEach((name) => {
      let el = host.querySelector(`[data-metric="${CSS.escape(name)}"]`);
      if (!el) {
        el = document.createElement("div");
        el.className = "chart-small";
        el.dataset.metric = name;
        host.appendChild(el);
      }
      const steps = [...state.metrics[name].keys()].sort((a, b) => a - b);
      const trace = { x: steps, y: steps.map((s) => state.metrics[name].get(s)), name: name, mode: "lines+markers" };
      Plotly.react(el, [trace], { title: { text: name, font: { size: 13 } }, margin: { t: 30, r: 10, b: 30, l: 50 },
                                  height: 200, showlegend: false }, { displaylogo: false, responsive: true });
    });
    host.dataset.points = String(names.reduce((n, k) => n + state.metrics[k].size, 0));
  }

  function applySnapshot(snap) {
    setStatus(snap);
    (snap.log || []).forEach(addLog);
    for (const [name, series] of Object.entries(snap.metrics || {})) {
      series.steps.forEach((step, i) => addMetric({ name, step, value: series.values[i] }));
    }
    const outputs = snap.outputs || [];
    $("job-outputs").hidden = !outputs.length;
    $("job-output-links").replaceChildren(...outputs.flatMap((o, i) => {
      const a = document.createElement("a");  // textContent: a label is a user's name for a thing
      a.href = o.url;
      a.textContent = o.label;
      return i ? [", ", a] : [a];
    }));
    if (snap.result) {
      $("job-result-card").hidden = false;
      $("job-result").textContent = JSON.stringify(snap.result, null, 2);
    }
  }

  let retryDelay = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/jobs/${jobId}/`);
    ws.onopen = () => { retryDelay = 500; $("live-state").textContent = gettext("live"); };
    ws.onmessage = (msg) => {
      const { event, data } = JSON.parse(msg.data);
      if (event === "snapshot") applySnapshot(data);
      else if (event === "status") {
        setStatus(data);
        // The result arrives with the final state: fetch it from the database.
        if (FINISHED.includes(data.status)) ws.send(JSON.stringify({ action: "snapshot" }));
      } else if (event === "progress") setProgress(data);
      else if (event === "log") addLog(data);
      else if (event === "metric") addMetric(data);
    };
    ws.onclose = (ev) => {
      if (ev.code === 4401 || ev.code === 4404) { $("live-state").textContent = gettext("not allowed"); return; }
      $("live-state").textContent = gettext("reconnecting…");
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    };
  }

  applySnapshot(JSON.parse($("job-snapshot").textContent));
  connect();
})();
