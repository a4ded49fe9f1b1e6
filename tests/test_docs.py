"""The README and docs/ stay true: links, markers on command blocks, and the commands.

- Every relative Markdown link and picture in README.md, docs/*.md and benchmarks/README.md
  points to a file that exists; every `#anchor` (same file or `file.md#anchor`) is the slug
  of a heading of its target (GitHub's rule: lowercase, spaces to '-', other punctuation than
  '-' and '_' dropped; a repeated heading gets '-1', '-2', ...).
- Every fenced bash/sh block of README.md and docs/*.md stands under one marker comment
  (blank lines may come between): `<!-- commands: tested by tests/<file>.py[, ...] -->`,
  whose files exist and name every script of the block, or `<!-- commands: need real
  data -->`, `need a GPU`, `need real data and a GPU`.
- Every command of those blocks is read: python scripts, `-m` modules, torchrun scripts,
  bash scripts and make targets exist; `--config_file` exists (a run's own
  OUTPUT_DIR/config.yaml excepted) and loads with the block's KEY VALUE overrides
  through config.load_config; an override with a placeholder value only has its key checked.
  The Makefile's own script lines are read the same way.

No training, no model: the whole file runs in about a second.
"""
import importlib.util
import os
import re
import shlex
from pathlib import Path

import pytest

from config import is_config_key, load_config
from utils.errors import ReIDError

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / 'docs').glob('*.md'))
LINKED = [ROOT / 'README.md', *DOCS, ROOT / 'benchmarks' / 'README.md']
WITH_COMMANDS = [ROOT / 'README.md', *DOCS]
SHELL = ('bash', 'sh', 'shell', 'console')
TEST_FILE = r'tests/[\w./-]+\.py'
MARKER = re.compile(rf'^<!-- commands: (?:tested by (?P<tests>{TEST_FILE}(?:, {TEST_FILE})*)'
                    r'|need real data|need a GPU|need real data and a GPU) -->$')
FENCE = re.compile(r'^(`{3,}|~{3,})\s*([\w+-]*)')
LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
KEY = re.compile(r'^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)*$')
# Commands that need no check of their own.
OTHER_COMMANDS = ('pytest', 'tensorboard', 'pip', 'cd', 'export', 'mkdir', 'ls', 'cat')


def rel(path):
    return os.path.relpath(path, ROOT)


def split_fences(text):
    """(prose lines with fenced lines blanked, [(start line number, info, body lines)])."""
    prose, blocks, fence, info, start, body = [], [], None, '', 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line.strip())
        if fence is None and match:
            fence, info, start, body = match.group(1), match.group(2).lower(), number, []
            prose.append('')
        elif fence is not None and line.strip().startswith(fence) and \
                line.strip().strip(fence[0]) == '':
            blocks.append((start, info, body))
            fence = None
            prose.append('')
        elif fence is not None:
            body.append(line)
            prose.append('')
        else:
            prose.append(line)
    assert fence is None, f'unclosed code fence at line {start}'
    return prose, blocks


def slug(heading):
    """GitHub's anchor of a heading."""
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading.strip())   # a link: its text
    return re.sub(r'[^\w\- ]', '', text.lower()).replace(' ', '-')


def anchors(path):
    seen, result = {}, set()
    prose, _ = split_fences(path.read_text())
    for line in prose:
        match = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f'{base}-{count}')
    return result


def links(path):
    """(line number, target) of every link and picture outside code."""
    prose, _ = split_fences(path.read_text())
    for number, line in enumerate(prose, 1):
        line = re.sub(r'`[^`]*`', '', line)
        for match in LINK.finditer(line):
            yield number, match.group(1)


@pytest.mark.parametrize('path', LINKED, ids=rel)
def test_links_and_anchors_point_at_something(path):
    problems = []
    for number, target in links(path):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target):   # http:, https:, mailto:
            continue
        file, _, anchor = target.partition('#')
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            problems.append(f'{rel(path)}:{number}: {target}: no file {rel(dest)}')
            continue
        if anchor and (dest.suffix != '.md' or anchor not in anchors(dest)):
            problems.append(f'{rel(path)}:{number}: {target}: no heading of {rel(dest)} '
                            f'has the anchor #{anchor}')
    assert not problems, '\n'.join(problems)


def test_the_slug_rule_is_github_s():
    assert slug('Heat maps (`bench_heatmaps.py`)') == 'heat-maps-bench_heatmapspy'
    assert slug('Settings of the configs and where they come from') == \
        'settings-of-the-configs-and-where-they-come-from'
    assert slug('CLIP weights & backbones: ViT-B/16') == 'clip-weights--backbones-vit-b16'


def shell_blocks(path):
    """(start line, marker or None, body) of every fenced shell block."""
    lines = path.read_text().splitlines()
    for start, info, body in split_fences(path.read_text())[1]:
        if info not in SHELL:
            continue
        before = start - 2
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = lines[before].strip() if before >= 0 else ''
        yield start, (MARKER.match(marker) if marker.startswith('<!--') else None), body


def commands(body):
    """The block's commands as token lists: continuation lines joined, comments dropped,
    shell variables set in the block (NAME="...") expanded, a `for NAME in A B; do ... done`
    loop's commands with NAME = A."""
    variables, logical, pending = {}, [], ''
    for line in body:
        if line.rstrip().endswith('\\'):
            pending += line.rstrip()[:-1] + ' '
            continue
        logical.append(pending + line)
        pending = ''
    if pending:
        logical.append(pending)
    for line in logical:
        line = re.sub(r'\$\{?(\w+)\}?', lambda m: variables.get(m.group(1), m.group(0)), line)
        loop = re.match(r'^\s*for (\w+) in (\S+).*; do$', line)
        if loop:  # a loop's commands are checked with its first value
            variables[loop.group(1)] = loop.group(2)
            continue
        tokens = shlex.split(line, comments=True)
        if tokens == ['done']:
            continue
        if len(tokens) == 1 and re.match(r'^\w+=', tokens[0]):
            name, value = tokens[0].split('=', 1)
            variables[name] = value
            continue
        while tokens and re.match(r'^\w+=', tokens[0]):   # CUDA_VISIBLE_DEVICES=0 python ...
            tokens = tokens[1:]
        if tokens:
            yield tokens


def placeholder(value):
    return (value in ('...', '…') or '/path/to' in value or value.startswith('OUTPUT_DIR')
            or '<' in value or 'your_' in value)


def make_targets():
    text = (ROOT / 'Makefile').read_text()
    return set(re.findall(r'^([\w.-]+)\s*:(?!=)', text, re.M))


def script_problems(script, tokens):
    """What is wrong with `python script tokens...`: the script, its config, its overrides."""
    if not (ROOT / script).is_file():
        return [f'{script}: no such script']
    problems, config, overrides, i = [], '', [], 0
    while i < len(tokens):
        token = tokens[i]
        if token == '--config_file' and i + 1 < len(tokens):
            config, i = tokens[i + 1], i + 2
        elif token.startswith('--config_file='):
            config, i = token.split('=', 1)[1], i + 1
        elif KEY.match(token) and i + 1 < len(tokens):
            overrides.append((token, tokens[i + 1]))
            i += 2
        else:
            i += 1
    # a run's own config.yaml (OUTPUT_DIR/config.yaml): written by training, not shipped
    run_config = (config.endswith('/config.yaml') and not config.startswith('configs/')
                  or placeholder(config))
    if config and not run_config and not (ROOT / config).is_file():
        return [f'{script}: no config file {config}']
    unknown = [key for key, _ in overrides if not is_config_key(key)]
    if unknown:
        return [f'{script}: unknown config key(s) {", ".join(unknown)}']
    if run_config:
        return problems   # a run's own config.yaml: the keys exist, the values need it
    pairs = [item for key, value in overrides if not placeholder(value) for item in (key, value)]
    try:
        load_config(str(ROOT / config) if config else '', pairs)
    except ReIDError as err:
        problems.append(f'{script}: {config} with {" ".join(pairs)}: {err}')
    return problems


def command_problems(tokens, targets):
    """What is wrong with one command; also the scripts it names."""
    head, rest = tokens[0], tokens[1:]
    if head in ('python', 'python3'):
        if rest[:1] == ['-m']:
            module = rest[1].replace('.', '/')
            found = ((ROOT / f'{module}.py').is_file() or (ROOT / module / '__init__.py').is_file()
                     or ('.' not in rest[1] and importlib.util.find_spec(rest[1]) is not None))
            return ([] if found else [f'python -m {rest[1]}: no such module']), []
        return script_problems(rest[0], rest[1:]), [rest[0]]
    if head == 'torchrun':
        for i, token in enumerate(rest):
            if token.endswith('.py'):
                return script_problems(token, rest[i + 1:]), [token]
        return ['torchrun without a script'], []
    if head == 'make':
        missing = [t for t in rest if not t.startswith('-') and '=' not in t and t not in targets]
        return [f'make {t}: no such target in the Makefile' for t in missing], []
    if head in ('bash', 'sh'):
        return ([] if (ROOT / rest[0]).is_file() else [f'{rest[0]}: no such script']), [rest[0]]
    if head in OTHER_COMMANDS:
        return [], []
    return [f'{head}: a command test_docs.py does not know how to check'], []


def all_shell_blocks():
    return [(path, *block) for path in WITH_COMMANDS for block in shell_blocks(path)]


def test_every_command_block_carries_a_marker():
    problems = []
    for path, start, marker, _ in all_shell_blocks():
        where = f'{rel(path)}:{start}'
        if marker is None:
            problems.append(f'{where}: a shell block without a marker comment on the line '
                            'before (<!-- commands: tested by tests/<file>.py -->, or need '
                            'real data / need a GPU / need real data and a GPU)')
            continue
        for test in (marker.group('tests') or '').split(', '):
            if test and not (ROOT / test).is_file():
                problems.append(f'{where}: the marker names {test}, which does not exist')
    assert not problems, '\n'.join(problems)


def test_tested_blocks_name_tests_that_run_their_scripts():
    """A block marked 'tested by' cites tests that mention each script it runs."""
    problems, targets = [], make_targets()
    for path, start, marker, body in all_shell_blocks():
        if marker is None or not marker.group('tests'):
            continue
        tests = marker.group('tests').split(', ')
        text = ''.join((ROOT / t).read_text() for t in tests if (ROOT / t).is_file())
        for tokens in commands(body):
            for script in command_problems(tokens, targets)[1]:
                if os.path.basename(script) not in text:
                    problems.append(f'{rel(path)}:{start}: {script} is in none of {tests}')
    assert not problems, '\n'.join(problems)


def test_the_commands_of_the_docs_are_valid():
    problems, targets, count = [], make_targets(), 0
    for path, start, _, body in all_shell_blocks():
        for tokens in commands(body):
            count += 1
            problems += [f'{rel(path)}:{start}: {p}' for p in command_problems(tokens, targets)[0]]
    assert count >= 20
    assert not problems, '\n'.join(problems)


def makefile_commands():
    """The Makefile's recipe lines that run a script with $(PY), variables expanded."""
    text = (ROOT / 'Makefile').read_text().replace('\\\n', ' ')
    variables = dict(re.findall(r'^(\w+)\s*:?=\s*(.*)$', text, re.M))
    for line in text.splitlines():
        line = line.strip().lstrip('@')
        if not line.startswith('$(PY) '):
            continue
        for _ in range(3):
            line = re.sub(r'\$\((\w+)\)', lambda m: variables.get(m.group(1), m.group(0)), line)
        tokens = shlex.split(line)
        yield ['python', *tokens[1:]]


def test_the_makefile_commands_are_valid():
    lines = list(makefile_commands())
    assert any('train_pcl.py' in tokens for tokens in lines)
    problems = [p for tokens in lines for p in command_problems(tokens, make_targets())[0]]
    assert not problems, '\n'.join(problems)


def test_the_checks_catch_what_they_should():
    targets = make_targets()
    assert command_problems(['make', 'demo', 'test'], targets) == ([], [])
    assert command_problems(['make', 'nope'], targets)[0]
    assert command_problems(['python', 'train_pcl.py', '--config_file', 'configs/pcl/no.yml'],
                            targets)[0]
    assert command_problems(['python', 'nope.py'], targets)[0]
    assert 'unknown config key' in command_problems(
        ['python', 'train_pcl.py', '--config_file', 'configs/pcl/market1501.yml',
         'SOLVER.NOPE', '1'], targets)[0][0]
    assert 'SOLVER.MAX_EPOCHS' in command_problems(
        ['python', 'train_pcl.py', '--config_file', 'configs/pcl/market1501.yml',
         'SOLVER.MAX_EPOCHS', 'many'], targets)[0][0]
    assert command_problems(['python', 'train_pcl.py', '--config_file',
                             'configs/pcl/market1501.yml', 'DATASETS.ROOT_DIR', '/path/to/data'],
                            targets) == ([], ['train_pcl.py'])
    assert command_problems(['python', 'test_clipreid.py', '--config_file',
                             'output/run/config.yaml', 'TEST.WEIGHTS', 'x.pth'], targets)[0]
    block = ['RUN="--config_file configs/demo/pcl.yml TEST.WEIGHT w.pth"',
             '# a comment', 'python tools/query.py --query a.jpg \\', '    --topk 3 $RUN']
    assert list(commands(block)) == [['python', 'tools/query.py', '--query', 'a.jpg', '--topk',
                                      '3', '--config_file', 'configs/demo/pcl.yml',
                                      'TEST.WEIGHT', 'w.pth']]
    assert MARKER.match('<!-- commands: need real data and a GPU -->')
    assert MARKER.match('<!-- commands: tested by tests/test_tools.py, tests/test_plots.py -->')
    assert not MARKER.match('<!-- commands: trust me -->')


def test_the_readme_stays_a_front_page_listing_every_doc():
    readme = (ROOT / 'README.md').read_text()
    assert len(readme.splitlines()) <= 200
    listed = {target for _, target in links(ROOT / 'README.md')}
    missing = [rel(doc) for doc in DOCS if rel(doc) not in listed]
    assert not missing, f'docs not linked from the README\'s documentation table: {missing}'
