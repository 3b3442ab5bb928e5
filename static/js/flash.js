// Flash messages describe the moment they were made ("queued", "is starting"); the live parts of
// the page move on. A success or info message fades after a few seconds; an error or warning stays
// until its close button is pressed (it says what to do).
(function () {
  "use strict";
  const FADE_AFTER_MS = 6000;

  function close(flash) {
    flash.classList.add("closing");
    setTimeout(() => flash.remove(), 300);
  }

  function arm(flash) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "flash-close link";
    // The catalogue (jsi18n) is loaded for signed-in pages only; the login page keeps English.
    button.setAttribute("aria-label", typeof gettext === "function" ? gettext("close") : "close");
    button.textContent = "×";
    button.addEventListener("click", () => close(flash));
    flash.append(button);
    if (!flash.classList.contains("error") && !flash.classList.contains("warning")) {
      setTimeout(() => close(flash), FADE_AFTER_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => document.querySelectorAll(".flash[data-flash]").forEach(arm));
})();
