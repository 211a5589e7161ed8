"""usseg.cluster: Lloyd's iterations against scikit-learn, the backends against each other, ClusterLookup against upstream."""
from pathlib import Path

import numpy as np
import pytest
import torch

import usseg  # noqa: F401
from usseg.cluster import ClusterLookup, KMeans, kmeans, kmeans_plusplus, nearest, prepare_points

FIXTURES = Path(__file__).parent/'fixtures'


def mixture(n=3000, d=16, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = 2*torch.randn(k, d, generator=g)
    lab = torch.randint(k, (n,), generator=g)
    return c[lab] + torch.randn(n, d, generator=g), lab


def test_lloyd_matches_sklearn_from_the_same_start():
    from sklearn.cluster import KMeans as SK
    x, _ = mixture()
    c0 = kmeans_plusplus(x, 8, 'euclidean', seed=1)
    c, _ = KMeans(8, 'euclidean', max_iter=300, tol=0, backend='torch')._lloyd(x, c0.clone())
    sk = SK(8, init=c0.numpy(), n_init=1, max_iter=300, tol=0).fit(x.numpy())
    ours = nearest(x, c, 'euclidean')[0]
    assert np.array_equal(ours.numpy(), sk.labels_)
    np.testing.assert_allclose(c.numpy(), sk.cluster_centers_, atol=1e-4)


def test_backends_reach_the_same_optimum_from_the_same_seeding():
    x, _ = mixture(seed=2)
    for metric in ('euclidean', 'cosine'):
        t = kmeans(x, 8, metric=metric, backend='torch', seed=5)
        f = kmeans(x, 8, metric=metric, backend='faiss', seed=5)
        assert f.backend_used == 'faiss' and t.backend_used == 'torch'
        assert abs(t.inertia - f.inertia) <= 1e-3*t.inertia      # torch stops at tol=1e-4, faiss runs 100 iterations
        assert (t.labels == f.labels).float().mean() > 0.99


def test_cosine_kmeans_is_scale_invariant():
    x, _ = mixture(seed=3)
    a = kmeans(x, 8, backend='torch', seed=0)
    b = kmeans(x*(0.1 + 10*torch.rand(len(x), 1)), 8, backend='torch', seed=0)   # rescale every point
    assert torch.equal(a.labels, b.labels)


def test_recovers_separated_clusters_and_predicts():
    x, lab = mixture(k=5, seed=4)
    km = kmeans(x, 5, metric='euclidean', backend='torch', n_init=2)
    pairs = set(zip(km.labels.tolist(), lab.tolist()))
    assert len(pairs) == 5                                          # a renaming of the true clusters
    assert torch.equal(km.predict(x[:100]), km.labels[:100])


def test_empty_clusters_are_reseeded():
    x = torch.cat([torch.zeros(50, 2), torch.ones(50, 2)*10])
    km = KMeans(2, 'euclidean', backend='torch')
    c, _ = km._lloyd(x, torch.tensor([[5., 5.], [100., 100.]]))     # the second centroid starts with no points
    assert sorted(c[:, 0].tolist()) == pytest.approx([0, 10])


def test_errors():
    with pytest.raises(ValueError, match='unknown metric'): KMeans(3, metric='l1')
    with pytest.raises(ValueError, match='unknown backend'): KMeans(3, backend='gpu')
    with pytest.raises(ValueError, match='NaN'): KMeans(2).fit(torch.tensor([[0., float('nan')], [1., 1.]]))
    with pytest.raises(ValueError, match='flatten feature maps'): prepare_points(torch.zeros(1, 4, 2, 2))


def test_cluster_lookup_matches_upstream():
    "Hard and soft assignments and losses as STEGO's and EAGLE's probes; EAGLE's tuple form for log-probabilities."
    f = np.load(FIXTURES/'cluster_upstream.npz')
    probe = ClusterLookup(5, 3)
    with torch.no_grad(): probe.clusters.copy_(torch.from_numpy(f['clusters']))
    x = torch.from_numpy(f['x'])
    with torch.no_grad():
        for name in ('stego', 'eagle'):
            loss, probs = probe(x)
            np.testing.assert_allclose(loss.numpy(), f[f'{name}_hard_loss'], atol=1e-6)
            np.testing.assert_allclose(probs.numpy(), f[f'{name}_hard_probs'], atol=1e-6)
            loss, probs = probe(x, 2.0)
            np.testing.assert_allclose(loss.numpy(), f[f'{name}_soft_loss'], atol=1e-6)
            np.testing.assert_allclose(probs.numpy(), f[f'{name}_soft_probs'], atol=1e-6)
            loss, logp = probe(x, 4.0, log_probs=True)
            np.testing.assert_allclose(logp.numpy(), f[f'{name}_logp'], atol=1e-5)
        np.testing.assert_allclose(loss.numpy(), f['eagle_logp_loss'], atol=1e-6)


def test_cuda_if_available():
    if not torch.cuda.is_available(): pytest.skip('no CUDA GPU on this machine')
    x, _ = mixture()
    a, b = kmeans(x, 8, backend='torch', seed=0), kmeans(x.cuda(), 8, backend='torch', seed=0)
    assert b.centroids.device.type == 'cuda' and abs(a.inertia - b.inertia) < 1e-3*a.inertia
