"""``tagcap caption``: validate, plan, resume, schedule, commit.

Everything that can be wrong with the configuration (missing file, unknown captioner,
bad URL, a different job already in the output root) is found here before Ray starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import tagcap
from tagcap.pipeline.executor import ExecutionSettings, run_units
from tagcap.pipeline.lock import OutputLease, OutputLocked
from tagcap.pipeline.outputs import committed_shards, read_manifest, read_stats, write_manifest, write_sizes
from tagcap.pipeline.plan import Plan, PlanError, plan_units
from tagcap.pipeline.progress import RunProgress
from tagcap.pipeline.ray_runtime import ray_session
from tagcap.pipeline.verify import committed_and_whole
from tagcap.schemas import SCHEMA_VERSION
from tagcap.schemas.audioset import LabelMap, SegmentTable, parse_segments
from tagcap.schemas.config import CaptionConfig
from tagcap.schemas.layout import OutputLayout
from tagcap.schemas.manifest import InputFingerprint, RunManifest
from tagcap.schemas.records import median_stage_seconds
from tagcap.schemas.stages import StageSettings
from tagcap.schemas.work import DecodeSpec, StageInfo, WorkUnit
from tagcap.workers import captioners
from tagcap.workers.captioners.base import CaptionerInfo
from tagcap.workers.exclusion import Exclusions, load_exclusions
from tagcap.workers.stages import describe_stage, stage_class
from tagcap.workers.storage import Storage, check_url
from tagcap.workers.writer import ProvenanceInfo


class ConfigError(ValueError):
    """A configuration problem, reported as one line before any work starts."""


class RunInterrupted(Exception):
    """The run was interrupted (Ctrl-C): what was committed stays, and a rerun of the same
    command resumes from there."""

    def __init__(self, committed: int, total: int):
        super().__init__(f"interrupted: {committed} of {total} shards committed; rerun the same command to resume")
        self.committed = committed
        self.total = total


@dataclass
class Prepared:
    """Everything validated and loaded on the driver, ready to schedule."""

    config: CaptionConfig
    storage: Storage
    layout: OutputLayout
    info: CaptionerInfo
    segments: SegmentTable
    labels: LabelMap
    plan: Plan
    identity: str
    metadata_digest: dict[str, str]
    filter_params: dict | None = None
    stages: tuple[StageInfo, ...] = ()  # the stages after the captioner, in chain order
    exclusions: Exclusions | None = None


def _captioner_config(config: CaptionConfig) -> dict:
    """The captioner's options plus the run's storage options (to reach a checkpoint URL)."""
    return {**config.captioner_options, "storage_options": config.storage_options}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(storage: Storage, url: str, what: str) -> bytes:
    try:
        return storage.read_bytes(url)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {url}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} cannot be read: {url}: {exc}") from None


def _stage_specs(config: CaptionConfig) -> list[tuple[str, str, dict]]:
    """(stage, SPEC, options) of each stage after the captioner, in chain order."""
    specs = []
    if config.rewrite:
        specs.append(("rewrite", config.rewrite, dict(config.rewrite_options)))
    if config.filter:
        specs.append(("filter", config.filter, {"rule": config.filter_rule}))
    return [(stage, spec, {**options, "storage_options": config.storage_options}) for stage, spec, options in specs]


def describe_stages(config: CaptionConfig) -> tuple[StageInfo, ...]:
    """Each stage after the captioner described on the driver (its model folder checked, its
    weights hashed, its options validated); a ConfigError naming the flag otherwise."""
    infos = []
    for stage, spec, options in _stage_specs(config):
        try:
            infos.append(describe_stage(stage, spec, options))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--{stage} {spec}: {exc}") from None
    return tuple(infos)


def _exclusions(config: CaptionConfig, storage: Storage) -> Exclusions:
    """The run's exclusion lists, read and parsed on the driver; a ConfigError naming a list
    that is missing or names no clip."""
    try:
        return load_exclusions(config.exclude, storage, config.exclude_match)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _identity(config: CaptionConfig, stages: tuple[StageInfo, ...], **parts: Any) -> str:
    """The run's identity: the sha256 of everything that changes the bytes of its output.
    A run without stages after the captioner names none, so its identity is what earlier
    tagcap versions computed and their outputs resume."""
    source = {"config": config.identity_fields(), **parts, "schema": SCHEMA_VERSION}
    if stages:
        source["stages"] = [asdict(s) for s in stages]
    return hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()


def _prepare_regeneration(config: CaptionConfig, storage: Storage) -> Prepared:
    """A regeneration: the units are the source corpus's committed shards, read without their
    audio; the captioner is the source's, as its manifest records it (it does not run)."""
    source_url = str(config.from_corpus)
    for url in (source_url, config.output):
        try:
            check_url(url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    recorded = config.filter == "recorded"
    if config.filter and not recorded:
        raise ConfigError(
            "--filter clap: scores the audio: a regeneration runs only text stages "
            "(--rewrite, or --filter recorded for a new rule over the recorded scores)"
        )
    if recorded and config.rewrite:
        raise ConfigError("--filter recorded cannot follow --rewrite: the new rewrites have no recorded scores")
    if not config.rewrite and not recorded:
        raise ConfigError("tagcap regenerate needs --rewrite, or --filter recorded with a --filter-rule")
    source_layout = OutputLayout(source_url)
    try:
        source = read_manifest(source_layout, storage)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source_url}: its manifest.json cannot be read: {exc}") from None
    if source is None:
        raise ConfigError(f"{source_url}: no manifest.json (not a tagcap output root)")
    shards = sorted(committed_shards(source_layout, storage))
    if not shards:
        raise ConfigError(f"{source_url}: no committed shard to regenerate")
    stages = describe_stages(config)
    params = {k: v for k, v in source.generation_params.items() if k not in ("seed", "sample_rate", "clip_seconds")}
    info = CaptionerInfo(
        source.captioner,
        source.checkpoint_sha256,
        int(source.generation_params.get("sample_rate", 16000)),
        float(source.generation_params.get("clip_seconds", 10.0)),
        params,
    )
    urls = [source_layout.tar(s) for s in shards]
    sizes = [int(storage.info(u).get("size") or 0) or None for u in urls]
    fingerprint = InputFingerprint(urls, sizes, [None] * len(urls))
    units = [WorkUnit(i, shard, "corpus", (url,)) for i, (shard, url) in enumerate(zip(shards, urls, strict=True))]
    identity = _identity(config, stages, source={"identity": source.identity, "shards": shards, "sizes": sizes})
    return Prepared(
        config,
        storage,
        OutputLayout(config.output),
        info,
        SegmentTable.concat([]),
        LabelMap({}),
        Plan(units, fingerprint),
        identity,
        {},
        None,
        stages,
    )


def prepare_run(config: CaptionConfig) -> Prepared:
    storage = Storage(config.storage_options)
    if config.from_corpus:
        return _prepare_regeneration(config, storage)
    if config.filter == "recorded":
        raise ConfigError(
            "--filter recorded applies a rule to a corpus's recorded scores: use it with tagcap regenerate"
        )
    for url in [*config.input, *config.segments, config.labels, config.output]:
        try:
            check_url(url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    # The models are described (their weights read and hashed: half a second for a
    # BLAT-size captioner) on a thread while the metadata and the input are read; their
    # errors come first, as when they were described first.
    with ThreadPoolExecutor(1, thread_name_prefix="tagcap-describe") as pool:
        described = pool.submit(_describe_models, config)
        try:
            labels, segments, digest, plan = _read_metadata_and_plan(config, storage)
        except ConfigError:
            described.result()
            raise
        stages, info = described.result()
    filter_params = next(
        (
            {"filter": "clap", "checkpoint_sha256": s.sha256, "rule": s.params["rule"]}
            for s in stages
            if s.stage == "filter"
        ),
        None,
    )
    exclusions = _exclusions(config, storage)
    listed = {"exclusions": [lst.describe() for lst in exclusions.lists]} if exclusions else {}
    identity = _identity(
        config,
        stages,
        captioner=asdict(info),
        input=plan.fingerprint.digest_source(),
        metadata=digest,
        filter=filter_params,
        **listed,
    )
    return Prepared(
        config,
        storage,
        OutputLayout(config.output),
        info,
        segments,
        labels,
        plan,
        identity,
        digest,
        filter_params,
        stages,
        exclusions,
    )


def _describe_models(config: CaptionConfig) -> tuple[tuple[StageInfo, ...], CaptionerInfo]:
    """The stages after the captioner and the captioner, described; a ConfigError otherwise."""
    stages = describe_stages(config)
    try:
        return stages, captioners.describe(config.captioner, _captioner_config(config))
    except captioners.CaptionerSpecError as exc:
        raise ConfigError(str(exc)) from None


def _read_metadata_and_plan(
    config: CaptionConfig, storage: Storage
) -> tuple[LabelMap, SegmentTable, dict[str, str], Plan]:
    """The label map, the segments, the metadata files' sha256 by URL, and the plan of the
    input; a ConfigError otherwise."""
    digest: dict[str, str] = {}
    label_bytes = _read(storage, config.labels, "label file")
    digest[config.labels] = hashlib.sha256(label_bytes).hexdigest()
    try:
        labels = LabelMap.parse(label_bytes.decode("utf-8-sig"), config.labels)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"label file {config.labels}: {exc}") from None
    tables = []
    for url in config.segments:
        raw = _read(storage, url, "segment CSV")
        digest[url] = hashlib.sha256(raw).hexdigest()
        table, report = parse_segments(raw.decode("utf-8-sig", errors="replace"), url, split=url.rsplit("/", 1)[-1])
        if report.segments == 0:
            raise ConfigError(f"segment CSV {url} holds no segments ({len(report.malformed)} malformed rows)")
        if report.malformed or report.duplicates:
            print(f"warning: {report.summary()}", file=sys.stderr)
        tables.append(table)
    segments = SegmentTable.concat(tables)

    try:
        plan = plan_units(config.input, storage, config.files_per_shard)
    except PlanError as exc:
        raise ConfigError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot list the input: {exc}") from None
    return labels, segments, digest, plan


def _clear_output(prep: Prepared) -> None:
    """--overwrite: remove every file of the previous run that this layout names."""
    storage, layout = prep.storage, prep.layout
    for entry in storage.list_dir(layout.root):
        name = entry["url"].rsplit("/", 1)[-1]
        if name.endswith((".tar", ".stats.json")) or name in ("sizes.json", "manifest.json"):
            storage.remove(entry["url"])
    for folder in ("index", "errors"):
        for entry in storage.list_dir(f"{layout.root.rstrip('/')}/{folder}"):
            if entry["url"].endswith(".parquet"):
                storage.remove(entry["url"])
    # What dedupe and eval captions said of the previous corpus no longer describes this one.
    for url in (layout.dedupe_summary, layout.caption_eval):
        if storage.exists(url):
            storage.remove(url)


def _manifest(prep: Prepared, started: str) -> RunManifest:
    cfg = prep.config
    return RunManifest(
        tagcap_version=tagcap.__version__,
        captioner=prep.info.captioner_id,
        checkpoint_sha256=prep.info.checkpoint_sha256,
        generation_params={
            **prep.info.params,
            "seed": cfg.seed,
            "sample_rate": prep.info.sample_rate,
            "clip_seconds": prep.info.clip_seconds,
        },
        filter_params=prep.filter_params,
        stages=[asdict(s) for s in prep.stages],
        exclusions=(
            {"match": prep.exclusions.match, "lists": [lst.describe() for lst in prep.exclusions.lists]}
            if prep.exclusions
            else {}
        ),
        input_fingerprint={**asdict(prep.plan.fingerprint), "metadata_sha256": prep.metadata_digest},
        config={k: v for k, v in asdict(cfg).items() if k != "storage_options"},
        identity=prep.identity,
        started=started,
        shards_total=len(prep.plan.units),
    )


def _typical_unit_bytes(prep: Prepared) -> int | None:
    """Mean input bytes per work unit, from the sizes the plan listed (None if unknown)."""
    sizes = [s for s in prep.plan.fingerprint.sizes if s]
    if not sizes:
        return None
    per_unit = sum(sizes) / max(1, len(prep.plan.units))  # a unit may group several files
    return int(per_unit)


def _concurrent_calls(config: CaptionConfig) -> int:
    if config.from_corpus:
        return 1  # no captioner runs
    return int(getattr(captioners.resolve(config.captioner)[0], "concurrent_calls", 1))


def execution_settings(prep: Prepared) -> ExecutionSettings:
    """What the captioner actors and the scheduler are given of the run's configuration."""
    config = prep.config
    return ExecutionSettings(
        captioner_spec=config.captioner,
        captioner_config=_captioner_config(config),
        batch_size=config.batch_size,
        actors=config.actors,
        gpus_per_actor=config.gpus_per_actor,
        cpus_per_actor=config.actor_cpus,
        decode_cpus=config.decode_cpus,
        write_cpus=config.writer_cpus,
        max_inflight=config.max_inflight,
        actor_threads=config.actor_threads or _concurrent_calls(config),
        max_attempts=config.max_attempts,
        unit_timeout_s=config.unit_timeout_s,
        storage_options=config.storage_options,
        stages=tuple(
            StageSettings(
                stage,
                spec,
                options,
                config.stage_resources(stage),
                info.model_id,
                needs_audio=bool(getattr(stage_class(stage, spec)[0], "needs_audio", False)),
            )
            for (stage, spec, options), info in zip(_stage_specs(config), prep.stages, strict=True)
        ),
        from_corpus=bool(config.from_corpus),
        unit_bytes=_typical_unit_bytes(prep),
        captioner_id=prep.info.captioner_id,
        tuning=config.tuning,
        call_trace=config.call_trace,
        cluster_grows=bool(config.ray_address),
    )


def decode_spec(config: CaptionConfig, info: CaptionerInfo) -> DecodeSpec:
    """What every decode task is given of the run's configuration."""
    return DecodeSpec(
        sample_rate=info.sample_rate,
        clip_samples=info.clip_samples,
        audio_mode=config.audio,
        min_clip_seconds=config.min_clip_seconds,
        max_clip_seconds=config.max_clip_seconds,
        min_sample_rate=config.min_sample_rate,
        max_sample_rate=config.max_sample_rate,
        max_json_bytes=config.max_json_bytes,
        threads=max(1, int(config.decode_cpus)),  # a task's CPUs decode its unit's clips side by side
        niceness=config.decode_niceness,
        retain_freed_memory=config.tuning.retain_freed_memory,
    )


def run_caption(config: CaptionConfig) -> int:
    """Run (or resume) a caption job. Returns the process exit status."""
    entered = time.time()
    prep = prepare_run(config)
    lease = OutputLease(prep.layout, prep.storage)
    try:
        prep.storage.makedirs(prep.layout.root)
        lease.acquire()
    except OutputLocked as exc:
        raise ConfigError(f"{config.output}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"output {config.output} is not writable: {exc}") from None
    try:
        return _run_leased(prep, entered)
    except KeyboardInterrupt:
        # The embedded Ray has been shut down on the way out; the lease goes below.
        done = committed_shards(prep.layout, prep.storage)
        raise RunInterrupted(len(done), len(prep.plan.units)) from None
    finally:
        lease.release()


def _run_leased(prep: Prepared, entered: float) -> int:
    """The run under its output lease; ``entered`` is when the command began planning (unix
    seconds), so that the summary's phases cover the whole command but for its imports."""
    config, storage, layout = prep.config, prep.storage, prep.layout
    previous = read_manifest(layout, storage)
    if previous is not None and previous.identity != prep.identity:
        if not config.overwrite:
            raise ConfigError(
                f"{config.output} holds a different run (captioner {previous.captioner}, "
                f"identity {previous.identity[:12]} != {prep.identity[:12]}): "
                "use a new --output, or --overwrite to replace it"
            )
        _clear_output(prep)
        previous = None
    done, damaged = committed_and_whole(layout, storage)
    for shard, why in sorted(damaged.items()):
        print(f"warning: shard {shard} was committed, but {why}: redoing it", file=sys.stderr)
    todo = [u for u in prep.plan.units if u.shard not in done]
    started = previous.started if previous is not None else _now()
    manifest = _manifest(prep, started)
    try:
        write_manifest(layout, storage, manifest)
    except OSError as exc:
        raise ConfigError(f"output {config.output} is not writable: {exc}") from None

    print(
        f"tagcap {'regenerate' if config.from_corpus else 'caption'}: {len(prep.plan.units)} shards "
        f"({len(done)} already committed, {len(todo)} to do), "
        + (f"from {config.from_corpus}" if config.from_corpus else f"captioner {prep.info.captioner_id}")
        + f", output {config.output}",
        file=sys.stderr,
    )
    settings = execution_settings(prep)
    decode = decode_spec(config, prep.info)
    provenance = ProvenanceInfo(
        captioner_id=prep.info.captioner_id,
        checkpoint_sha256=prep.info.checkpoint_sha256,
        params={**manifest.generation_params, **({"filter": prep.filter_params} if prep.filter_params else {})},
        tagcap_version=tagcap.__version__,
        stages=prep.stages,
    )
    t0 = time.time()
    progress = RunProgress(len(prep.plan.units), len(done), enabled=config.progress)
    try:
        # Nothing left to do (a rerun of a finished job): no Ray to start, only the commit.
        session = (
            ray_session(
                config.ray_address,
                config.num_cpus,
                config.object_store_memory,
                config.dashboard,
                head_services=config.tuning.ray_head_services,
                timeline=config.ray_timeline,
                idle_workers=config.tuning.idle_workers,
            )
            if todo
            else contextlib.nullcontext()
        )
        with session:
            ready = time.time()
            result = run_units(
                todo,
                settings,
                decode,
                prep.segments,
                prep.labels,
                layout,
                storage,
                provenance,
                on_done=progress.shard_done,
                on_failed=progress.shard_failed,
                exclusions=prep.exclusions,
            )
            finished = time.time()
    finally:
        progress.close()
    stopped = time.time()

    all_stats = read_stats(layout, storage, committed_shards(layout, storage))
    write_sizes(layout, storage, all_stats)
    manifest.finished = _now()
    manifest.failed_shards = dict(sorted(result.failed.items()))
    manifest.shards_committed = len(all_stats)
    manifest.samples_in = sum(s.samples_in for s in all_stats.values())
    manifest.samples_written = sum(s.written for s in all_stats.values())
    manifest.samples_failed = sum(s.failed_total for s in all_stats.values())
    complete = not result.failed and len(all_stats) == len(prep.plan.units)
    manifest.status = "complete" if complete else "incomplete"
    write_manifest(layout, storage, manifest)
    # Where the wall-clock time went: a short job is mostly Ray's start and stop.
    done_at = time.time()
    phases = {
        "plan": t0 - entered,
        "Ray start": ready - t0,
        "units": finished - ready,
        "Ray stop": stopped - finished,
        "finish": done_at - stopped,
    }
    _print_summary(manifest, result.stats, all_stats, done_at - entered, result.retries, phases)
    return 0 if complete else 1


def _print_summary(
    manifest: RunManifest, new_stats, all_stats, wall: float, retries: int, phases: dict[str, float]
) -> None:
    reasons: dict[str, int] = {}
    for s in all_stats.values():
        for reason, n in s.failed.items():
            reasons[reason] = reasons.get(reason, 0) + n
    clips_now = sum(s.samples_in for s in new_stats.values())
    lines = [
        f"status: {manifest.status}",
        f"shards: {manifest.shards_committed}/{manifest.shards_total} committed, "
        f"{len(new_stats)} this run, {len(manifest.failed_shards)} failed, {retries} retries",
        f"samples: {manifest.samples_in} in, {manifest.samples_written} written, {manifest.samples_failed} failed",
        f"this run: {clips_now} clips in {wall:.1f} s ({clips_now / wall if wall > 0 else 0:.1f} clips/s)",
        "time: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items()),
    ]
    stages = median_stage_seconds(new_stats.values())
    if stages:  # which stage this run's units waited on
        lines.append("per shard, median: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stages.items()))
    if reasons:
        lines.append("failed by reason: " + ", ".join(f"{r}={n}" for r, n in sorted(reasons.items())))
    for shard, reason in manifest.failed_shards.items():
        lines.append(f"failed shard {shard}: {reason}")
    print("\n".join(lines), file=sys.stderr)
