"""ultralytics YOLO: its offline setup and the weights files of trained folds (shared by training,
``training.py``, and prediction, ``member.py``).

ultralytics reads its settings file and network switches when it is first imported, so
:func:`import_ultralytics` sets them first: ``YOLO_OFFLINE=true`` (no hub probe, no AMP-check or font
download attempt that could hang) and ``YOLO_CONFIG_DIR`` inside the run folder (not the user's
home). Models come from a bundled yaml (random init) or a local ``.pt``; nothing is downloaded.

A trained fold is kept as data, never as a pickle: its model yaml (JSON text, every layer name checked
against the network classes before anything is built) and its state dict, in one ``.pt`` that loads with
``torch.load(weights_only=True)`` (:func:`save_yolo_weights`, :func:`load_yolo`). ultralytics' own
``.pt`` files are whole pickled objects (``weights_only=False``): they are refused, with the command that
converts them (:func:`convert_ultralytics_pickle`), which only a user who trusts the file runs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

from utils.core.files import atomic_path
from utils.core.log import first_line

log = logging.getLogger(__name__)

SETTINGS_DIR = "ultralytics_settings"
WEIGHTS_FORMAT = "siim-yolo-state-dict/1"
CONVERT_COMMAND = "python infer/convert_yolo_weights.py"
# The throwaway network an ultralytics.YOLO wrapper is created with before the loaded one replaces it.
WRAPPER_YAML = "yolov8n.yaml"


class YoloWeightsError(ValueError):
    """A YOLO weights file that cannot be loaded as data; names the file and the reason."""


class UltralyticsPickleError(YoloWeightsError):
    """An ultralytics pickle (weights saved before 2026-12): refused, with the command that converts it."""


def import_ultralytics(settings_dir):
    """``ultralytics``, imported offline with its settings under ``settings_dir``.

    When it was imported earlier in this process (tests), its settings stay where they are and
    this is logged; the offline switch and ``sync=False`` are applied either way.
    """
    os.environ["YOLO_OFFLINE"] = "true"  # the one value every ultralytics version reads as on (8.3: only "true")
    # ultralytics' own loads (a starting .pt named in a config, its checkpoints during training) with
    # weights_only=True and its allow-list of network classes, instead of a full unpickle.
    os.environ["ULTRALYTICS_SAFE_LOAD"] = "true"
    if "ultralytics" in sys.modules:
        current = os.environ.get("YOLO_CONFIG_DIR")
        if current != str(settings_dir):
            log.info("ultralytics already imported; its settings stay in %s", current or "its default folder")
    else:
        Path(settings_dir).mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(settings_dir)
    import ultralytics
    import ultralytics.engine.trainer as trainer
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})
    from utils.kinds.yolo.trunk import register_trunk_layer

    register_trunk_layer()  # model yamls may name the project's trunk layer (trunk.py)
    # ultralytics checks AMP on CUDA by downloading yolo11n.pt (urllib, then curl, with retries): offline
    # that stalls. The trainer calls the name it imported, so replacing it there disables only that.
    trainer.check_amp = amp_without_download
    # On the CPU its select_device (training, validation, prediction) sets cpu_count - 1 compute threads for
    # the whole process, leaving a core to its loader: on 2 cores half the machine, while the loader is 1% of
    # a step (docs/benchmarks.md, "What bounds each training loop"). The threads torch has stay as they are.
    import torch
    import ultralytics.utils.torch_utils as torch_utils

    torch_utils.NUM_THREADS = torch.get_num_threads()
    return ultralytics


def default_settings_dir() -> str:
    """Where ultralytics keeps its settings outside a training run: ``YOLO_CONFIG_DIR`` when set, else a
    folder under the system's temporary directory (never the user's home)."""
    import tempfile

    return os.environ.get("YOLO_CONFIG_DIR") or str(Path(tempfile.gettempdir()) / "siim-ultralytics")


def amp_without_download(model) -> bool:
    """Mixed precision on CUDA, full precision elsewhere, without ultralytics' download-based check."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    log.info("AMP on %s without ultralytics' yolo11n.pt check (offline); set amp=false if losses turn NaN", device)
    return True


# ----------------------------------------------------------------------------- weights files


def save_yolo_weights(network, path) -> Path:
    """An ultralytics detection network (``YOLO(...).model``) as data: its model yaml as JSON text and
    its state dict (floating tensors in half precision, as ultralytics stores them), written atomically."""
    import torch

    state = {key: value.detach().cpu().half() if value.is_floating_point() else value.detach().cpu()
             for key, value in network.state_dict().items()}
    content = {"format": WEIGHTS_FORMAT, "model_yaml": json.dumps(network.yaml), "state_dict": state}
    with atomic_path(path) as temporary:
        torch.save(content, temporary)
    return Path(path)


def _is_network_class(value) -> bool:
    import torch

    return isinstance(value, type) and issubclass(value, torch.nn.Module)


def check_model_yaml(model_yaml, path) -> dict:
    """``model_yaml`` (a dict decoded from JSON) checked before ultralytics builds it: every layer is
    ``[from, repeats, module, args]`` with a module that names a network class (ultralytics' layers,
    ``nn.*``, ``torchvision.ops.*``) and an activation of the form ``nn.Name()`` (ultralytics evaluates
    it), so building the network can only create layers."""
    import torch
    import torchvision
    import ultralytics.nn.tasks as tasks

    from utils.kinds.yolo.trunk import register_trunk_layer

    register_trunk_layer()
    if not isinstance(model_yaml, dict) or not isinstance(model_yaml.get("backbone"), list) \
            or not isinstance(model_yaml.get("head"), list):
        raise YoloWeightsError(f"{path}: its model yaml has no 'backbone' and 'head' layer lists")
    for layer in model_yaml["backbone"] + model_yaml["head"]:
        if not (isinstance(layer, list) and len(layer) == 4 and isinstance(layer[2], str)
                and isinstance(layer[3], list)):
            raise YoloWeightsError(f"{path}: model yaml layer {layer!r} is not [from, repeats, module, args]")
        name = layer[2]
        if name.startswith("nn."):
            module = getattr(torch.nn, name[3:], None)
        elif name.startswith("torchvision.ops."):
            module = getattr(torchvision.ops, name[16:], None)
        else:
            module = getattr(tasks, name, None)
        if not _is_network_class(module):
            raise YoloWeightsError(f"{path}: model yaml layer module {name!r} is not a network layer")
    activation = model_yaml.get("activation")
    if activation is not None:
        match = re.fullmatch(r"nn\.(\w+)\(\)", str(activation))
        if not match or not _is_network_class(getattr(torch.nn, match.group(1), None)):
            raise YoloWeightsError(f"{path}: model yaml activation {activation!r} is not of the form nn.Name()")
    return model_yaml


def ultralytics_pickle(path) -> bool:
    """Whether ``path`` is a torch file that pickles ultralytics objects (read without unpickling it).
    Classes that an ultralytics safe load already allowed in this process are no longer listed by torch:
    :func:`read_yolo_weights` recognises such a file by its content as well."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a torch zip archive: torch.load reports it
        return False
    return any(name.startswith("ultralytics.") for name in names)


def _refuse_pickle(path) -> UltralyticsPickleError:
    return UltralyticsPickleError(
        f"{path}: an ultralytics pickle (the format before 2026-12; loading it runs code from the file, so it "
        f"is refused). If you trust where it came from, convert it once: {CONVERT_COMMAND} {path}")


def read_yolo_weights(path) -> tuple[dict, dict]:
    """``(model yaml, state dict)`` of a file written by :func:`save_yolo_weights`, read with
    ``weights_only=True``; anything else is a :class:`YoloWeightsError` naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise YoloWeightsError(f"{path}: YOLO weights file not found")
    if ultralytics_pickle(path):
        raise _refuse_pickle(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unpickling failure means the same: not a usable file
        raise YoloWeightsError(f"{path}: not a readable YOLO weights file ({type(err).__name__}: "
                               f"{first_line(err)})") from None
    if isinstance(content, dict) and "format" not in content and {"model", "ema"} & set(content):
        raise _refuse_pickle(path)
    if not isinstance(content, dict) or content.get("format") != WEIGHTS_FORMAT:
        found = content.get("format") if isinstance(content, dict) else type(content).__name__
        raise YoloWeightsError(f"{path}: not a YOLO weights file of format {WEIGHTS_FORMAT!r} (found {found!r})")
    state = content.get("state_dict")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise YoloWeightsError(f"{path}: its 'state_dict' is not a dict of tensors")
    try:
        model_yaml = json.loads(content.get("model_yaml"))
    except (TypeError, ValueError) as err:
        raise YoloWeightsError(f"{path}: its 'model_yaml' is not JSON text ({err})") from None
    return check_model_yaml(model_yaml, path), state


def yolo_from_network(ultralytics, network, source):
    """An ``ultralytics.YOLO`` that predicts with ``network`` (built here, not unpickled). ultralytics
    creates its wrapper only from a file name, so a small bundled yaml makes one and the network
    replaces its model (the settings ultralytics reads from a model are set as its yaml build sets them)."""
    from ultralytics.cfg import DEFAULT_CFG_DICT

    wrapper = ultralytics.YOLO(WRAPPER_YAML, task="detect")
    network.task = "detect"
    network.args = {**DEFAULT_CFG_DICT, "model": str(source), "task": "detect"}
    wrapper.model = network
    wrapper.overrides["model"] = wrapper.model_name = str(source)
    return wrapper


def load_yolo(ultralytics, path):
    """The ``ultralytics.YOLO`` of a weights file written by :func:`save_yolo_weights`: the network built
    from its checked yaml, its weights loaded (every key, every shape); no code from the file runs."""
    from ultralytics.nn.tasks import DetectionModel

    from utils.kinds.yolo.trunk import without_pretrained_source

    model_yaml, state = read_yolo_weights(path)
    try:
        # a trunk starts from nothing here (the state dict holds it all): no wheel is needed to predict
        network = DetectionModel(cfg=without_pretrained_source(model_yaml), nc=model_yaml.get("nc"), verbose=False)
        network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as err:
        raise YoloWeightsError(f"{path}: its weights do not fit its model yaml ({type(err).__name__}: "
                               f"{first_line(err)})") from None
    return yolo_from_network(ultralytics, network.float().eval(), path)


def check_starting_weights(path) -> None:
    """A starting ``.pt`` named in a config (ultralytics' pretrained weights are whole pickles) read the
    restricted way first: ``weights_only=True`` with ultralytics' allow-list of network classes, so a file
    that would run anything else is refused before ultralytics loads it (:class:`YoloWeightsError`)."""
    from ultralytics.nn.tasks import torch_safe_load

    try:
        torch_safe_load(str(path), safe_only=True)
    except Exception as err:  # noqa: BLE001 - ultralytics raises TypeError, RuntimeError, ... for a bad file
        raise YoloWeightsError(f"{path}: not an ultralytics weights file that loads without running code "
                               f"({type(err).__name__}: {first_line(err)})") from None


def convert_ultralytics_pickle(path) -> Path:
    """Rewrite ultralytics' pickled ``.pt`` at ``path`` in place as :func:`save_yolo_weights` data.
    This unpickles the file (``weights_only=False``: code in it runs): only for a file the user trusts."""
    from ultralytics.nn.tasks import torch_safe_load

    path = Path(path)
    try:
        read_yolo_weights(path)
    except UltralyticsPickleError:
        pass
    else:
        raise YoloWeightsError(f"{path}: already in format {WEIGHTS_FORMAT!r}; nothing to convert")
    checkpoint, _ = torch_safe_load(path, safe_only=False)
    network = checkpoint.get("ema") or checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if network is None or not hasattr(network, "yaml"):
        raise YoloWeightsError(f"{path}: holds no ultralytics network ('ema' or 'model')")
    return save_yolo_weights(network.float(), path)
