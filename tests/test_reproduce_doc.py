"""docs/reproduce.md agrees with the shipped configs: every config is listed, every command
loads, uses the train script of the config's method and tests the checkpoint that training
writes, and no row claims a reproduced result."""
import os
import pathlib
import re
import shlex

import pytest

from config import load_config
from utils.checkpoint import model_file_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / 'docs' / 'reproduce.md'
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'configs').rglob('*.yml')
                 if p.parent.name != 'demo')
MARKER = '<!-- commands: need real data and a GPU -->'
TRAIN_SCRIPT = {'baseline': 'train.py', 'clipreid': 'train_clipreid.py', 'pcl': 'train_pcl.py'}
TEST_SCRIPTS = ('test_clipreid.py', 'test_rerank_clipreid.py')


def _text():
    return DOC.read_text()


def _bash_blocks(text):
    """(line before the fence, [command lines]) of every ```bash block."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() == '```bash':
            end = lines.index('```', i + 1)
            body = [ln.strip() for ln in lines[i + 1:end] if ln.strip()]
            blocks.append((lines[i - 1].strip() if i else '', body))
    return blocks


def _commands(text=None):
    """Every command line: (script, config file, overrides as a tuple of KEY VALUE items)."""
    out = []
    for _, body in _bash_blocks(text or _text()):
        for line in body:
            words = shlex.split(line)
            assert words[0] == 'python' and words[2] == '--config_file', line
            out.append((words[1], words[3], tuple(words[4:])))
    return out


def _table_rows(text=None):
    """Rows of the tables that have a 'reproduced by' column: dicts keyed by header."""
    rows, header = [], None
    for line in (text or _text()).splitlines():
        if not line.startswith('|'):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if header is None:
            header = cells if 'reproduced by' in cells else []
        elif header and not set(line) <= set('|-: '):
            assert len(cells) == len(header), line
            rows.append(dict(zip(header, cells)))
    return rows


def _row_config(cell):
    """('configs/x/y.yml', overrides) of a table row's config cell."""
    parts = re.findall(r'`([^`]+)`', cell)
    return parts[0], tuple(shlex.split(parts[1])) if len(parts) > 1 else ()


def _without_weight(opts):
    pairs = list(zip(opts[0::2], opts[1::2]))
    return tuple(x for key, value in pairs if key != 'TEST.WEIGHT' for x in (key, value))


def _checkpoint(cfg):
    """The file the last epoch of the evaluated stage writes (stage 2 for CLIP-ReID)."""
    epochs = (cfg.SOLVER.STAGE2.MAX_EPOCHS if cfg.MODEL.METHOD == 'clipreid'
              else cfg.SOLVER.MAX_EPOCHS)
    return os.path.join(cfg.OUTPUT_DIR, f'{model_file_name(cfg)}_{epochs}.pth')


def test_every_shipped_config_has_a_row_and_a_train_command():
    rows = {_row_config(r['config'])[0] for r in _table_rows()}
    trained = {config for script, config, _ in _commands() if script.startswith('train')}
    assert set(CONFIGS) - rows == set()
    assert set(CONFIGS) - trained == set()
    assert rows <= set(CONFIGS) and trained <= set(CONFIGS)  # nothing stale


def test_every_row_has_a_block_of_train_test_and_rerank():
    blocks = {}
    for _, body in _bash_blocks(_text()):
        words = [shlex.split(line) for line in body]
        key = (words[0][3], tuple(words[0][4:]))
        assert [w[1] for w in words][1:] == list(TEST_SCRIPTS), body
        for w in words[1:]:  # the tests evaluate what this block's training wrote
            assert (w[3], _without_weight(tuple(w[4:]))) == key, body
        blocks[key] = body
    for row in _table_rows():
        assert _row_config(row['config']) in blocks, row['config']


def test_every_block_carries_the_marker():
    blocks = _bash_blocks(_text())
    assert blocks
    for before, body in blocks:
        assert before == MARKER, body[0]


@pytest.mark.parametrize('command', _commands(), ids=lambda c: f'{c[0]} {c[1]}')
def test_command_loads_and_matches_its_config(command):
    script, config, opts = command
    assert (ROOT / script).is_file()
    cfg = load_config(str(ROOT / config), list(opts))
    if script.startswith('train'):
        assert script == TRAIN_SCRIPT[cfg.MODEL.METHOD]
        assert 'TEST.WEIGHT' not in opts
    else:
        assert script in TEST_SCRIPTS
        assert os.path.normpath(cfg.TEST.WEIGHT) == os.path.normpath(_checkpoint(cfg))


def test_reproduced_by_is_empty_until_a_run_is_logged():
    rows = _table_rows()
    assert len(rows) >= len(CONFIGS)
    for row in rows:
        assert row['reproduced by'] == '', (
            f"{row['config']}: 'reproduced by' stays empty until a run on real data is logged; "
            'the commit that logs one links its log there and relaxes this test')


def test_published_numbers_name_their_source():
    for row in _table_rows():
        for key in ('published mAP', 'published R1'):
            value = row[key]
            assert value in ('not found', 'none') or re.fullmatch(r'\d+(\.\d+)?', value), row
            if value not in ('not found', 'none'):
                assert 'README' in row['source'] or 'Table' in row['source'], row


def test_the_checks_catch_a_renamed_checkpoint():
    text = _text().replace('ViT-B-16_60.pth', 'ViT-B-16_59.pth', 1)
    script, config, opts = next(c for c in _commands(text)
                                 if any(w.endswith('ViT-B-16_59.pth') for w in c[2]))
    cfg = load_config(str(ROOT / config), list(opts))
    assert os.path.normpath(cfg.TEST.WEIGHT) != os.path.normpath(_checkpoint(cfg))
