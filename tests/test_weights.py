"""core.weights: safetensors only, sha256 checked against the model card, no pickle.

Every broken weights file or model card is refused with a ``WeightsError`` that names the file,
and nothing in the code base unpickles untrusted data.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

from core import WeightsError, load_model
from core.constants import MODEL_CARD_NAME
from core.model import build_network
from core.weights import card_path_for, load_weights, save_weights, sha256_file

ROOT = Path(__file__).resolve().parent.parent
#: The code that ships or trains the model (tests may pickle on purpose, to attack it).
SCANNED = ["core", "train", "pages", "benchmarks", "streamlit_app.py"]
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve"}


@pytest.fixture
def weights(tmp_path, tiny_weights) -> Path:
    """A private copy of the tiny model's folder (weights and card), free to damage."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_weights.parent, folder)
    return folder / tiny_weights.name


def refused(path: Path, named: Path, *words: str) -> str:
    with pytest.raises(WeightsError) as info:
        load_model(path, device="cpu")
    message = str(info.value)
    assert str(named) in message, message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def update_card(weights: Path, **changes) -> None:
    card_path = card_path_for(weights)
    card = json.loads(card_path.read_text())
    card.update(changes)
    card_path.write_text(json.dumps(card))


# ---------------------------------------------------------------------------- the weights file
def test_intact_copy_loads(weights):
    state, card = load_weights(weights)
    assert card["weights_sha256"] == sha256_file(weights)
    assert all(isinstance(tensor, torch.Tensor) for tensor in state.values())
    assert load_model(weights, device="cpu").class_names == tuple(card["class_names"])


@pytest.mark.parametrize("where", ["header", "middle", "last"])
def test_one_flipped_byte_is_refused(weights, where):
    data = bytearray(weights.read_bytes())
    at = {"header": 20, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[at] ^= 0x01
    weights.write_bytes(bytes(data))
    refused(weights, weights, "sha256", "does not match")


@pytest.mark.parametrize("keep", ["nothing", "8 bytes", "half", "all but one byte"])
def test_truncated_file_is_refused(weights, keep):
    data = weights.read_bytes()
    cut = {"nothing": 0, "8 bytes": 8, "half": len(data) // 2, "all but one byte": len(data) - 1}[keep]
    weights.write_bytes(data[:cut])
    refused(weights, weights, "does not match")


def test_missing_weights_file(weights):
    weights.unlink()
    refused(weights, weights, "not found")


def test_weights_path_is_a_folder(weights, tmp_path):
    refused(tmp_path, tmp_path, "not found")


def test_matching_sha_but_not_safetensors(weights):
    """Even with a card that matches, a file that is not safetensors is refused."""
    weights.write_bytes(b"\x00" * 64)
    update_card(weights, weights_sha256=sha256_file(weights))
    refused(weights, weights, "not a valid safetensors")


def test_pickle_disguised_as_weights_never_runs(weights, tmp_path):
    """A malicious torch pickle, renamed and with a matching card, is refused unexecuted."""
    marker = tmp_path / "pwned"
    evil = _malicious_torch_file(tmp_path, marker)
    weights.write_bytes(evil.read_bytes())
    update_card(weights, weights_sha256=sha256_file(weights))
    refused(weights, weights, "not a valid safetensors")
    assert not marker.exists()
    # The file is a real attack: an unrestricted unpickler runs it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def _malicious_torch_file(tmp_path: Path, marker: Path) -> Path:
    import pickle  # only here, to build the attack; the library never imports it

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    source = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, source, pickle_module=pickle)
    assert not marker.exists()
    return source


def test_weights_of_another_architecture(tmp_path):
    """Valid safetensors with a matching sha, but shapes that do not fit: refused, named."""
    net = build_network("efficientnet_lite0", num_classes=3)
    card = {
        "arch": "efficientnet_lite0",
        "image_size": 64,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "class_names": ["glioma", "meningioma", "notumor", "pituitary"],
    }
    path = tmp_path / "model.safetensors"
    save_weights(net, path, card)
    refused(path, path, "does not fit")


# ---------------------------------------------------------------------------- the model card
def test_missing_model_card(weights):
    card_path_for(weights).unlink()
    refused(weights, card_path_for(weights), "not found")


@pytest.mark.parametrize(
    "text",
    ["{not json", "", "[1, 2, 3]", '"a string"', "\xff\xfe garbage", '{"arch": "efficientnet_lite0"}'],
    ids=["broken-json", "empty", "list", "string", "bad-encoding", "missing-keys"],
)
def test_malformed_model_card(weights, text):
    path = card_path_for(weights)
    if text.startswith("\xff"):
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text(text)
    assert path.name == MODEL_CARD_NAME
    refused(weights, path)


def test_card_without_sha256(weights):
    card_path = card_path_for(weights)
    card = json.loads(card_path.read_text())
    del card["weights_sha256"]
    card_path.write_text(json.dumps(card))
    refused(weights, card_path, "weights_sha256")


def test_card_with_wrong_sha256(weights):
    update_card(weights, weights_sha256="0" * 64)
    refused(weights, weights, "does not match")


# ---------------------------------------------------------------------------- no unpickling
def _python_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(path.rglob("*.py")))
    return files


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """``torch.load`` calls without ``weights_only=True``, pickle imports, pickling loaders."""
    tree = ast.parse(source, filename)
    problems: list[str] = []
    torch_load_names = {"torch.load", "torch.serialization.load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLE_MODULES:
                    problems.append(f"{filename}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in PICKLE_MODULES:
                problems.append(f"{filename}:{node.lineno}: from {module} import ...")
            if module in ("torch", "torch.serialization") and any(a.name == "load" for a in node.names):
                torch_load_names.add("load")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            keywords = {kw.arg: kw.value for kw in node.keywords}
            if name in torch_load_names:
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{filename}:{node.lineno}: {name}(...) without weights_only=True")
            if name in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{filename}:{node.lineno}: {name}(..., allow_pickle=...)")
    return problems


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_checker_finds_unsafe_code():
    """The scan below would notice each unsafe pattern (so its passing means something)."""
    bad = (
        "import pickle\nfrom joblib import load\nimport torch\n"
        "a = torch.load('x.pt')\nb = torch.load('x.pt', weights_only=False)\n"
        "c = torch.load('x.pt',\n    map_location='cpu')\n"
        "from torch import load\nd = load('x.pt')\nimport numpy as np\ne = np.load('x', allow_pickle=True)\n"
    )
    assert len(unsafe_calls(bad)) == 7
    good = "import torch\nx = torch.load('x.pt', map_location='cpu', weights_only=True)\n"
    assert unsafe_calls(good) == []


def test_no_torch_load_without_weights_only_and_no_pickle():
    files = _python_files()
    assert any(path.parts[-2:] == ("core", "weights.py") for path in files)
    problems = []
    for path in files:
        source = path.read_text(encoding="utf-8")
        problems += unsafe_calls(source, str(path.relative_to(ROOT)))
        # A plain text grep as well, for calls the syntax walk might not name (aliases).
        for number, line in enumerate(source.splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                call = _call_text(source, number)
                if "weights_only=True" not in call:
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not problems, "unsafe deserialisation:\n" + "\n".join(sorted(set(problems)))


def _call_text(source: str, line_number: int) -> str:
    """The text of the call that starts on ``line_number`` (up to its closing bracket)."""
    lines = source.splitlines()[line_number - 1 :]
    text, depth = "", 0
    for line in lines:
        text += line + "\n"
        depth += line.count("(") - line.count(")")
        if depth <= 0:
            break
    return text


def test_weights_are_loaded_with_safetensors_only():
    source = (ROOT / "core" / "weights.py").read_text(encoding="utf-8")
    assert "from safetensors" in source
    assert "torch.load" not in source
    assert unsafe_calls(source) == []
