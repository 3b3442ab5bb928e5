// The model import form: show only the chosen source's own field (folder, archive or hub id).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("import-form");
    if (!form) return;
    const show = () => {
      const chosen = (form.querySelector("input[name=source]:checked") || {}).value;
      form.querySelectorAll("[data-source]").forEach((el) => { el.hidden = el.dataset.source !== chosen; });
    };
    form.querySelectorAll("input[name=source]").forEach((radio) => radio.addEventListener("change", show));
    show();
  });
})();
