"""``evaluate_model`` and its inputs: classes.json, attack specs, one-line errors."""
import json

import pytest

from clipguard.data.templates import DEFAULT_TEMPLATES
from clipguard.errors import ConfigError
from clipguard.evaluate.api import evaluate_model, read_classes
from clipguard.models import create_model, save_model


def test_read_classes_falls_back_to_the_default_templates(tmp_path):
    p = tmp_path / "classes.json"
    p.write_text(json.dumps({"classes": ["star", "ring"]}))
    assert read_classes(p) == (["star", "ring"], list(DEFAULT_TEMPLATES))
    p.write_text(json.dumps({"classes": ["star"], "templates": ["a {} here"]}))
    assert read_classes(p) == (["star"], ["a {} here"])


@pytest.mark.parametrize("content,text", [
    ({"classes": ["star"], "templates": ["a star"]}, r"classes.json: caption template 'a star' has no '\{\}'"),
    ({"classes": ["star"], "templates": "a {}"}, "'templates' must be a list of strings"),
    ({"classes": []}, "needs a non-empty 'classes' list"),
    ({"classes": [1, 2]}, "needs a non-empty 'classes' list of class names"),
    (["star"], "expected a class list"),
])
def test_bad_class_lists_are_one_line_errors(tmp_path, content, text):
    p = tmp_path / "classes.json"
    p.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=text) as e:
        read_classes(p)
    assert "\n" not in str(e.value)


def test_missing_or_broken_files(tmp_path, tiny_world):
    with pytest.raises(ConfigError, match="class list .* not found"):
        read_classes(tmp_path / "none.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_classes(tmp_path / "broken.json")
    save_model(create_model("tiny-rn", seed=0), tmp_path / "m")
    test, classes = tiny_world / "test" / "manifest.parquet", tiny_world / "classes.json"
    with pytest.raises(ConfigError, match="an attack spec \\(attack.json\\) not found"):
        evaluate_model(tmp_path / "m", test, classes, attack_spec=tmp_path / "attack.json", progress=False)
    (tmp_path / "attack.json").write_text(json.dumps({"attack": "sig", "params": {}}))
    with pytest.raises(ConfigError, match="no 'target'"):
        evaluate_model(tmp_path / "m", test, classes, attack_spec=tmp_path / "attack.json", progress=False)
    (tmp_path / "attack.json").write_text(json.dumps({"attack": "sig", "target": "banana"}))
    with pytest.raises(ConfigError, match="target 'banana' is not one of the classes"):
        evaluate_model(tmp_path / "m", test, classes, attack_spec=tmp_path / "attack.json", progress=False)


def test_a_bundle_is_evaluated_where_it_is(tiny_world):
    bundle = create_model("tiny-rn", seed=0)
    out = evaluate_model(bundle, tiny_world / "test" / "manifest.parquet", tiny_world / "classes.json",
                         progress=False)
    assert bundle.device.type == "cpu" and 0 <= out["clean_accuracy"] <= 1 and out["n_test"] == 200
