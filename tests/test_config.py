"""Config validation: every value typed, finite and in range, and errors that say what to change."""

import pytest

from sdft_kit import Config


@pytest.mark.parametrize("overrides, expected", [
    (dict(lora_alpha=-5), "lora_alpha must be >= 1; got -5 (set it with --lora-alpha, or under 'model:'"),
    (dict(learning_rate=float("inf")), "learning_rate must be a finite number; got inf (set it with --learning-rate"),
    (dict(learning_rate=float("nan")), "learning_rate must be a finite number; got nan"),
    (dict(learning_rate=2.0), "learning_rate must be > 0 and <= 1; got 2.0"),
    (dict(max_grad_norm=0.0), "max_grad_norm must be > 0; got 0.0"),
    (dict(ema_rate=0.0), "ema_rate must be > 0 and <= 1; got 0.0 (set it with --ema-rate, or under 'teacher:'"),
    (dict(top_p=1.5), "top_p must be > 0 and <= 1; got 1.5"),
    (dict(lora_dropout=1.0), "lora_dropout must be >= 0 and < 1; got 1.0"),
    (dict(alpha=-0.1), "alpha must be >= 0 and <= 1; got -0.1"),
    (dict(steps="two"), "steps must be a whole number; got 'two' (set it with --steps, or under 'train:'"),
    (dict(steps=True), "steps must be a whole number; got True"),
    (dict(load_in_4bit="yes"), "load_in_4bit must be true or false; got 'yes'"),
    (dict(teacher="oracle"), "teacher must be one of ema, base, factor_ema, live; got 'oracle'"),
    (dict(max_bad_steps=0), "max_bad_steps must be >= 1; got 0"),
])
def test_bad_values_name_the_field_the_rule_and_the_flag(overrides, expected):
    with pytest.raises(ValueError) as error:
        Config().replace(**overrides)
    assert str(error.value).startswith(expected)


def test_numbers_are_taken_in_the_forms_yaml_gives_them(tmp_path):
    # YAML 1.1 reads 5e-4 (no dot) as a string, and 1 as an int: both are fine for a float field.
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 5e-4\n  max_grad_norm: 1\nmodel:\n  load_in_4bit: null\n")
    config = Config.load(path)
    assert config.train.learning_rate == 5e-4 and isinstance(config.train.max_grad_norm, float)
    assert config.model.load_in_4bit is None


@pytest.mark.parametrize("text, expected", [
    ("train:\n  steps: two\n", "c.yaml: steps must be a whole number; got 'two'"),
    ("train:\n  steps: 2\n lr: 3\n", "c.yaml, line 3, column 2: not valid YAML ("),
    ("train: [1, 2\n", "c.yaml, line 2, column 1: not valid YAML ("),
    ("- a list\n", "c.yaml: expected a mapping of sections"),
    ("train:\n  stepz: 2\n", "c.yaml: unknown field(s) ['stepz'] in section 'train'"),
])
def test_yaml_errors_name_the_file_and_line(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        Config.load(path)
    assert str(error.value).startswith(f"{tmp_path}/{expected}")
