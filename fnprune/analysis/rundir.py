"""The run directory: what an analysis leaves on disk, and how it is read back.

``networks.safetensors`` (maps, component facts, stability, unresolved-subspace energy, time
courses stored ``(components, tokens)``), ``tokens.json``, ``documents.json``, ``labels.json``,
``atlas.safetensors``, ``names.json`` (optional) and ``run.json`` (analysis parameters and the model
summary, with the format version). Written to a temporary sibling and renamed into place; no pickle.
Format 2 stores the time courses transposed (``time_courses_t``); format-1 directories still load,
and so do directories written before the atlas, the names or the unresolved-energy rename.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import RunDirError
from ..io import read_safetensors, write_safetensors

# time courses at least this large are memory-mapped on load (the default model's 40-document run,
# 157 MB, is read: one component's detail then takes no page faults)
MMAP_TIME_COURSES_BYTES = 256 * 2 ** 20
RUN_FORMAT = 2  # 2: time courses stored (components, tokens) as time_courses_t


def save_run(fn, run_dir: str | Path) -> Path:
    """Write the run directory atomically (safetensors + JSON, no pickle)."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=run_dir.name + ".", suffix=".partial", dir=run_dir.parent))
    try:
        write_safetensors(partial / "networks.safetensors", {
            "stable": fn.stable.astype(np.uint8), "component_unit": fn.component_unit,
            "unit_unresolved_energy": fn.unit_unresolved.astype(np.float16),
            "maps": fn.maps.astype(np.float16), "component_layer": fn.component_layer,
            "component_index": fn.component_index, "component_run": fn.component_run,
            # (components, tokens): one component's time course is contiguous on disk
            "stability": fn.stability, "time_courses_t": fn.time_courses.T,
            "token_doc": fn.token_doc, "token_pos": fn.token_pos,
        } | ({} if fn.reproduced is None else {"reproduced": fn.reproduced}))
        (partial / "tokens.json").write_text(json.dumps(fn.token_text))
        (partial / "documents.json").write_text(json.dumps(fn.documents))
        (partial / "labels.json").write_text(json.dumps({str(k): v for k, v in fn.labels.items()}))
        # atlas.safetensors: positions and network (n_layers, width) int32; run dirs without it
        # compute the same atlas on load (names.json: the user's network names, optional)
        write_safetensors(partial / "atlas.safetensors", fn.atlas())
        if fn.names:
            (partial / "names.json").write_text(json.dumps({str(k): v for k, v in fn.names.items()}))
        (partial / "run.json").write_text(json.dumps({"format": RUN_FORMAT, **fn.info}, indent=1))
        if run_dir.exists():
            old = run_dir.with_name(run_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(run_dir, old)
            os.replace(partial, run_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, run_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return run_dir


def load_run(run_dir: str | Path) -> dict:
    """The keyword arguments of :class:`~fnprune.analysis.networks.FunctionalNetworks` stored in
    ``run_dir`` (``FunctionalNetworks.load`` builds it; this module never imports networks)."""
    run_dir = Path(run_dir)
    needed = ["run.json", "networks.safetensors", "tokens.json", "documents.json"]
    missing = [n for n in needed if not (run_dir / n).exists()]
    if not run_dir.is_dir() or missing:
        raise RunDirError(f"{run_dir} is not an fnprune run directory (missing {', '.join(missing) or 'directory'})")
    try:
        info = json.loads((run_dir / "run.json").read_text())
        # large time courses (2 B x tokens x components, the one token-sized array) stay on disk
        arrays = read_safetensors(run_dir / "networks.safetensors", mmap=("time_courses_t",),
                                  mmap_min_bytes=MMAP_TIME_COURSES_BYTES)
        labels_file = run_dir / "labels.json"
        labels = json.loads(labels_file.read_text()) if labels_file.exists() else {}
        names_file = run_dir / "names.json"
        names = json.loads(names_file.read_text()) if names_file.exists() else {}
        atlas_file = run_dir / "atlas.safetensors"
        atlas = read_safetensors(atlas_file) if atlas_file.exists() else None
        tokens = json.loads((run_dir / "tokens.json").read_text())
        documents = json.loads((run_dir / "documents.json").read_text())
    except (ValueError, OSError) as exc:
        raise RunDirError(f"{run_dir}: damaged run directory ({exc})") from exc
    info.pop("format", None)
    return dict(maps=arrays["maps"], component_layer=arrays["component_layer"],
           component_index=arrays["component_index"], component_run=arrays["component_run"],
           stability=arrays["stability"], token_text=tokens,
           time_courses=arrays["time_courses_t"].T if "time_courses_t" in arrays else arrays["time_courses"],
           token_doc=arrays["token_doc"], token_pos=arrays["token_pos"], documents=documents,
           info=info, labels=labels, names=names, atlas=atlas,
           # run dirs written before the seed-robust score lack these three: plain max |z| then
           stable=arrays["stable"].astype(bool) if "stable" in arrays else None,
           component_unit=arrays.get("component_unit"),
           # "unit_residual": the name in run dirs written before the unresolved-energy rename
           unit_unresolved=arrays.get("unit_unresolved_energy", arrays.get("unit_residual")),
           reproduced=arrays.get("reproduced"))
