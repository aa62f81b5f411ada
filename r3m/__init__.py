"""R³M: one namespace for the project's packages.

The repository keeps its top-level folders (``envs/``, ``tools/``, ``verifiers/``, ``train/``),
but they are imported as ``r3m.envs``, ``r3m.tools``, ``r3m.verifiers`` and ``r3m.train``:
distributions named ``envs``, ``tools``, ``train`` and ``verifiers`` exist on the package index
(``verifiers`` is a widely used library of LLM reinforcement-learning environments), and as
top-level modules whichever came first on ``sys.path`` would win. An installed copy has the
folders mapped here by ``pyproject.toml``; in a plain checkout the repository root is added to
this package's search path, so the same imports work without installing.
"""

from pathlib import Path as _Path

_HERE = _Path(__file__).resolve().parent
if not (_HERE / "envs").is_dir() and (_HERE.parent / "envs" / "__init__.py").is_file():
    __path__.append(str(_HERE.parent))  # noqa: F821  (a package's module search path)
