"""benchmarks/gpu_suite.sh in its CPU mode writes every JSON file it promises, with their fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from gpu_suite import COMMON_FIELDS, SECTION_FIELDS, SECTIONS  # noqa: E402


def test_cpu_tiny_suite_writes_every_promised_file_with_its_fields(tmp_path):
    run = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--device", "cpu", "--tiny", "--out", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    written = sorted(tmp_path.glob("*.json"))
    assert [path.name for path in written] == sorted(f"gpu-suite-cpu-{section}.json" for section in SECTIONS)
    for path in written:
        record = json.loads(path.read_text())
        assert "error" not in record, (path.name, record["error"])
        assert record["card"] == "cpu" and record["cuda"] is None and record["tiny"] is True
        assert all(field in record for field in COMMON_FIELDS + SECTION_FIELDS[record["section"]]), path.name
    golden = json.loads((tmp_path / "gpu-suite-cpu-golden.json").read_text())
    assert golden["passed"] == {"float32": True, "bf16": True}
    assert 0 < golden["bf16"]["depth"] <= golden["bf16_tolerance"]["dense"]  # bf16 really ran
    stages = json.loads((tmp_path / "gpu-suite-cpu-stages.json").read_text())
    assert [run["frames"] for run in stages["runs"]] == [2, 4, 8]
    assert all(run["seconds"]["total"] > run["seconds"]["aggregator"] > 0 for run in stages["runs"])
    distributed = json.loads((tmp_path / "gpu-suite-cpu-distributed.json").read_text())
    assert distributed["supported"] is ("skipped" not in distributed)
