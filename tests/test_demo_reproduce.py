"""The showcase and the reproduction report run end to end (small settings)."""
import json

from memcim.cli import main


def test_reproduce_writes_report_and_records_failures(tmp_path, monkeypatch):
    # reproduce runs registered entries directly: a failing one is recorded and the run goes on
    from memcim import registry
    from memcim.experiments import reproduce as rp

    def bad(*, seed=0):
        raise ValueError("data: file not found: missing.npy")

    def good(*, seed=0):
        return {"summary": {"value": seed + 1.0}}

    registry.keys()
    monkeypatch.setattr(registry, "REGISTRY", {
        "000/a": registry.Entry("000/a", bad, "fails", paper="000"),
        "000/b": registry.Entry("000/b", good, "works", paper="000", reference={"value": "1"})})
    report = rp.reproduce("000", tmp_path / "rep", quick=True, seed=2)
    text = report.read_text()
    assert "**failed**" in text and "file not found" in text and "| value | 1 | 3 |" in text
    log = json.loads((tmp_path / "rep" / "reproduce.json").read_text())
    assert [s["status"] for s in log["steps"]] == ["failed", "ok"]
    assert "ValueError" in (tmp_path / "rep" / "000" / "000_a.error.txt").read_text()
    # the report can be rewritten from what the folder holds without running anything again
    (tmp_path / "rep" / "REPORT.md").unlink()
    again = rp.reproduce("000", tmp_path / "rep", report_only=True).read_text()
    assert again.count("**failed**") == 1 and "file not found" in again and "| value | 1 | 3 |" in again


def test_reproduce_bad_paper(capsys):
    import pytest

    assert main(["reproduce", "004"]) == 2
    assert "invalid choice" in capsys.readouterr().err
