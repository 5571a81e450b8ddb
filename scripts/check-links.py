#!/usr/bin/env python3
"""Every link in the repository's Markdown files points somewhere: a relative link to a file or
directory that is tracked, and an anchor (#...) to a heading of that file (GitHub's slugs).
Links to other sites are not fetched (CI has no network); their form is checked only.

    python3 scripts/check-links.py
"""
import os
import re
import subprocess
import sys
from urllib.parse import unquote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r'(?<!\!)\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)|\!\[[^\]]*\]\(([^)\s]+)\)|<img[^>]+src="([^"]+)"')
FENCE = re.compile(r'^(```|~~~)')


def tracked():
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True)
    files = [f for f in out.stdout.decode().split('\0') if f]
    dirs = set()
    for f in files:
        parts = f.split('/')
        for i in range(1, len(parts)):
            dirs.add('/'.join(parts[:i]))
    return set(files), dirs


def slug(heading):
    # GitHub: lower case, drop punctuation but hyphens and underscores, spaces to hyphens.
    text = re.sub(r'`([^`]*)`', r'\1', heading.strip()).lower()
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path):
    seen = {}
    result = set()
    in_fence = False
    with open(path, encoding='utf-8') as f:
        for line in f:
            if FENCE.match(line):
                in_fence = not in_fence
                continue
            if in_fence:
                continue
            m = re.match(r'^#{1,6}\s+(.*?)\s*#*\s*$', line)
            if m:
                s = slug(m.group(1))
                n = seen.get(s, 0)
                seen[s] = n + 1
                result.add(s if n == 0 else f'{s}-{n}')
    return result


def links(path):
    in_fence = False
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            if FENCE.match(line):
                in_fence = not in_fence
                continue
            if in_fence:
                continue
            line = re.sub(r'`[^`]*`', '', line)
            for m in LINK.finditer(line):
                yield number, next(g for g in m.groups() if g)


def main():
    files, dirs = tracked()
    bad = []
    checked = 0
    for md in sorted(f for f in files if f.endswith('.md')):
        base = os.path.dirname(md)
        for number, target in links(os.path.join(ROOT, md)):
            checked += 1
            where = f'{md}:{number}: {target}'
            if re.match(r'^[a-z][a-z0-9+.-]*:', target):
                if not re.match(r'^(https?://[^\s/]+\.[^\s]+|mailto:\S+@\S+)$', target):
                    bad.append(f'{where}: not a well-formed link')
                continue
            path, _, anchor = target.partition('#')
            path = unquote(path)
            dest = os.path.normpath(os.path.join(base, path)) if path else md
            dest = dest.rstrip('/')
            if dest not in files and dest not in dirs:
                bad.append(f'{where}: no such tracked file or directory ({dest})')
                continue
            if anchor and dest.endswith('.md') and anchor not in anchors(os.path.join(ROOT, dest)):
                bad.append(f'{where}: no heading #{anchor} in {dest}')
    for b in bad:
        print(b, file=sys.stderr)
    print(f'check-links: {checked} links in Markdown files, {len(bad)} broken')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
