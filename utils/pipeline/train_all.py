"""Train everything in order into one run folder (what ``train/train_all.py``, ``make train-all`` and
``make demo`` run; the stages and options: that script's help): the stages and the config sections,
every section checked with its schema and every file it names before the first stage, each stage's
command line, round two's, and the run of the stages with their times."""


from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

from utils.core.config import ConfigError, load_section, parse_overrides
from utils.core.files import atomic_path
from utils.data.pseudo_label_rules import SECTION as PSEUDO_SECTION
from utils.data.pseudo_label_rules import PseudoConfig
from utils.kinds.base import GENERIC_SCRIPT, TrainingError
from utils.kinds.registry import KINDS, PRETRAINING, StagePlan
from utils.pipeline.settings import (
    PREPARE_SECTION,
    RESOLVED_CONFIG,
    SCHEMAS,
    split_overrides,
    write_resolved_config,
)
from utils.scoring.calibration import CALIBRATE_SECTION

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "train" / "train_all.py"  # round two runs it again
SUMMARY_FILE = "train_all.json"
# the pretraining kinds (the NIH backbone), every model kind in the registry's order; pseudo and round2
# run only with --pseudo-images
STAGES = ("prepare", *PRETRAINING, *KINDS, "evaluate", "calibrate", "pseudo", "round2")
ROUND2 = "round2"  # round two's run folder under the run


def with_plan_overrides(overrides: dict[str, list[str]], args) -> dict[str, list[str]]:
    """The user's overrides with, before them, the keys each kind's section takes from this script's own
    options: the NIH backbone this run trains as the trunk of the kinds with ``trunk_from_backbone``, and
    the kind's own (:meth:`utils.kinds.base.KindStage.plan_overrides`: Faster R-CNN's ``pretrain_rsna``)."""
    plan, trunk = stage_plan(args), backbone_trunk(args)
    merged = dict(overrides)
    for name, kind in {**PRETRAINING, **KINDS}.items():
        keys = [*([f"backbone={trunk}"] if trunk is not None and kind.trunk_from_backbone else []),
                *kind.plan_overrides(plan)]
        if keys:
            merged[name] = [*keys, *overrides.get(name, [])]
    return merged


def check_config(config_path: Path, overrides: dict[str, list[str]], args) -> dict:
    """Every section of the file through its schema (types, allowed values, ranges), with the keys this
    script's options set, and every path it names that must exist before its stage runs, all before the
    first stage: a misspelt key of the last stage fails in the first seconds, naming the file and the
    key. Returns section -> config."""
    import yaml

    overrides = with_plan_overrides(overrides, args)
    try:
        document = yaml.safe_load(Path(config_path).read_text()) if Path(config_path).is_file() else None
    except yaml.YAMLError:
        document = None  # load_yaml_section reports it
    unknown = sorted(set(document) - set(SCHEMAS)) if isinstance(document, dict) else []
    if unknown:
        raise ConfigError(f"{config_path}: unknown section(s) {unknown}; sections: {list(SCHEMAS)}")
    # The pseudo section is needed only when there is something to pseudo-label.
    needed = {s: schema for s, schema in SCHEMAS.items() if s != PSEUDO_SECTION or args.pseudo_images is not None
              or (isinstance(document, dict) and s in document)}
    configs = {section: load_section(config_path, section, schema, parse_overrides(overrides.get(section)))
               for section, schema in needed.items()}
    if args.pseudo_images is not None:  # round two's own overrides, checked now too
        round_two = split_overrides(configs[PSEUDO_SECTION].round2_overrides)
        for section, items in round_two.items():
            load_section(config_path, section, SCHEMAS[section],
                         parse_overrides(overrides.get(section, []) + items))
    if args.pseudo_images is not None and not args.pseudo_images.is_dir():
        raise ConfigError(f"--pseudo-images {args.pseudo_images}: folder not found")
    if args.pseudo_test_meta is not None and not args.pseudo_test_meta.is_file():
        raise ConfigError(f"--pseudo-test-meta {args.pseudo_test_meta}: file not found")

    def must_exist(section: str, key: str, value, allowed=()) -> None:
        if value not in (None, "", *allowed) and not Path(value).is_file():
            raise ConfigError(f"{config_path} [{section}]: {key}: file {value!r} not found")

    must_exist(PREPARE_SECTION, "patients", configs[PREPARE_SECTION].patients)
    plan = stage_plan(args)
    for name, kind in {**PRETRAINING, **selected_kinds(args)}.items():
        try:
            kind.check_files(configs[name], plan)
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(f"{config_path} [{name}]: {err}") from None
    if args.start_from is not None:  # the weights each kind will start from, before round one's first stage
        for name, kind in selected_kinds(args).items():
            if kind.can_start_from:
                try:
                    kind.check_start_from(configs[name], args.start_from,
                                          configs[name].folds or list(range(configs[PREPARE_SECTION].folds)))
                except TrainingError as err:
                    raise ConfigError(str(err)) from None
    return configs


def stage_plan(args) -> StagePlan:
    return StagePlan(config_path=Path(args.config), out=Path(args.out), nih_dir=args.nih_dir, rsna_dir=args.rsna_dir)


def backbone_trunk(args) -> Path | None:
    """The NIH backbone this run trains, which the kinds with ``trunk_from_backbone`` start from (their
    ``backbone`` key); ``None`` without its data (they start from their configs' ``backbone``)."""
    kind = PRETRAINING["backbone"]
    return kind.trunk_file(args.out) if kind.has_input(stage_plan(args)) else None


def selected_kinds(args) -> dict:
    """The registered kinds ``--kinds`` names, in the registry's order."""
    return {name: kind for name, kind in KINDS.items() if name in args.kinds}


def prepared_sizes(configs: dict, kinds: dict) -> list[int]:
    """Every image size one of ``kinds`` trains or predicts at (so preparation writes each once)."""
    return sorted({size for name, kind in kinds.items() for size in kind.sizes(configs[name])})


def resolved_config_path(args) -> Path:
    """The run's resolved config, which every stage reads (:data:`utils.pipeline.settings.RESOLVED_CONFIG`)."""
    return Path(args.out) / RESOLVED_CONFIG


def write_run_config(args, configs: dict) -> Path:
    """The config resolved once (:func:`check_config`: the file, this script's options, ``--set``) written
    into the run folder before the first stage: each stage reads that file, nothing else."""
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return write_resolved_config(resolved_config_path(args), configs)


def stage_commands(args, overrides: dict[str, list[str]], configs: dict | None = None) -> dict[str, list[str]]:
    """The command line of every stage (``None`` for a stage that is skipped); each reads the run's
    resolved config (:func:`write_run_config`), which ``overrides`` are part of. ``configs``: that config
    when it is already checked (:func:`check_config`; checked here otherwise)."""
    out = args.out
    meta = out / "prepared" / "meta.csv"
    weights = out / "weights"
    configs = configs if configs is not None else check_config(args.config, overrides, args)
    plan = stage_plan(args)
    prepare = configs[PREPARE_SECTION]
    common = ["--config", str(resolved_config_path(args))] + (["--no-progress"] if args.no_progress else [])
    resume = ["--resume"] if args.resume else []

    def script(path: str, *extra: str) -> list[str]:
        return [sys.executable, str(ROOT / path), *extra, *common]

    commands = {
        "prepare": [sys.executable, str(ROOT / "train/prepare.py"), "--data-dir", str(args.data_dir),
                    "--out", str(out / "prepared"), "--workers", str(prepare.workers), "--folds", str(prepare.folds),
                    "--seed", str(prepare.seed)]
                   + (["--patients", prepare.patients] if prepare.patients else [])
                   + [a for size in prepared_sizes(configs, selected_kinds(args)) for a in ("--size", str(size))],
        **{name: script(kind.script, *kind.stage_arguments(plan), "--out", str(out / name), *resume)
           if kind.has_input(plan) else None for name, kind in PRETRAINING.items()},
        **{name: script(GENERIC_SCRIPT, "--kind", name,
                        "--prepared", str(meta), "--out", str(out / name), "--weights-dir", str(weights),
                        *(["--start-from", str(args.start_from)] if args.start_from and kind.can_start_from else []),
                        *(resume if kind.resumable else []))
           if name in args.kinds else None for name, kind in KINDS.items()},
        "evaluate": script("infer/evaluate.py", "--run-dir", str(out), "--out", str(out / "report"),
                           "--weights-dir", str(weights)),
        "calibrate": script("infer/calibrate.py", "--run-dir", str(out), "--out", str(out / "report"),
                            "--weights-dir", str(weights))
        if configs[CALIBRATE_SECTION].enabled else None,
        "pseudo": None if args.pseudo_images is None else
        script("train/pseudo_label.py", "--run-dir", str(out), "--images", str(args.pseudo_images),
               *(["--test-meta", str(args.pseudo_test_meta)] if args.pseudo_test_meta else []),
               "--out", str(out / ROUND2 / "prepared"), "--train-dir", str(args.data_dir / "train")),
        "round2": None if args.pseudo_images is None else round_two_command(args, overrides, configs[PSEUDO_SECTION]),
    }
    return commands


def round_two_command(args, overrides: dict[str, list[str]], pseudo: PseudoConfig) -> list[str]:
    """This script again on OUT/round2, from the first model kind (its prepared/meta.csv is the pseudo
    stage's): the same kinds, config and overrides, then ``pseudo.round2_overrides``. Every fold starts
    as in round one (the trunks from round one's NIH backbone when there was one, not trained twice;
    RSNA pre-training again), or with ``pseudo.round2_start: round1`` from round one's weights of the
    same model and fold (the kinds that can; RSNA pre-training skipped)."""
    keys = [f"{section}.{key}" for section, items in overrides.items() for key in items]
    trunk = backbone_trunk(args)
    if trunk is not None:
        keys = [f"{name}.backbone={trunk}" for name, kind in selected_kinds(args).items()
                if kind.trunk_from_backbone] + keys
    keys += pseudo.round2_overrides
    fine_tune = pseudo.round2_start == "round1"
    return [sys.executable, str(SCRIPT), "--data-dir", str(args.data_dir),
            "--out", str(args.out / ROUND2), "--config", str(args.config), "--from-stage", next(iter(KINDS)),
            "--kinds", *args.kinds, *(["--rsna-dir", str(args.rsna_dir)] if args.rsna_dir and not fine_tune else []),
            *(["--start-from", str(args.out / "weights")] if fine_tune else []),
            *(["--no-progress"] if args.no_progress else []), *(["--set", *keys] if keys else [])]


def write_summary(path: Path, summary: dict) -> None:
    """OUT/train_all.json: each stage's command, seconds and exit code, or that it was skipped."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(summary, indent=2) + "\n")


def run_stages(out: Path, commands: dict[str, list[str] | None], from_stage: str, to_stage: str,
               kinds: list[str]) -> int:
    """Each stage from ``from_stage`` to ``to_stage`` in order, as a child process, its command, time
    and exit code written to OUT/train_all.json as it ends (a skipped stage with why); stops at the
    first failure and returns its exit code."""
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    started = time.perf_counter()
    for stage in STAGES[STAGES.index(from_stage):STAGES.index(to_stage) + 1]:
        command = commands[stage]
        if command is None:
            why = "not in --kinds" if stage in KINDS and stage not in kinds else \
                "no --pseudo-images" if stage in ("pseudo", ROUND2) else "no input for it, or disabled in the config"
            log.info("stage %s: skipped (%s)", stage, why)
            summary[stage] = {"skipped": True}
            write_summary(summary_path, summary)
            continue
        log.info("stage %s: %s", stage, shlex.join(command))
        stage_start = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT)
        summary[stage] = {"command": shlex.join(command), "seconds": round(time.perf_counter() - stage_start, 1),
                          "exit_code": result.returncode}
        write_summary(summary_path, summary)
        if result.returncode != 0:
            log.error("stage %s failed (exit %d); fix it and rerun with --from-stage %s",
                      stage, result.returncode, stage)
            return result.returncode
    log.info("all stages done in %.0f s; weights: %s; report: %s", time.perf_counter() - started,
             out / "weights", out / "report")
    return 0
