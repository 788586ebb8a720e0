"""memcim paper list|run|reproduce on fake registered entries (fast), and the real registry's contents."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from memcim import registry
from memcim.cli import main
from memcim.experiments import reproduce as rp

#: every paper figure the issue names, and the paper each belongs to
FIGURES = ["000/fig2", "000/hw", "000/mlp", "001/fig2", "001/fig3", "001/fig4", "002/fig4", "002/fig7",
           "002/fig9a", "002/fig9b", "002/fig10a", "003/convex-cim"]


def test_every_paper_figure_is_registered_with_quick_plot_and_reference():
    keys = registry.keys()
    for key in FIGURES:
        assert key in keys, key
        e = registry.get(key)
        assert e.paper == key[:3] and e.title and e.plot is not None and e.quick, key
        assert set(e.quick) <= set(e.parameters()), key  # quick settings name real parameters
    assert [k for k in registry.keys("002")] == ["002/fig4", "002/fig7", "002/fig9a", "002/fig9b", "002/fig10a"]
    assert registry.get("002/fig9a").reference["accuracy_dpe"] == "0.963"
    assert registry.get("003/convex-cim").reference["naive_loss_points"] == "6.74"
    assert rp.steps("all") == FIGURES


def test_register_refuses_quick_settings_that_are_not_parameters():
    with pytest.raises(ValueError, match="'sise' is not a parameter"):
        registry.register("999/x", title="t", quick={"sise": 3})(lambda *, size=1: {})
    assert "999/x" not in registry.REGISTRY


@pytest.fixture
def fake(monkeypatch):
    """A registry of two fake paper-000 entries; ``calls`` records each run's parameters."""
    calls = []

    def plot(result, png):
        Path(png).write_bytes(b"\x89PNG fake")

    def a(*, trials=100, n_images=1000, dataset="mnist", seed=0, scale=1.0):
        calls.append(("000/a", {"trials": trials, "n_images": n_images, "dataset": dataset, "seed": seed,
                                "scale": scale}))
        return {"summary": {"value": scale * trials}, "config": {"trials": trials}}

    def b(*, seed=0, hw=None):
        calls.append(("000/b", {"seed": seed, "hw": hw}))
        return {"summary": {"adc_bits": None if hw is None else hw.adc.bits}}

    reg = {"000/a": registry.Entry("000/a", a, "fake a", plot, {"trials": 3}, "000", None, {"value": "42"}),
           "000/b": registry.Entry("000/b", b, "fake b", plot, {}, "000", None, {}, "irdrop")}
    monkeypatch.setattr(registry, "REGISTRY", reg)
    monkeypatch.setattr(registry, "_loaded", True)
    return calls


def test_paper_list(fake, capsys):
    assert main(["paper", "list"]) == 0
    out = capsys.readouterr().out
    assert "000/a" in out and "fake a" in out and "--quick: trials=3" in out
    assert "hardware: --hw (default irdrop)" in out
    assert main(["paper", "list", "--json", "--params"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [i["key"] for i in items] == ["000/a", "000/b"] and items[0]["params"]["scale"] == 1.0


def test_paper_run_maps_shared_flags_and_saves_json_png(fake, tmp_path, capsys):
    rc = main(["paper", "run", "000/a", "--quick", "--seed", "7", "--data", "digits:test:50", "--param", "scale=2",
               "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "value  6" in out and "(paper: 42)" in out and "000_a.json" in out
    assert fake[-1] == ("000/a", {"trials": 3, "n_images": 50, "dataset": "digits", "seed": 7, "scale": 2})
    doc = json.loads((tmp_path / "000_a.json").read_text())
    assert doc["summary"]["value"] == 6 and doc["provenance"]["seed"] == 7
    assert doc["run"] == {"key": "000/a", "quick": True, "complete": True,
                          "params": {"trials": 3, "n_images": 50, "dataset": "digits", "seed": 7, "scale": 2}}
    assert (tmp_path / "000_a.png").read_bytes().startswith(b"\x89PNG")
    # --chips reaches the entry's own name for it; --json prints the same document
    assert main(["paper", "run", "000/a", "--chips", "9", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["trials"] == 9


def test_paper_run_hardware_only_where_taken(fake, capsys):
    assert main(["paper", "run", "000/b", "--set", "adc.bits=5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["adc_bits"] == 5  # --set alone: on the entry's preset
    assert fake[-1][1]["hw"].name == "irdrop"
    for argv, word in ((["000/a", "--hw", "irdrop"], "--hw: 000/a takes no hardware"),
                       (["000/b", "--chips", "2"], "--chips: 000/b has no chips"),
                       (["000/a", "--param", "nope=1"], "'nope' is not a parameter of 000/a"),
                       (["000/a", "--param", "scale"], "--param: 'scale' is not allowed"),
                       (["000/a", "--data", "mnist:train:10"], "--data: split 'train'"),
                       (["000/b", "--set", "adc.nonsense=1"], "--set")):
        assert main(["paper", "run", *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert word in err[-1] and "Traceback" not in "\n".join(err), err


def test_reproduce_logs_each_step_and_resumes(fake, tmp_path):
    lines = []
    rp.reproduce("000", tmp_path, quick=True, log=lines.append)
    assert [k for k, _ in fake] == ["000/a", "000/b"]
    assert "[1/2] 000/a: started" in lines[0] and "[1/2] 000/a: ok in" in lines[1] and "[2/2] 000/b: ok" in lines[3]
    assert (tmp_path / "000" / "000_a.json").is_file() and (tmp_path / "000" / "000_b.png").is_file()
    # --resume: both complete -> nothing runs; a half-written JSON or another seed runs again
    rp.reproduce("000", tmp_path, quick=True, resume=True, log=lines.append)
    assert len(fake) == 2 and "skipped (--resume)" in lines[-1]
    (tmp_path / "000" / "000_b.json").write_text('{"run": {"key": "000/b", "comp')
    rp.reproduce("000", tmp_path, quick=True, resume=True)
    assert [k for k, _ in fake] == ["000/a", "000/b", "000/b"]
    rp.reproduce("000", tmp_path, quick=False, resume=True)  # quick results do not stand for full ones
    assert len(fake) == 5
    text = (tmp_path / "REPORT.md").read_text()
    assert "| `000/a` | ok |" in text and "| value | 42 | 100 |" in text


def test_reproduce_interrupt_writes_report_then_resume_finishes(fake, tmp_path, capsys, monkeypatch):
    def interrupted(**kw):
        raise KeyboardInterrupt

    real_b = registry.REGISTRY["000/b"]
    monkeypatch.setitem(registry.REGISTRY, "000/b", registry.Entry("000/b", interrupted, "fake b", real_b.plot,
                                                                   {}, "000", None, {}, "irdrop"))
    rc = main(["paper", "reproduce", "000", "--quick", "--out", str(tmp_path)])
    assert rc == 130
    err = capsys.readouterr().err
    assert "000/a: ok in" in err and "interrupted: wrote" in err
    text = (tmp_path / "REPORT.md").read_text()
    assert "**Interrupted**: 1 step(s) not run (000/b)" in text and "--resume" in text
    assert "### `000/b`: fake b\n\n*interrupted*" in text and "| `000/a` | ok |" in text
    steps = json.loads((tmp_path / "reproduce.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["ok", "interrupted"]
    monkeypatch.setitem(registry.REGISTRY, "000/b", real_b)
    assert main(["paper", "reproduce", "000", "--quick", "--resume", "--out", str(tmp_path)]) == 0
    assert [k for k, _ in fake] == ["000/a", "000/b"]  # 000/a kept from the interrupted run
    text = (tmp_path / "REPORT.md").read_text()
    assert "Interrupted" not in text and "| `000/a` | kept from an earlier run |" in text


def test_report_only_marks_unrun_steps(fake, tmp_path):
    text = rp.reproduce("000", tmp_path, report_only=True).read_text()
    assert not fake
    assert "2 step(s) not run: 000/a, 000/b" in text
    assert text.count("*not run*") == 2 and "## Paper 000" in text
    rp.reproduce("000", tmp_path, quick=True)
    (tmp_path / "000" / "000_b.json").unlink()
    text = rp.reproduce("000", tmp_path, report_only=True).read_text()
    assert "| `000/a` | ok |" in text and "| `000/b` | not run |" in text and "quick" in text


def test_reproduce_bad_paper():
    with pytest.raises(ValueError, match="paper: '004' is not allowed"):
        rp.steps("004")
