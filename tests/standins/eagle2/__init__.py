"""Tiny stand-in for the remote code of nvidia/Eagle2-9B (the checkpoint's ``*.py`` files).

That code is published only inside the Hugging Face checkpoint repository, which
cannot be reached here, so these modules re-create -- written anew for this
project -- the structure our adapter and sweep support rely on: the same module
names, class names, attributes and forward contracts, for both fusion layouts of
``vision_config.moe_version_type``:

* ``None`` / ``"all_tiling"``: every tower's output brought to one
  ``grid_size`` x ``grid_size`` map, channel concatenation, then pixel shuffle
  and ``mlp1``;
* ``"convnext_512_siglip_448"``: the tower returns a dict ``{tower.name: output}``;
  only SigLIP is pixel-shuffled, then concatenated with ConvNeXt's tokens and
  fed to ``mlp1`` (LayerNorm over convnext + 4 x siglip channels first).

Sizes are tiny (28-pixel tiles, SigLIP patch 7 -> grid 4, one token grid of 2 x 2
after the shuffle), the weights random, the language model a real
``transformers`` ``Qwen2ForCausalLM`` of two small layers.  What differs from the
real files is listed in ``tiny.py`` (sizes) and ``modeling_eagle_chat.py`` (behaviour).
"""
