"""priorkit: pretrained diffusion and flow models put to work after training.

The repository keeps the design card's folders (``distill/``, ``gen3d/``, ``inverse/``, ``apps/``); installed,
they are the subpackages ``priorkit.distill``, ``priorkit.gen3d``, ``priorkit.inverse`` and ``priorkit.apps``
(setuptools ``package-dir`` in pyproject.toml), so priorkit claims one top-level name in a user's environment.
"""

__version__ = "0.2.0"
