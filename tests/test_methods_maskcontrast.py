"""MaskContrast through the front door (`nbs/41e_methods.maskcontrast.ipynb`): a toy run in its three stages through
`usseg.methods.train` and through `usseg train`, a run killed (SIGKILL) in its contrastive stage and resumed to the
uninterrupted run's bits, and a configuration that refuses what it does not know.

`tests/maskcontrast_train.py` runs the smoke setting (16 synthetic scenes, a random EfficientNet-Lite0 at stride 8,
6 contrastive steps, 4 probe steps, checkpoints every 2 steps).
"""
import json
from pathlib import Path

import pytest
import torch

from usseg.backbones import load_backbone
from usseg.learner import TIMING_KEYS, isolated_rng, load_checkpoint
from usseg.learner.stages import read_stages
from usseg.methods import get_method, load_run, train
from usseg.methods.maskcontrast import MaskContrastConfig, MaskContrastMethod

from procs import kill_after, run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'tests'/'maskcontrast_train.py'
STAGES = ('saliency', 'train', 'probe')
SMALL = dict(backbone='efficientnet_lite0_s8', weights='random', smoke=True, device='cpu', progress='none',
             dataset_kw={'n_images': 8, 'n_classes': 5})


def records(d):
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING_KEYS} for l in (Path(d)/'metrics.jsonl').read_text().splitlines()]


def test_registered():
    assert get_method('maskcontrast') is MaskContrastMethod


def test_two_steps_through_train(tmp_path):
    d = tmp_path/'run'
    run = train('maskcontrast', 'synthetic', tmp_path/'data', d, steps=2, config={'probe_steps': 2}, **SMALL)
    rec = read_stages(d)['stages']
    assert [rec[s]['status'] for s in STAGES] == ['done'] * 3
    saved = torch.load(d/'saliency'/'masks.pt', weights_only=True)
    assert saved['masks'].shape == (8, 64, 64) and saved['masks'].dtype == torch.bool and saved['keep'].any()
    tr, pr = load_checkpoint(d/'train'), load_checkpoint(d/'probe')
    assert tr['step'] == 2 and pr['step'] == 2
    assert set(tr['optimizers']) == {'head', 'backbone'} and set(pr['optimizers']) == {'cluster_probe', 'linear_probe'}
    with isolated_rng(0):                                                # the run's initial task, as train builds it
        init = MaskContrastMethod.build(load_backbone('efficientnet_lite0_s8', weights='random', seed=0), 5, MaskContrastConfig.smoke())
    assert int(tr['task']['queue_ptr']) == 0                             # two batches of 4 filled the queue of 8 ...
    assert not (tr['task']['queue'] - init.queue).abs().min(0).values.eq(0).any()   # ... every column replaced
    for k in ('head.head.weight', 'backbone.model.conv_stem.weight', 'key_head.head.weight'):
        assert not torch.equal(tr['task'][k], init.state_dict()[k]), f'{k} did not move'
    for k, v in tr['task'].items():                                      # the probe stage leaves the network as trained
        if not k.startswith(('cluster_probe', 'linear_probe')): assert torch.equal(v, pr['task'][k]), k
    assert [r['step'] for r in records(d/'train') if r['split'] == 'train'] and not [r for r in records(d/'train') if r['split'] == 'eval']
    ev = [r for r in records(d/'probe') if r['split'] == 'eval']
    assert ev and 'linear_miou' in ev[-1] and 'cluster_miou' in ev[-1]
    loaded = load_run(d, device='cpu')
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): assert torch.equal(loaded.task.code(x), run.task.eval().code(x))
    again = train('maskcontrast', 'synthetic', tmp_path/'data', d, steps=2, config={'probe_steps': 2}, resume=True, **SMALL)
    assert [read_stages(d)['stages'][s]['attempts'] for s in STAGES] == [1] * 3      # finished: no stage ran again ...
    sd = again.task.state_dict()
    for k, v in pr['task'].items(): assert torch.equal(sd[k], v), k                 # ... and the task returned is the trained one


def test_cli(tmp_path):
    from usseg.cli import main
    base = ['train', 'maskcontrast', '--dataset', 'synthetic', '--data-root', str(tmp_path/'data'), '--backbone', 'efficientnet_lite0_s8',
            '--weights', 'random', '--smoke', '--device', 'cpu', '--n-images', '8', '--n-classes', '5', '--threads', '1']
    assert main([*base, '--out', str(tmp_path/'r'), '--steps', '2', '--set', 'probe_steps=2']) == 0
    assert [read_stages(tmp_path/'r')['stages'][s]['status'] for s in STAGES] == ['done'] * 3
    assert load_checkpoint(tmp_path/'r'/'train')['step'] == 2
    assert main([*base, '--out', str(tmp_path/'bad'), '--set', 'queue=64']) == 2                   # unknown key
    assert main([*base, '--out', str(tmp_path/'bad2'), '--set', 'prior=basnet']) == 2              # unknown prior
    assert not (tmp_path/'bad').exists() and not (tmp_path/'bad2').exists()


def test_config_refuses():
    cfg = MaskContrastConfig.smoke()
    with pytest.raises(ValueError, match="no setting 'queue'.*its settings are: .*queue_size"): cfg.override({'queue': 64})
    with pytest.raises(ValueError, match='prior must be one of dataset, tokencut, spectral, centre'): cfg.override({'prior': 'basnet'})
    with pytest.raises(ValueError, match='T must be a number'): cfg.override({'T': 'hot'})


def test_queue_multiple_of_batch(tmp_path):
    with pytest.raises(ValueError, match='queue size 8 must be a multiple of the batch size 3'):
        train('maskcontrast', 'synthetic', tmp_path/'data', tmp_path/'run', steps=2, batch_size=3, **SMALL)


def test_prior_dataset_needs_saliency(tmp_path):
    with pytest.raises(ValueError, match="dataset_kw=\\{'saliency'"):
        train('maskcontrast', 'synthetic', tmp_path/'data', tmp_path/'run', steps=2, config={'prior': 'dataset'}, **SMALL)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp('ref')/'run'
    run_script(SCRIPT, d)
    return d


def test_killed_in_training_resumes_exactly(reference, tmp_path):
    d = tmp_path/'run'
    kill_after(SCRIPT, d, 'checkpoint train 4')
    rec = read_stages(d)['stages']
    assert (rec['saliency']['status'], rec['train']['status'], rec['probe']['status']) == ('done', 'running', 'pending')
    assert load_checkpoint(d/'train')['step'] == 4
    masks_written = (d/'saliency'/'masks.pt').stat().st_mtime_ns
    run_script(SCRIPT, d, '--resume')
    assert (d/'saliency'/'masks.pt').stat().st_mtime_ns == masks_written           # the saliency stage did not run again
    assert [int(s) for s in (d/'train'/'runs.txt').read_text().split()] == [0, 4]  # the training stage resumed at step 4
    assert [int(s) for s in (d/'probe'/'runs.txt').read_text().split()] == [0]
    for s in ('train', 'probe'):
        a, b = load_checkpoint(reference/s), load_checkpoint(d/s)
        assert a['step'] == b['step']
        assert a['task'].keys() == b['task'].keys()
        for k in a['task']: assert torch.equal(a['task'][k], b['task'][k]), (s, k)      # queue, key encoder, BN statistics too
        for name, opt in a['optimizers'].items():
            for i, st in opt['state'].items():
                for k, v in st.items(): assert torch.equal(v, b['optimizers'][name]['state'][i][k]), (s, name, i, k)
        assert records(reference/s) == records(d/s)
