"""One training step's forward and backward passes, with the optional regularisers of the recipe.

- R-Drop (``training.rdrop_alpha``; Liang et al., 2021): each batch goes through the model twice
  in one forward pass (the batch stacked on itself, so the two copies get different dropout
  masks); the loss is the mean of the two task losses plus alpha times the task's symmetric
  KL divergence between the two outputs (:meth:`peft_tags.tasks.Task.divergence`).
- FGM (``training.fgm_epsilon``; Miyato et al., 2017): after the clean backward pass, the
  output of the input embeddings is moved by epsilon along its loss gradient (normalised per
  title) and the loss of that adversarial pass is backpropagated too. The perturbation is on the
  embedding layer's output, not on its weights, so it works for every method, frozen
  embeddings included. The clean backward pass does not synchronise gradients between
  processes; the adversarial one does, once, for both.

Both work with any method and task; each costs about one more forward and backward pass.
"""
from __future__ import annotations

import inspect

import torch


class _EmbeddingPerturbation:
    """A forward hook on the input embeddings: ``capture`` adds a zero tensor that records the
    gradient of the loss at the embeddings; ``attack`` adds a fixed perturbation."""

    def __init__(self, embeddings: torch.nn.Module):
        self.mode, self.delta, self.r = None, None, None
        self.handle = embeddings.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        if self.mode == "capture":
            self.delta = torch.zeros_like(output, requires_grad=True)
            return output + self.delta
        if self.mode == "attack":
            return output + self.r.to(output.dtype)
        return output

    def remove(self) -> None:
        self.handle.remove()


class StepLoss:
    """Forward and backward of one batch: the task loss, the method's regulariser (AdaLoRA's
    orthogonality), R-Drop and FGM as the recipe asks. ``__call__`` returns the loss to log."""

    def __init__(self, acc, model, task, training, regularizer=None):
        self.acc, self.model, self.task, self.regularizer = acc, model, task, regularizer
        self.alpha, self.epsilon = training.rdrop_alpha, training.fgm_epsilon
        self.unwrapped = acc.unwrap_model(model)
        self.hook = _EmbeddingPerturbation(self.unwrapped.get_input_embeddings()) if self.epsilon else None
        base = self.unwrapped.get_base_model() if hasattr(self.unwrapped, "get_base_model") else self.unwrapped
        self.accepted = set(inspect.signature(base.forward).parameters)

    def close(self) -> None:
        if self.hook is not None:
            self.hook.remove()
            self.hook = None

    def _forward(self, batch: dict, options: dict):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        if not self.alpha:
            return self.task.loss(self.model(input_ids=ids, attention_mask=mask, **options).logits, batch)
        logits = self.model(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([mask, mask]), **options).logits
        a, b = logits.chunk(2)
        return (self.task.loss(a, batch) + self.task.loss(b, batch)) / 2 + self.alpha * self.task.divergence(a, b, batch)

    def __call__(self, batch: dict):
        acc, hook = self.acc, self.hook
        if hook is not None:
            hook.mode = "capture"
        options = {k: v for k, v in self.task.forward_options(batch).items() if k in self.accepted}
        loss = self._forward(batch, options)
        if self.regularizer is not None:
            extra = self.regularizer(self.unwrapped)
            loss = loss if extra is None else loss + extra
        if hook is None:
            acc.backward(loss)
            return loss
        with acc.no_sync(self.model):
            acc.backward(loss)
        g = hook.delta.grad
        if g is None:  # nothing upstream of the loss depends on the embeddings
            hook.mode = None
            return loss
        if self.alpha:  # the two stacked copies saw the same titles
            g = sum(g.chunk(2))
        g = torch.nan_to_num(g.float(), nan=0.0, posinf=0.0, neginf=0.0)
        norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
        hook.r = (self.epsilon * g / norm[:, None, None]).detach()
        hook.mode, hook.delta = "attack", None
        try:
            adversarial = self.task.loss(self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                                    **options).logits, batch)
        finally:
            hook.mode, hook.r = None, None
        acc.backward(adversarial)
        return loss
