"""The Playground's agent core, Django-free: tools, the two tool-calling protocols, the loop and
the one-turn job.

    arithmetic.py  the safe exact evaluator (shared with the data generator)
    schema.py      the JSON-schema subset that validates tool arguments and tool definitions
    tools/         the registry and the built-in tools (calculator, python, datetime, unit
                   converter, document search) and user-described HTTP tools
    documents.py   reading, chunking and hybrid (BM25 + MiniLM) search of attached documents
    protocols.py   native tool calling (OpenAI tools/tool_calls) and ReAct text (Lagent's format)
    loop.py        run_agent: model -> tool calls -> observations, bounded by turns and a deadline
    job.py         AgentTurnSpec and run_agent_turn: one chat turn as a worker job
    step_writer.py the turn's step reports, written in batches on a helper thread

This package's import is light (no torch, no bm25s): the job registry imports the spec, and the
data generator imports the evaluator; the ML libraries load when a document is first indexed.
"""
