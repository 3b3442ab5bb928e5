"""The document search tool: the top chunks of the conversation's documents for a query, each
with its citation (document, chunk number, character range, page), ranked by BM25 and MiniLM
embeddings fused (agents/documents.py)."""
from __future__ import annotations

from ..documents import DocumentError, DocumentLibrary
from .base import Tool, ToolContext, ToolError

MAX_TOP_K = 5
CHUNK_PREVIEW = 1000  # characters of each chunk shown (a chunk holds at most CHUNK_CHARS)

PARAMETERS = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 500,
                  "description": "What to look for in the attached documents"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K,
                  "description": f"How many passages to return (1-{MAX_TOP_K}, default 3)"},
    },
    "required": ["query"],
    "additionalProperties": False,
}


def document_search_tool(library: DocumentLibrary) -> Tool:
    def search(arguments: dict, context: ToolContext) -> str:
        try:
            hits = library.search(arguments["query"], int(arguments.get("top_k", 3)))
        except DocumentError as exc:
            raise ToolError(str(exc)) from None
        if not hits:
            return "No passage matches."
        blocks = [f"[{n}] {hit.chunk.citation()}\n{hit.chunk.text[:CHUNK_PREVIEW]}" for n, hit in enumerate(hits, 1)]
        return "\n\n".join(blocks) + "\n\nCite a passage by its document and chunk, e.g. [" + hits[0].chunk.document + \
            f", chunk {hits[0].chunk.number}]."

    # The first call may build the index (embedding every chunk): allow it the time.
    return Tool("document_search", "Search the documents attached to this conversation and return the most "
                "relevant passages with their citations", PARAMETERS, search, timeout_s=120.0)
