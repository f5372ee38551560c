"""
RMU (Li et al. 2024, the WMDP paper): a baseline that unlearns by steering one layer's activations. On forget
text the layer's output is pulled to a fixed random control vector u; on retain text it is held to the frozen
model's. Only the down-projections of that layer and the two below it train. The mechanics are forward hooks
on a block's output, which no other method uses: they live here, and the method's entry is in methods.py.
"""
import copy

import torch

from losses import masks
from data.batching import batches


def layer_output(model, layer, x, mask):
    """The output of block `layer` (B, T, d), read by a forward hook during a forward pass."""
    seen = []
    handle = model.transformer.h[layer].register_forward_hook(lambda m, inp, out: seen.append(out))
    try:
        model(x, attention_mask=mask, hidden_only=True)
    finally:
        handle.remove()
    return seen[0]


def rmu(h, u, h_ref, forget, retain, alpha):
    """RMU's loss on one layer's activations h (B, T, d): forget tokens are pulled to the control vector u (d,),
    retain tokens to the frozen model's activations h_ref, each a squared error averaged over d and then over
    the tokens in the mask (open-unlearning's masked MSE):
        mean_{t in forget} |h_t - u|^2 / d  +  alpha * mean_{t in retain} |h_t - h_ref_t|^2 / d"""
    mse = lambda a, b, where: ((a[where].float() - b.float()) ** 2).mean() if where.any() else a.sum() * 0
    return mse(h, u, forget), alpha * mse(h, h_ref[retain], retain)


def rmu_setup(model, forget_ex, pad_id, layer=None, steer=4.0, seed=0, device="cpu"):
    """RMU's pieces: the steered layer (default 7/32 of the depth, the original's layer 7 of 32), a frozen
    copy of the model, the trainable down-projections (the steered layer and the two below, as the original's
    layers 5-7), and the control vector u: uniform in [0, 1)^d, drawn once from the seed, scaled to steer x
    the frozen layer's mean activation norm on (the first 64 windows of) the forget text. A fixed norm (the
    paper's 6.5) does not carry over between models. Leaves only those down-projections trainable."""
    n = model.config.n_layer
    layer = round(n * 7 / 32) if layer is None else layer
    if not 0 <= layer < n:
        raise ValueError(f"--rmu-layer must be in 0..{n - 1}, got {layer}")
    frozen = copy.deepcopy(model).eval()
    for p in list(model.parameters()) + list(frozen.parameters()):
        p.requires_grad_(False)
    down = "c_proj" if model.config.arch == "gpt2" else "down_proj"
    names = [f"transformer.h.{i}.mlp.{down}.weight" for i in range(max(0, layer - 2), layer + 1)]
    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    with torch.no_grad():
        norms = [layer_output(frozen, layer, b["x"], b["mask"])[b["y"] != -100].float().norm(dim=-1)
                 for b in batches(forget_ex[:64], pad_id, device)]
    u = torch.rand(model.config.n_embd, generator=torch.Generator().manual_seed(seed))
    u = u / u.norm() * steer * torch.cat(norms).mean().item()
    return dict(layer=layer, frozen=frozen, names=names, u=u.to(device))


def rmu_loss(model, batch, phase, hp):
    """One batch: the steered layer's output on this batch (at the labelled positions; text: every token)
    against u on forget rows and against the frozen model's (batch["h_ref"]) on retain rows."""
    forget, retain, _ = masks(batch)
    h = layer_output(model, batch["rmu_layer"], batch["x"], batch["mask"])
    parts = dict(zip(("forget_mse", "retain_mse"), rmu(h, batch["rmu_u"], batch["h_ref"], forget, retain,
                                                      hp.rmu_alpha)))
    return parts["forget_mse"] + parts["retain_mse"], parts
