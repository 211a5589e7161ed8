"""HSC through the front door (`usseg.methods.train`, `usseg train hsc`, `load_run`), and its three stages killed and
resumed.

`tests/hsc_train.py` runs `usseg train hsc --smoke` on 12 synthetic scenes with a random `efficientnet_lite0_s8`:
stage `cam` trains HSC's classifier for 4 steps, `pseudo_labels` writes 12 CAM files then 12 label files, `segmenter`
trains for 4 steps and scores itself; checkpoints every 2 steps. The test kills it (SIGKILL, with everything it
started) in `cam` after its first checkpoint, in `pseudo_labels` while it writes the CAMs and, separately, the label
maps, and in `segmenter` after its first checkpoint; each time `--resume` finishes the run, and the pseudo-labels,
the CAMs, both networks' weights and optimiser states, the logged metrics and the evaluation are bitwise those of the
uninterrupted run.
"""
import json
from pathlib import Path

import pytest
import torch

from usseg.learner import load_checkpoint
from usseg.learner.stages import read_stages
from usseg.losses.hsc import init_banks
from usseg.methods import load_run, train

from procs import assert_same_stage, kill_after, records, run_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'tests'/'hsc_train.py'
STAGES = ('cam', 'pseudo_labels', 'segmenter')
SMALL = dict(backbone='efficientnet_lite0_s8', weights='random', smoke=True, device='cpu', progress='none',
             dataset_kw={'n_images': 12, 'n_classes': 5}, eval_images=6)




def items(folder):
    return [torch.load(p, weights_only=True) for p in sorted(Path(folder).glob('*.pt'))]


def assert_same_run(ref, d):
    "Every stage done; the CAMs, pseudo-labels, metrics, weights and optimiser states are bitwise the reference's."
    rec = read_stages(d)['stages']
    assert [rec[s]['status'] for s in STAGES] == ['done'] * 3
    for sub in ('cams', 'labels'):
        a, b = items(ref/'pseudo_labels'/sub), items(d/'pseudo_labels'/sub)
        assert len(a) == len(b) == 12
        for x, y in zip(a, b): assert torch.equal(x, y), sub
    for f in ('pseudo_labels/metrics.json', 'segmenter/wsss_eval.json'):
        assert json.loads((ref/f).read_text()) == json.loads((d/f).read_text()), f
    for s in ('cam', 'segmenter'):
        assert_same_stage(ref, d, s, 4)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp('ref')/'run'
    out = run_script(SCRIPT, d)
    assert 'stage segmenter: starting' in out
    ck = load_checkpoint(d/'segmenter')
    a = load_checkpoint(d/'cam')
    assert torch.equal(a['task']['net.fc8.weight'], ck['task']['net.fc8.weight'])              # stage 3 holds stage 1's classifier
    assert not torch.equal(a['task']['segmenter.head.head.weight'], ck['task']['segmenter.head.head.weight'])   # and trained its own
    start = init_banks(2, 16, 8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a['task']['bank_cls1'], start.cls1) and torch.equal(ck['task']['bank_cls1'], a['task']['bank_cls1'])   # the banks trained in stage 1 only
    m = json.loads((d/'pseudo_labels'/'metrics.json').read_text())
    assert m['threshold_from'] == 'curve (train)' and m['split'] == 'train' and len(m['curve_miou']) == 60
    return d


@pytest.mark.parametrize('line,stopped', [('checkpoint cam 2', 'cam'), ('item pseudo_labels/cams 5', 'pseudo_labels'),
                                          ('item pseudo_labels/labels 7', 'pseudo_labels'), ('checkpoint segmenter 2', 'segmenter')])
def test_killed_and_resumed(reference, tmp_path, line, stopped):
    d = tmp_path/'run'
    kill_after(SCRIPT, d, line)
    rec = read_stages(d)['stages']
    i = STAGES.index(stopped)
    assert [rec[s]['status'] for s in STAGES] == ['done'] * i + ['running'] + ['pending'] * (2 - i)
    out = run_script(SCRIPT, d, '--resume')
    assert f'stage {stopped}: resuming' in out
    for s in STAGES[:i]: assert f'stage {s}: done, skipped' in out
    if stopped == 'pseudo_labels':                                       # only the missing files were computed again
        n = int(line.split()[-1]) + 1
        written = [l for l in out.splitlines() if l.startswith(f'item {line.split()[1]} ')]
        assert len(written) == 12 - n, written
    rec = read_stages(d)['stages']
    assert [rec[s]['attempts'] for s in STAGES] == [1] * i + [2] + [1] * (2 - i)
    assert_same_run(reference, d)


def test_train_load_run_and_baseline(tmp_path):
    run = train('hsc', 'synthetic', tmp_path/'data', out=tmp_path/'hsc', **SMALL)
    loaded = load_run(tmp_path/'hsc', device='cpu')
    img = run.spec.split_dataset('val')[0]['img'][None]
    run.task.eval()
    with torch.no_grad(): assert torch.equal(run.task.code(img), loaded.task.code(img))
    assert loaded.task.evaluate_wsss(run.spec.split_dataset('val'), device='cpu') == json.loads((tmp_path/'hsc'/'segmenter'/'wsss_eval.json').read_text())
    train('cam', 'synthetic', tmp_path/'data', out=tmp_path/'cam', **SMALL)
    ck = load_checkpoint(tmp_path/'cam'/'cam')['task']
    assert ck['net.fc8.weight'].shape[0] == 2 and not any(k.startswith('net.proj_fc') for k in ck)   # K maps, no heads
    assert set(records(tmp_path/'cam'/'cam')[-1]) >= {'cls', 'loss'} and 'psc' not in records(tmp_path/'cam'/'cam')[-1]
    # the same data, steps and segmenter recipe: the two runs differ in the classifier only
    a, b = json.loads((tmp_path/'hsc'/'config.json').read_text()), json.loads((tmp_path/'cam'/'config.json').read_text())
    ca, cb = a['task']['config'], b['task']['config']
    assert {k for k in ca if ca[k] != cb[k]} == {'plain_cam'}
    assert a['train'] == b['train']


def test_cli_and_refusals(tmp_path, capsys):
    from usseg.cli import main
    base = ['train', 'hsc', '--dataset', 'synthetic', '--data-root', str(tmp_path/'data'), '--backbone', 'efficientnet_lite0_s8',
            '--weights', 'random', '--smoke', '--device', 'cpu', '--n-images', '8', '--n-classes', '5', '--threads', '1']
    assert main([*base, '--out', str(tmp_path/'bad'), '--set', 'bogus=1']) == 2
    assert "has no setting 'bogus'" in capsys.readouterr().err
    assert main([*base, '--out', str(tmp_path/'bad2'), '--set', 'saliency="pfan"']) == 2
    assert 'saliency must be one of' in capsys.readouterr().err
    assert main([*base, '--out', str(tmp_path/'bad3'), '--set', 'foreground=["tree"]']) == 2
    assert "['tree'] are not classes" in capsys.readouterr().err
    assert main([*base, '--out', str(tmp_path/'r')]) == 0
    assert read_stages(tmp_path/'r')['stages']['segmenter']['status'] == 'done'
    assert main([*base, '--out', str(tmp_path/'r'), '--redo', 'segmenter']) == 0   # only the last stage again
    rec = read_stages(tmp_path/'r')['stages']
    assert [rec[s]['attempts'] for s in STAGES] == [1, 1, 2]
