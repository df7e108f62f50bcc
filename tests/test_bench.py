"""The benchmarks keep working: a smoke run at tiny sizes writes a complete report."""
import pytest

from bench.__main__ import main


@pytest.mark.slow
def test_benchmark_smoke_run_writes_every_table(tmp_path):
    out = tmp_path / "BENCH.md"
    assert main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    text = out.read_text()
    for title in ("1. Input pipeline", "2. Frozen-backbone", "3. Training step", "4. Inference", "5. Time to",
                  "6. Real photos", "7. Few-shot", "8. Open set", "9. Tagging a photo library",
                  "11. Review and teach", "12. Serving over loopback", "13. Inference back-ends", "14. The scratch CNN on real photos",
                  "15. Other sources and look-alikes"):
        assert title in text
    assert "| baseline" in text
    assert "vs baseline" in text
    assert "| before review |" in text
    assert "| after Retrain |" in text
    assert "previous default" in text
    assert "| efficientnet_lite0 | defaults |" in text
    assert "| other source |" in text
    assert "| look-alike landmarks |" in text
    assert "| no landmark |" in text
    assert "| merged | 6 |" in text  # the scratch table's sets merged: 3 classes each
