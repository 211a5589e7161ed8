"""usseg.data.external against a local HTTP server: resume, checksums, lock files, offline errors, safe extraction."""
import hashlib
import io
import json
import os
import socket
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

import usseg.data.external as ext
from usseg.data.external import (ChecksumError, DownloadError, Resource, UnpinnedChecksumWarning, UnsafeArchiveError, download,
                                 extract, fetch_resource, lock_path, verify_or_record)

from helpers import serve_files

PAYLOAD = os.urandom(200_000)
SHA = 'sha256:' + hashlib.sha256(PAYLOAD).hexdigest()
MD5 = 'md5:' + hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def site(tmp_path):
    d = tmp_path/'site'; d.mkdir()
    (d/'data.bin').write_bytes(PAYLOAD)
    return d


def free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close()
    return p


def test_download_verified(site, tmp_path):
    with serve_files(site) as srv:
        p = download(f'{srv.url}/data.bin', tmp_path/'a'/'data.bin', SHA, verbose=False)
        assert p.read_bytes() == PAYLOAD and not Path(str(p) + '.part').exists()
        download(f'{srv.url}/data.bin', tmp_path/'b.bin', MD5, verbose=False)      # md5 works too
        n = len(srv.requests)
        download(f'{srv.url}/data.bin', p, SHA, verbose=False)                     # present and verified: no request
        assert len(srv.requests) == n


def test_checksum_mismatch_deletes_and_explains(site, tmp_path):
    with serve_files(site) as srv:
        with pytest.raises(ChecksumError) as e:
            download(f'{srv.url}/data.bin', tmp_path/'data.bin', 'sha256:' + 'ab'*32, verbose=False)
    msg = str(e.value)
    assert 'data.bin' in msg and 'ab'*32 in msg and SHA.split(':')[1] in msg and 'run again' in msg
    assert not (tmp_path/'data.bin').exists() and not (tmp_path/'data.bin.part').exists()


def test_corrupt_existing_file(tmp_path):
    (tmp_path/'x.zip').write_bytes(b'truncated')
    with pytest.raises(ChecksumError, match='x.zip'):
        download('http://127.0.0.1:9/x.zip', tmp_path/'x.zip', SHA, verbose=False)
    assert not (tmp_path/'x.zip').exists()


def test_interrupted_then_resumed(site, tmp_path):
    with serve_files(site, cut_after=50_000) as srv:
        with pytest.raises(DownloadError) as e:
            download(f'{srv.url}/data.bin', tmp_path/'data.bin', SHA, retries=0, verbose=False)
        assert 'run again to resume' in str(e.value)
        assert (tmp_path/'data.bin.part').read_bytes() == PAYLOAD[:50_000]
        download(f'{srv.url}/data.bin', tmp_path/'data.bin', SHA, verbose=False)
        assert srv.requests[-1] == ('/data.bin', 'bytes=50000-')
    assert (tmp_path/'data.bin').read_bytes() == PAYLOAD


def test_interruptions_retried_in_one_call(site, tmp_path):
    with serve_files(site, cut_after=30_000, cut_times=3) as srv:
        download(f'{srv.url}/data.bin', tmp_path/'data.bin', SHA, retries=3, verbose=False)
        assert [r for _, r in srv.requests] == [None, 'bytes=30000-', 'bytes=60000-', 'bytes=90000-']
    assert (tmp_path/'data.bin').read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(site, tmp_path):
    (tmp_path/'data.bin.part').write_bytes(b'garbage that is not the start of the file')
    with serve_files(site, honour_range=False) as srv:
        download(f'{srv.url}/data.bin', tmp_path/'data.bin', SHA, verbose=False)
        assert srv.requests[0][1] is not None       # it asked for a range, got the whole file, started over
    assert (tmp_path/'data.bin').read_bytes() == PAYLOAD


def test_complete_part_416(site, tmp_path):
    (tmp_path/'data.bin.part').write_bytes(PAYLOAD)
    with serve_files(site) as srv:
        download(f'{srv.url}/data.bin', tmp_path/'data.bin', SHA, verbose=False)
    assert (tmp_path/'data.bin').read_bytes() == PAYLOAD


def test_mirrors(site, tmp_path):
    with serve_files(site) as srv:
        p = download([f'http://127.0.0.1:{free_port()}/data.bin', f'{srv.url}/missing.bin', f'{srv.url}/data.bin'],
                     tmp_path/'data.bin', SHA, verbose=False)
    assert p.read_bytes() == PAYLOAD


def test_offline_error(tmp_path):
    with pytest.raises(DownloadError) as e:
        download(f'http://127.0.0.1:{free_port()}/x.zip', tmp_path/'x.zip', verbose=False)
    assert 'offline' in str(e.value) and str(tmp_path/'x.zip') in str(e.value)
    with pytest.raises(DownloadError, match='offline'):
        download('http://no-such-host.invalid/x.zip', tmp_path/'x.zip', verbose=False, retries=0)


def test_http_error_is_not_offline(site, tmp_path):
    with serve_files(site) as srv, pytest.raises(DownloadError) as e:
        download(f'{srv.url}/nope.zip', tmp_path/'nope.zip', verbose=False)
    assert 'HTTP 404' in str(e.value) and 'seem to be offline' not in str(e.value)


def test_unpinned_lock_file(site, tmp_path):
    with serve_files(site) as srv:
        with pytest.warns(UnpinnedChecksumWarning, match='not pinned'):
            p = download(f'{srv.url}/data.bin', tmp_path/'data.bin', verbose=False)
        rec = json.loads(lock_path(p).read_text())
        assert rec['sha256'] == SHA.split(':')[1] and rec['size'] == len(PAYLOAD) and rec['url'].endswith('/data.bin')
        p.unlink()
        with warnings.catch_warnings():
            warnings.simplefilter('error')          # second download: verified against the lock, no warning
            download(f'{srv.url}/data.bin', p, verbose=False)
        (site/'data.bin').write_bytes(b'changed upstream')
        p.unlink()
        with pytest.raises(ChecksumError, match='data.bin'):
            download(f'{srv.url}/data.bin', p, verbose=False)


def test_voc_md5_matches_torchvision():
    from torchvision.datasets.voc import DATASET_YEAR_DICT
    r = ext.RESOURCES['voc2012']
    assert r.md5 == DATASET_YEAR_DICT['2012']['md5'] and r.filename == DATASET_YEAR_DICT['2012']['filename']
    assert DATASET_YEAR_DICT['2012']['url'] in r.urls


def test_registry_is_honest():
    for r in ext.RESOURCES.values():
        assert r.urls or r.manual, r.name
        assert r.licence, r.name
        if r.checksum: ext.parse_checksum(r.checksum)
    assert 'register' in ext.manual_steps('cityscapes') and 'ROOT/cityscapes/gtFine' in ext.manual_steps('cityscapes')
    with pytest.raises(ValueError, match='known: cocostuff'):
        ext.resource('nope')


# --- extraction

def tar_gz(path, members):
    with tarfile.open(path, 'w:gz') as t:
        for name, data, kind, link in members:
            ti = tarfile.TarInfo(name)
            if kind == 'dir': ti.type = tarfile.DIRTYPE
            elif kind == 'sym': ti.type, ti.linkname = tarfile.SYMTYPE, link
            elif kind == 'hard': ti.type, ti.linkname = tarfile.LNKTYPE, link
            elif kind == 'fifo': ti.type = tarfile.FIFOTYPE
            elif kind == 'chr': ti.type = tarfile.CHRTYPE
            else: ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if kind == 'file' else None)
    return path


def zip_file(path, members, links=()):
    with zipfile.ZipFile(path, 'w') as z:
        for name, data in members: z.writestr(name, data)
        for name, target in links:
            zi = zipfile.ZipInfo(name); zi.external_attr = (0o120777 << 16)
            z.writestr(zi, target)
    return path


def test_extract_tar_and_zip_idempotent(tmp_path):
    a = tar_gz(tmp_path/'a.tar.gz', [('top', b'', 'dir', None), ('top/x.txt', b'x', 'file', None),
                                     ('top/sub/y.txt', b'y', 'file', None), ('top/ln', b'', 'sym', 'x.txt'),
                                     ('top/hard', b'', 'hard', 'top/x.txt')])
    out = extract(a, tmp_path/'out', verbose=False)
    assert (out/'top'/'sub'/'y.txt').read_text() == 'y' and os.readlink(out/'top'/'ln') == 'x.txt'
    assert (out/'top'/'hard').read_text() == 'x'
    m = os.stat(out/'top'/'x.txt').st_mtime_ns
    extract(a, tmp_path/'out', verbose=False)                   # second call: nothing rewritten
    assert os.stat(out/'top'/'x.txt').st_mtime_ns == m
    assert not [p for p in out.iterdir() if p.name.startswith('.extract-')]
    z = zip_file(tmp_path/'b.zip', [('r/CamVid/val/a.png', b'a'), ('r/other.txt', b'o'), ('__MACOSX/._a', b'')])
    extract(z, tmp_path/'root'/'CamVid', subdir='r/CamVid', verbose=False)
    assert (tmp_path/'root'/'CamVid'/'val'/'a.png').read_bytes() == b'a'
    assert sorted(p.name for p in (tmp_path/'root'/'CamVid').iterdir()) == ['.usseg', 'val']


def test_extract_merges_into_existing(tmp_path):
    (tmp_path/'root'/'VOCdevkit'/'VOC2012'/'SegmentationClassAug').mkdir(parents=True)
    (tmp_path/'root'/'VOCdevkit'/'VOC2012'/'SegmentationClassAug'/'keep.png').write_bytes(b'k')
    a = tar_gz(tmp_path/'voc.tar', [('VOCdevkit/VOC2012/JPEGImages/1.jpg', b'j', 'file', None)])
    extract(a, tmp_path/'root', verbose=False)
    assert (tmp_path/'root'/'VOCdevkit'/'VOC2012'/'SegmentationClassAug'/'keep.png').exists()
    assert (tmp_path/'root'/'VOCdevkit'/'VOC2012'/'JPEGImages'/'1.jpg').read_bytes() == b'j'


@pytest.mark.parametrize('members,why', [
    ([('../evil.txt', b'x', 'file', None)], 'path with ..'),
    (([('a/../../evil.txt', b'x', 'file', None)]), 'path with ..'),
    ([('/tmp/usseg_evil.txt', b'x', 'file', None)], 'absolute path'),
    ([('top/esc', b'', 'sym', '../../outside'), ('top/esc/evil.txt', b'x', 'file', None)], 'leaves the target'),
    ([('top/abs', b'', 'sym', '/etc')], 'leaves the target'),
    ([('top/h', b'', 'hard', '/etc/passwd')], 'hard link'),
    ([('top/h', b'', 'hard', '../../etc/passwd')], 'hard link'),
    ([('top/fifo', b'', 'fifo', None)], 'special file'),
    ([('top/dev', b'', 'chr', None)], 'special file'),
])
def test_malicious_tar_refused(tmp_path, members, why):
    a = tar_gz(tmp_path/'evil.tar.gz', members)
    with pytest.raises(UnsafeArchiveError, match=why):
        extract(a, tmp_path/'out'/'dest', verbose=False)
    assert not (tmp_path/'out').exists() and not (tmp_path/'evil.txt').exists() and not Path('/tmp/usseg_evil.txt').exists()


def test_link_chain_escape_refused(tmp_path):
    "Each link alone looks inside, but following a/b/l (-> ..) then .. twice leaves the root."
    a = tar_gz(tmp_path/'chain.tar', [('a/b', b'', 'dir', None), ('a/b/l', b'', 'sym', '..'),
                                      ('m', b'', 'sym', 'a/b/l/../..'), ('m/evil.txt', b'x', 'file', None)])
    with pytest.raises(UnsafeArchiveError):
        extract(a, tmp_path/'out'/'dest', verbose=False)
    dest = tmp_path/'out'/'dest'   # following the chain from the temporary folder would have written dest/evil.txt
    assert not (dest/'evil.txt').exists() and not (tmp_path/'out'/'evil.txt').exists()
    assert not dest.exists() or not any(dest.iterdir())


@pytest.mark.parametrize('members,links,why', [
    ([('../evil.txt', b'x')], (), 'path with ..'),
    ([('/abs/evil.txt', b'x')], (), 'absolute path'),
    ([('C:/evil.txt', b'x')], (), 'absolute path'),
    ([], [('top/l', '../../x')], 'leaves the target'),
])
def test_malicious_zip_refused(tmp_path, members, links, why):
    z = zip_file(tmp_path/'evil.zip', members, links)
    with pytest.raises(UnsafeArchiveError, match=why):
        extract(z, tmp_path/'out'/'dest', verbose=False)
    assert not (tmp_path/'out').exists()


def test_not_an_archive(tmp_path):
    (tmp_path/'x.zip').write_bytes(b'hello')
    with pytest.raises(ValueError, match='neither a zip nor a tar'):
        extract(tmp_path/'x.zip', tmp_path/'out', verbose=False)


# --- a registered resource end to end, offline

def test_fetch_resource_end_to_end(tmp_path, monkeypatch):
    site = tmp_path/'site'; site.mkdir()
    zip_file(site/'seg.zip', [('SegNet-x/CamVid/val/a.png', b'a'), ('SegNet-x/CamVid/valannot/a.png', b'b'), ('SegNet-x/README', b'r')])
    with serve_files(site, cut_after=100) as srv:
        r = Resource('toy', (f'{srv.url}/seg.zip',), 'seg.zip', extract_to='CamVid', subdir='SegNet-x/CamVid', licence='test')
        monkeypatch.setitem(ext.RESOURCES, 'toy', r)
        with pytest.warns(UnpinnedChecksumWarning):
            out = fetch_resource('toy', tmp_path/'root', verbose=False)
    assert (out/'valannot'/'a.png').read_bytes() == b'b' and lock_path(tmp_path/'root'/'downloads'/'seg.zip').exists()
    assert fetch_resource('toy', tmp_path/'root', download_ok=False, verbose=False) == out   # found, verified, already extracted
    with pytest.raises(FileNotFoundError, match='cityscapes-dataset.com'):
        fetch_resource('cityscapes', tmp_path/'root')
