"""Install detectron2 into the current Python environment, for `make setup`.

Detectron2 is not on the package registry. The registry's `sal-detectron2==0.7.2` wheel carries
upstream Detectron2's Python code plus a `_C` extension compiled for CPython 3.10 only. This script
downloads that wheel, checks its sha256, and repacks it as a pure-Python `detectron2` wheel:
`_C` dropped (rotated boxes, deformable conv and the compiled COCOeval need it; Mask R-CNN does not),
dist renamed, tag set to py3-none-any, and the metadata fixed to upstream's requirements (fvcore and
iopath back in, `numpy<2` and `black` out). The repacked wheel is cached under `.cache/`.

A detectron2 that is already importable (a user's own source build with its CUDA ops) is kept.
`DETECTRON2_SRC=/path/to/detectron2` builds that source checkout instead, against the locked torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

WHEEL_NAME = "sal_detectron2-0.7.2-cp310-none-any.whl"
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/68/b4/"
    "805c6fcf02a2bc032255955745954305f8dfdb56c8b7cbb5470b7e30e2f0/" + WHEEL_NAME
)
WHEEL_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
VERSION = "0.7.2"
REPACKED_NAME = f"detectron2-{VERSION}-py3-none-any.whl"
# Upstream detectron2's setup.py pins these; the sal wheel's metadata lost them.
ADDED_REQUIREMENTS = ["fvcore<0.1.6,>=0.1.5", "iopath<0.1.10,>=0.1.7"]
DROPPED_REQUIREMENTS = ("numpy<2", "black")

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "wheels"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_verified() -> Path:
    """The original wheel, downloaded once and checked against the pinned sha256."""
    target = CACHE / WHEEL_NAME
    if target.exists() and sha256_of(target) == WHEEL_SHA256:
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    print(f"downloading {WHEEL_URL}", flush=True)
    with urllib.request.urlopen(WHEEL_URL, timeout=300) as response, partial.open("wb") as out:
        shutil.copyfileobj(response, out)
    actual = sha256_of(partial)
    if actual != WHEEL_SHA256:
        partial.unlink()
        sys.exit(f"sha256 mismatch for {WHEEL_NAME}: got {actual}, expected {WHEEL_SHA256}")
    partial.rename(target)
    return target


def fix_metadata(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith("Name: "):
            line = "Name: detectron2"
        if line.startswith("Requires-Dist: ") and line.split(": ", 1)[1].strip() in DROPPED_REQUIREMENTS:
            continue
        lines.append(line)
        if line.startswith("Requires-Python:"):
            lines.extend(f"Requires-Dist: {req}" for req in ADDED_REQUIREMENTS)
    return "\n".join(lines) + "\n"


def fix_wheel_file(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith("Root-Is-Purelib:"):
            line = "Root-Is-Purelib: true"
        if line.startswith("Tag:"):
            line = "Tag: py3-none-any"
        lines.append(line)
    return "\n".join(lines) + "\n"


def repack(original: Path) -> Path:
    """Unpack, drop `_C`, rename the dist, retag; `wheel pack` rewrites RECORD."""
    target = CACHE / REPACKED_NAME
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", str(tmp_path), str(original)], check=True)
        (unpacked,) = tmp_path.iterdir()
        for compiled in (unpacked / "detectron2").glob("_C*.so"):
            compiled.unlink()
        old_info = unpacked / f"sal_detectron2-{VERSION}.dist-info"
        new_info = unpacked / f"detectron2-{VERSION}.dist-info"
        old_info.rename(new_info)
        (new_info / "METADATA").write_text(fix_metadata((new_info / "METADATA").read_text()))
        (new_info / "WHEEL").write_text(fix_wheel_file((new_info / "WHEEL").read_text()))
        renamed = tmp_path / f"detectron2-{VERSION}"
        unpacked.rename(renamed)
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(out_dir), str(renamed)], check=True)
        (built,) = out_dir.glob("*.whl")
        shutil.move(str(built), target)
    return target


def pip_install(*args: str) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv:
        command = [uv, "pip", "install", "--python", sys.executable, *args]
    else:
        command = [sys.executable, "-m", "pip", "install", *args]
    subprocess.run(command, check=True)


def installed_detectron2() -> str | None:
    """Where an importable detectron2 lives, or None."""
    spec = importlib.util.find_spec("detectron2")
    return str(Path(spec.origin).parent) if spec and spec.origin else None


def main() -> None:
    source = os.environ.get("DETECTRON2_SRC")
    if source:
        print(f"building detectron2 from {source} against this environment's torch", flush=True)
        pip_install("--no-build-isolation", "--no-deps", "-e", source)
        return
    location = installed_detectron2()
    if location:
        print(f"detectron2 already importable from {location}: kept", flush=True)
        return
    pip_install("--no-deps", str(repack(download_verified())))


if __name__ == "__main__":
    main()
