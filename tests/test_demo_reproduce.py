"""The showcase and the reproduction report run end to end (small settings)."""
import json

from memcim.cli import main


def test_demo_quick_writes_table_plot_and_json(tmp_path, capsys):
    rc = main(["demo", "--quick", "--no-network", "--trials", "1", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "all together" in out and "programming" in out
    assert (tmp_path / "error_vs_programming_noise.png").stat().st_size > 1000
    res = json.loads((tmp_path / "demo.json").read_text())
    # more programming noise never helps: the error grows along the sweep
    errs = res["sweep"]["gaussian"]["relative_error"]
    assert errs[-1] > errs[0]
    assert res["provenance"]["seed"] == 0


def test_reproduce_writes_report_and_records_failures(tmp_path, monkeypatch, capsys):
    from memcim.experiments import reproduce as rp

    sec = rp.Section("000", "t", "p", [rp.Step("vmm", ["--matrix", str(tmp_path / "missing.npy")], []),
                                        rp.Step("config", ["list"], [])])
    monkeypatch.setitem(rp.SECTIONS, "000", sec)
    report = rp.reproduce("000", tmp_path / "rep", quick=True, progress=False)
    text = report.read_text()
    assert "**failed** (exit 2" in text and "file not found" in text
    log = json.loads((tmp_path / "rep" / "reproduce.json").read_text())
    assert [s["rc"] for s in log["steps"]] == [2, 2]  # config list does not take --out: recorded too
    # the report can be rewritten from those records without running anything again
    (tmp_path / "rep" / "REPORT.md").unlink()
    again = rp.reproduce("000", tmp_path / "rep", progress=False, report_only=True).read_text()
    assert again.count("**failed**") == 2 and "file not found" in again


def test_reproduce_bad_paper(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["reproduce", "004"])
    assert "invalid choice" in capsys.readouterr().err
