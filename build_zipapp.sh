#!/usr/bin/env bash
# Build clstr.pyz: one executable file, the clstr package and nothing else,
# that runs with any python3 >= 3.8 (`./clstr.pyz --help`).
#
# Every module under clstr/, subpackages included, at any depth.
# Reproducible: files are added in sorted order of their paths with a fixed
# timestamp and fixed permissions, so building twice from the same tree gives
# the same bytes, whatever the files' times and modes or the order the file
# system lists them in.  The stdlib zipapp module then adds the interpreter
# line to that archive.
#
# Beside each module goes its bytecode, compiled by the Python that builds
# (unchecked-hash .pyc: no timestamp, and a zip's times are fixed anyway):
# a Python of that version imports it instead of compiling the source, ~0.1 s
# off every start; any other Python finds the magic number is not its own
# and compiles the .py as before.  The bytecode is stored, not deflated:
# zipimport reads each module's twice (its spec, then its code), and
# inflating them cost every start ~15 ms of CPU (0.4 MB more archive).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
OUT=${1:-clstr.pyz}

"$PYTHON" - "$OUT" <<'PY'
import importlib.util, io, marshal, os, sys, zipapp, zipfile

out = sys.argv[1]
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
# The archive's entry is clstr/__main__.py itself: it checks the Python
# version before importing anything of clstr's.
with open(os.path.join("clstr", "__main__.py"), "rb") as entry:
    MAIN = entry.read()

def add(archive, name, data):
    info = zipfile.ZipInfo(name, FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED if name.endswith(".pyc") else zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)

def modules(package):
    """The archive names of every .py file under ``package``, sorted."""
    names = []
    for directory, subdirectories, files in os.walk(package):
        subdirectories[:] = [name for name in subdirectories if name != "__pycache__"]
        names += [os.path.join(directory, name).replace(os.sep, "/")
                  for name in files if name.endswith(".py")]
    return sorted(names)

def bytecode(name, source):
    """The unchecked-hash .pyc of ``source`` (bytes), named ``name`` in
    tracebacks (importlib's layout: magic, flags, source hash, code)."""
    code = compile(source, name, "exec", dont_inherit=True)
    flags = (1).to_bytes(4, "little")  # hash-based, unchecked
    return (importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source)
            + marshal.dumps(code))

buffer = io.BytesIO()
with zipfile.ZipFile(buffer, "w") as archive:
    add(archive, "__main__.py", MAIN)
    for name in modules("clstr"):
        with open(name, "rb") as source:
            text = source.read()
        add(archive, name, text)
        add(archive, name + "c", bytecode(name, text))
buffer.seek(0)
temporary = out + ".tmp"
zipapp.create_archive(buffer, temporary, interpreter="/usr/bin/env python3")
os.chmod(temporary, 0o755)
os.replace(temporary, out)
print("built %s (%d bytes)" % (out, os.path.getsize(out)))
PY
