// Side-by-side and arena pages: every column's answer streams over the conversation's websocket
// ("message", "delta" and "end" events name their column). When the last answer ends the
// columns are fetched again from the server (templates/playground/_columns.html: ratings,
// "this one is better", usage), and an arena battle's vote buttons are enabled.
(function () {
  "use strict";
  const P = window.PuyuPlayground;
  const config = document.getElementById("columns-config").dataset;
  const columns = document.getElementById("columns");
  const { form, input, sendButton, stopButton, setStatus, statusText } = P.composer();
  const streaming = new Set();

  function article(id) { return document.getElementById("message-" + id); }

  function syncBusy(sent) {
    const busy = sent || streaming.size > 0;
    if (stopButton) stopButton.hidden = !busy;
    if (sendButton) sendButton.disabled = busy;
    // A vote waits for both answers (the server refuses one before, too).
    document.querySelectorAll("#vote-form .vote-button").forEach((button) => { button.disabled = busy; });
    const hint = document.getElementById("vote-hint");
    if (hint) hint.textContent = busy ? gettext("Wait until both answers are finished.") : "";
  }

  function place(message) {
    if (article(message.id)) return article(message.id);
    if (message.column === null || message.column === undefined) return null;  // the shared prompt is on the page
    const list = columns.querySelector(`section[data-column="${Number(message.column)}"] .column-thread`);
    if (!list) return null;
    const node = P.el("article", `msg ${message.role} status-${message.status}`);
    node.id = "message-" + message.id;
    node.dataset.messageId = message.id;
    node.dataset.role = message.role;
    node.dataset.status = message.status;
    node.dataset.column = message.column;
    const body = P.el("div", message.role === "user" ? "msg-body plain" : "msg-body");
    body.setAttribute("translate", "no");  // chat content and model output: never machine-translated
    P.setText(body, message.content || "");
    if (message.role === "user") body.classList.remove("streaming-text");
    node.appendChild(body);
    node.appendChild(P.el("div", "msg-actions"));
    list.appendChild(node);
    return node;
  }

  function refresh() {
    return htmx.ajax("GET", config.fragmentUrl, {target: "#columns", swap: "innerHTML"}).then(() => {
      columns.querySelectorAll("article.msg[data-status=streaming]").forEach((node) => streaming.add(Number(node.dataset.messageId)));
      syncBusy(false);
    });
  }

  function onEvent(event) {
    if (event.event === "snapshot") {
      streaming.clear();
      let stale = false;
      for (const message of event.messages || []) {
        const node = article(message.id);
        if (message.status === "streaming") {
          streaming.add(message.id);
          const shown = node || place(message);
          if (shown && message.role === "assistant") P.setText(shown.querySelector(".msg-body"), message.content);
        } else if (node && node.dataset.status === "streaming") stale = true;
      }
      if (stale) refresh();
      syncBusy(false);
    } else if (event.event === "message") {
      if (event.message.status === "streaming") streaming.add(event.message.id);
      place(event.message);
      syncBusy(false);
    } else if (event.event === "delta") {
      const node = article(event.message_id);
      if (node && P.appendText(node.querySelector(".msg-body"), event.text, event.offset) === "gap") socket.send({action: "snapshot"});
    } else if (event.event === "end") {
      streaming.delete(event.message_id);
      const node = article(event.message_id);
      if (node) {
        P.setHtml(node.querySelector(".msg-body"), event.html);
        node.dataset.status = event.status;
        node.className = `msg assistant status-${event.status}`;
      }
      syncBusy(false);
      if (!streaming.size) refresh();
    } else if (event.event === "error") {
      setStatus(`${event.field}: ${event.error}`, true);
      syncBusy(false);
    }
  }

  function onState(state) {
    const lost = gettext("connection lost: reconnecting…");
    if (state === "reconnecting") setStatus(lost, true);
    else if (state === "open" && statusText() === lost) setStatus("");
  }

  const socket = P.connect(config.ws, onEvent, onState);

  if (form) {
    const sendMessage = () => {
      if (!input.value.trim() || streaming.size) return;
      if (!socket.send({action: "send", content: input.value})) { setStatus(gettext("not sent: the connection is closed or too many actions are waiting; reload the page"), true); return; }
      input.value = "";
      setStatus(gettext("sending…"));
      syncBusy(true);
    };
    form.addEventListener("submit", (event) => { event.preventDefault(); sendMessage(); });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); sendMessage(); }
    });
    stopButton.addEventListener("click", () => { socket.send({action: "stop"}); setStatus(gettext("stopping…")); });
  }
  columns.querySelectorAll("article.msg[data-status=streaming]").forEach((node) => streaming.add(Number(node.dataset.messageId)));
  syncBusy(false);
})();
