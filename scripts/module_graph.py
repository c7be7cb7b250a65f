#!/usr/bin/env python3
"""The module graph of a crate's src/ (non-test code): which module uses which, import cycles, and
uses of items defined in the crate root (lib.rs). Usage: scripts/module_graph.py crates/gradlens/src
[--edges]. Exit 1 when there is a cycle or an arrow back into the crate root."""
import os, re, sys

def modules(src):
    mods = {}
    for dirpath, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] == 'mod':
                rel = rel[:-1]
            name = '::'.join(rel) if rel != ['lib'] and rel != ['main'] else 'crate'
            mods[name] = path
    return mods

def code(path):
    text = open(path).read()
    # drop #[cfg(test)] modules (to the end of the file: they sit last) and comments
    m = re.search(r'#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod \w+\s*\{', text)
    if m:
        text = text[:m.start()]
    text = re.sub(r'//[^\n]*', '', text)
    return text

def resolve(mod, path_parts, mods):
    """The longest module prefix of an absolute path (list of segments after crate)."""
    for n in range(len(path_parts), 0, -1):
        cand = '::'.join(path_parts[:n])
        if cand in mods:
            return cand
    return 'crate'

def main():
    src = sys.argv[1]
    mods = modules(src)
    lib_items = set()
    lib = code(mods['crate'])
    for m in re.finditer(r'pub (?:fn|struct|enum|trait|type|const|static) (\w+)', lib):
        lib_items.add(m.group(1))
    for m in re.finditer(r'pub use [^;]*?(\w+)\s*;', lib):
        lib_items.add(m.group(1))
    for m in re.finditer(r'pub use [^;]*\{([^}]*)\}\s*;', lib):
        for it in m.group(1).split(','):
            it = it.strip().split(' as ')[-1].strip()
            if it:
                lib_items.add(it)
    edges = {m: set() for m in mods}
    root_uses = []
    for mod, path in mods.items():
        if mod == 'crate':
            continue
        text = code(path)
        parts = mod.split('::')
        for m in re.finditer(r'\b(crate|super)((?:::\w+)+)', text):
            segs = m.group(2).strip(':').split('::')
            if m.group(1) == 'crate':
                base = []
            else:
                # super relative to this module (mod.rs files are their folder)
                base = parts[:-1]
                while segs and segs[0] == 'super':
                    base = base[:-1]
                    segs = segs[1:]
            full = base + segs
            target = resolve(mod, full, mods)
            if target == 'crate':
                if full and full[0] in lib_items:
                    root_uses.append((mod, full[0]))
                continue
            if target != mod:
                edges[mod].add(target)
        # `use crate::{a, b}` groups
        for m in re.finditer(r'use crate::\{([^;]*)\};', text):
            for it in re.split(r'[,{}\s]+', m.group(1)):
                it = it.split('::')[0]
                if it in lib_items:
                    root_uses.append((mod, it))
                elif it and it in mods and it != mod:
                    edges[mod].add(it)
    if '--edges' in sys.argv:
        for m in sorted(edges):
            if edges[m]:
                print(f'{m} -> {", ".join(sorted(edges[m]))}')
    # cycles: strongly connected components (Tarjan)
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    def strong(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))
    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            strong(v)
    bad = False
    for c in sccs:
        print('cycle:', ' <-> '.join(c)); bad = True
    for mod, item in sorted(set(root_uses)):
        print(f'arrow into the crate root: {mod} uses crate::{item}'); bad = True
    print(f'{len(mods)} modules, {sum(len(e) for e in edges.values())} arrows, '
          f'{len(sccs)} cycle(s), {len(set(root_uses))} arrow(s) into the root')
    sys.exit(1 if bad else 0)

main()
