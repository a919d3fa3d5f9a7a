"""GET /api/prunings/{id}/download/gguf: the pruned model as one GGUF file (jobs run inline).

The downloaded file is read back with the ``gguf`` package: architecture, per-layer widths and KV
heads equal the pruning's result. It is exported once and reused; a model the export cannot write is
refused with 400 and the library's reason, an unknown type with 422, a finished job whose files are
gone with 410. (That the files run in llama.cpp is tests/fnprune/test_gguf_export.py's concern.)
"""

from __future__ import annotations

import typing

import gguf

from backend.app.schemas import GgufType


def _pruning(client, analysis_id: str, **body) -> tuple[str, dict]:
    response = client.post("/api/prunings", json={"analysis_id": analysis_id, "evaluate": False,
                                                  "calibration_texts": 12, "calibration_tokens": 64, **body})
    assert response.status_code in (200, 202), response.text
    job = client.get(f"/api/prunings/{response.json()['id']}").json()
    assert job["status"] == "succeeded", job["error"]
    return job["id"], job["result"]


def _reader(content: bytes, tmp_path, name: str) -> gguf.GGUFReader:
    path = tmp_path / name
    path.write_bytes(content)
    return gguf.GGUFReader(str(path))


def test_types_are_the_exporters():
    from fnprune.models.export_gguf import GGUF_TYPES

    assert set(typing.get_args(GgufType)) == set(GGUF_TYPES)


def test_per_layer_pruning_downloads_as_deci_with_its_widths(finished, settings, tmp_path, monkeypatch):
    client, analysis_id = finished
    p_id, result = _pruning(client, analysis_id, target_ratio=0.1, heads=0.5)
    assert len(set(result["widths"])) > 1 and result["kv_heads"] == [2, 1, 1, 2]  # per-layer: deci
    response = client.get(f"/api/prunings/{p_id}/download/gguf")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert f'filename="fnprune-{p_id}-model-f16.gguf"' in response.headers["content-disposition"]
    reader = _reader(response.content, tmp_path, "p.gguf")
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "deci"
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert field("deci.feed_forward_length") == result["widths"]
    assert field("deci.attention.head_count_kv") == result["kv_heads"]
    tensors = {t.name: t for t in reader.tensors}
    for layer, width in enumerate(result["widths"]):
        assert tensors[f"blk.{layer}.ffn_up.weight"].shape.tolist()[1] == width  # GGUF shapes: (columns, rows)
        assert tensors[f"blk.{layer}.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.F16

    # exported once: a second download serves the kept file without exporting again
    job_dir = settings.job_dir("pruning", p_id)
    assert [p.name for p in job_dir.glob("*.gguf")] == ["model-f16.gguf"]
    import fnprune.models.export_gguf

    def no_second_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(fnprune.models.export_gguf, "export_gguf", no_second_export)
    again = client.get(f"/api/prunings/{p_id}/download/gguf", params={"type": "f16"})
    assert again.status_code == 200 and again.content == response.content


def test_uniform_pruning_downloads_as_llama_q8_0(finished, tmp_path):
    client, analysis_id = finished
    p_id, result = _pruning(client, analysis_id, target_ratio=0.1, uniform=True, protected_layers=[])
    assert len(set(result["widths"])) == 1 and result["widths"][0] < result["original_widths"][0]
    response = client.get(f"/api/prunings/{p_id}/download/gguf", params={"type": "q8_0"})
    assert response.status_code == 200, response.text
    reader = _reader(response.content, tmp_path, "u.gguf")
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.feed_forward_length"].contents() == result["widths"][0]
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_refusals_say_why(finished, settings, tmp_path):
    client, analysis_id = finished
    p_id, _ = _pruning(client, analysis_id, target_ratio=0.1)
    bad_type = client.get(f"/api/prunings/{p_id}/download/gguf", params={"type": "q4_k"})
    assert bad_type.status_code == 422 and bad_type.json()["field"] == "type"
    assert client.get("/api/prunings/nope/download/gguf").status_code == 404
    unknown = client.get(f"/api/prunings/{p_id}/download/weights")
    assert unknown.status_code == 404 and "gguf" in unknown.json()["detail"]  # the list of artifacts names it

    # a model family the export cannot write (a Qwen2 model from FNPRUNE_MODEL_DIRS, pruned): 400, the reason
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from fnprune.models.pruned_io import save_pruned

    job_dir = settings.job_dir("pruning", p_id)
    tokenizer = AutoTokenizer.from_pretrained(job_dir / "model")
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    save_pruned(qwen, tokenizer, job_dir / "model", {"source_model": "qwen-tiny"}, overwrite=True)
    refused = client.get(f"/api/prunings/{p_id}/download/gguf")
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"].startswith(f"pruning {p_id} cannot be exported as GGUF: ")
    assert "LLaMA-family" in refused.json()["detail"]
    assert not list(job_dir.glob("*.gguf")) and not list(job_dir.glob(".tmp-*"))  # nothing left behind

    # the model directory gone from the server: 410, as the other downloads
    import shutil

    shutil.rmtree(job_dir / "model")
    gone = client.get(f"/api/prunings/{p_id}/download/gguf")
    assert gone.status_code == 410 and "gone" in gone.json()["detail"]
