"""What a person meets when something is wrong: one line and exit 2, and nothing lost."""

import glob
import logging
import os
import subprocess
import sys

import pytest
from conftest import ROOT, parse_main_flags, tiny_config

from dcgan_jax import checkpoints, train

TINY = ["--config=configs/demo.py", "--config.ngf=8", "--config.ndf=8",
        "--config.batch_size=8", "--config.synthetic_size=64", "--config.log_every=10",
        "--config.plot_every=100", "--config.num_plot=4"]


def _main(argv, monkeypatch, capsys) -> tuple[int, str]:
  """main.py's main in-process: (exit status, what it printed to stderr)."""
  main = parse_main_flags(["main.py", *argv], monkeypatch)
  capsys.readouterr()
  try:
    main.main(["main.py"])
    code = 0
  except SystemExit as e:
    code = e.code
  return code, capsys.readouterr().err


def _damage(step_dir) -> None:
  """Cuts every array data file of a checkpoint in half, as a failing disk or copy would."""
  files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
  assert files
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)


def _trained(workdir, monkeypatch, capsys, steps: int = 20):
  code, err = _main([*TINY, f"--workdir={workdir}", "--config.save_every_steps=10",
                     f"--config.num_train_steps={steps}"], monkeypatch, capsys)
  assert code == 0, err


def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
    tmp_path, monkeypatch, capsys, caplog):
  caplog.set_level(logging.INFO)
  _trained(tmp_path, monkeypatch, capsys)
  _damage(tmp_path / "checkpoints" / "20")
  code, err = _main([*TINY, f"--workdir={tmp_path}", "--config.save_every_steps=10",
                     "--config.num_train_steps=30"], monkeypatch, capsys)
  assert code == 0, err
  assert "Traceback" not in err and "Event loop is closed" not in err
  assert "checkpoints/20 cannot be read (ValueError: OUT_OF_RANGE" in caplog.text
  assert "Resumed from step 10 " in caplog.text
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20", "20.unreadable", "30"]
  assert checkpoints.Checkpoints(str(tmp_path / "checkpoints")).all_steps() == [10, 20, 30]


def test_when_no_checkpoint_restores_the_run_names_each_and_changes_nothing(
    tmp_path, monkeypatch, capsys):
  _trained(tmp_path, monkeypatch, capsys)
  for step in ("10", "20"):
    _damage(tmp_path / "checkpoints" / step)
  before = sorted(os.listdir(tmp_path / "checkpoints"))
  code, err = _main([*TINY, f"--workdir={tmp_path}", "--config.num_train_steps=30"],
                    monkeypatch, capsys)
  assert code == 2
  assert err.count("\n") == 1 and err.startswith("error: no checkpoint in "), err
  assert "step 20: ValueError: OUT_OF_RANGE" in err and "step 10: ValueError" in err
  assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_generate_and_eval_use_the_newest_readable_checkpoint_and_move_nothing(
    tmp_path, monkeypatch, capsys, caplog):
  from dcgan_jax.metrics import evaluate
  _trained(tmp_path, monkeypatch, capsys)
  _damage(tmp_path / "checkpoints" / "20")
  code, err = _main([*TINY, f"--workdir={tmp_path}", "--mode=generate",
                     "--config.gen_search_num=8", "--config.gen_num=4"], monkeypatch, capsys)
  assert code == 0, err
  assert os.path.exists(tmp_path / "result.png")
  assert "checkpoints/20 cannot be read" in caplog.text and "moved" not in caplog.text
  state, _ = evaluate.restore_state(tiny_config(), str(tmp_path))  # what eval scores
  assert int(state.step) == 10
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]


def _folders(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "a.jpg").write_text("<html>not found</html>")
  (tmp_path / "junk" / "b.png").write_text("hello")
  (tmp_path / "afile").write_text("x")


MISTAKES = {  # argv after TINY -> what the one line says
    "empty folder": (["--config.dataset={t}/empty", "--workdir={t}/w"],
                     "no images (.jpg/.jpeg/.png) found below '{t}/empty'"),
    "no images": (["--config.dataset={t}/junk", "--workdir={t}/w"],
                  "no readable image below '{t}/junk': skipped 2 of 2 image files"),
    "workdir a file": (["--workdir={t}/afile"], "workdir '{t}/afile' is a file, not a folder"),
    "batch": (["--config.batch_size=-3", "--workdir={t}/w"],
              "invalid config: config.batch_size=-3: must be an integer >= 1"),
    "lr": (["--config.lr_d=nan", "--workdir={t}/w"],
           "invalid config: config.lr_d=nan: must be a finite number > 0"),
    "size": (["--config.image_size=64", "--workdir={t}/w"],
             "invalid config: config.image_size=64: must be one of 96"),
    "other ngf": (["--config.ngf=16", "--workdir={t}/trained"],
                  "the checkpoint {t}/trained/checkpoints/2 was trained with other model "
                  "sizes: ngf=8 (config: 16)"),
    "no checkpoint": (["--mode=generate", "--workdir={t}/w"],
                      "checkpoint path '{t}/w' does not exist"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_ends_in_one_line_and_exit_2(mistake, tmp_path, monkeypatch, capsys):
  _folders(tmp_path)
  if mistake == "other ngf":
    _trained(tmp_path / "trained", monkeypatch, capsys, steps=2)
  argv, says = MISTAKES[mistake]
  code, err = _main([*TINY, "--config.num_train_steps=2",
                     *(a.format(t=tmp_path) for a in argv)], monkeypatch, capsys)
  assert code == 2
  assert err.startswith("error: " + says.format(t=tmp_path)) and err.count("\n") == 1, err
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
  def broken(*args):
    raise ZeroDivisionError("a bug")
  monkeypatch.setattr(train, "train_and_evaluate", broken)
  with pytest.raises(ZeroDivisionError):
    _main([*TINY, f"--workdir={tmp_path}"], monkeypatch, capsys)


def test_the_process_prints_one_line_and_exits_2_and_verbose_adds_the_traceback(tmp_path):
  def run(*extra):
    return subprocess.run([sys.executable, "main.py", *TINY, f"--workdir={tmp_path}",
                           "--config.batch_size=-3", *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)
  r = run()
  assert r.returncode == 2 and r.stdout == ""
  assert r.stderr == ("error: invalid config: config.batch_size=-3: must be an integer "
                      ">= 1\n"), r.stderr
  r = run("--verbose")
  assert r.returncode == 2 and "Traceback" in r.stderr and "ConfigError" in r.stderr
  assert r.stderr.endswith("error: invalid config: config.batch_size=-3: must be an "
                           "integer >= 1\n")
