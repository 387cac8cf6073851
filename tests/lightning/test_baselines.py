"""Trivial predictors on the model's masks: each baseline computes what its name says."""

import math

import pytest
import torch

from metis.lightning.baselines import (MaskedBaselines, beaten_by, condition_tokens, nearest_visible, report,
                                       shuffled_condition)


def test_nearest_visible_takes_the_closer_neighbour_and_the_earlier_on_ties():
    tokens = torch.tensor([[10, 11, 12, 13, 14, 15]])
    visible = torch.tensor([[True, False, False, False, True, False]])
    pred, found = nearest_visible(tokens, visible)
    # frame 1 -> 0 (dist 1), frame 2 -> 0 (tie 2 vs 2: earlier), frame 3 -> 4, frame 5 -> 4
    assert pred.tolist() == [[10, 10, 10, 14, 14, 14]]
    assert found.all()


def test_nearest_visible_reports_rows_without_a_visible_frame():
    tokens = torch.tensor([[1, 2, 3], [4, 5, 6]])
    visible = torch.tensor([[False, False, False], [False, True, False]])
    pred, found = nearest_visible(tokens, visible)
    assert found.tolist() == [[False] * 3, [True] * 3]
    assert pred[1].tolist() == [5, 5, 5]


def test_unigram_counts_come_from_training_tokens_only():
    b = MaskedBaselines(8)
    assert b.score(torch.tensor([[3, 3]]), torch.ones(1, 2), torch.ones(1, 2)).get("baseline_unigram_acc_top1") is None
    b.observe(torch.tensor([[3, 3, 3, 5, 7, 0]]), torch.tensor([[1, 1, 1, 1, 1, 0]]))  # padding (0) not counted
    assert b.counts.tolist() == [0, 0, 0, 3, 0, 1, 0, 1]
    targets = torch.tensor([[3, 5, 1, 3]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last frame is visible
    out = b.score(targets, mask, torch.ones(1, 4))
    assert out["baseline_unigram_acc_top1"].item() == pytest.approx(1 / 3)  # token 3 is the top one
    # add-one smoothed unigram log-probabilities: counts + 1 over 5 + 8
    expect = -(math.log(4 / 13) + math.log(2 / 13) + math.log(1 / 13)) / 3
    assert out["baseline_unigram_loss"].item() == pytest.approx(expect, rel=1e-5)
    assert out["baseline_unigram_acc_top10"].item() == 1.0  # 8 tokens < 10: every token is in the top 10
    # copy-nearest: every masked frame copies frame 3 (token 3)
    assert out["baseline_copy_nearest_acc_top1"].item() == pytest.approx(1 / 3)


def test_copy_nearest_ignores_padding_and_condition_is_scored_on_masked_frames():
    b = MaskedBaselines(16)
    b.observe(torch.tensor([[9]]), torch.ones(1, 1))
    targets = torch.tensor([[4, 4, 6, 6, 2]])
    valid = torch.tensor([[1, 1, 1, 1, 0]])  # the last frame is padding: never visible, never scored
    mask = torch.tensor([[0, 1, 1, 0, 0]])
    cond = torch.tensor([[0, 4, 0, 0, 2]])
    out = b.score(targets, mask, valid, cond)
    assert out["baseline_copy_nearest_acc_top1"].item() == pytest.approx(1.0)  # 1 <- 0 (4), 2 <- 3 (6)
    assert out["baseline_condition_acc_top1"].item() == pytest.approx(0.5)


def test_counts_round_trip_and_refuse_another_codebook():
    b = MaskedBaselines(4)
    b.observe(torch.tensor([[1, 2, 2]]), torch.ones(1, 3))
    c = MaskedBaselines(4)
    c.load_state_dict(b.state_dict())
    assert c.counts.tolist() == [0, 1, 2, 0]
    with pytest.raises(ValueError, match="codebook"):
        MaskedBaselines(5).load_state_dict(b.state_dict())


def test_shuffled_condition_comes_from_another_row_with_this_rows_length():
    cond = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = shuffled_condition(cond, valid)
    assert out[0, :, 0].tolist() == [4, 5, 4, 0]  # row 1's two valid frames, repeated to 3, padding zero
    assert out[1, :, 0].tolist() == [0, 1, 0, 0]


def test_a_one_row_batch_takes_the_donor_batch_or_its_own_rolled_condition():
    cond = torch.arange(5, dtype=torch.float).reshape(1, 5, 1)
    valid = torch.tensor([[1, 1, 1, 1, 0]])
    donor = (torch.tensor([[[7.0], [8.0], [0.0]]]), torch.tensor([[1, 1, 0]]))
    assert shuffled_condition(cond, valid, donor)[0, :, 0].tolist() == [7, 8, 7, 8, 0]
    assert shuffled_condition(cond, valid)[0, :, 0].tolist() == [2, 3, 0, 1, 0]  # rolled by half its 4 frames


class _Codes:
    def encode(self, wavs):
        return [torch.arange(len(w) // 320) for w in wavs]


def test_condition_tokens_align_to_target_lengths():
    out = condition_tokens(_Codes(), [torch.zeros(3 * 320), torch.zeros(5 * 320)], [4, 2])
    assert out.tolist() == [[0, 1, 2, 2], [0, 1, -1, -1]]


def test_report_flags_a_model_that_does_not_beat_a_baseline():
    m = {"val/acc_top1": 0.2, "val/acc_top10": 0.5, "val/loss": 4.0, "val/baseline_unigram_acc_top1": 0.05,
         "val/baseline_copy_nearest_acc_top1": 0.25, "val/acc_top1_cond_shuffled": 0.1}
    assert beaten_by(m) == ["baseline copy_nearest"]
    assert "WARNING" in report(m) and "copy_nearest" in report(m)
    m["val/acc_top1"] = 0.3
    assert beaten_by(m) == []
    assert "beats every baseline" in report(m)
