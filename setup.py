"""Ships the top-level metadata/ and hooks/ inside the package, as vzpkg/_shipped/.

Everything else is in pyproject.toml; this file only adds that copy to build_py,
so that a wheel or a non-editable install carries the templates, their keys and the
hooks (with their modes: the hooks stay executable).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("metadata", "hooks")


class BuildWithShipped(build_py):
    def run(self) -> None:
        super().run()
        for kind in SHIPPED:
            src = HERE / kind
            if not src.is_dir():
                continue
            for f in sorted(src.rglob("*")):
                if f.is_file():
                    dst = Path(self.build_lib) / "vzpkg" / "_shipped" / f.relative_to(HERE)
                    self.mkpath(str(dst.parent))
                    self.copy_file(str(f), str(dst), preserve_mode=True)


setup(cmdclass={"build_py": BuildWithShipped})
