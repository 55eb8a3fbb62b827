"""`imgxfer run` end to end on tiny data, and every bad input of the core issue."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bad_input import RUN_OPTION_MISTAKES, assert_one_sentence
from click.testing import CliRunner
from conftest import TINY_RUN
from safetensors.torch import load_file

from imgxfer.cli.app import cli


def invoke(*args):
    return CliRunner().invoke(cli, ["run", *args])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny successful run shared by the checks below (and the bad-input tests,
    which must leave it untouched)."""
    from conftest import FakePlugin

    from imgxfer.plugin import host as plugins

    out = tmp_path_factory.mktemp("runs")
    host = plugins.PluginHost({"IMGXFER_LOAD_PLUGINS": ""}).load_all()
    host.add(FakePlugin(), "fake")
    plugins._HOST = host
    try:
        result = invoke(*TINY_RUN, "--out", str(out), "--name", "tiny", "--json")
    finally:
        plugins.reset_host()
    assert result.exit_code == 0, result.output
    (folder,) = out.iterdir()
    return out, folder, result


def test_run_folder_contents(finished_run):
    out, folder, result = finished_run
    assert folder.name.endswith("-tiny")
    names = {p.name for p in folder.iterdir()}
    assert {"config.toml", "metrics.json", "report.html", "captions.jsonl", "samples.png",
            "classifier.safetensors", "generator.safetensors", "run.log"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == json.loads(result.stdout)
    target = metrics["target"]
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1"):
        assert 0.0 <= target[key] <= 1.0
    # Three trivially separable shapes: a working chain is far above chance (1/3).
    assert target["accuracy"] > 0.8, target
    # ... and confident and balanced on the unlabelled target images, without labels.
    assert 0 < target["unlabelled_im"] <= 1
    assert metrics["adapters"]["finetune"]["unlabelled_im"] == target["unlabelled_im"]
    assert "IM (no labels)" in result.output
    matrix = torch.tensor(target["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum().item() == target["n_test"]
    assert metrics["generator"]["synthetic_images"] == 12
    generator = metrics["generator"]  # quality is measured by default
    assert 0 <= generator["cas"] <= 1 and 0 <= generator["cas_real"] <= 1
    assert generator["fid"] >= 0 and generator["kid_std"] >= 0 and "kid_mean" in generator
    assert 0 <= generator["nearest_shot"] <= 1 and 0 <= generator["nearest_shot_real"] <= 1
    assert "generator_quality" in metrics["timings_s"]
    # By default the run also fits its adapter without the synthetic images, and scores
    # the source model: the baselines a reader judges it by, in the output and the report.
    delta = metrics["synthetic_delta"]["finetune"]
    assert delta["with"] == target["accuracy"] and 0 <= delta["without"] <= 1
    baseline = metrics["baselines"]["source model"]
    assert 0 <= baseline["accuracy"] <= 1 and baseline["steps"] is None
    assert "what the run is compared with" in result.output
    assert "source model (frozen source encoder, logistic head)" in result.output
    assert "finetune without synthetic images" in result.output
    assert "tiny-source" in (folder / "config.toml").read_text()
    assert (folder / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (folder / "report.html").read_text()
    assert "Target accuracy" in report and "data:image/png;base64," in report
    assert "<h2>Compared with</h2>" in report and "finetune without synthetic images" in report
    assert "<h2>Adapter losses</h2>" in report  # finetune trains with gradient steps
    assert "FID, real reference" in report  # each class with its real floor
    assert load_file(folder / "classifier.safetensors")  # readable, non-empty


def test_report_shows_the_im_score_the_console_shows(finished_run):
    """One adapter: the console's table has an IM row, so the report's metrics do too."""
    _, folder, result = finished_run
    im = json.loads((folder / "metrics.json").read_text())["target"]["unlabelled_im"]
    assert any("IM (no labels)" in line and f"{im:.4f}" in line
               for line in result.output.splitlines())
    report = (folder / "report.html").read_text()
    metrics = report.split("<h2>Target test metrics</h2>")[1].split("</table>")[0]
    assert "<th>IM (no labels)</th>" in metrics and f"<td>{im:.4f}</td>" in metrics
    assert "IM (information maximisation, 0 to 1)" in report


def test_captions_file(finished_run):
    _, folder, _ = finished_run
    rows = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    sets = {r["set"] for r in rows}
    assert sets == {"source", "target", "synthetic", "unlabelled"}
    assert all("path" not in r for r in rows)  # built-in data: no files behind the images
    target_rows = [r for r in rows if r["set"] == "target"]
    assert len(target_rows) == 9
    # "a tiny shape dot, black ink on white, ..., domain tiny-target" (measured attributes)
    assert all(r["caption"].startswith(f"a tiny shape {r['label']}, ")
               and " ink on " in r["caption"] and r["caption"].endswith(", domain tiny-target")
               for r in target_rows)
    assert any("probably" in r["caption"] for r in rows if r["set"] == "unlabelled")


def test_same_seed_same_metrics(finished_run, host, tmp_path):
    out, folder, _ = finished_run
    result = invoke(*TINY_RUN, "--out", str(tmp_path), "--name", "tiny")
    assert result.exit_code == 0, result.output
    (again,) = tmp_path.iterdir()
    first = json.loads((folder / "metrics.json").read_text())["target"]
    second = json.loads((again / "metrics.json").read_text())["target"]
    assert first == second


def _snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.mark.parametrize("args, message", RUN_OPTION_MISTAKES + [
    (["--shots", "0", "--synthesis", "text"], "--shots 0 leaves no labelled target images"),
    (["--synthetic-filter", "1.5"], "synthetic_filter must be in [0, 1)"),
    (["--synthetic-filter-by", "clip:/m"], "--synthetic-filter-by clip:/m chooses what judges "
                                           "generated images, so it needs a threshold"),
    (["--synthetic-filter", "0.5", "--synthetic-filter-by", "nothing"],
     "unknown adapter 'nothing'"),
    (["--synthetic-filter", "0.5", "--synthetic-filter-by", "finetune"],
     "--synthetic-filter-by finetune: this adapter cannot score images without training"),
    (["--seeds", "0,-1"], "each of --seeds must be between 0 and 4294967295, got -1."),
    (["--generator-opt", "lr=inf"], "generator 'gan': option lr must be a finite number"),
])
def test_bad_input_is_one_sentence(finished_run, host, args, message):
    out, folder, _ = finished_run
    before = _snapshot(folder)
    assert_one_sentence(invoke(*TINY_RUN, "--out", str(out), *args), message)
    assert list(out.iterdir()) == [folder] and _snapshot(folder) == before


def test_bad_config_files(finished_run, host, tmp_path):
    out, folder, _ = finished_run
    malformed = tmp_path / "bad.toml"
    malformed.write_text("shots = = 3\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("shots = 3\ngan_steps = 4\n")
    for path, message in [(malformed, "is not valid TOML"), (unknown, "unknown key gan_steps")]:
        result = invoke("--config", str(path), "--out", str(out))
        assert result.exit_code == 2 and message in result.output, result.output
    assert list(out.iterdir()) == [folder]


def test_out_is_a_file(host, tmp_path):
    file = tmp_path / "results.txt"
    file.write_text("keep me")
    result = invoke(*TINY_RUN, "--out", str(file))
    assert result.exit_code == 2
    assert "is a file; give a directory" in result.output
    assert file.read_text() == "keep me"


def test_out_is_an_earlier_run_folder(finished_run, host, tmp_path):
    """A run folder given as --out would hold the new run inside the old one."""
    out, folder, _ = finished_run
    before = _snapshot(folder)
    result = invoke(*TINY_RUN, "--out", str(folder))
    assert_one_sentence(result, f"--out {str(folder)!r} is an earlier run's folder (it holds "
                          f"config.toml); give the folder that holds run folders, e.g. {str(out)!r}.")
    assert _snapshot(folder) == before and list(out.iterdir()) == [folder]
    unfinished = tmp_path / "20250101-000000-tiny"  # stopped before metrics.json
    unfinished.mkdir()
    (unfinished / "config.toml").write_text('name = "tiny"\n')
    result = invoke(*TINY_RUN, "--out", str(unfinished))
    assert_one_sentence(result, f"or finish that run with --resume {unfinished}.")
    assert [p.name for p in unfinished.iterdir()] == ["config.toml"]


def test_out_that_cannot_be_written(host, tmp_path):
    if Path("/proc/self").is_dir():  # /proc refuses new folders even to root
        result = invoke(*TINY_RUN, "--out", "/proc/imgxfer-runs")
        assert_one_sentence(result, "--out '/proc/imgxfer-runs' cannot be written: creating a "
                              "folder in '/proc' failed (")
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = invoke(*TINY_RUN, "--out", str(locked / "runs"))
        assert_one_sentence(result, "cannot be written: creating a folder in")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_run_files_follow_the_umask(finished_run):
    """Weights files as well as text files: none is private while the others are not."""
    _, folder, _ = finished_run
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes["classifier.safetensors"] == modes["config.toml"] == 0o666 & ~umask, modes
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_config_file_values_and_flag_override(host, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('name = "fromfile"\nshots = 2\n[adapter]\nname = "finetune"\nadabn = false\n')
    result = invoke(*TINY_RUN, "--config", str(config), "--out", str(tmp_path / "runs"),
                    "--generator", "none")
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "runs").iterdir()
    saved = (folder / "config.toml").read_text()
    assert folder.name.endswith("-fromfile")
    assert "shots = 3" in saved and "adabn = false" in saved and 'name = "none"' in saved
    assert not (folder / "generator.safetensors").exists()
    report = (folder / "report.html").read_text()  # no generator: nothing said of one
    body = report.split("<h2>Resolved config</h2>")[0]  # (the config names every option)
    assert "<h2>Target images</h2>" in body and "synthetic" not in body.lower()


def test_compare_and_seeds(host, tmp_path):
    result = invoke(*TINY_RUN, "--generator", "none", "--compare", "finetune,source-only",
                    "--seeds", "0,1", "--out", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    (parent,) = tmp_path.iterdir()
    assert sorted(p.name for p in parent.iterdir()) == ["seed-0", "seed-1", "summary.json"]
    summary = json.loads((parent / "summary.json").read_text())
    row = summary["adapters"]["finetune"]
    accs = [json.loads((parent / f"seed-{s}" / "metrics.json").read_text())["target"]["accuracy"]
            for s in (0, 1)]
    assert row["accuracy_mean"] == pytest.approx(sum(accs) / 2)
    assert row["accuracy_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    table = result.output[result.output.index("target test accuracy over seeds 0, 1"):]
    finetune_line = next(line for line in table.splitlines() if "finetune" in line)
    assert finetune_line.count("± ") == 3  # accuracy, macro F1 and IM, each with its std
    # The score without labels, per seed and over seeds, and the adapter it would choose.
    ims = [json.loads((parent / f"seed-{s}" / "metrics.json").read_text())
           ["adapters"]["finetune"]["unlabelled_im"] for s in (0, 1)]
    assert all(0 <= im <= 1 for im in ims)
    assert row["unlabelled_im_mean"] == pytest.approx(sum(ims) / 2)
    assert "IM (information maximisation, 0 to 1): how confident" in result.output


def test_zero_steps_are_refused_where_they_leave_something_untrained(host, tmp_path):
    result = invoke(*TINY_RUN, "--compare", "linear,finetune", "--adapter-steps", "0",
                    "--out", str(tmp_path))
    assert result.exit_code == 2 and "--adapter-steps 0 would leave finetune untrained" in result.output
    result = invoke(*TINY_RUN, "--generator-steps", "0", "--out", str(tmp_path))
    assert result.exit_code == 2 and "--generator-steps 0 would leave the generator 'gan'" in result.output
    assert list(tmp_path.iterdir()) == []  # refused before any run folder
    # The linear probe is solved to convergence: a step count does not apply to it.
    from imgxfer.core.config import from_mapping
    from imgxfer.tasks.classify.plan import prepare

    config = from_mapping({"source": "tiny-source", "target": "tiny-target", "shots": 3,
                           "generator": "none", "adapter": "linear", "adapter_steps": 0,
                           "generator_steps": 0, "encoder_steps": 0, "out": str(tmp_path)})
    assert list(prepare(config, host.registry).adapters) == ["linear"]


def test_bad_seeds(host, tmp_path):
    result = invoke(*TINY_RUN, "--seeds", "0,x", "--out", str(tmp_path))
    assert result.exit_code == 2 and "--seeds expects integers" in result.output
    result = invoke(*TINY_RUN, "--seeds", "1,1", "--out", str(tmp_path))
    assert result.exit_code == 2 and "distinct seeds" in result.output
    assert not list(tmp_path.iterdir())


def test_help_of_every_command():
    for command in ([], ["run"], ["plugins"], ["list"], ["install"], ["uninstall"], ["caption"],
                    ["generate"], ["cache"], ["predict"], ["explain"], ["plugin"], ["plugin", "new"]):
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_the_command_table_says_what_each_command_says():
    from imgxfer.cli.builtin import LAZY_COMMANDS, load_command

    assert {name: load_command(name).get_short_help_str(limit=200) for name in LAZY_COMMANDS} \
        == {name: lazy.short_help for name, lazy in LAZY_COMMANDS.items()}
    assert {name: load_command(name).name for name in LAZY_COMMANDS} == \
        {name: name for name in LAZY_COMMANDS}


def test_help_loads_neither_torch_nor_plugins():
    """`imgxfer --help` answers at once: nothing heavy is imported for it."""
    code = ("import sys; from imgxfer.cli.app import main; sys.argv = ['imgxfer', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'imgxfer.plugin.host') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "predict" in out.stdout and out.stdout.strip().endswith("[]"), out.stdout


def test_compare_synthetic_with_seeds(finished_run, host, tmp_path):
    """Every adapter with and without the synthetic images, on two seeds: metrics.json,
    summary.json, the final table and the report show the difference."""
    _, single, _ = finished_run
    # A filter threshold so low that it keeps every image: the filter runs, and the data
    # stay those of the plain run (compared below).
    result = invoke(*TINY_RUN, "--compare", "finetune,source-only", "--compare-synthetic",
                    "--synthetic-filter", "1e-6", "--seeds", "0,1", "--out", str(tmp_path),
                    "--json")
    assert result.exit_code == 0, result.output
    (parent,) = tmp_path.iterdir()
    runs = [json.loads((parent / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    for metrics in runs:
        delta = metrics["synthetic_delta"]
        # source-only never reads synthetic images: it gets no row (not a delta of 0)
        assert set(delta) == {"finetune"}
        for row in delta.values():
            assert {"with", "without", "delta"} <= set(row)
            assert row["delta"] == pytest.approx(row["with"] - row["without"])
            assert row["synthetic_images"] == 12
        assert delta["finetune"]["with"] == metrics["adapters"]["finetune"]["accuracy"]
        assert "adapter:finetune (no synthetic)" in metrics["timings_s"]
        assert {"cas", "cas_real", "fid", "kid_mean", "kid_std"} <= set(metrics["generator"])
        assert metrics["generator"]["filter"]["kept"] == 12
    # The paired fit does not disturb the rest of the run: seed 0's headline numbers are
    # those of the plain single-adapter run.
    assert runs[0]["target"] == json.loads((single / "metrics.json").read_text())["target"]
    summary = json.loads((parent / "summary.json").read_text())
    row = summary["synthetic_delta"]["finetune"]
    deltas = [m["synthetic_delta"]["finetune"]["delta"] for m in runs]
    assert row["delta_mean"] == pytest.approx(sum(deltas) / 2)
    assert row["delta_std"] == pytest.approx(abs(deltas[0] - deltas[1]) / 2 ** 0.5)
    assert summary["generator"]["cas_mean"] == pytest.approx(
        sum(m["generator"]["cas"] for m in runs) / 2)
    baseline = summary["adapters"]["source model (baseline)"]
    assert baseline["accuracy_mean"] == pytest.approx(
        sum(m["baselines"]["source model"]["accuracy"] for m in runs) / 2)
    assert "source model (baseline)" in result.output
    assert "with and without synthetic images" in result.output
    rows = [json.loads(line) for line in
            (parent / "seed-0" / "captions.jsonl").read_text().splitlines()]
    synthetic = [r for r in rows if r["set"] == "synthetic"]
    assert len(synthetic) == 12 and all(r["label"] in r["caption"] for r in synthetic)
    report = (parent / "seed-0" / "report.html").read_text()
    for section in ("Generator quality", "not comparable with published FID/KID",
                    "Do the synthetic images help?", "Images and their captions",
                    "target shots", "Generator losses"):
        assert section in report, section
    assert report.count("<tr><td>synthetic</td>") >= 3  # captioned synthetic thumbnails



def test_figures_carry_intervals_and_a_noise_generator_is_flagged(finished_run):
    """Issue 29, item 8, end to end: the tiny run's 5-step GAN draws noise, so its CAS is
    within noise of chance, which metrics.json, the report and the screen all say."""
    from imgxfer.run.metrics import RunMetrics
    from imgxfer.run.uncertainty import noise_warnings

    out, folder, result = finished_run
    metrics = RunMetrics.read(folder / "metrics.json")
    low, high = metrics.target.accuracy_interval
    assert low <= metrics.target.accuracy <= high
    gen = metrics.generator
    assert gen.cas_test_images == metrics.target.n_test
    assert gen.cas_interval[0] <= metrics.target.chance <= gen.cas_interval[1]
    warning = next(w for w in noise_warnings(metrics) if w.startswith("CAS"))
    report = (folder / "report.html").read_text()
    assert "95% interval" in report and f"{gen.cas_interval[0]:.3f}-" in report
    assert "within noise of chance" in report
    screen = " ".join(result.output.split())
    assert f"CAS {gen.cas:.4f} ({gen.cas_interval[0]:.3f}-{gen.cas_interval[1]:.3f})" in screen
    assert " ".join(warning.split()[:6]) in screen


def test_a_prompt_to_a_translating_generator_points_to_images(finished_run, tmp_path):
    """Issue 29, item 10: the tiny run translates (--synthesis auto), so its generator
    draws nothing from a prompt; the one sentence says to give --images."""
    out, folder, _ = finished_run
    result = CliRunner().invoke(cli, ["generate", "--from", str(folder), "--prompt", "a dot",
                                      "--out", str(tmp_path / "drawn")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "trained to translate images" in message
    assert "give --images DATASET_OR_PATH instead of --prompt" in message
    assert not re.search(r"[.;:] [A-Z]", message), message  # one sentence
