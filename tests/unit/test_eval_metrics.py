"""Zero-shot metrics on hand-made embeddings whose answers are worked out by hand, plus the label file,
label and sample-accounting checks. Similarities are dot products, so ``S @ I`` gives the matrix ``S``."""

from __future__ import annotations

import pytest
import torch

from onepeace.eval.classification import (class_prompts, classification_chance, classification_metrics, label_targets,
                                          read_class_names)
from onepeace.eval.embeddings import Rows
from onepeace.eval.errors import EvalError
from onepeace.eval.gather import gather_rows, in_dataset_order
from onepeace.eval.ranking import target_ranks
from onepeace.eval.report import format_table, metric_label
from onepeace.eval.retrieval import retrieval_chance, retrieval_metrics
from onepeace.eval.zeroshot import SetResult

# Image i x text j similarities; the true pairs are on the diagonal.
S = torch.tensor([
    [0.9, 0.1, 0.2, 0.0],  # image 0: its text scores highest             -> rank 1
    [0.8, 0.5, 0.7, 0.6],  # image 1: three texts beat 0.5                 -> rank 4
    [0.3, 0.3, 0.3, 0.1],  # image 2: two texts tie with 0.3 (pessimistic) -> rank 3
    [0.2, 0.9, 0.1, 0.4],  # image 3: one text beats 0.4                   -> rank 2
])
# Text -> image reads the columns: [0.9 .8 .3 .2] rank 1, [.1 .5 .3 .9] rank 2, [.2 .7 .3 .1] rank 2,
# [0 .6 .1 .4] rank 2.


def test_ranks_of_the_true_match_count_ties_against_it():
    eye = torch.eye(4)
    assert target_ranks(S, eye, torch.arange(4)).tolist() == [1, 4, 3, 2]
    assert target_ranks(eye, S, torch.arange(4)).tolist() == [1, 2, 2, 2]


def test_retrieval_recall_in_both_directions():
    metrics = retrieval_metrics(S, torch.eye(4), "image", ks=(1, 2, 3))
    assert metrics == pytest.approx({
        "image_to_text/R@1": 0.25, "image_to_text/R@2": 0.5, "image_to_text/R@3": 0.75,
        "text_to_image/R@1": 0.25, "text_to_image/R@2": 1.0, "text_to_image/R@3": 1.0,
    })


def test_retrieval_default_ks_and_chance_with_fewer_pairs_than_k():
    metrics = retrieval_metrics(S, torch.eye(4), "audio")
    assert list(metrics) == [f"{d}/R@{k}" for d in ("audio_to_text", "text_to_audio") for k in (1, 5, 10)]
    assert metrics["audio_to_text/R@5"] == metrics["audio_to_text/R@10"] == 1.0  # only 4 candidates
    chance = retrieval_chance(4, "audio")
    assert chance["audio_to_text/R@1"] == 0.25 and chance["text_to_audio/R@5"] == 1.0
    assert retrieval_chance(200, "image")["image_to_text/R@10"] == pytest.approx(0.05)


def test_a_constant_model_scores_zero_and_nan_counts_as_a_miss():
    same = torch.ones(5, 3)
    assert retrieval_metrics(same, same, "image")["image_to_text/R@1"] == 0.0
    emb = torch.eye(3)
    broken = emb.clone()
    broken[1] = float("nan")
    assert target_ranks(broken, emb, torch.arange(3)).tolist() == [1, 3, 1]
    assert target_ranks(emb, broken, torch.arange(3)).tolist() == [2, 3, 2]  # a NaN candidate beats everyone


def test_retrieval_needs_row_aligned_pairs():
    with pytest.raises(ValueError, match="row i with row i"):
        retrieval_metrics(torch.eye(3), torch.eye(4)[:2, :3], "image")


def test_classification_top1_and_top_k_by_hand():
    class_emb = torch.eye(3)
    emb = torch.tensor([[0.9, 0.1, 0.0],   # label 0: rank 1
                        [0.5, 0.2, 0.6],   # label 1: rank 3
                        [0.1, 0.7, 0.2],   # label 1: rank 1
                        [0.4, 0.4, 0.1]])  # label 0: tie with class 1 -> rank 2
    targets = torch.tensor([0, 1, 1, 0])
    # Fewer than 5 classes: top-3 (= every class) is reported instead of top-5.
    assert classification_metrics(emb, targets, class_emb) == {"classification/top1": 0.5, "classification/top3": 1.0}
    assert classification_chance(3) == pytest.approx({"classification/top1": 1 / 3, "classification/top3": 1.0})


def test_classification_top5_with_enough_classes():
    class_emb = torch.eye(6)
    emb = torch.tensor([[6.0, 5, 4, 3, 2, 1]] * 6)  # class c ranks c + 1
    metrics = classification_metrics(emb, torch.arange(6), class_emb)
    assert metrics == pytest.approx({"classification/top1": 1 / 6, "classification/top5": 5 / 6})
    assert classification_chance(6)["classification/top5"] == pytest.approx(5 / 6)


def test_label_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("dog\n  cat  \n\nbird\n")
    assert read_class_names(str(path)) == ["dog", "cat", "bird"]
    path.write_text("dog\ncat\ndog\n")
    with pytest.raises(EvalError, match=r"line 3 repeats class 'dog' \(first on line 1\)"):
        read_class_names(str(path))
    path.write_text("dog\n")
    with pytest.raises(EvalError, match="names 1 class"):
        read_class_names(str(path))
    with pytest.raises(EvalError, match="nothing.txt does not exist"):
        read_class_names(str(tmp_path / "nothing.txt"))
    assert class_prompts(["dog", "cat"], "a photo of {}.") == ["a photo of dog.", "a photo of cat."]
    with pytest.raises(EvalError, match="no {}"):
        class_prompts(["dog"], "a photo")


def test_labels_must_be_present_and_listed():
    classes = ["dog", "cat"]
    assert label_targets(["cat", "dog", "cat"], ["a", "b", "c"], classes, "val", "l.txt").tolist() == [1, 0, 1]
    with pytest.raises(EvalError, match=r"evaluation set val: 1 of 2 samples have no label \(e.g. b\)"):
        label_targets(["cat", None], ["a", "b"], classes, "val", "l.txt")
    with pytest.raises(EvalError, match=r"labels missing from label file l.txt: 'fox' \(2 samples\)"):
        label_targets(["fox", "cat", "fox"], ["a", "b", "c"], classes, "val", "l.txt")


def _rows(ids, skipped=0):
    emb = torch.tensor([[float(i[1:])] for i in ids])
    return Rows(ids=list(ids), labels=[f"l{i}" for i in ids], emb={"image": emb}, skipped=skipped)


def test_rows_come_back_sorted_by_id_each_exactly_once():
    rows = in_dataset_order(gather_rows(_rows(["s3", "s1", "s2", "s0"])), 4, "val")
    assert rows.ids == ["s0", "s1", "s2", "s3"] and rows.labels == ["ls0", "ls1", "ls2", "ls3"]
    assert rows.emb["image"][:, 0].tolist() == [0, 1, 2, 3]
    assert len(in_dataset_order(_rows(["s1", "s0"], skipped=1), 3, "val")) == 2  # unreadable ones accounted for


def test_duplicated_or_missed_samples_are_errors():
    with pytest.raises(EvalError, match=r"1 sample id\(s\) came back more than once: s1 \(2 times\)"):
        in_dataset_order(_rows(["s0", "s1", "s1"]), 3, "val")
    with pytest.raises(EvalError, match="produced 2 samples and skipped 0 unreadable ones, but index.json lists 3"):
        in_dataset_order(_rows(["s0", "s1"]), 3, "val")


def test_table_shows_chance_next_to_each_value():
    result = SetResult("val", "image-text", 4, 0, metrics={"image_to_text/R@1": 0.25, "classification/top5": 0.5},
                       chance={"image_to_text/R@1": 0.25, "classification/top5": 1.0}, notes=["a note"])
    table = format_table(result, {"model": "m"})
    assert "image->text R@1   25.00%   25.00%" in table
    assert "top-5 accuracy    50.00%  100.00%" in table and "note: a note" in table
    assert metric_label("text_to_audio/R@10") == "text->audio R@10"
