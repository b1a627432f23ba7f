"""How kvstack's own retrieval model is made: corpus, synthetic retrieval data, tokenizer, model, training.

Nothing here runs at import time or downloads anything; each step is a module with a ``main``:
``corpus`` (real text on this machine), ``tokenizer`` (byte-level BPE), ``retrieval`` (synthetic
long-context facts and questions, with ``templates`` holding every training phrase), ``model``
(a Llama in plain PyTorch whose weights load into transformers' LlamaForCausalLM), ``train``
(the curriculum run on a GPU) and ``export`` (the shipped Hugging Face directory).
"""
