// Double submit makes one object: every POST form carries a one-time `_once` token (made once per
// page load and form), and its submit buttons are disabled while it posts. The server
// (apps/studio/idempotency.py) answers a second POST with the same token with the first one's
// response, so a double click, a reload-resubmit or a script that posts twice creates one object.
(function () {
  "use strict";
  function newToken() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    // crypto.randomUUID needs a secure context (https or localhost); fall back to random bytes.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function isPost(form) {
    return (form.getAttribute("method") || "").toLowerCase() === "post";
  }

  function arm(form) {
    const token = newToken();
    let field = form.querySelector("input[type=hidden][name=_once]");
    if (!field) {
      field = document.createElement("input");
      field.type = "hidden";
      field.name = "_once";
      form.prepend(field);
    }
    field.value = token;
    // A multipart body is parsed only by the view (which picks its upload handlers), so the
    // server reads the token of such forms from the query string. getAttribute, not form.action:
    // a control named "action" would shadow the property.
    if ((form.getAttribute("enctype") || "").toLowerCase() === "multipart/form-data") {
      const url = new URL(form.getAttribute("action") || location.href, location.href);
      url.searchParams.set("_once", token);
      form.setAttribute("action", url.pathname + url.search);
    }
  }

  function buttons(form) {
    return form.querySelectorAll("button:not([type=button]):not([type=reset]), input[type=submit]");
  }

  function armAll() {
    document.querySelectorAll("form").forEach((form) => { if (isPost(form)) arm(form); });
  }

  document.addEventListener("DOMContentLoaded", armAll);
  // Forms that htmx swaps in get their token too.
  document.addEventListener("htmx:load", (event) => {
    const root = event.detail && event.detail.elt;
    if (!root || !root.querySelectorAll) return;
    if (root.tagName === "FORM" && isPost(root)) arm(root);
    root.querySelectorAll("form").forEach((form) => { if (isPost(form)) arm(form); });
  });

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !isPost(form)) return;
    // htmx posts without leaving the page: leave its buttons alone (the server ignores the token
    // of htmx requests).
    const submitter = event.submitter;
    if (submitter && ["hx-post", "hx-get", "hx-put", "hx-patch", "hx-delete"].some((a) => submitter.hasAttribute(a))) return;
    if (form.querySelector("input[type=hidden][name=_once]") === null) arm(form);
    // After this event the browser builds the form data, which leaves out disabled controls: the
    // clicked button's name=value must still go, so disable on the next tick.
    setTimeout(() => buttons(form).forEach((b) => { b.disabled = true; b.dataset.onceDisabled = "1"; }), 0);
  });

  // Back/forward cache: a page restored after a submit gets fresh tokens and working buttons.
  window.addEventListener("pageshow", (event) => {
    if (!event.persisted) return;
    document.querySelectorAll("[data-once-disabled]").forEach((b) => { b.disabled = false; delete b.dataset.onceDisabled; });
    armAll();
  });
})();
