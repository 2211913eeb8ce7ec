"""The comparison behind `bridge fit` / verify's bridge line: recalls, retention, the advice."""

from __future__ import annotations

import numpy as np

from migrator.bridge import fit as bf
from migrator.verify import bridge_check as bc


def _space(n: int, d: int, seed: int) -> np.ndarray:
    return bf.unit_rows(np.random.default_rng(seed).standard_normal((n, d)))


def test_a_known_rotation_keeps_everything_and_a_swap_keeps_nothing() -> None:
    new = _space(400, 16, 1)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((16, 16)))
    old = (new @ q).astype(np.float32)
    ids = [str(i) for i in range(400)]
    queries = bf.unit_rows(new[:100] + 0.05 * np.random.default_rng(3).standard_normal((100, 16)))
    exact = bf.BridgeMap(bf.PROCRUSTES, q.astype(np.float32), np.zeros(16, np.float32))
    c = bc.compare(
        "documents",
        relevant=[[str(i)] for i in range(100)],
        q_new=queries,
        q_old=queries @ q.astype(np.float32),
        old_ids=ids,
        old=old,
        new_ids=ids,
        new=new,
        bridge=exact,
        k=10,
    )
    assert c.new == c.bridge == c.old == 1.0 and c.retention == 1.0
    assert c.swap is not None and c.swap < 0.2
    choice, sentence = bc.recommend([c], 0.85)
    assert choice == bc.BRIDGE and "100%" in sentence


def test_the_corpus_is_the_rows_with_both_vectors_and_no_old_model_is_none() -> None:
    new = _space(50, 8, 4)
    ids = [str(i) for i in range(50)]
    ident = bf.BridgeMap(bf.PROCRUSTES, np.eye(8, dtype=np.float32), np.zeros(8, np.float32))
    c = bc.compare(
        "documents",
        relevant=[["1"], ["2"]],
        q_new=new[1:3],
        q_old=None,
        old_ids=ids,
        old=new,
        new_ids=ids[:30],  # the backfill has done 30 rows
        new=new[:30],
        bridge=ident,
        k=5,
    )
    assert c.corpus == 30 and c.old is None and c.swap_retention == 1.0
    assert bc.recommend([c], 0.85)[0] == bc.SWAP  # the spaces already agree


def test_recommendation_takes_the_worst_query_set_and_nothing_measured_is_re_embed() -> None:
    good = bc.Comparison("documents", 100, 100, 10, 0.9, 0.9, 0.85, None)
    bad = bc.Comparison("labelled", 20, 100, 10, 0.5, 0.6, 0.3, None)
    assert bc.recommend([good], 0.8)[0] == bc.BRIDGE
    choice, sentence = bc.recommend([good, bad], 0.8)
    assert choice == bc.REEMBED and "50%" in sentence
    figs = bc.figures([good, bad], 0.8)
    assert figs["retention"] == 0.5 and figs["recommendation"] == bc.REEMBED
    assert bc.recommend([], 0.8)[0] == bc.REEMBED
