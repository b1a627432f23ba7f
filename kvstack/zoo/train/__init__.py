"""How kvstack's own retrieval model is made: corpus, synthetic retrieval data, tokenizer, model, training.

Nothing here runs at import time or downloads anything; each step is a module with a ``main``:
``corpus`` (real text on this machine), ``tokenizer`` (byte-level BPE), ``retrieval`` (synthetic
long-context facts and questions, with ``templates`` holding every training phrase), ``model``
(a Llama in plain PyTorch whose weights load into transformers' LlamaForCausalLM), ``train``
(the curriculum run on a GPU) and ``export`` (the shipped Hugging Face directory).
"""

from pathlib import Path

# Where the shipped model lives; here (not in ``train``) so that ``data`` can use it without importing ``train``.
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "kvstack-retrieval"
