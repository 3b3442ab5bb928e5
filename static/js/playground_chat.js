// The chat page: the composer sends over the conversation's websocket; the user's message and
// the answer's placeholder arrive as "message" events, its tokens as "delta" events (text
// nodes), agent steps as "step" events, and the "end" event carries the server's sanitized HTML.
// After each answer the shown branch is fetched again from the server (templates/playground/
// _thread.html): sibling switchers, ratings and buttons always come from the same template.
(function () {
  "use strict";
  const P = window.PuyuPlayground;
  const config = document.getElementById("chat-config").dataset;
  const thread = document.getElementById("thread");
  const { form, input, sendButton, stopButton, setStatus, statusText } = P.composer();
  const sendable = Boolean(sendButton && !sendButton.disabled);  // false while the deployment is not ready
  const streaming = new Set();  // ids of answers being written
  let stick = true;  // follow the newest text while the reader is at the bottom

  function syncBusy(sent) {
    const busy = sent || streaming.size > 0;
    if (stopButton) stopButton.hidden = !busy;
    if (sendButton) sendButton.disabled = busy || !sendable;
    thread.classList.toggle("busy", busy);
  }

  function articles() { return Array.from(thread.querySelectorAll("article.msg")); }
  function article(id) { return document.getElementById("message-" + id); }

  function scrollDown(force) {
    if (force || stick) thread.scrollTop = thread.scrollHeight;
  }
  thread.addEventListener("scroll", () => { stick = thread.scrollTop + thread.clientHeight >= thread.scrollHeight - 40; });

  function bubble(message) {
    const node = P.el("article", `msg ${message.role} status-${message.status}`);
    node.id = "message-" + message.id;
    node.dataset.messageId = message.id;
    node.dataset.parentId = message.parent_id === null || message.parent_id === undefined ? "" : message.parent_id;
    node.dataset.role = message.role;
    node.dataset.status = message.status;
    const head = P.el("div", "msg-head");
    head.appendChild(P.el("span", "who", message.role === "user" ? config.owner : (message.deployment || gettext("assistant"))));
    if (message.status === "streaming") head.appendChild(P.el("span", "status running msg-state", gettext("writing…")));
    node.appendChild(head);
    const body = P.el("div", message.role === "user" ? "msg-body plain" : "msg-body");
    body.setAttribute("translate", "no");  // chat content and model output: never machine-translated
    node.appendChild(body);
    P.setText(body, message.content || "");
    if (message.role === "user") body.classList.remove("streaming-text");
    node.appendChild(P.el("div", "msg-actions"));
    return node;
  }

  // A new message goes right after its parent; what the page showed below the parent was
  // another branch (an edit or a regeneration replaces it). A message under a part of the tree
  // this page does not show is left for a reload.
  function place(message) {
    const existing = article(message.id);
    if (existing) return existing;
    const shown = articles();
    let cut = 0;
    if (message.parent_id !== null && message.parent_id !== undefined) {
      cut = shown.findIndex((node) => Number(node.dataset.messageId) === message.parent_id) + 1;
      if (cut === 0) return null;
    }
    shown.slice(cut).forEach((node) => node.remove());
    const empty = document.getElementById("thread-empty");
    if (empty) empty.remove();
    const node = bubble(message);
    thread.appendChild(node);
    return node;
  }

  function refresh(leafId) {
    const query = leafId ? "?leaf=" + leafId : "";
    if (leafId) history.replaceState(null, "", config.chatUrl + query);
    const open = Array.from(thread.querySelectorAll("details.trace[open]"), (panel) => panel.dataset.traceFor);
    return htmx.ajax("GET", config.threadUrl + query, {target: "#thread", swap: "innerHTML"}).then(() => {
      // A trace the reader had open stays open.
      for (const id of open) {
        const panel = thread.querySelector(`details.trace[data-trace-for="${Number(id)}"]`);
        if (panel) panel.open = true;
      }
      // An answer that began while the branch was fetched keeps streaming into the new markup.
      thread.querySelectorAll("article.msg[data-status=streaming]").forEach((node) => streaming.add(Number(node.dataset.messageId)));
      syncBusy(false);
      scrollDown();
    });
  }

  function onSnapshot(event) {
    let stale = false;
    streaming.clear();
    for (const message of event.messages || []) {
      const node = article(message.id);
      if (message.status === "streaming") {
        streaming.add(message.id);
        const shown = node || place(message);
        if (shown && message.role === "assistant") P.setText(shown.querySelector(".msg-body"), message.content);
      } else if (node && node.dataset.status === "streaming") {
        stale = true;  // it ended while the page was away
      }
    }
    if (stale) refresh(Number(document.getElementById("thread-state").dataset.leaf) || null);
    syncBusy(false);
  }

  function onEnd(event) {
    streaming.delete(event.message_id);
    const node = article(event.message_id);
    if (node) {
      P.setHtml(node.querySelector(".msg-body"), event.html);
      node.dataset.status = event.status;
      node.className = `msg assistant status-${event.status}`;
      const badge = node.querySelector(".msg-state");
      if (badge) badge.remove();
    }
    if (event.status === "failed") setStatus(event.error ? gettext("the answer failed:") + " " + event.error : gettext("the answer failed"), true);
    else if (event.status === "stopped") setStatus(gettext("stopped"));
    else if (event.usage && event.usage.completion_tokens) setStatus(interpolate(gettext("done · %(n)s tokens"), {n: event.usage.completion_tokens}, true));
    else setStatus(gettext("done"));
    syncBusy(false);
    if (node) refresh(event.message_id);
  }

  function onEvent(event) {
    if (event.event === "snapshot") onSnapshot(event);
    else if (event.event === "message") {
      const message = event.message;
      if (message.status === "streaming") streaming.add(message.id);
      place(message);
      if (message.role === "assistant" && message.status === "streaming") setStatus(message.job_id ? gettext("the agent is working…") : gettext("writing…"));
      syncBusy(false);
      scrollDown();
    } else if (event.event === "delta") {
      const node = article(event.message_id);
      if (!node) return;
      if (P.appendText(node.querySelector(".msg-body"), event.text, event.offset) === "gap") socket.send({action: "snapshot"});
      scrollDown();
    } else if (event.event === "step") {
      const node = article(event.message_id);
      if (node) { P.addStep(node, event.step); scrollDown(); }
    } else if (event.event === "end") onEnd(event);
    else if (event.event === "error") {
      setStatus(`${event.field}: ${event.error}`, true);
      syncBusy(false);
    }
  }

  function onState(state, code) {
    const lost = gettext("connection lost: reconnecting…");
    if (state === "reconnecting") setStatus(lost, true);
    else if (state === "open" && statusText() === lost) setStatus("");
    else if (state === "closed") setStatus(code === 4404 ? gettext("this conversation is gone, or you may no longer see it")
                                                 : gettext("you can read this conversation, not write in it"), true);
  }

  const socket = P.connect(config.ws, onEvent, onState);

  function send(action, pending) {
    if (!socket.send(action)) { setStatus(gettext("not sent: the connection is closed or too many actions are waiting; reload the page"), true); return false; }
    syncBusy(true);
    setStatus(pending);
    return true;
  }

  function sendMessage() {
    const content = input.value;
    if (!content.trim() || streaming.size || (sendButton && sendButton.disabled)) return;
    const shown = articles();
    const last = shown[shown.length - 1];
    // After the branch this page shows (not the one another tab may have moved to).
    const action = {action: "send", content};
    if (last && last.dataset.role === "assistant") action.parent_id = Number(last.dataset.messageId);
    if (send(action, gettext("sending…"))) { input.value = ""; stick = true; }
  }

  function edit(node) {
    if (node.querySelector(".editor")) return;
    const body = node.querySelector(".msg-body");
    const editor = P.el("div", "editor");
    const area = P.el("textarea", "edit-input");
    area.value = body.textContent;
    area.rows = Math.min(12, Math.max(2, area.value.split("\n").length));
    const save = P.el("button", "primary save-edit", gettext("Save and send"));
    save.type = "button";
    const cancel = P.el("button", "cancel-edit", gettext("Cancel"));
    cancel.type = "button";
    const buttons = P.el("div", "row");
    buttons.append(save, cancel);
    editor.append(area, buttons);
    body.hidden = true;
    node.insertBefore(editor, body.nextSibling);
    area.focus();
    cancel.addEventListener("click", () => { editor.remove(); body.hidden = false; });
    save.addEventListener("click", () => {
      if (!area.value.trim()) return;
      // A new sibling of the edited message: the old branch stays, the switcher shows both.
      if (send({action: "send", content: area.value, edit_of: Number(node.dataset.messageId)}, gettext("sending…"))) {
        editor.remove();
        body.hidden = false;
      }
    });
  }

  thread.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const node = button.closest("article.msg");
    if (button.dataset.action === "regenerate") send({action: "regenerate", message_id: Number(node.dataset.messageId)}, gettext("regenerating…"));
    else if (button.dataset.action === "edit") edit(node);
  });

  if (form) {
    form.addEventListener("submit", (event) => { event.preventDefault(); sendMessage(); });
    input.addEventListener("keydown", (event) => {
      // Enter sends; Shift+Enter is a new line; Enter that confirms an input method's candidate is not a send.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); sendMessage(); }
    });
    stopButton.addEventListener("click", () => { socket.send({action: "stop"}); setStatus(gettext("stopping…")); });
  }
  // Deleting takes the whole tree with it: ask first (on the click, so no submit event starts).
  const deleteButton = document.querySelector("#delete-form button[type=submit]");
  if (deleteButton) deleteButton.addEventListener("click", (event) => {
    if (!window.confirm(gettext("Delete this conversation with all its branches, answers and documents?"))) event.preventDefault();
  });
  document.querySelectorAll("#thread article.msg[data-status=streaming]").forEach((node) => streaming.add(Number(node.dataset.messageId)));
  syncBusy(false);
  scrollDown(true);
})();
