"""Hostile safetensors files through the Python API (MultiHeadAttention.load / save):
ill-formed UTF-8 in names or metadata is a multihead.Error (FormatError), never a
UnicodeDecodeError; file content and paths are quoted with control bytes escaped; a FIFO,
a directory or a device as the path is an IoError at once, never a hang."""

import os
import struct
import subprocess
import sys
import textwrap

import pytest

import multihead

# Long enough for a loaded machine to start python; a blocked open() never returns.
HANG_TIMEOUT_S = 60


def file_bytes(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def entry(name: bytes, dtype: bytes = b'"F32"') -> bytes:
    return b'"' + name + b'":{"dtype":' + dtype + b',"shape":[2],"data_offsets":[0,8]}'


def load_error(path) -> multihead.Error:
    m = multihead.MultiHeadAttention(8, 2)
    with pytest.raises(multihead.Error) as info:
        m.load(str(path))
    return info.value


def assert_clean(err: multihead.Error):
    """Every part of the error is a str without control characters."""
    for part in (str(err), err.kind, err.tensor, err.dim, err.expected, err.got):
        assert isinstance(part, str)
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in part), repr(part)


ILL_FORMED = {
    "invalid_byte": b"\xff",
    "overlong": b"\xc0\xaf",
    "surrogate": b"\xed\xa0\x80",
    "above_u10ffff": b"\xf4\x90\x80\x80",
    "truncated": b"\xe2\x82",
    "stray_continuation": b"\x80",
}

PLACES = {
    "tensor_name": (lambda bad: b"{" + entry(b"w" + bad) + b"}", "header tensor name"),
    "dtype": (lambda bad: b"{" + entry(b"w", b'"F3' + bad + b'"') + b"}", "tensor 'w' dtype"),
    "metadata_key": (lambda bad: b'{"__metadata__":{"k' + bad + b'":"v"}}', "__metadata__ key"),
    "metadata_value": (lambda bad: b'{"__metadata__":{"k":"v' + bad + b'"}}', "__metadata__ 'k' value"),
}


@pytest.mark.parametrize("form", sorted(ILL_FORMED))
@pytest.mark.parametrize("place", sorted(PLACES))
def test_ill_formed_utf8_is_a_format_error_not_a_unicode_decode_error(tmp_path, place, form):
    make, field = PLACES[place]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(file_bytes(make(ILL_FORMED[form]), b"\0" * 8))
    err = load_error(path)
    assert err.kind == "FormatError"
    assert f"{field}: expected valid UTF-8, got ill-formed UTF-8" in str(err)
    assert str(path) in str(err)
    assert_clean(err)


def test_control_bytes_from_the_file_are_escaped_in_load_errors(tmp_path):
    path = tmp_path / "ctl.safetensors"
    # JSON escapes put an ESC sequence in the name and a BEL in the dtype.
    path.write_bytes(file_bytes(b"{" + entry(b"w\\u001b[2J", b'"F\\u0007"') + b"}", b"\0" * 8))
    err = load_error(path)
    assert err.kind == "FormatError"
    assert "tensor 'w\\x1b[2J' dtype" in str(err)
    assert "'F\\x07'" in err.got
    assert_clean(err)


def test_raw_control_bytes_in_the_header_are_escaped(tmp_path):
    path = tmp_path / "raw.safetensors"
    path.write_bytes(file_bytes(b'{"w":\x7f}'))  # not JSON: the parser's message quotes the DEL byte
    err = load_error(path)
    assert err.kind == "FormatError"
    assert "header JSON" in str(err) and "\\x7f" in str(err)
    assert_clean(err)


def test_paths_are_escaped_in_errors(tmp_path):
    missing = tmp_path / "a\x1b[2J\x07.safetensors"
    err = load_error(missing)
    assert err.kind == "IoError"
    assert "a\\x1b[2J\\x07.safetensors" in str(err)
    assert_clean(err)


def run_with_timeout(code: str, *args: str) -> str:
    """Runs code in a fresh python; a call that blocks fails the test instead of hanging it."""
    try:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                              timeout=HANG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"blocked for {HANG_TIMEOUT_S} s")
    assert done.returncode == 0, done.stderr
    return done.stdout


LOAD = """
    import sys, multihead
    try:
        multihead.MultiHeadAttention(8, 2).load(sys.argv[1])
        print("loaded")
    except multihead.Error as e:
        print(e.kind, "|", e)
"""

SAVE = """
    import sys, multihead
    try:
        multihead.MultiHeadAttention(8, 2).save(sys.argv[1])
        print("saved")
    except multihead.Error as e:
        print(e.kind, "|", e)
"""


def test_load_from_a_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    out = run_with_timeout(LOAD, str(fifo))
    assert out.startswith("IoError | "), out
    assert f"{fifo} type: expected a regular file, got a FIFO" in out


def test_save_onto_a_fifo_does_not_hang_or_replace_it(tmp_path):
    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    out = run_with_timeout(SAVE, str(fifo))
    assert out.startswith("IoError | "), out
    assert "expected a regular file, got a FIFO" in out
    assert os.path.exists(fifo) and not os.path.isfile(fifo)
    assert not os.path.exists(str(fifo) + ".tmp")


def test_load_from_a_directory_names_its_type(tmp_path):
    err = load_error(tmp_path)
    assert err.kind == "IoError"
    assert err.dim == "type" and err.expected == "a regular file" and err.got == "a directory"


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_load_from_an_endless_device_is_refused_at_once(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    out = run_with_timeout(LOAD, device)
    assert out.startswith("IoError | "), out
    assert "expected a regular file, got a character device" in out


def test_unexpected_tensor_names_are_escaped_in_load_mismatch_errors(tmp_path):
    # A tensor named "x<ESC>[2J" (a sequence that clears the terminal) reached the
    # ModelMismatch message of MultiHeadAttention.load raw.
    path = tmp_path / "extra.safetensors"
    path.write_bytes(file_bytes(b"{" + entry(b"x\\u001b[2J") + b"}", bytes(8)))
    err = load_error(path)
    assert err.kind == "ModelMismatch", str(err)
    assert_clean(err)
    assert "\\x1b[2J" in str(err), str(err)
