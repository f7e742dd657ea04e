"""peft interop: export an adaptune adapter as a peft folder, and import a peft folder as an adaptune adapter.

``export_peft(adapter_dir, out_dir)`` (``adaptune export ADAPTER OUT --format peft``) writes::

    out/adapter_config.json          peft's config for the method (LoraConfig, IA3Config, PrefixTuningConfig, ...)
    out/adapter_model.safetensors    the tensors under peft's names
    out/adaptune.json                labels, pooling, how to load it, what is exact and what is not

Name mapping (``H`` = a host module's name in the base model, ``P`` = the transformers task class's
``base_model_prefix``, e.g. ``bert.``, ``model.`` (LlamaForCausalLM) or ``transformer.`` (GPT2LMHeadModel))::

    adaptune                               peft
    adapter.H.lora.lora_a.weight (r, in)   base_model.model.P.H.lora_A.weight
    adapter.H.lora.lora_b.weight (out, r)  base_model.model.P.H.lora_B.weight
    adapter.H.lora.magnitude (out,)        base_model.model.P.H.lora_magnitude_vector          (DoRA)
    adapter.H.ia3.scale (out,)             base_model.model.P.H.ia3_l (out, 1)                 (output scaling)
    adapter.H.ia3_in.scale (in,)           base_model.model.P.H.ia3_l (1, in)                  (feedforward_modules)
    adapter.prompt.weight (n, d)           prompt_embeddings (n, d)
    adapter.prefix.* (MLP or raw)          prompt_embeddings (n, L * 2 * d_kv): the computed prefixes
    head.classifier.weight / .bias         base_model[.model].C.weight / .bias, C in modules_to_save

``C`` is the last linear layer of transformers' task class (``classifier`` for BERT, ``score`` for Llama), found by
building that class on the meta device (``P`` too). The peft ``task_type`` is ``TOKEN_CLS`` (token_cls), ``SEQ_CLS``
(seq_cls) or ``CAUSAL_LM`` (causal_lm); load the export with ``PeftModel.from_pretrained(AutoModelFor<Task>.
from_pretrained(base, num_labels=k), out)``, for causal_lm ``PeftModel.from_pretrained(AutoModelForCausalLM.
from_pretrained(base), out)`` (``adaptune.json``: ``load_with``, with a ``python`` line). causal_lm exports no
head (the LM head is the base model's own, frozen: ``modules_to_save`` is null); its ``load_with`` also has the
``chat_template`` adaptune renders prompts with and the ``eos_token_id`` list that ends a reply, for
``apply_chat_template(..., chat_template=...)`` and ``generate(..., eos_token_id=...)`` (vLLM and LLaMA-Factory
load peft's LoRA folders too; only peft is tested here). A prefix trained with the reparameterisation MLP is
exported as the prefixes it computes, with ``prefix_projection: false`` (peft stores the computed prefixes too).

Exact (peft's logits equal adaptune's to float rounding in fp32, given the same inputs: adaptune feeds the
tokenizer's ``token_type_ids`` when it makes them):

* token_cls, every method, when transformers' token head is one linear layer (BERT, Llama, GPT-2 ...);
* seq_cls on decoders with ``last`` pooling: transformers takes the last non-padding token, as adaptune does (set
  ``pad_token_id``, given in ``load_with``). Its ``score`` layer has no bias, so adaptune's bias is in
  ``adaptune.json`` (``head.bias``): add it to peft's logits.
* causal_lm with lora (DoRA too) and ia3: the LM logits at every position, hence greedy generation. adaptune
  counts a decoder's positions from the attention mask, transformers from 0 unless given ``position_ids``: the
  same for rotary models (Llama) whatever the padding; learned positions (GPT-2) need ``position_ids =
  attention_mask.cumsum(-1) - 1`` for left-padded batches, which ``generate()`` passes.

Not exact (``adaptune.json`` says so in ``exact`` and ``notes``):

* seq_cls on encoders: ``BertForSequenceClassification`` puts the base model's pooler (dense + tanh on [CLS])
  before the classifier, and adaptune pools ``cls``/``mean``/``max`` without one. The classifier is still
  exported in ``modules_to_save``; to reproduce adaptune's logits take the last hidden states of the PeftModel's
  base model (``peft_model.get_base_model().base_model(...)``; drop the first n positions for prompt tuning), pool
  them as ``adaptune.json`` says with the attention mask, and apply the classifier peft loaded. This level is exact.
* prefix tuning on encoders with learned positions (BERT): peft numbers the text's positions after the prefix
  (n..n+T-1), adaptune keeps 0..T-1 (see :mod:`adaptune.methods.prefix`).
* prompt and prefix tuning on decoders: peft's classification models number positions 0..n+T-1 whatever the
  padding, adaptune counts them from the attention mask: equal for unpadded (or right-padded) inputs only. In
  causal_lm, recent peft adds n to the ``position_ids`` a prefix is given, so prefix tuning is also equal with
  ``position_ids = attention_mask.cumsum(-1) - 1`` (batched ``generate()`` included); prompt tuning drops them
  (generate one prompt at a time, or unpadded prompts).
* heads that transformers builds with more than one layer (RoBERTa's dense + out_proj): only the last linear layer
  is exported.

``import_peft(peft_dir, out_dir)`` (``adaptune import PEFT_DIR OUT``) reads a peft folder of type LORA, IA3,
PREFIX_TUNING or PROMPT_TUNING (safetensors only, never ``adapter_model.bin``) and writes an adaptune adapter onto
the config's ``base_model_name_or_path`` (or ``base``). Its task comes from peft's ``task_type`` (SEQ_CLS,
TOKEN_CLS, CAUSAL_LM) or from the caller; its head from a single linear classifier in ``modules_to_save`` (labels
from ``adaptune.json`` when the folder is an adaptune export, else ``labels`` or ``LABEL_0..``); without one the
head starts untrained. A causal_lm import has no labels and no head (the base's LM head, which it needs); its chat
template is an adaptune export's, else that of a tokenizer saved beside the adapter (``chat_template.jinja`` or
``tokenizer_config.json``, as LLaMA-Factory and many peft scripts save the one they trained with) when it differs
from the base tokenizer's, else the base tokenizer's (or adaptune's fallback). Imports are exact except seq_cls on
encoders (the pooler is not reproduced: pooling ``cls``, the head needs re-training) and the position cases above.
Not importable, with an :class:`AdapterFileError`: other peft types (LoHa, LoKr, AdaLoRA, VeRA, P-tuning ...), LoRA
with per-module ranks (``rank_pattern``/``alpha_pattern``), trained biases, LoRA on embeddings, convolutions or the
LM head, saved embedding weights (a resized vocabulary), encoder-decoder prompts, task heads of another shape (e.g.
RoBERTa's dense + out_proj classification head) and, for CAUSAL_LM, anything in ``modules_to_save`` (adaptune's
causal_lm keeps the LM head and embeddings frozen). A peft folder records no fingerprint of its base model, so only
an adaptune export's base is checked: import a peft adapter onto the base it was trained on.

The code: :mod:`~adaptune.peft_interop.exporter`, :mod:`~adaptune.peft_interop.importer` and what they share in
:mod:`~adaptune.peft_interop.common`.
"""

from __future__ import annotations

from adaptune.peft_interop.common import InteropResult
from adaptune.peft_interop.exporter import export_peft
from adaptune.peft_interop.importer import import_peft

__all__ = ["InteropResult", "export_peft", "import_peft"]
