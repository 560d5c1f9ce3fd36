"""The transformer family: ``Transformer`` (encoder-decoder), ``GPT``, ``BERT``, ``Llama``.

Each model's module docstring lists its parameter names and shapes; each has a
``config`` dict from which ``Model.from_config`` rebuilds it. Each takes the
``linear=``, ``ff=`` and ``mixer=`` layer factories (nn/blocks.py), which are
not config: ``model.factories`` names those that are not the defaults, and
_factories.py says how to rebuild such a model.
"""

from .base import Model
from .bert import BERT
from .gpt import GPT
from .greedy import greedy_complete, greedy_decode
from .llama import Llama
from .transformer import Transformer

MODELS = {cls.__name__: cls for cls in (Transformer, GPT, BERT, Llama)}

__all__ = [
    "BERT",
    "GPT",
    "MODELS",
    "Llama",
    "Model",
    "Transformer",
    "greedy_complete",
    "greedy_decode",
]
