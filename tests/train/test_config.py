"""Config loading: named configs and the user's file, typed --config.key=value overrides,
and one clear error naming the key for every mistake."""

import pytest

from crfiqa_jax.train import config as config_lib


def test_named_configs_and_overrides():
  names = config_lib.available_configs()
  assert {"base", "demo", "small", "large", "celeba"} <= set(names)
  c = config_lib.load_config("small", {"batch_size": "256", "lr_decay_epochs": "(3, 4)",
                                       "shard_centres": "true", "lr": "1",
                                       "ig_augment.p_gray": "0.5", "data_dir": "x"})
  assert c.batch_size == 256 and c.lr_decay_epochs == (3, 4) and c.shard_centres is True
  assert c.lr == 1.0 and isinstance(c.lr, float) and c.ig_augment.p_gray == 0.5
  assert c.model == "iresnet50"  # the rest is small's own
  with pytest.raises(AttributeError):
    c.new_key = 1  # locked


def test_a_users_file(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text("from crfiqa_jax.configs import demo\n\n"
                  "def get_config():\n  c = demo.get_config()\n  c.num_epochs = 2\n  return c\n")
  c = config_lib.load_config(str(path), {"seed": "3"})
  assert c.num_epochs == 2 and c.seed == 3 and c.model == "iresnet_tiny"


@pytest.mark.parametrize("overrides,match", [
    ({"batchsize": "8"}, "Unknown config key 'batchsize'.*batch_size"),
    ({"flip": "often"}, "--config.flip='often' is not a valid float"),
    ({"shard_centres": "maybe"}, "expects true/false"),
    ({"batch_size": "1.5"}, "expected int, got float"),
    ({"ig_augment.p_blur": "1"}, "Unknown config key 'ig_augment.p_blur'"),
])
def test_bad_overrides_name_the_key(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    config_lib.load_config("base", overrides)


def test_split_argv_and_unknown_names(tmp_path):
  rest, over = config_lib.split_argv(["--config=demo", "--config.seed=2", "--workdir=w"])
  assert rest == ["--config=demo", "--workdir=w"] and over == {"seed": "2"}
  with pytest.raises(config_lib.ConfigError, match="take the form --config.key=value"):
    config_lib.split_argv(["--config.seed"])
  with pytest.raises(config_lib.ConfigError, match="No config 'nope'.*Named configs"):
    config_lib.load_config("nope")
  with pytest.raises(config_lib.ConfigError, match="No config file"):
    config_lib.load_config(str(tmp_path / "missing.py"))
