"""The Playground: saved chats with deployed models, agent turns with tools and live traces,
side-by-side comparisons, the blind arena and the feedback flywheel into Datasets.

- A conversation (kind "chat", "comparison" or "battle") is a tree of messages: editing and
  resending or regenerating makes a sibling, and the page shows one path (`current_leaf`) with a
  switcher. A comparison or battle conversation answers in columns (`Message.column`), one per
  deployment, each column its own branch.
- A plain reply streams through the serving gateway (consumers.py, ws/playground/conversations/
  <id>/) under the user's "Studio playground" key, so usage and quota are the user's as on /v1.
  With tools, a reply is an `agent_turn` job on the `agent` queue (workers/tasks/playground.py);
  the socket relays its steps from the job's live events.
- Model output is untrusted: rendering.render_markdown is the only HTML pages may mark safe.
- Feedback (thumbs, "this one is better") becomes a dataset version through a dataset import job
  (exports.export_feedback), with lineage back to the conversations (FeedbackExport).
- Visibility as everywhere: the owner's teams may read, only the owner (or staff) acts.

Modules: models, services (+ checks, attachments, usage), replies (the streams), consumers +
routing (the socket), arena, exports, rendering, api; pages: views, urls, forms.
"""
