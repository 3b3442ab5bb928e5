"""A model folder that could run code on load, or is not a complete safetensors model, is
refused with an error naming the offending file."""
import json
import os

import pytest

from workers.core.modelstore import ModelFolderError, inspect_folder, load_causal_lm


def refusal(folder) -> ModelFolderError:
    with pytest.raises(ModelFolderError) as error:
        inspect_folder(folder)
    assert str(error.value) == f"{error.value.path}: {error.value.reason}"
    return error.value


@pytest.mark.parametrize("name", ["pytorch_model.bin", "weights.pt", "extra/optimizer.pth", "model.ckpt", "data.pkl"])
def test_pickle_weights_are_refused(model_copy, name):
    (model_copy / name).parent.mkdir(exist_ok=True)
    (model_copy / name).write_bytes(b"\x80\x04pickle")
    error = refusal(model_copy)
    assert error.path == name
    assert "pickle" in error.reason


def test_a_python_file_is_refused_as_custom_code(model_copy):
    (model_copy / "modeling_x.py").write_text("import os\n")
    error = refusal(model_copy)
    assert (error.path, "custom code" in error.reason) == ("modeling_x.py", True)


@pytest.mark.parametrize("config_name", ["config.json", "tokenizer_config.json"])
def test_a_config_with_auto_map_is_refused(model_copy, config_name):
    config = json.loads((model_copy / config_name).read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (model_copy / config_name).write_text(json.dumps(config))
    error = refusal(model_copy)
    assert error.path == config_name
    assert "auto_map" in error.reason


def test_a_symlink_is_refused(model_copy, tmp_path):
    (tmp_path / "outside.txt").write_text("secret")
    os.symlink(tmp_path / "outside.txt", model_copy / "notes.txt")
    assert refusal(model_copy).path == "notes.txt"


def test_a_folder_without_config_json_is_refused(model_copy):
    (model_copy / "config.json").unlink()
    error = refusal(model_copy)
    assert error.path == "config.json" and "missing" in error.reason


def test_a_folder_without_safetensors_weights_is_refused(model_copy):
    (model_copy / "model.safetensors").unlink()
    assert "no *.safetensors" in refusal(model_copy).reason


def test_an_adapter_config_without_adapter_weights_is_refused(tiny_adapter_dir, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((tiny_adapter_dir / "adapter_config.json").read_bytes())
    assert refusal(folder).path == "adapter_model.safetensors"


def test_a_missing_shard_of_an_indexed_model_is_refused(model_copy):
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    assert refusal(model_copy).path == "model-00002-of-00002.safetensors"


def test_loading_applies_the_same_rules_before_touching_the_weights(model_copy):
    (model_copy / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ModelFolderError, match="pytorch_model.bin"):
        load_causal_lm(model_copy)


def test_loading_an_adapter_without_its_base_says_what_to_pass(tiny_adapter_dir):
    with pytest.raises(ModelFolderError, match="base_folder"):
        load_causal_lm(tiny_adapter_dir)
