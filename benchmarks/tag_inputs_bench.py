"""The captioner's tag inputs for one model batch (``TagGuidedCaptioner.tag_inputs``, built
on the CPU before their copy to the GPU): milliseconds per batch of 256 clips with 1-4 of
AudioSet's 527 tags each, for both tag fusions, this tagcap against the one under
BASE_SITE, each in fresh processes, interleaved:

    python benchmarks/tag_inputs_bench.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BASE_SITE, base_code_commit, base_code_env, interleave_children, medians_by_setting, write_results

# A child builds the inputs 200 times per fusion and reports the median; the model's
# weights do not matter here, so it is the smallest model with 527 tags.
_CHILD = """
import json, statistics, sys, time
import numpy as np, torch
from tagcap.workers.models.captioner import TagGuidedCaptioner
from tagcap.workers.models.configs import CaptionerConfig, EncoderConfig

batch = int(sys.argv[1])
rng = np.random.default_rng(0)
rows = [[int(t) for t in rng.choice(527, rng.integers(1, 5), replace=False)] for _ in range(batch)]
out = {}
for fusion in ("add", "prefix"):
    cfg = CaptionerConfig(vocab_size=64, n_tags=527, tag_fusion=fusion, encoder=EncoderConfig(channels=(8,)),
                          d_model=32, n_heads=2, d_ff=64, n_layers=1)
    model = TagGuidedCaptioner(cfg)
    times = []
    for _ in range(200):
        started = time.perf_counter()
        model.tag_inputs(rows, torch.device("cpu"))
        times.append((time.perf_counter() - started) * 1e3)
    out[f"{fusion}_ms"] = statistics.median(times)
print(json.dumps(out))
"""

SETTINGS = {"current": {}, "base_code": base_code_env()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    if not os.path.isdir(BASE_SITE):
        ap.error(f"needs an earlier tagcap installed under {BASE_SITE}")
    runs = interleave_children(_CHILD, [str(args.batch)], SETTINGS, args.repeats)
    figures: dict = {"base_code_commit": base_code_commit(), "batch": args.batch}
    figures.update(medians_by_setting(runs))
    print(json.dumps(figures, indent=1))
    write_results(args.results, "tag-inputs", figures)


if __name__ == "__main__":
    main()
