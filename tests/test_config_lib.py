
"""Config validation: every bad key is named with what it allows, before any work."""

import os
import re

import ml_collections
import pytest
from conftest import ROOT, load_config, parse_main_flags, tiny_config

from dcgan_jax import config_lib, defaults, schedule, train


def _raw(**changes):
  """A config as a config file could build it: a fresh, unlocked ConfigDict."""
  d = tiny_config().to_dict()
  for k, v in changes.items():
    if v is ...:
      del d[k]
    else:
      d[k] = v
  return ml_collections.ConfigDict(d)


def test_shipped_configs_pass():
  for c in (load_config("anime"), load_config("demo"), tiny_config()):
    config_lib.validate(c, device_count=1)


def test_the_anime_config_is_the_original_recipe_and_the_reference():
  anime = load_config("anime")
  assert anime.to_dict() == defaults.get_config().to_dict()
  assert (anime.batch_size, anime.nz, anime.ngf, anime.ndf, anime.lr_g, anime.lr_d,
          anime.beta1, anime.d_every, anime.g_every, anime.num_epochs, anime.gen_search_num,
          anime.gen_num) == (256, 100, 64, 64, 2e-4, 2e-4, 0.5, 1, 1, 200, 512, 64)


def test_the_library_does_not_depend_on_the_configs_folder():
  for name in os.listdir(os.path.join(ROOT, "dcgan_jax")):
    if name.endswith(".py"):
      text = open(os.path.join(ROOT, "dcgan_jax", name)).read()
      assert "from configs" not in text and "import configs" not in text, name
  assert not os.path.exists(os.path.join(ROOT, "configs", "__init__.py"))


@pytest.mark.parametrize("key,value,message", [
    ("image_size", 64, r"config.image_size=64: must be one of 96 \(the only size"),
    ("lr_g", -2e-4, r"config.lr_g=-0.0002: must be a finite number > 0"),
    ("lr_d", float("nan"), r"config.lr_d=nan: must be a finite number > 0"),
    ("g_every", 0, r"config.g_every=0: must be an integer >= 1"),
    ("d_every", -1, r"config.d_every=-1: must be an integer >= 1"),
    ("log_every", 0, r"config.log_every=0: must be an integer >= 1"),
    ("plot_every", 0, r"config.plot_every=0: must be an integer >= 1"),
    ("beta1", 1.0, r"config.beta1=1.0: must be a number in \[0, 1\)"),
    ("num_train_steps", 0, r"config.num_train_steps=0: must be -1 .* or an integer >= 1"),
    ("dtype", "float16", r"config.dtype='float16': must be one of 'float32', 'bfloat16'"),
    ("batch_size", 0, r"config.batch_size=0: must be an integer >= 1"),
    ("seed", -3, r"config.seed=-3: must be an integer >= 0"),
    ("dataset", " ", r"config.dataset=' ': must be a folder of images, 'tfds:NAME'"),
    ("batch_size", "256", r"config.batch_size='256' is of type str; it must be of type int"),
    ("cache", 1, r"config.cache=1 is of type int; it must be of type bool"),
    ("nz", 100.0, r"config.nz=100.0 is of type float; it must be of type int"),
    ("lr_g", True, r"config.lr_g=True is of type bool; it must be of type float"),
    ("init_scheme", "xavier", r"config.init_scheme='xavier': must be one of 'pytorch', 'dcgan'"),
    ("parallel", "pjit", r"config.parallel='pjit': must be one of 'pmap', 'shard_map'"),
    ("ema_decay", 1.5, r"config.ema_decay=1.5: must be a number in \[0, 1\)"),
    ("standing_stats", -1, r"config.standing_stats=-1: must be an integer >= 0 \(noise draws"),
    ("conv_impl", "cudnn", r"config.conv_impl='cudnn': must be one of 'auto', 'cpu', 'xla'"),
    ("steps_per_call", 0, r"config.steps_per_call=0: must be an integer >= 1"),
])
def test_impossible_values_and_wrong_types_are_named(key, value, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_raw(**{key: value}), device_count=1)


def test_an_int_passes_for_a_float():
  config_lib.validate(_raw(lr_g=1), device_count=1)


def test_unknown_and_missing_keys_are_named_all_at_once():
  c = _raw(seed=..., log_every=0)
  c.batchsize = 8
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c, device_count=1)
  lines = str(e.value).splitlines()[1:]
  assert len(lines) == 3, lines
  assert "config.batchsize: unknown key (did you mean 'batch_size'?" in lines[0]
  assert "config.seed: missing (default in dcgan_jax/defaults.py: 0)" in lines[1]
  assert "config.log_every=0" in lines[2]


def test_batch_must_split_over_the_devices():
  with pytest.raises(config_lib.ConfigError,
                     match=r"config.batch_size=12: must be divisible by the number of "
                           r"devices \(8\), e.g. 8"):
    config_lib.validate(_raw(batch_size=12), device_count=8)
  config_lib.validate(_raw(batch_size=16), device_count=8)


def test_training_validates_before_compiling(tmp_path, monkeypatch):
  monkeypatch.setattr(train, "create_train_state", lambda *a: pytest.fail("compiled"))
  with pytest.raises(config_lib.ConfigError, match="config.g_every=0"):
    train.train_and_evaluate(tiny_config(g_every=0), str(tmp_path))


def test_a_config_file_with_an_extra_or_missing_key_fails_naming_it(tmp_path, monkeypatch,
                                                                    capsys):

  cfg = tmp_path / "mine.py"
  cfg.write_text("from dcgan_jax import config_lib\n\n\ndef get_config():\n"
                 f"  c = config_lib.load({os.path.join(ROOT, 'configs', 'demo.py')!r})\n"
                 "  c.learning_rate = 1e-3\n  del c['beta2']\n  return c\n")
  argv = ["main.py", f"--config={cfg}", f"--workdir={tmp_path / 'w'}"]
  monkeypatch.setattr(train, "create_train_state", lambda *a: pytest.fail("compiled"))
  main = parse_main_flags(argv, monkeypatch)
  with pytest.raises(SystemExit) as e:
    main.main(["main.py"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert re.search(r"(?s)^error: invalid config: \n  config.learning_rate: unknown key.*"
                   r"\n  config.beta2: missing", err), err
  assert "Traceback" not in err


def test_steps_per_call_must_divide_the_periodic_work_and_the_run():
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(_raw(steps_per_call=4, log_every=6, plot_every=8, num_train_steps=10,
                             save_every_steps=-1), device_count=1)
  lines = [line.strip() for line in str(e.value).splitlines()[1:]]  # one per bad key
  assert len(lines) == 2, lines
  assert lines[0].startswith("config.log_every=6: not a multiple of config.steps_per_call=4")
  assert lines[1].startswith("config.num_train_steps=10: not a multiple of")
  config_lib.validate(_raw(steps_per_call=4, log_every=8, plot_every=4, num_train_steps=12,
                           save_every_steps=-1), device_count=1)
  c = _raw(steps_per_call=4)
  c.fid.eval_every = 6
  with pytest.raises(config_lib.ConfigError, match=r"config.fid.eval_every=6: not a "):
    config_lib.validate(c, device_count=1)


def test_what_the_data_decides_is_checked_against_steps_per_call_too():
  c = _raw(steps_per_call=4, num_train_steps=-1, num_epochs=3, save_every_steps=-1)
  schedule.Schedule.of(c, 8)  # 8 steps per epoch: fine
  with pytest.raises(config_lib.ConfigError) as e:
    schedule.Schedule.of(c, 7)
  assert "config.num_epochs=3: makes 21 steps on this data, not a multiple of " \
      "config.steps_per_call=4" in str(e.value)
  assert "config.save_every_steps=-1: means every 70 steps on this data, not" in str(e.value)


def test_training_checks_the_data_s_steps_before_compiling(tmp_path, monkeypatch):
  monkeypatch.setattr(train, "make_train_call", lambda *a: pytest.fail("compiled"))
  # 64 synthetic faces at batch 8: 8 steps per epoch, 3 epochs = 24 = 16 + 8.
  with pytest.raises(config_lib.ConfigError, match=r"config.num_epochs=3: makes 24 steps"):
    train.train_and_evaluate(tiny_config(num_train_steps=-1, num_epochs=3, steps_per_call=16,
                                         log_every=16, plot_every=16, save_every_steps=16),
                             str(tmp_path))
