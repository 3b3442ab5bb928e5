// Shared by the Playground's pages (chat, side by side, arena): the conversation's websocket
// (ws/playground/conversations/<id>/, reconnecting), streamed text added as text nodes, agent
// trace steps built with textContent, and the one place where HTML from the server goes into a
// page: the sanitized markdown of an "end" event (apps/playground/rendering.py: markdown-it with
// raw HTML off, then the nh3 sanitizer). Raw model text never goes through innerHTML.
(function () {
  "use strict";
  // Closed by the server for good: not signed in, a teammate who tried to act, not visible.
  const FINAL_CLOSE_CODES = [4401, 4403, 4404];
  const MAX_RETRY_MS = 8000;

  // Python counts characters by code point, JavaScript strings by UTF-16 unit: the server's
  // delta offsets are code points, so the page counts the same way.
  function codePoints(text) { return Array.from(text || ""); }

  function connect(path, onEvent, onState) {
    let socket = null;
    let retryMs = 500;
    let closedForGood = false;
    // Actions made while the socket is (re)connecting: sent, in order, once it opens. A page
    // that has just loaded is still connecting, and what the user typed must not be lost.
    const pending = [];
    function open() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      socket = new WebSocket(scheme + location.host + path);
      socket.addEventListener("open", () => {
        retryMs = 500;
        onState("open");
        while (pending.length && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(pending.shift()));
      });
      socket.addEventListener("message", (message) => {
        let event;
        try { event = JSON.parse(message.data); } catch (error) { return; }
        onEvent(event);
      });
      socket.addEventListener("close", (close) => {
        if (FINAL_CLOSE_CODES.includes(close.code)) { closedForGood = true; pending.length = 0; onState("closed", close.code); return; }
        onState("reconnecting");
        setTimeout(open, retryMs);  // the server sends a fresh snapshot on every connect
        retryMs = Math.min(retryMs * 2, MAX_RETRY_MS);
      });
    }
    open();
    return {
      // Sent now, or held until the socket opens; false only when the server closed it for
      // good (the caller keeps what the user typed and says so).
      send(action) {
        if (closedForGood) return false;
        if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(action));
        else if (pending.length < 8) pending.push(action);
        else return false;
        return true;
      },
    };
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // Replace a bubble's text (a snapshot's partial answer): plain text, counted for the deltas.
  function setText(body, text) {
    body.textContent = text || "";
    body.dataset.chars = String(codePoints(text).length);
    body.classList.add("streaming-text");
    body.classList.remove("markdown");
  }

  // Append a delta. `offset`: the answer's characters before it. A delta the page already shows
  // (replayed after a snapshot) is dropped; "gap" means some were missed (ask for a snapshot).
  function appendText(body, text, offset) {
    const have = Number(body.dataset.chars || 0);
    let points = codePoints(text);
    if (offset !== undefined && offset !== null) {
      if (offset > have) return "gap";
      if (offset + points.length <= have) return "duplicate";
      points = points.slice(have - offset);
    }
    body.classList.add("streaming-text");
    body.appendChild(document.createTextNode(points.join("")));
    body.dataset.chars = String(have + points.length);
    return "ok";
  }

  // The finished answer: the server's sanitized HTML (see the top of this file).
  function setHtml(body, html) {
    body.innerHTML = html || "";
    body.classList.remove("streaming-text");
    body.classList.add("markdown");
    delete body.dataset.chars;
  }

  function pretty(value) {
    if (value === undefined || value === null) return "";
    return typeof value === "string" ? value : JSON.stringify(value, null, 2);
  }

  // One agent step (workers/core/agents/loop.py), as templates/playground/_trace.html shows it.
  // What the model wrote and the tools read and returned: never machine-translated.
  function output(className, text) {
    const node = el("pre", className, text);
    node.setAttribute("translate", "no");
    return node;
  }

  function stepElement(step) {
    const item = el("li", `step step-${step.type}` + (step.status === "error" ? " step-error" : ""));
    item.dataset.index = step.index;
    const head = el("div", "step-head");
    const kind = el("b", "step-type", step.type === "tool" ? gettext("tool") + " " : step.type === "model" ? gettext("model") : gettext("final"));
    if (step.type === "tool") kind.appendChild(el("code", "step-tool-name", step.tool));
    head.appendChild(kind);
    if (step.turn) head.appendChild(el("span", "muted", interpolate(gettext("turn %(turn)s"), {turn: step.turn}, true)));
    if (step.duration_ms !== undefined && step.duration_ms !== null) head.appendChild(el("span", "muted step-duration", `${step.duration_ms} ms`));
    const tokens = step.tokens ? (step.tokens.prompt_tokens || 0) + (step.tokens.completion_tokens || 0) : 0;
    if (tokens) head.appendChild(el("span", "muted step-tokens", interpolate(gettext("%(tokens)s tokens"), {tokens}, true)));
    if (step.stopped) head.appendChild(el("span", "muted", interpolate(gettext("stopped: %(stopped)s"), {stopped: step.stopped}, true)));
    item.appendChild(head);
    if (step.type === "model") {
      if (step.output) item.appendChild(output("step-output", step.output));
      for (const call of step.tool_calls || []) {
        const line = el("div", "step-call", gettext("calls") + " ");
        line.appendChild(el("code", null, call.name));
        line.appendChild(output("step-arguments", pretty(call.arguments)));
        item.appendChild(line);
      }
    } else if (step.type === "tool") {
      item.appendChild(el("div", "step-label", gettext("arguments")));
      item.appendChild(output("step-arguments", pretty(step.arguments)));
      item.appendChild(el("div", "step-label", gettext("observation")));
      item.appendChild(output("step-observation", pretty(step.observation)));
    } else if (step.answer) {
      item.appendChild(output("step-output", step.answer));
    }
    return item;
  }

  // Add a step to an answer's trace panel (made on the first step); a step seen before (a
  // reconnect replays them) is dropped by its index.
  function addStep(article, step) {
    let panel = article.querySelector("details.trace");
    if (!panel) {
      panel = el("details", "trace");
      panel.dataset.traceFor = article.dataset.messageId;
      const summary = el("summary", null, gettext("Agent trace ·") + " ");
      summary.appendChild(el("span", "trace-count", "0"));
      summary.appendChild(document.createTextNode(" " + gettext("steps")));
      panel.appendChild(summary);
      panel.appendChild(el("ol", "trace-steps"));
      const actions = article.querySelector(".msg-actions");
      article.insertBefore(panel, actions);
    }
    panel.open = true;
    const list = panel.querySelector(".trace-steps");
    if (step.index !== undefined && list.querySelector(`li[data-index="${Number(step.index)}"]`)) return;
    list.appendChild(stepElement(step));
    panel.querySelector(".trace-count").textContent = String(list.children.length);
  }

  // The composer both chat pages share (templates/playground/chat.html, comparison.html): its
  // elements (any may be missing on a read-only page) and a status line setter.
  function composer() {
    const status = document.getElementById("chat-status");
    return {
      form: document.getElementById("composer"),
      input: document.getElementById("composer-input"),
      sendButton: document.getElementById("send-button"),
      stopButton: document.getElementById("stop-button"),
      setStatus(text, error) {
        if (!status) return;
        status.textContent = text || "";
        status.classList.toggle("error", Boolean(error));
      },
      statusText() { return status ? status.textContent : ""; },
    };
  }

  window.PuyuPlayground = { connect, el, setText, appendText, setHtml, addStep, composer };
})();
