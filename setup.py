"""The wheel's one build step beyond pyproject.toml: the built web front end and the default model's card go
into the package (``convlens/web_dist``, ``convlens/data``), so an installed convlens serves its page and names
its classes from any folder. An editable install reads both from the checkout instead.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
WEB_DIST = ROOT / "web" / "dist"
CARD_FILES = (ROOT / "models" / "efficientnet_lite0.json", ROOT / "models" / "imagenet_classes.txt")


class BuildWithAssets(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not (WEB_DIST / "index.html").is_file():
            # A wheel without the page would install fine and answer 503 at "/": fail here instead.
            raise FileNotFoundError(
                f"{WEB_DIST / 'index.html'} is missing: build the web front end first "
                "(make web, or cd web && npm ci && npm run build), then build the wheel"
            )
        package = Path(self.build_lib) / "convlens"
        shutil.copytree(WEB_DIST, package / "web_dist", dirs_exist_ok=True)
        (package / "data").mkdir(exist_ok=True)
        for path in CARD_FILES:
            shutil.copy2(path, package / "data" / path.name)


setup(cmdclass={"build_py": BuildWithAssets})
