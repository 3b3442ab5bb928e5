// Draws the plotly figures that puyu_site/charts.py put in the page (a div + its JSON), so no
// page needs an inline script (Content-Security-Policy: script-src 'self').
(function () {
  function draw() {
    if (!window.Plotly) return;
    document.querySelectorAll("div.plotly-figure[data-figure]:not([data-drawn])").forEach(function (div) {
      var data = document.getElementById(div.dataset.figure);
      if (!data) return;
      div.setAttribute("data-drawn", "1");
      var spec = JSON.parse(data.textContent);
      window.Plotly.newPlot(div, spec.data || [], spec.layout || {}, spec.config || {});
    });
  }
  if (document.readyState === "complete") draw();
  else window.addEventListener("load", draw);
  document.addEventListener("htmx:afterSettle", draw);
})();
