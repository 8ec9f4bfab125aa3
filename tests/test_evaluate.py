"""Evaluation arithmetic on hand-made cases."""

import numpy as np
import pytest
import torch

from tagcap.workers.evaluate import EvalSet, average_precision, zeroshot


def test_average_precision_by_hand():
    # ranked: pos, neg, pos -> precisions at hits 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    assert average_precision(np.array([0.9, 0.5, 0.4]), np.array([True, False, True])) == pytest.approx(5 / 6)
    assert average_precision(np.array([0.1, 0.9]), np.array([True, False])) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.array([0.1]), np.array([False])))


class _Fixed:
    """A stand-in exposing the two embedding calls zeroshot makes, with chosen vectors."""

    def __init__(self, audio, text):
        self.audio, self.text = torch.tensor(audio, dtype=torch.float32), torch.tensor(text, dtype=torch.float32)
        self.logit_scale = torch.zeros(())

    def embed_audio(self, x):
        # Each clip's waveform starts with its row number: the vectors follow the clips asked for.
        return self.audio[x[:, 0].long()]

    def embed_text(self, texts):
        return self.text[: len(texts)]


def test_zeroshot_single_and_multi_label():
    audio = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]
    text = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    model = _Fixed(audio, text)
    waves = np.zeros((4, 10), np.float32)
    waves[:, 0] = np.arange(4)
    single = EvalSet(["a", "b", "c", "d"], waves, [{"label": x} for x in ("x", "y", "z", "y")])
    r = zeroshot(model, single, ["x", "y", "z"])
    # clip d is [1,1,0]: x and y tie; the stable order ranks x first, so d is a top-1 miss
    assert r["top1"] == pytest.approx(3 / 4) and r["top5"] == 1.0
    multi = EvalSet(["a", "b", "c", "d"], waves, [{"tag": t} for t in (["x"], ["y"], ["z"], ["x", "y"])])
    r = zeroshot(model, multi, ["x", "y", "z"], label_field="tag")
    assert r["mAP"] == pytest.approx(1.0)


def test_zeroshot_leaves_out_and_counts_clips_without_a_known_label_and_refuses_when_none_has_one():
    audio = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]
    model = _Fixed(audio, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    waves = np.zeros((4, 10), np.float32)
    waves[:, 0] = np.arange(4)
    # clip d's label is no class; a, b, c are classified right, so d must not be counted as a miss
    data = EvalSet(["a", "b", "c", "d"], waves, [{"label": x} for x in ("x", "y", "z", "w")])
    r = zeroshot(model, data, ["x", "y", "z"])
    assert r["top1"] == 1.0 and r["clips"] == 3 and r["clips_without_label"] == 1
    with pytest.raises(ValueError, match="none of the 4 clips has a label of the 3 classes in its json field 'label'"):
        zeroshot(model, EvalSet(["a", "b", "c", "d"], waves, [{"tag": ["x"]}] * 4), ["x", "y", "z"])
