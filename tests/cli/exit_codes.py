#!/usr/bin/python3
"""The `multihead` command's exit status and error lines, for every subcommand.

    exit_codes.py MULTIHEAD_BINARY

Convention (cli/arguments.hpp): 0 success, 1 runtime failure (a failed check, an unreadable
or corrupt file), 2 usage error. Every error is exactly one line on stderr,
"multihead[ COMMAND]: ...", naming the argument and showing its value escaped (control bytes
and non-UTF-8 as \\xNN). A usage error prints nothing on stdout: nothing ran. bench and demo
are slow, so only their argument errors (which fail before any work) and --help run here.
"""
import os
import subprocess
import sys
import tempfile

BIN = sys.argv[1] if len(sys.argv) > 1 else sys.exit("usage: exit_codes.py MULTIHEAD_BINARY")
U64_MAX = "18446744073709551615"
failures = []
ran = 0


def run(args, timeout):
    """The finished process, or None (recorded as a failure) when it ran past timeout."""
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    try:
        return subprocess.run([BIN] + args, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        failures.append(f"multihead {args!r}: still running after {timeout} s")
        return None


def fail(args, why, p):
    failures.append(f"multihead {args!r}: {why}\n  rc {p.returncode}\n  stdout {p.stdout[-500:]!r}\n"
                    f"  stderr {p.stderr[-500:]!r}")


def error(args, rc, command, *names, exact=None):
    """Expects exit status rc and one escaped stderr line from `multihead COMMAND` holding names."""
    global ran
    ran += 1
    p = run(args, 30)  # errors come before any work
    if p is None:
        return
    line = p.stderr
    prefix = ("multihead " + command if command else "multihead") + ": "
    if p.returncode != rc:
        return fail(args, f"expected exit status {rc}", p)
    if line.count(b"\n") != 1 or not line.endswith(b"\n"):
        return fail(args, "stderr is not exactly one line", p)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return fail(args, "stderr is not UTF-8 (a value was not escaped)", p)
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text[:-1]):
        return fail(args, "stderr holds a control character (a value was not escaped)", p)
    if not text.startswith(prefix):
        return fail(args, f"stderr does not start with {prefix!r}", p)
    for name in names:
        if name not in text:
            return fail(args, f"stderr does not name {name!r}", p)
    if len(line) > 1200:
        return fail(args, "stderr is longer than 1200 bytes (a value was not cut)", p)
    if exact is not None and text != exact + "\n":
        return fail(args, f"stderr is not {exact!r}", p)
    if rc == 2 and p.stdout:
        return fail(args, "a usage error printed on stdout (something ran)", p)


def usage(args, command, *names, exact=None):
    error(args, 2, command, *names, exact=exact)


def success(args, *stdout_has, timeout=120):
    global ran
    ran += 1
    p = run(args, timeout)
    if p is None:
        return
    if p.returncode != 0:
        return fail(args, "expected exit status 0", p)
    for s in stdout_has:
        if s.encode() not in p.stdout:
            return fail(args, f"stdout lacks {s!r}", p)


FOOTER = "Exit status: 0 success; 1 runtime failure"  # the footer of every --help

# The program itself.
usage([], "", "expected a command")
usage(["nonsense"], "", "nonsense")
usage(["--nonsense"], "", "--nonsense")
success(["--help"], FOOTER, "check", "inspect", "bench", "demo")
success(["--version"], "multihead ")
for command in ["check", "inspect", "bench", "demo"]:
    success([command, "--help"], FOOTER)

# check: integers are whole decimal text in the option's range, never wrapped or clamped.
usage(["check", "--seed", "-1"], "check",
      exact=f"multihead check: --seed: expected an integer in [0, {U64_MAX}], got '-1'")
for bad in ["18446744073709551616", "abc", "", "+1", "0x10", "1.5", "1e3", " 1"]:
    usage(["check", "--seed", bad], "check", "--seed", f"got '{bad}'")
usage(["check", "--seed=-1"], "check", "--seed", "got '-1'")
usage(["check", "--seed="], "check", "--seed")
for bad in ["99999999999999999999", "9223372036854775808", "-1", "", "five", "nan"]:
    usage(["check", "-n", bad], "check", "--cases", f"got '{bad}'")
for bad in ["-1", "1025", "99999999999", "x"]:
    usage(["check", "--threads", bad], "check", "--threads", f"got '{bad}'")
usage(["check", "--kind", "nope"], "check", "--kind", "'nope'", "plain")
usage(["check", "--kind", ""], "check", "--kind", "''")
usage(["check", "--replay", "plain:abc"], "check", "--replay", "'plain:abc'", U64_MAX)
usage(["check", "--replay", "plain:-1"], "check", "--replay", "'plain:-1'")
usage(["check", "--replay", "plain:" + "9" * 30], "check", "--replay")
usage(["check", "--replay", "nokind:1"], "check", "--replay", "'nokind'")
usage(["check", "--replay", "plain"], "check", "--replay", "KIND:SEED", "'plain'")
usage(["check", "--backward=maybe"], "check", "--backward", "maybe")
usage(["check", "--cases"], "check", "--cases")
usage(["check", "--nonsense"], "check", "--nonsense")
usage(["check", "extra"], "check", "extra")
# Escape sequences and bytes outside UTF-8 come back as \xNN, never raw.
usage(["check", "--kind", "\x1b[2J\x1b]0;owned\x07"], "check", "--kind", "\\x1b[2J\\x1b]0;owned\\x07")
usage([b"check", b"--seed", b"\xff\xfe1"], "check", "--seed", "\\xff\\xfe1")
usage(["check", "--nonsense\x1b[31m"], "check", "--nonsense\\x1b[31m")
usage(["check", "--kind", "x" * 100000], "check", "--kind", "(100000 bytes)")
success(["check", "-n", "5", "-s", "1"], "PASS")
success(["check", "--replay", "plain:1", "--replay", "gqa:" + U64_MAX], "PASS")

# inspect: a missing or broken file is a runtime failure (1); bad arguments are usage (2).
with tempfile.TemporaryDirectory() as tmp:
    garbage = os.path.join(tmp, "garbage.safetensors")
    with open(garbage, "wb") as f:
        f.write(b"\xff" * 64)
    good = os.path.join(tmp, "one.safetensors")
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    with open(good, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    missing = os.path.join(tmp, "missing.safetensors")
    hostile = os.path.join(tmp, "a\x1b[2J\x1b]0;t\x07\n").encode() + b"\xff.safetensors"

    usage(["inspect"], "inspect", "file")
    usage(["inspect", ""], "inspect", "file", "''")
    usage(["inspect", good, good], "inspect", good)
    usage(["inspect", good, "--num-heads", "-1"], "inspect", "--num-heads", "'-1'")
    usage(["inspect", good, "--num-heads", "99999999999999999999"], "inspect", "--num-heads")
    usage(["inspect", good, "--num-heads", "two"], "inspect", "--num-heads", "'two'")
    usage(["inspect", good, "--prefix"], "inspect", "--prefix")
    error(["inspect", missing], 1, "inspect", missing)
    error(["inspect", garbage], 1, "inspect", garbage)
    error(["inspect", tmp], 1, "inspect", tmp)
    error([b"inspect", hostile], 1, "inspect", "a\\x1b[2J\\x1b]0;t\\x07\\x0a\\xff.safetensors")
    success(["inspect", good], "not a MultiHeadAttention module")

# bench: only argument errors (each fails before any timing).
for option, bad in [("--threads", "-1"), ("--threads", "1025"), ("--threads", "2147483648"),
                    ("--repeats", "-1"), ("--repeats", "2147483648"), ("--repeats", "many"),
                    ("--cases", "nope"), ("--cases", ""), ("--cases", "S1,"), ("--cases", "S1,,S2"),
                    ("--json", "")]:
    usage(["bench", "--quick", option, bad], "bench", option, f"'{bad}'")
usage(["bench", "--quick=maybe"], "bench", "--quick", "maybe")
usage(["bench", "--nonsense"], "bench", "--nonsense")
usage(["bench", "--cases", "S1\x1b[5m"], "bench", "--cases", "S1\\x1b[5m")

# demo: only argument errors.
for option, bad in [("--steps", "0"), ("--steps", "-1"), ("--steps", "99999999999999999999"), ("--steps", "ten"),
                    ("--heads", "0"), ("--heads", "3"), ("--heads", "128"), ("--heads", "-4"), ("--heads", ""),
                    ("--layers", "0"), ("--layers", "65"), ("--layers", "1.5"),
                    ("--seed", "-1"), ("--seed", "18446744073709551616"), ("--out", "")]:
    usage(["demo", option, bad], "demo", option, f"'{bad}'")
usage(["demo", "--nonsense"], "demo", "--nonsense")

for f in failures:
    print("FAIL", f)
print(f"{ran - len(failures)} of {ran} cases pass")
sys.exit(1 if failures else 0)
