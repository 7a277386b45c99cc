#!/usr/bin/python3
"""Checks every #include "..." of the sources against the layer order of docs/ARCHITECTURE.md.

    check_layers.py [ROOT]              exit 0 when every include keeps to the layers, 1 otherwise
    check_layers.py --self-test [ROOT]  proves the check fails: copies the tree to a temporary
                                        folder, plants one violation at a time, expects each caught

The layer table is the fenced ```layers block of docs/ARCHITECTURE.md: one row per layer,
"name | folders or files | may include". A file belongs to the layer of its longest matching
path prefix. "may include" lists layer names, or says "lower": the layer itself, every later
"lower" row (the stack, top to bottom) and the public headers. An include is resolved as the
compiler would (the including file's folder, then include/, src/, the project root, examples/);
a quoted include that resolves to no file of the tree is an error too.
"""
import os
import re
import shutil
import sys
import tempfile

CHECKED = ("src", "include", "cli", "bench", "python", "examples")
EXTENSIONS = (".cpp", ".hpp", ".h", ".cc")
SEARCH_ROOTS = ("include", "src", ".", "examples")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)

# Known violations, each (layer of the including file, included file). Keep this list short
# and say what removes each entry.
ALLOWED: set = set()


def read_layers(root):
    """[(name, [path prefixes], [allowed layer names])] from docs/ARCHITECTURE.md."""
    text = open(os.path.join(root, "docs", "ARCHITECTURE.md"), encoding="utf-8").read()
    block = re.search(r"^```layers\n(.*?)^```", text, re.M | re.S)
    if not block:
        raise SystemExit("docs/ARCHITECTURE.md has no ```layers block")
    rows = []
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, paths, uses = (cell.strip() for cell in line.split("|"))
        rows.append((name, paths.split(), uses.split()))
    stack = [name for name, _, uses in rows if uses == ["lower"]]
    layers = []
    for name, paths, uses in rows:
        if uses == ["lower"]:
            uses = stack[stack.index(name):] + ["public"]
        layers.append((name, paths, set(uses)))
    return layers


def layer_of(path, layers):
    best, best_len = None, -1
    for name, prefixes, _ in layers:
        for prefix in prefixes:
            if (path == prefix or path.startswith(prefix)) and len(prefix) > best_len:
                best, best_len = name, len(prefix)
    return best


def resolve(root, including, target):
    for base in [os.path.dirname(including)] + list(SEARCH_ROOTS):
        candidate = os.path.normpath(os.path.join(base, target))
        if os.path.isfile(os.path.join(root, candidate)):
            return candidate
    return None


def sources(root):
    for top in CHECKED:
        for folder, _, files in os.walk(os.path.join(root, top)):
            for f in sorted(files):
                if f.endswith(EXTENSIONS):
                    yield os.path.relpath(os.path.join(folder, f), root)


def check(root, allowed=ALLOWED):
    """(violations, allow-list entries used): violations are 'file:line: message' strings."""
    layers = read_layers(root)
    uses = {name: allowed_layers for name, _, allowed_layers in layers}
    violations, used = [], set()
    for path in sorted(sources(root)):
        source_layer = layer_of(path, layers)
        if source_layer is None:
            violations.append(f"{path}: in no layer of docs/ARCHITECTURE.md")
            continue
        text = open(os.path.join(root, path), encoding="utf-8").read()
        for match in INCLUDE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            target = resolve(root, path, match.group(1))
            if target is None:
                violations.append(f'{path}:{line}: #include "{match.group(1)}" is no file of the tree')
                continue
            target_layer = layer_of(target, layers)
            if target_layer in uses[source_layer]:
                continue
            if (source_layer, target) in allowed:
                used.add((source_layer, target))
                continue
            violations.append(f'{path}:{line}: {source_layer} includes "{match.group(1)}" '
                              f"({target}, layer {target_layer}); {source_layer} may include: "
                              f"{' '.join(sorted(uses[source_layer]))}")
    return violations, used


def main(root):
    violations, used = check(root)
    for v in violations:
        print(v)
    for entry in sorted(ALLOWED - used):
        print(f"note: allow-list entry {entry} is no longer needed: delete it from scripts/check_layers.py")
    n = sum(1 for _ in sources(root))
    print(f"check_layers: {n} files, {len(violations)} violation(s), {len(used)} allow-listed include kind(s)")
    return 1 if violations else 0


# Each plants one include that breaks the layers: (file, include line, what it breaks).
PLANTED = [
    ("src/core/random.hpp", '#include "module/linear.hpp"', "core reaches up into the module"),
    ("src/kernels/kernels.hpp", '#include "attention/plan.hpp"', "kernels reach up into the plan"),
    ("src/attention/validate.hpp", '#include "attention/api.cpp"', "validate reaches up into the API"),
    ("include/multihead/tensor.hpp", '#include "core/random.hpp"', "a public header includes an internal one"),
    ("cli/main.cpp", '#include "kernels/kernels.hpp"', "a front end includes a library internal"),
    ("src/module/linear.hpp", '#include "reference/compare.hpp"', "the library includes the check library"),
    ("src/reference/compare.hpp", '#include "bench/naive.hpp"', "the check library includes a front end"),
    ("examples/tiny_transformer/model.hpp", '#include "cli/inspect.hpp"', "the demo includes the CLI"),
    ("src/core/random.hpp", '#include "core/no_such_header.hpp"', "an include of no file"),
]


def self_test(root):
    failures = []
    with tempfile.TemporaryDirectory(prefix="check_layers_") as tmp:
        copy = os.path.join(tmp, "tree")
        for top in CHECKED + ("docs",):
            shutil.copytree(os.path.join(root, top), os.path.join(copy, top),
                            ignore=shutil.ignore_patterns("*.png", "__pycache__"))
        baseline, _ = check(copy)
        if baseline:
            failures.append("the unmodified copy already fails:\n  " + "\n  ".join(baseline))
        for path, line, what in PLANTED:
            target = os.path.join(copy, path)
            if not os.path.isfile(target):
                failures.append(f"{path} is missing: update PLANTED")
                continue
            original = open(target, encoding="utf-8").read()
            with open(target, "w", encoding="utf-8") as f:
                f.write(line + "\n" + original)
            violations, _ = check(copy)
            caught = [v for v in violations if v.startswith(path + ":1:")]
            print(f"{'caught' if caught else 'MISSED'}: {what}: {path}: {line}")
            if not caught:
                failures.append(f"not caught: {what} ({path}: {line})")
            with open(target, "w", encoding="utf-8") as f:
                f.write(original)
        # Without the allow-list, each allow-listed include it met is reported again.
        _, used = check(copy)
        unlisted, _ = check(copy, allowed=set())
        for layer, target in sorted(used):
            if not any(f"({target}, layer " in v and f": {layer} includes" in v for v in unlisted):
                failures.append(f"allow-listed {layer} -> {target} is not reported without the allow-list")
            else:
                print(f"caught without the allow-list: {layer} includes {target}")
    for f in failures:
        print("FAIL:", f)
    print("self-test:", "FAIL" if failures else "ok")
    return 1 if failures else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    mode_self_test = "--self-test" in args
    args = [a for a in args if a != "--self-test"]
    root = os.path.abspath(args[0] if args else os.path.join(os.path.dirname(__file__), ".."))
    sys.exit(self_test(root) if mode_self_test else main(root))
