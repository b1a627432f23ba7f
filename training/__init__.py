"""How kvstack's own retrieval model is made: corpus, synthetic retrieval data, tokenizer, model, training.

Tooling, not product: this folder sits next to the ``kvstack`` package and is not installed with
it (the model's weights and tokenizer ship in ``kvstack/zoo/kvstack-retrieval``). Run its modules
from the repository root, e.g. ``python -m training.train``; the tests import it from there too.

Nothing here runs at import time or downloads anything; each step is a module with a ``main``:
``corpus`` (real text on this machine), ``tokenizer`` (byte-level BPE), ``retrieval`` (synthetic
long-context facts and questions, with ``templates`` holding every training phrase), ``model``
(a Llama in plain PyTorch whose weights load into transformers' LlamaForCausalLM), ``train``
(the curriculum run on a GPU) and ``export`` (the shipped Hugging Face directory); ``train_throughput``
and ``retrieval_heldout`` measure training speed and trained runs.
"""

from kvstack.zoo import SHIPPED

# Where the shipped model lives; here (not in ``train``) so that ``data`` can use it without importing ``train``.
SHIPPED_DIR = SHIPPED / "kvstack-retrieval"
