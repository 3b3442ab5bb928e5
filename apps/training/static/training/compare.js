// Compare page: one plotly chart per metric, one line per run, from server-downsampled series.
(function () {
  "use strict";
  const curves = JSON.parse(document.getElementById("compare-curves").textContent);
  function draw() {
    if (!window.Plotly) { setTimeout(draw, 100); return; }
    document.querySelectorAll(".compare-chart").forEach((el) => {
      const series = curves[el.dataset.metric] || [];
      const traces = series.map((s) => ({ x: s.steps, y: s.values, name: s.label, mode: "lines", type: "scatter" }));
      Plotly.newPlot(el, traces, { margin: { t: 10, r: 20, b: 45, l: 60 }, height: 300, xaxis: { title: { text: gettext("step") } },
                                   legend: { orientation: "h", y: -0.25 } }, { displaylogo: false, responsive: true });
      el.dataset.traces = String(traces.length);
    });
  }
  draw();
})();
