"""usseg.metrics against independent computations, the upstream class (stored fixtures) and properties."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import confusion_matrix

import usseg  # noqa: F401  (before anything that imports torchvision)
from usseg.metrics import UnsupervisedMetrics, upstream_drop_scores

FIXTURES = Path(__file__).parent/'fixtures'


def reference(preds, target, n_classes, n_clusters):
    "Accuracy, per-class IoU and mIoU computed independently: sklearn counts, scipy matching, numpy sums."
    p, t = np.asarray(preds).ravel(), np.asarray(target).ravel()
    keep = t >= 0
    cm = confusion_matrix(t[keep], p[keep], labels=range(max(n_classes, n_clusters)))[:n_classes, :n_clusters]  # (class, cluster)
    rows, cols = linear_sum_assignment(cm, maximize=True)                       # class rows[i] <- cluster cols[i]
    tp = np.zeros(n_classes); predc = np.zeros(n_classes)
    tp[rows] = cm[rows, cols]; predc[rows] = cm[:, cols].sum(0)
    union = predc + cm.sum(1) - tp
    with np.errstate(invalid='ignore', divide='ignore'): iou = np.where(union > 0, tp/union, np.nan)
    acc = 100*tp.sum()/keep.sum()
    return acc, 100*np.nanmean(iou), 100*iou


def random_case(rng, n, k, shape=(3, 17, 23), absent=True):
    t = rng.integers(-1, n, shape)
    if absent and n > 2: t[t == n - 1] = -1                                    # an absent class
    noisy = rng.random(shape) < 0.5
    p = np.where(noisy, rng.integers(0, k, shape), rng.permutation(max(n, k))[np.clip(t, 0, None)] % k)
    return p, t


@pytest.mark.parametrize('n,k', [(5, 5), (6, 9), (7, 3), (2, 2), (4, 12)])
def test_against_sklearn_scipy(n, k):
    rng = np.random.default_rng(n*100 + k)
    for _ in range(5):
        p, t = random_case(rng, n, k)
        m = UnsupervisedMetrics(n, n_clusters=k)
        half = p.shape[0]//2
        m.update(torch.from_numpy(p[:half]), torch.from_numpy(t[:half]))
        m.update(torch.from_numpy(p[half:]), torch.from_numpy(t[half:]))
        r = m.compute()
        acc, miou, iou = reference(p, t, n, k)
        assert r['acc'] == pytest.approx(acc) and r['miou'] == pytest.approx(miou)
        np.testing.assert_allclose(r['iou'], iou, equal_nan=True)
        assert r['n_pixels'] == int((t >= 0).sum())
        a = np.array(r['assignment'])
        assert len(a) == k and sorted(a[a >= 0].tolist()) == sorted(set(a[a >= 0].tolist()))   # one-to-one


def test_identity_matching_is_plain_accuracy():
    rng = np.random.default_rng(1)
    p, t = random_case(rng, 6, 6)
    m = UnsupervisedMetrics(6, hungarian=False); m.update(torch.from_numpy(p), torch.from_numpy(t))
    keep = t >= 0
    assert m.compute()['acc'] == pytest.approx(100*(p[keep] == t[keep]).mean())
    assert m.compute()['assignment'] == list(range(6))


def test_extra_clusters_count_as_errors():
    t = torch.tensor([0, 0, 1, 1, 1, -1])
    p = torch.tensor([0, 2, 1, 1, 3, 2])                # clusters 2 and 3 are spare: two errors
    m = UnsupervisedMetrics(2, extra_clusters=2); m.update(p, t); r = m.compute()
    assert r['acc'] == pytest.approx(60.0) and r['n_pixels'] == 5
    assert r['acc_upstream_drop'] == pytest.approx(100.0) and r['n_pixels_upstream_drop'] == 3


def test_upstream_fixtures():
    "Our re-derivation of the upstream convention equals STEGO's and EAGLE's class on 40 stored cases."
    f = np.load(FIXTURES/'metrics_upstream.npz')
    n_cases = len([k for k in f.files if k.endswith('_cfg')])
    assert n_cases == 40
    checked_extra = 0
    for i in range(n_cases):
        n, e = f[f'{i}_cfg']
        p, t = torch.from_numpy(f[f'{i}_preds']), torch.from_numpy(f[f'{i}_target'])
        m = UnsupervisedMetrics(int(n), extra_clusters=int(e)); m.update(p, t); r = m.compute()
        for name in ('stego', 'eagle'):
            miou, acc = f[f'{i}_{name}']
            assert r['miou_upstream_drop'] == pytest.approx(miou, abs=1e-4), (i, name)
            assert r['acc_upstream_drop'] == pytest.approx(acc, abs=1e-4), (i, name)
            if e == 0:   # without extra clusters the conventions coincide
                assert r['miou'] == pytest.approx(miou, abs=1e-4) and r['acc'] == pytest.approx(acc, abs=1e-4)
        checked_extra += e > 0
    assert checked_extra >= 20


def test_errors():
    m = UnsupervisedMetrics(3)
    with pytest.raises(ValueError, match='class id 3'): m.update(torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match=r'\[0, 3\)'): m.update(torch.tensor([5]), torch.tensor([0]))
    with pytest.raises(ValueError, match='differ in shape'): m.update(torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match='cannot merge'): m.merge(UnsupervisedMetrics(4))
    m.update(torch.tensor([7 % 3]), torch.tensor([-1]))                        # ignored pixels are never checked
    assert m.confusion.sum() == 0


def test_merge_equals_single_pass_and_all_reduce_is_noop():
    rng = np.random.default_rng(5)
    p, t = random_case(rng, 5, 7)
    whole = UnsupervisedMetrics(5, extra_clusters=2); whole.update(torch.from_numpy(p), torch.from_numpy(t))
    parts = [UnsupervisedMetrics(5, extra_clusters=2) for _ in range(3)]
    for i, m in enumerate(parts): m.update(torch.from_numpy(p[i]), torch.from_numpy(t[i]))
    merged = parts[0].merge(parts[1]).merge(parts[2]).all_reduce()
    assert torch.equal(merged.confusion, whole.confusion)
    assert merged.compute() == whole.compute()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 7), extra=st.integers(0, 4), seed=st.integers(0, 2**31 - 1), absent=st.booleans())
def test_invariant_to_cluster_renaming(n, extra, seed, absent):
    "Renaming the clusters (any permutation of ids) changes no score of usseg's protocol."
    rng = np.random.default_rng(seed)
    k = n + extra
    p, t = random_case(rng, n, k, shape=(2, 9, 11), absent=absent)
    perm = rng.permutation(k)
    a, b = UnsupervisedMetrics(n, extra_clusters=extra), UnsupervisedMetrics(n, extra_clusters=extra)
    a.update(torch.from_numpy(p), torch.from_numpy(t)); b.update(torch.from_numpy(perm[p]), torch.from_numpy(t))
    ra, rb = a.compute(), b.compute()
    # the matched pixel count is the optimum of the assignment problem, whatever solution scipy picks
    assert ra['acc'] == pytest.approx(rb['acc'])
    # the same matching, renamed: then every per-class number is the same. An absent class (a zero
    # column) ties with every spare cluster, and scipy may then pick another optimal matching, with the
    # same accuracy but possibly another mIoU; with every class present the matching here is unique.
    same = [rb['assignment'][perm[c]] for c in range(k)] == ra['assignment']
    assert same or absent
    if same:
        np.testing.assert_allclose(ra['iou'], rb['iou'], equal_nan=True)
        assert ra['miou'] == pytest.approx(rb['miou'])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 6), extra=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_scores_are_bounded_and_perfect_predictions_score_100(n, extra, seed):
    rng = np.random.default_rng(seed)
    t = rng.integers(-1, n, (2, 8, 8))
    perm = rng.permutation(n + extra)[:n]
    m = UnsupervisedMetrics(n, extra_clusters=extra); m.update(torch.from_numpy(perm[np.clip(t, 0, None)]), torch.from_numpy(t))
    r = m.compute()
    if (t >= 0).any(): assert r['acc'] == pytest.approx(100) and r['miou'] == pytest.approx(100)
    p, t = random_case(rng, n, n + extra, shape=(1, 7, 9))
    m = UnsupervisedMetrics(n, extra_clusters=extra); m.update(torch.from_numpy(p), torch.from_numpy(t)); r = m.compute()
    assert 0 <= r['acc'] <= 100 and 0 <= r['miou'] <= 100
    if extra == 0: assert r['acc'] == pytest.approx(r['acc_upstream_drop'])


def test_upstream_convention_depends_on_cluster_ids():
    "The reason usseg does not use it: dropping by id is not invariant to renaming clusters."
    t = torch.tensor([0]*10 + [1]*10)
    p = torch.tensor([0]*10 + [1]*7 + [2]*3)
    m1 = UnsupervisedMetrics(2, extra_clusters=1); m1.update(p, t)
    m2 = UnsupervisedMetrics(2, extra_clusters=1); m2.update(torch.tensor([2, 0, 1])[p], t)
    r1, r2 = m1.compute(), m2.compute()
    assert r1['acc'] == r2['acc'] == pytest.approx(85.0)
    assert r1['acc_upstream_drop'] != pytest.approx(r2['acc_upstream_drop'])
    assert upstream_drop_scores(m1.confusion)['acc_upstream_drop'] == pytest.approx(100.0)


def test_cuda_update_if_available():
    if not torch.cuda.is_available(): pytest.skip('no CUDA GPU on this machine')
    m = UnsupervisedMetrics(3); m.update(torch.tensor([0, 1, 2], device='cuda'), torch.tensor([0, 1, 2], device='cuda'))
    assert m.confusion.device.type == 'cuda' and m.compute()['acc'] == pytest.approx(100)
