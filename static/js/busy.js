// Busy feedback for htmx actions that take a while (the training pre-flight Check, Render with a
// template). An action opts in with hx-indicator (the spinner element, shown by studio.css while
// the request runs) and hx-disabled-elt (its buttons, disabled so a second click cannot post
// again). This script adds what htmx does not: aria-busy="true" on the element that made the
// request and on the region it will fill, so assistive technology knows the answer is coming.
(function () {
  "use strict";

  function busyElements(detail) {
    const source = detail && detail.elt;
    if (!source || !source.closest || !source.closest("[hx-indicator]")) return [];
    return [source, detail.target].filter((el) => el && el.setAttribute);
  }

  document.addEventListener("htmx:beforeRequest", (event) => {
    busyElements(event.detail).forEach((el) => el.setAttribute("aria-busy", "true"));
  });
  // afterRequest follows every ending: an answer, an error status, a network error, a timeout, an abort.
  document.addEventListener("htmx:afterRequest", (event) => {
    busyElements(event.detail).forEach((el) => el.removeAttribute("aria-busy"));
  });
})();
