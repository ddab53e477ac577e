"""peft tuners of peft-tags: adapter methods that peft itself does not ship.

Each subpackage is laid out like one of peft's own (``peft/tuners/<method>/``): ``config.py``
(the :class:`~peft.config.PeftConfig` subclass), ``layer.py`` (the layer that wraps a base
module), ``model.py`` (the :class:`~peft.tuners.tuners_utils.BaseTuner` that puts the layers
on the targets), and an ``__init__.py`` that registers the method with peft when the package
is first imported.

Importing this package registers every tuner in it, so that ``PeftModel.from_pretrained``
can read their saved adapters:

- :mod:`.bottleneck`: bottleneck adapters (Houlsby, Pfeiffer), peft type ``BOTTLENECK``.
"""
from . import bottleneck  # noqa: F401  (registers the BOTTLENECK peft type)
