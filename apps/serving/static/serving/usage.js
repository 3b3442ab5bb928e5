// The usage page's chart (tokens per day per key and deployment), from its json_script block.
window.addEventListener("load", () => {
  const traces = JSON.parse(document.getElementById("usage-data").textContent);
  Plotly.newPlot("usage-chart", traces, {barmode: "stack", margin: {t: 20}, yaxis: {title: "tokens"}, xaxis: {type: "category"}},
                 {displaylogo: false, responsive: true});
});
