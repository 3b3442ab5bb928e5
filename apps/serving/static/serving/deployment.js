// The deployment page: live plotly charts fed by polling the metrics endpoint every 2 s (the
// history comes from the replica jobs' metric rows), and the try-it box, which streams one chat
// answer over SSE with fetch (EventSource cannot POST).
(function () {
  "use strict";
  const urls = document.getElementById("deployment-urls").dataset;
  const POLL_MS = 2000;
  const MAX_POINTS = 600;
  const charts = {
    "chart-requests": {title: "Requests", series: [["running", "running"], ["waiting", "waiting"], ["queue_length", "in queue"]], yTitle: "requests"},
    "chart-latency": {title: "Latency", series: [["ttft_p50_s", "time to first token p50"], ["tpot_p50_s", "time per output token p50"]], yTitle: "seconds"},
    "chart-throughput": {title: "Throughput", series: [["tokens_per_s", "tokens/s"]], yTitle: "tokens/s"},
    "chart-kv": {title: "KV cache used", series: [["kv_cache_used", "KV cache used"]], yTitle: "fraction", range: [0, 1]},
  };
  // history metric names (recorded by replica jobs) → live field, with a unit conversion
  const HISTORY = {running: ["running", 1], waiting: ["waiting", 1], ttft_p50_ms: ["ttft_p50_s", 0.001],
                   tpot_ms: ["tpot_p50_s", 0.001], tokens_per_s: ["tokens_per_s", 1], kv_cache_used: ["kv_cache_used", 1]};

  function initCharts(history) {
    for (const [id, chart] of Object.entries(charts)) {
      const traces = chart.series.map(([field, name]) => {
        const x = [], y = [];
        for (const [hname, [target, scale]] of Object.entries(HISTORY)) {
          if (target !== field) continue;
          for (const [t, value] of (history[hname] || [])) { x.push(t); y.push(value * scale); }
        }
        return {x, y, name, mode: "lines+markers", type: "scatter"};
      });
      const layout = {title: {text: chart.title}, margin: {t: 40, r: 10}, xaxis: {type: "date"}, yaxis: {title: chart.yTitle, rangemode: "tozero"},
                      legend: {orientation: "h"}};
      if (chart.range) layout.yaxis.range = chart.range;
      Plotly.newPlot(id, traces, layout, {displaylogo: false, responsive: true});
    }
  }

  function extend(snapshot) {
    for (const [id, chart] of Object.entries(charts)) {
      const values = chart.series.map(([field]) => snapshot.totals[field]);
      const indices = [], xs = [], ys = [];
      values.forEach((value, index) => {
        if (value === null || value === undefined) return;
        indices.push(index); xs.push([snapshot.t]); ys.push([value]);
      });
      if (indices.length) Plotly.extendTraces(id, {x: xs, y: ys}, indices, MAX_POINTS);
    }
    const badge = document.getElementById("deployment-state");
    badge.textContent = snapshot.state;
    badge.className = "status " + snapshot.state;
    document.getElementById("deployment-reason").textContent = snapshot.waiting_reason || snapshot.state_reason || "—";
    document.getElementById("deployment-restarts").textContent = snapshot.restarts;
    for (const replica of snapshot.replicas) {
      const row = document.querySelector(`#replica-table tr[data-replica="${replica.replica_id}"]`);
      if (!row) continue;
      const cell = row.querySelector(".replica-state");
      cell.textContent = replica.state; cell.className = "status replica-state " + replica.state;
      row.querySelector(".replica-reason").textContent = replica.waiting_reason || "";
    }
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
    output.hidden = false; output.textContent = ""; status.textContent = "waiting for a replica…";
    const body = {messages: [{role: "user", content: form.message.value}], max_tokens: Number(form.max_tokens.value),
                  temperature: Number(form.temperature.value)};
    const response = await fetch(urls.try, {method: "POST", body: JSON.stringify(body),
                                            headers: {"Content-Type": "application/json", "X-CSRFToken": urls.csrf}});
    if (!response.ok) {
      const error = await response.json().catch(() => ({error: {message: response.statusText}}));
      status.textContent = `error ${response.status}: ${error.error.message}`;
      return;
    }
    status.textContent = "streaming…";
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
        if (chunk.error) { status.textContent = "error: " + chunk.error.message; continue; }
        if (chunk.usage) status.textContent = `done: ${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens`;
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
    extend(JSON.parse(document.getElementById("live-data").textContent));
    setTimeout(poll, POLL_MS);
    document.getElementById("try-form").addEventListener("submit", tryIt);
  });
})();
