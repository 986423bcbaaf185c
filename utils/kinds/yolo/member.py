"""YOLO's inference member: each fold loaded as data (:func:`utils.kinds.yolo.network.load_yolo`), predicting through
ultralytics, per image one set of boxes per fold and flip."""

from __future__ import annotations

import numpy as np
import torch

from utils.core.runtime import Precision
from utils.ensemble.fusion import MemberPrediction
from utils.ensemble.manifest import ManifestError
from utils.kinds.member import Detections, Member, model_input, with_flipped
from utils.kinds.yolo.config import YoloConfig
from utils.kinds.yolo.network import YoloWeightsError, default_settings_dir, import_ultralytics, load_yolo


class YoloMember(Member):
    kind = "yolo"
    config_class = YoloConfig

    def __init__(self, name, spec, weights_dir, device: torch.device):
        super().__init__(name, spec, weights_dir, device)
        if self.input_size % 32:
            raise ManifestError(f"model {name!r}: YOLO input size {self.input_size} is not a multiple of 32")
        ultralytics = import_ultralytics(default_settings_dir())
        self.models = []
        for path in self.files:
            try:
                self.models.append(load_yolo(ultralytics, path))
            except YoloWeightsError as err:
                raise ManifestError(str(err)) from None
        self.options = {"imgsz": self.input_size, "conf": self.config.score_threshold,
                        "iou": self.config.nms_threshold, "max_det": self.config.detections_per_image}

    def set_channels_last(self, enabled: bool) -> bool:
        return False  # ultralytics builds (and fuses) its own inference model: left as it makes it

    @torch.no_grad()
    def predict(self, images: torch.Tensor, tta: bool, precision: Precision,
                with_opacity_map: bool = False) -> MemberPrediction:
        batch = model_input(images).contiguous()  # a BCHW tensor in [0, 1] is taken as preprocessed
        inputs = torch.cat([batch, batch.flip(-1)]) if tta else batch
        device = "cpu" if self.device.type == "cpu" else str(self.device)
        per_input: list[Detections] = [[] for _ in range(len(inputs))]
        threads = torch.get_num_threads()
        for model in self.models:
            try:
                results = model.predict(inputs, device=device, verbose=False, save=False,
                                        quantize=16 if precision.enabled and precision.dtype == torch.float16
                                        else None, **self.options)
            finally:
                # ultralytics' select_device sets cpu_count - 1 threads on the CPU (half the cores of a
                # 2-core machine) for the whole process; the other models need them all.
                torch.set_num_threads(threads)
            for k, result in enumerate(results):
                per_input[k].append((result.boxes.xyxyn.float().cpu().numpy().astype(np.float64),
                                     result.boxes.conf.float().cpu().numpy().astype(np.float64)))
        n = len(images)
        return MemberPrediction(boxes=with_flipped(per_input[:n], per_input[n:]) if tta else per_input)


MEMBER = YoloMember  # what the member registry (utils/kinds/members.py) loads for kind 'yolo'
