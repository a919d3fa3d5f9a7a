"""``fnprune prune --protect`` and ``fnprune ablate`` on the tiny model (issue 22)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fnprune.cli import main
from fnprune.errors import ConfigError
from fnprune.pruning.protect import parse_protect

CODE = ["def f(x):\n    return x * 2  # double", "for i in range(10):\n    print(i, i ** 2)",
        "class A:\n    def __init__(self):\n        self.x = []", "import os\nprint(os.path.join('a', 'b'))"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("protect")
    run = root / "run"
    # random weights give dense maps (peak |z| about 2): a low key threshold gives every network key neurons
    assert main(["analyze", "--model", "tiny-llama", "--corpus", "pydoc", "--texts", "8", "--max-tokens", "48",
                 "--components", "6", "--n-init", "2", "--threshold", "1.6", "--out", str(run)]) == 0
    protected = root / "code.jsonl"
    protected.write_text("\n".join(json.dumps({"text": CODE[i % 4] * (1 + i % 3), "label": "code" if i % 2 else "other"})
                                   for i in range(24)))
    return run, protected


def test_parse_protect():
    assert parse_protect("pydoc") == ("pydoc", None)
    assert parse_protect(" brown:news, fiction ") == ("brown", ["news", "fiction"])
    assert parse_protect("data/x.jsonl:code") == ("data/x.jsonl", ["code"])
    assert parse_protect("hf:wikitext:wikitext-2-raw-v1") == ("hf:wikitext:wikitext-2-raw-v1", None)
    for bad in ("", "  ", "brown:", ":news"):
        with pytest.raises(ConfigError) as err:
            parse_protect(bad)
        assert err.value.field == "protect"


def test_prune_protect_forces_the_proposed_networks(setup, tmp_path, capsys):
    run, protected = setup
    out = tmp_path / "model"
    spec = f"{protected}:code"
    capsys.readouterr()
    assert main(["prune", str(run), "--target-ratio", "0.05", "--corpus", "pydoc", "--calib-docs", "8",
                 "--max-tokens", "48", "--fidelity", "0", "--quiet", "--protect", spec, "--protect-by", "networks", "--protect-networks", "3",
                 "--protect-docs", "6", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    info = json.loads((out / "pruning.json").read_text())
    prot = info["protect"]
    assert prot["corpus"] == spec and prot["by"] == "networks" and prot["rule"] == "activity" and prot["docs"] == 6
    assert len(prot["networks"]) == 3
    assert f"protecting {spec}: networks {', '.join(map(str, prot['networks']))}" in text
    assert f"{prot['n_forced']} key neurons forced" in text
    # the very networks the library proposes for the same inputs, all of their key neurons kept
    from fnprune.analysis.networks import FunctionalNetworks
    from fnprune.corpus import load_corpus, split_heldout
    from fnprune.models import load_model
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.protect import protect_documents, protect_proposal
    from fnprune.pruning.spec import PruningSpec

    fn = FunctionalNetworks.load(run)
    model, tok = load_model("tiny-llama")
    docs, _ = protect_documents(spec, 6)
    assert [d.label for d in docs] == ["code"] * 6
    calib = Calibration(tok, split_heldout(load_corpus("pydoc"))[0][:8], 48)
    proposal = protect_proposal(model, tok, fn, calib, docs, 3, spec=PruningSpec(target_ratio=0.05))
    assert prot["networks"] == proposal.networks
    assert prot["scores"] == pytest.approx(proposal.scores)
    assert sorted(c["id"] for c in info["chosen_networks"]) == sorted(proposal.networks)
    assert all(c["n_kept"] == c["n_key"] for c in info["chosen_networks"])
    assert sum(c["n_key"] for c in info["chosen_networks"]) >= prot["n_forced"] > 0


def test_mixed_calibration_replaces_about_a_tenth_of_the_tokens():
    from fnprune.corpus import Document
    from fnprune.models import load_model
    from fnprune.pruning.protect import mixed_calibration
    from fnprune.tokens import encode_documents

    _, tok = load_model("tiny-llama")
    calib = [Document(str(i), "calibration text " * (3 + i)) for i in range(20)]
    code = [Document(f"c{i}", CODE[i % 4], "code") for i in range(30)]
    mixed, counts = mixed_calibration(calib, code, tok, 48)
    n = lambda docs: sum(len(s) for s in encode_documents(tok, docs, 48))  # noqa: E731
    assert mixed[:18] == calib[:18] and mixed[18:] == code[:counts["protect_docs"]]
    assert counts["calibration_docs"] == 18 and counts["protect_tokens"] == n(code[:counts["protect_docs"]])
    budget = n(calib[18:])
    assert n(code[:counts["protect_docs"]]) >= budget > n(code[:counts["protect_docs"] - 1])  # just enough
    assert counts["tokens"] == n(calib[:18]) + counts["protect_tokens"]
    for share in (0, 1, 1.5):
        with pytest.raises(ConfigError):
            mixed_calibration(calib, code, tok, 48, share=share)
    with pytest.raises(ConfigError):
        mixed_calibration(calib[:1], code, tok, 48)


def test_prune_protect_by_calibration(setup, tmp_path, capsys):
    run, protected = setup
    out = tmp_path / "model"
    capsys.readouterr()
    assert main(["prune", str(run), "--target-ratio", "0.05", "--corpus", "pydoc", "--calib-docs", "10",
                 "--max-tokens", "48", "--fidelity", "0", "--quiet", "--protect", f"{protected}:code",
                 "--protect-docs", "6", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    info = json.loads((out / "pruning.json").read_text())
    prot = info["protect"]
    assert prot["by"] == "calibration" and prot["calibration_docs"] == 9 and prot["protect_docs"] >= 1
    assert info["calibration_docs"]["used"] == 9 + prot["protect_docs"]
    assert info["chosen_networks"] == []  # nothing forced
    assert (f"calibrating on 9 calibration documents + {prot['protect_docs']} of it "
            f"({prot['protect_tokens']:,} of {prot['tokens']:,} tokens)") in text


def test_ablate_command(setup, tmp_path, capsys):
    run, _ = setup
    capsys.readouterr()
    out = tmp_path / "ablation.json"
    assert main(["ablate", str(run), "--networks", "7,8", "--corpus", "pydoc", "--texts", "3", "--max-tokens", "40",
                 "--top-tokens", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    r = json.loads(out.read_text())
    from fnprune.analysis.networks import FunctionalNetworks
    from fnprune.pruning.selection import forced_mask

    mask = forced_mask(FunctionalNetworks.load(run), [7, 8])
    assert r["networks"] == [7, 8] and r["n_neurons"] == int(mask.sum()) > 0
    assert r["all"]["n_docs"] == 3 and len(r["top_tokens"]) == 4
    a = r["all"]
    assert f"{'all':<18} {3:>4} {a['dense']:>10.2f} {a['network']:>16.2f} {a['random']:>14.2f}" in text
    assert f"zeroing networks 7, 8: {r['n_neurons']} key neurons" in text
    assert np.isclose(a["network_vs_dense"]["ratio"], a["network"] / a["dense"])


@pytest.mark.parametrize("argv,message", [
    (["ablate", "RUN", "--networks", "999"], "--networks: [999] not in"),
    (["ablate", "RUN", "--networks", ","], "--networks: give at least one"),
    (["ablate", "RUN", "--networks", "1", "--texts", "0"], "--texts must be at least 1"),
    (["prune", "RUN", "--protect", "pydoc:", "--out", "OUT"], "protect: expected CORPUS"),
    (["prune", "RUN", "--protect", "nonsense", "--calib-docs", "2", "--max-tokens", "16", "--out", "OUT"],
     "unknown corpus"),
    (["prune", "RUN", "--protect", "pydoc", "--protect-by", "networks", "--protect-networks", "0", "--corpus", "pydoc", "--calib-docs", "2",
      "--max-tokens", "16", "--fidelity", "0", "--out", "OUT"], "must be a positive integer"),
])
def test_errors_are_one_line(setup, tmp_path, argv, message):
    run, _ = setup
    argv = [str(run) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    proc = subprocess.run([sys.executable, "-m", "fnprune", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
