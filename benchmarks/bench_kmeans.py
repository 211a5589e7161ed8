#!/usr/bin/env python
"""k-means on 200k x 384 points with K=27: usseg KMeans (torch, faiss) against scikit-learn.

    python benchmarks/bench_kmeans.py [--n 200000] [--dim 384] [--k 27] [--iters 25]

Points: a mixture of 27 Gaussian clusters in 384-d (centres N(0, 0.5^2 I), unit-variance noise), the shape
of ViT-S patch features. Every run does k-means++ seeding (raw faiss: its random seeding) and at most
`--iters` Lloyd iterations (faiss always runs exactly that many). Times: the fastest of two runs. The inertia of each solution is
recomputed the same way (squared Euclidean). Writes results/kmeans.json.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import usseg  # noqa: E402,F401
from _common import machine, write  # noqa: E402
from usseg.cluster import KMeans, nearest  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=200_000)
    ap.add_argument('--dim', type=int, default=384)
    ap.add_argument('--k', type=int, default=27)
    ap.add_argument('--iters', type=int, default=25)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    centres = 0.5*torch.randn(a.k, a.dim, generator=g)                 # about 14 apart; noise per point ~N(0, I)
    x = centres[torch.randint(a.k, (a.n,), generator=g)] + torch.randn(a.n, a.dim, generator=g)
    res = {'machine': machine(), 'n': a.n, 'dim': a.dim, 'k': a.k, 'max_iter': a.iters, 'runs': {}}
    def inertia(c): return float(nearest(x, torch.as_tensor(c, dtype=torch.float32), 'euclidean')[1].double().sum())
    def record(name, fn, repeat=2):   # the CPUs are shared: keep the fastest of `repeat` runs
        ts = []
        for _ in range(repeat):
            t = time.perf_counter(); c, n_iter = fn(); ts.append(time.perf_counter() - t)
        res['runs'][name] = {'seconds': round(min(ts), 2), 'seconds_all': [round(t, 2) for t in ts], 'n_iter': n_iter, 'inertia': round(inertia(c), 1)}
        print(name, res['runs'][name], flush=True)
    for seed in (0, 1, 2):   # three seeds: the local optimum found depends on the seeding
        record(f'usseg_torch_euclidean_seed{seed}', lambda: (lambda km: (km.centroids, km.n_iter))(KMeans(a.k, 'euclidean', max_iter=a.iters, backend='torch', seed=seed).fit(x)))
    record('usseg_faiss_euclidean_all_points', lambda: (lambda km: (km.centroids, km.n_iter))(KMeans(a.k, 'euclidean', max_iter=a.iters, backend='faiss').fit(x)))
    try:
        import faiss
        def faiss_default():
            km = faiss.Kmeans(a.dim, a.k, niter=a.iters, seed=0)      # default: trains on 256 points per centroid
            km.train(np.ascontiguousarray(x.numpy())); return km.centroids, a.iters
        record('faiss_default_subsample_256_per_centroid', faiss_default)
    except ImportError: pass
    from sklearn.cluster import KMeans as SKKMeans
    for seed in (0, 1, 2):
        def sk():
            km = SKKMeans(a.k, n_init=1, max_iter=a.iters, random_state=seed).fit(x.numpy()); return km.cluster_centers_, int(km.n_iter_)
        record(f'sklearn_lloyd_seed{seed}', sk)
    record('usseg_torch_cosine', lambda: (lambda km: (km.centroids, km.n_iter))(KMeans(a.k, 'cosine', max_iter=a.iters, backend='torch').fit(x)))
    res['runs']['usseg_torch_cosine']['inertia_note'] = 'inertia column is squared Euclidean to unit-norm centroids: not comparable'
    from usseg.cluster import kmeans_plusplus
    c0 = kmeans_plusplus(x, a.k, 'euclidean', 0)
    ours = KMeans(a.k, 'euclidean', max_iter=100, tol=0, backend='torch')
    c, n_iter = ours._lloyd(x, c0.clone())
    skm = SKKMeans(a.k, init=c0.numpy(), n_init=1, max_iter=100, tol=0).fit(x.numpy())
    res['same_init_check'] = {'note': 'Lloyd from the same k-means++ centroids until convergence: usseg torch vs scikit-learn',
                              'usseg': {'n_iter': n_iter, 'inertia': round(inertia(c), 1)},
                              'sklearn': {'n_iter': int(skm.n_iter_), 'inertia': round(inertia(skm.cluster_centers_), 1)}}
    print(res['same_init_check'])
    res['optimum_reference'] = {'inertia_of_true_centres': round(inertia(centres), 1),
                                'note': 'inertia of the 27 generating centres: a clustering that recovers every Gaussian lands close to it (slightly below: fitted means)'}
    if torch.cuda.is_available():
        xc = x.cuda(); KMeans(a.k, 'euclidean', max_iter=2, backend='torch').fit(xc[:10000]); torch.cuda.synchronize()
        t = time.perf_counter(); km = KMeans(a.k, 'euclidean', max_iter=a.iters, backend='torch').fit(xc); torch.cuda.synchronize()
        res['runs']['usseg_torch_cuda_euclidean'] = {'seconds': round(time.perf_counter() - t, 2), 'n_iter': km.n_iter, 'inertia': round(inertia(km.centroids.cpu()), 1)}
    write('kmeans', res)


if __name__ == '__main__': main()
