"""`AdapterTrainer`: `transformers.Trainer` that saves and restores adapters.

The training loop, mixed precision, gradient accumulation, schedules,
evaluation, logging, checkpoint rotation and multi-process training are
`Trainer`'s, unchanged. What differs is only what a checkpoint holds: for a
model that saves itself (`save_pretrained`) and restores its trained weights
(`load_trained_weights`) - `PARAForCausalLM`, `BitFit` - a checkpoint is the
adapter (e.g. `para_config.json` + `adapter_model.safetensors`, loadable by
vLLM as it is) plus Trainer's optimizer/scheduler/RNG state, instead of a
state dict of the whole (frozen) base model. PEFT models (LoRA, (IA)^3) are
handled by `Trainer` itself.
"""

from __future__ import annotations

import os

from transformers import Trainer


def _is_adapter_module(model) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(model, "load_trained_weights")


class AdapterTrainer(Trainer):
    def _adapter_model(self):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model if _is_adapter_module(model) else None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self._adapter_model()
        if model is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            model.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = model if model is not None else self._adapter_model()
        if target is None or not _is_adapter_module(target):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        target.load_trained_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        model = self._adapter_model()
        if model is None:
            return super()._load_best_model()
        model.load_trained_weights(self.state.best_model_checkpoint)
