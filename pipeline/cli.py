"""The ``tagcap`` command line.

Every ``caption`` flag may also come from ``--config run.yaml`` (keys are the flag names,
with dashes or underscores); a flag given on the command line wins over the file.
Exit status: 0 done, 1 finished with failed shards, 2 bad configuration (nothing ran).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

import yaml

from tagcap.schemas.config import CaptionConfig

_LIST_FIELDS = {"input", "segments"}


def _caption_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption tagged audio into WebDataset shards")
    p.add_argument("--config", help="YAML file with any of the options below")
    p.add_argument("--input", action="append", help="input URL: brace pattern, glob, @list file or folder (repeatable)")
    p.add_argument("--segments", help="AudioSet segment CSV URL(s), comma-separated")
    p.add_argument("--labels", help="class_labels_indices.csv or ontology.json URL")
    p.add_argument("--output", help="output root URL")
    p.add_argument("--captioner", help="template | blat:PATH | hf:PATH | package.module:ClassName")
    p.add_argument("--filter", help="caption filter SPEC")
    p.add_argument("--audio", help="copy (default) | flac:RATE | none")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--gpus-per-actor", type=float)
    p.add_argument("--cpus-per-actor", type=float)
    p.add_argument("--actors", type=int)
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting an embedded one")
    p.add_argument("--files-per-shard", type=int, help="audio files per work unit for folder inputs")
    p.add_argument("--max-inflight", type=int, help="work units in flight at once")
    p.add_argument("--max-attempts", type=int, help="attempts per shard before it is reported failed")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray")
    p.add_argument("--object-store-memory", type=int, help="bytes of object store for the embedded Ray")
    p.add_argument("--decode-cpus", type=float, help="CPUs per decode task")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace a different run in --output")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def _sample_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="write a small synthetic AudioSet-shaped input")
    p.add_argument("outdir")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--clips-per-shard", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagcap", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _caption_parser(sub)
    _sample_parser(sub)
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


def caption_config(args: argparse.Namespace) -> CaptionConfig:
    """Merge the YAML file (if any) and the flags into one validated config."""
    values: dict[str, Any] = {}
    if args.config:
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
    known = set(CaptionConfig.field_names())
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(unknown)}")
    for name in _LIST_FIELDS:
        values[name] = _as_list(values.get(name))
    missing = [f"--{n}" for n in ("input", "segments", "labels", "output") if not values.get(n)]
    if missing:
        raise ValueError(f"missing required option(s): {', '.join(missing)}")
    return CaptionConfig(**values)


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
    if args.command == "caption":
        from tagcap.pipeline.caption import ConfigError, run_caption

        try:
            config = caption_config(args)
            return run_caption(config)
        except (ConfigError, ValueError) as exc:
            print(f"tagcap caption: error: {exc}", file=sys.stderr)
            return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
