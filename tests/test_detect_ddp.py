"""The detector's training under torchrun: 2 CPU processes (gloo), for real, against the same run in 1 process.

The photos are built so that 1 and 2 processes see the same loss: detection losses are normalised by the
foreground locations of each process's own batch, so 2 processes average per-shard means where 1 process
takes one pooled mean; every photo here has the same number of equal-sized, grid-aligned boxes, which makes
the two equal. Measured (this test's run, one thread per process): the three steps' losses within 9e-8
relative. Tolerances, with a margin for other machines' rounding: 1e-5 for step 1, 1e-3 after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skulens.detect.annotations import write_coco
from skulens.detect.boxes import AnnotatedImage

SCRIPT = textwrap.dedent('''
    import json, sys
    from skulens.detect.annotations import load_annotations
    from skulens.detect.model import DetectorConfig
    from skulens.detect.train import DetectorRecipe, train_detector

    recipe = DetectorRecipe(steps=3, batch_size=4, lr=1e-3, warmup_steps=1, train_sizes=(128,), canvas=128,
                            eval_every=1, max_minutes=60.0, workers=0)
    config = DetectorConfig(min_size=128, max_size=128, max_detections=20)
    r = train_detector(None, sys.argv[2], recipe=recipe, config=config, annotations=load_annotations(sys.argv[1]),
                       progress=False)
    print("RESULT " + json.dumps({"steps": r.steps, "history": r.history}))
''')


@pytest.fixture(scope="module")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ddp-boxes")
    rng = np.random.default_rng(0)
    annotated = []
    for i in range(4):
        arr = np.full((128, 128, 3), 210, np.uint8)
        spots = [[16, 16, 48, 48], [64, 64, 96, 96]] if i % 2 else [[64, 16, 96, 48], [16, 64, 48, 96]]
        for x1, y1, x2, y2 in spots:
            arr[y1:y2, x1:x2] = rng.integers(0, 200, 3)
        path = root / f"p{i}.png"
        Image.fromarray(arr).save(path)
        annotated.append(AnnotatedImage(path, 128, 128, np.array(spots, np.float32), ("x", "x")))
    write_coco(annotated, root / "instances.json")
    (root / "train.py").write_text(SCRIPT)
    return root


def _run(cmd: list[str]) -> tuple[dict, list[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    # Each rank prints one line; two ranks' prints may land on one line of the shared stdout.
    lines = [x.strip() for x in r.stdout.split("RESULT ")[1:]]
    assert lines, r.stdout
    return json.loads(lines[0]), lines


def test_two_processes_train_the_detector_as_one(boxes: Path, tmp_path: Path) -> None:
    one, _ = _run([sys.executable, str(boxes / "train.py"), str(boxes / "instances.json"), str(tmp_path / "one")])
    two, lines = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       str(boxes / "train.py"), str(boxes / "instances.json"), str(tmp_path / "two")])
    assert len(lines) == 2 and lines[0] == lines[1]  # every rank returns rank 0's result
    assert one["steps"] == two["steps"] == 3
    l1, l2 = [h["loss"] for h in one["history"]], [h["loss"] for h in two["history"]]
    assert abs(l1[0] - l2[0]) <= 1e-5 * abs(l1[0]), (l1, l2)  # the same global batch, the same weights
    for a, b in zip(l1[1:], l2[1:], strict=True):
        assert abs(a - b) <= 1e-3 * abs(a), (l1, l2)
    # Rank 0 alone wrote the detector, and it is a complete one.
    card = json.loads((tmp_path / "two" / "detector.json").read_text())
    assert card["training"]["steps_run"] == 3 and len(json.loads((tmp_path / "two" / "history.json").read_text())) == 3
    assert not list((tmp_path / "two").glob("*.tmp"))
