"""Bridges from fps-profile's masks to other training stacks.

* :mod:`fps_profile.integrations.peft`: a :class:`~fps_profile.selection.mask.Mask` as a Hugging Face
  PEFT SHiRA adapter (needs ``peft``; imported only when used);
* :mod:`fps_profile.integrations.peft_write`: a mask as an adapter directory (``write_adapter``);
* :mod:`fps_profile.integrations.peft_read`: a saved SHiRA adapter as a mask (no ``peft`` needed);
* :mod:`fps_profile.selection.shira`: the ``shira:R`` budget and the ``shira`` scope,
  which give masks SHiRA can hold exactly (no ``peft`` needed);
* :mod:`fps_profile.integrations.peft_step`: a train step through PEFT SHiRA, the twin of
  :func:`fps_profile.measure.phases.train_step_fn` (the ``peft-shira`` trainer of the cell schema).
"""
