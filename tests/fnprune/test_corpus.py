"""Corpora: user files, bad inputs, Brown parsing, the held-out split."""

import json

import pytest

from fnprune.corpus import Document, detokenize, load_corpus, parse_brown_file, split_heldout
from fnprune.errors import CorpusError


def test_txt_blocks_and_directory(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("First doc line one.\nline two.\n\n\n  \nSecond doc.\n")
    docs = load_corpus(str(f))
    assert [d.text for d in docs] == ["First doc line one.\nline two.", "Second doc."]
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x.txt").write_text("one")
    (d / "y.txt").write_text("two\n\nstill two")
    assert [doc.text for doc in load_corpus(str(d))] == ["one", "two\n\nstill two"]


def test_jsonl_with_labels_and_genre_filter(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"text": "a b", "label": "x"}, {"text": "c", "label": "y"},
                                                    {"text": "d"}]))
    docs = load_corpus(str(f))
    assert [(d.text, d.label) for d in docs] == [("a b", "x"), ("c", "y"), ("d", None)]
    assert [d.text for d in load_corpus(str(f), genres=["y"])] == ["c"]


@pytest.mark.parametrize("content,match", [
    (b"", "no text"), (b"   \n\n\t  \n", "no text"), (b"\x00\x01\x02binary", "binary"),
    (b"\xff\xfe\xfa not utf8", "not UTF-8"),
])
def test_bad_text_files(tmp_path, content, match):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(CorpusError, match=match):
        load_corpus(str(f))


def test_bad_jsonl_and_unknown_specs(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(CorpusError, match="line 2: not JSON"):
        load_corpus(str(f))
    f.write_text('{"body": "no text field"}\n')
    with pytest.raises(CorpusError, match="needs a string field 'text'"):
        load_corpus(str(f))
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_corpus("nonsense")
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(CorpusError, match="empty"):
        load_corpus("")


def test_pydoc_is_always_there_and_split_is_deterministic():
    docs = load_corpus("pydoc")
    assert len(docs) > 30 and all(len(d.text.split()) >= 50 for d in docs)
    calib, held = split_heldout(docs)
    assert held == docs[::10]
    assert not set(d.id for d in calib) & set(d.id for d in held)
    assert len(calib) + len(held) == len(docs)


def test_brown_detokenisation():
    assert detokenize(["He", "said", "``", "no", "''", ",", "did", "n't", "he", "?"]) == 'He said "no", didn\'t he?'
    raw = "\n\n\tThe/at jury/nn said/vbd ./.\n\n\n\tIt/pps was/bedz (/( fine/jj )/) ./.\n"
    assert parse_brown_file(raw) == "The jury said.\nIt was (fine)."


def test_document_is_immutable():
    d = Document("a", "text", None)
    with pytest.raises(AttributeError):
        d.text = "x"
