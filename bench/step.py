"""Training-step throughput: `ProbUNet.loss` (U-Net and prior once per image) vs a per-grader loop.

The per-grader formulation is written here with supuq's own modules and follows the paper authors' released
training loop (shihux/supervised_uq, train_model.py): one extra U-Net pass for the supervised term's features
before the loop, then for each grader j a full `net.forward(patch, mask_j)` (U-Net, prior, posterior(x, y_j)),
the ELBO of grader j (z ~ q, recon, analytic KL) and one prior sample decoded on the shared features for p_m.
So it runs the U-Net D+1 times, the prior D times and the posterior D times on B images each.

Same work definition on both sides: same B, D, model and loss terms (recon and KL averaged over the B x D
pairs, gamma * BCE(p_g, p_m) with S = D prior draws under weight noise, KL_w / N_train, L2), the same
`Fcomb.forward` for decoding, and the same Adam step. Only the grouping of the passes differs.

Usage: python bench/step.py [--quick] [--reps N] [--no-record]
  default: 64x64 with configs/synthetic.yaml's model (1 warm-up + 5 timed steps each) and 128x128 with the
  paper's model (filters 32-64-128-192, 3 convs per block, batch 32; a warm-up step on 4 images, then 2 timed
  steps each, because a step takes tens of seconds on 2 CPU cores). --quick: 64x64, plus 128x128 at batch 4.
  FLOPs are counted on 4 images and scaled to B (exact: every matmul and convolution is per image or pair).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import benchlib
from supuq.config import LossConfig, ModelConfig, load_config
from supuq.losses import LossTerms, kl_gaussians, reconstruction, supervised_aleatoric
from supuq.models import ProbUNet
from supuq.models.prob_unet import _rsample

from benchlib.reference import fcomb_forward_conv2d

ROOT = Path(__file__).resolve().parent.parent
D = 4
BEFORE = "ProbUNet.loss, conv2d fcomb (before)"
MEMORY_FORMAT = torch.channels_last  # what fit uses on the CPU; --nchw for the other layout


def per_grader_loss(model: ProbUNet, x: torch.Tensor, masks: torch.Tensor, n_train: int) -> LossTerms:
    """The objective of `ProbUNet.loss`, computed the way the authors' released training loop does."""
    cfg = model.loss_cfg
    b, d = masks.shape[:2]
    if cfg.supervision_samples != d:
        raise ValueError("the authors' loop draws one prior sample per grader: needs supervision_samples == D")
    y = masks.to(x.dtype)
    # Authors: `unet_features = net.unet.forward(patch)` once before the loop, for the supervised term. Here with
    # the same S weight-noise draws as ProbUNet.loss (the noise draws are elementwise; the pass is the cost).
    sup_feats = model.unet(x, draws=d) if model.has_weight_noise else model.unet(x)
    recon_sum = x.new_zeros(())
    kl_sum = x.new_zeros(())
    probs = []
    for j in range(d):
        y_j = y[:, j : j + 1]
        # Authors: net.forward(patch, mask, training=True): posterior, prior and U-Net all rerun for grader j.
        mu_q, ls_q = model.posterior(torch.cat([x, y_j - 0.5], dim=1))
        mu_p, ls_p = model.prior(x)
        feats = model.unet(x)
        # net.elbo(mask): z ~ q(z|x,y_j), analytic KL, reconstruction of grader j.
        z_q = _rsample(mu_q, ls_q, (1,))  # [B, 1, L]
        recon_sum = recon_sum + reconstruction(model.fcomb(feats, z_q)[:, 0], y_j[:, 0])
        kl_sum = kl_sum + kl_gaussians(mu_q, ls_q, mu_p, ls_p).mean()
        # net.sample(patch, unet_features): one prior sample per grader on the shared features.
        z_p = _rsample(mu_p, ls_p, (1,))
        f_j = sup_feats[:, j] if sup_feats.dim() == 5 else sup_feats
        probs.append(torch.sigmoid(model.fcomb(f_j, z_p)[:, 0].float()))
    recon, kl_z = recon_sum / d, kl_sum / d
    p_m = torch.stack(probs, dim=1).mean(dim=1)
    supervised = cfg.gamma * supervised_aleatoric(p_m, y.mean(dim=1)) if cfg.gamma > 0 else x.new_zeros(())
    kl_w = model.kl_weights() / n_train
    l2 = cfg.l2 * model.l2()
    total = recon + cfg.beta * kl_z + kl_w + supervised + l2
    return LossTerms(total=total, recon=recon, kl_z=kl_z, kl_w=kl_w, supervised=supervised, l2=l2)


def make_batch(b: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0,1] and D smooth blob masks per image (the values do not change the cost)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, size, size, generator=g)
    field = F.avg_pool2d(torch.rand(b, 1, size, size, generator=g), 9, stride=1, padding=4)
    thresholds = torch.linspace(0.52, 0.55, D).view(1, D, 1, 1)
    masks = (field > thresholds).float()
    return x, masks


def step_fn(model, opt, loss_fn, x, masks, n_train):
    def run():
        terms = loss_fn(model, x, masks, n_train)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()
        run.last = float(terms.total.detach())

    run.last = float("nan")
    return run


def count_flops(model, loss_fn, x, masks, n_train) -> float:
    """FLOPs of one forward + backward (FlopCounterMode counts matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, x, masks, n_train).total.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_case(name, model_cfg, loss_cfg, b, size, reps, warmup, before_after=False):
    torch.manual_seed(0)
    n_train = 1000
    x, masks = make_batch(b, size)
    specs = {"ProbUNet.loss": ProbUNet.loss, "per-grader": per_grader_loss}
    if before_after:
        specs[BEFORE] = ProbUNet.loss
    models = {}
    for key in specs:
        # NHWC weights for every contender, as `fit` trains on the CPU (train.channels_last: auto).
        models[key] = ProbUNet(model_cfg, loss_cfg).to(memory_format=MEMORY_FORMAT)
        if key != "ProbUNet.loss":
            models[key].load_state_dict(models["ProbUNet.loss"].state_dict())
    if before_after:
        fcomb = models[BEFORE].fcomb
        fcomb.forward = types.MethodType(fcomb_forward_conv2d, fcomb)
    contenders, flops = {}, {}
    # FLOPs are exactly proportional to B (every matmul and convolution is per image or per pair), so count them
    # on at most 4 images and scale: a counted step at 128x128 and B=32 would cost as much as a timed one.
    counted = min(b, 4)
    for key, loss_fn in specs.items():
        model = models[key]
        flops[key] = count_flops(model, loss_fn, x[:counted], masks[:counted], n_train) * b / counted
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        contenders[key] = step_fn(model, opt, loss_fn, x, masks, n_train)
        if warmup == "small":
            # One step on 4 images at the same resolution: lazy initialisation (thread pools, oneDNN, Adam state)
            # without paying a full paper-size step (tens of seconds) per contender.
            step_fn(model, opt, loss_fn, x[:4], masks[:4], n_train)()
    times = benchlib.interleaved(contenders, reps=reps, warmup=0 if warmup == "small" else warmup)
    ratios = benchlib.paired_ratios(times["per-grader"], times["ProbUNet.loss"])
    rows = []
    for key, fn in contenders.items():
        t = benchlib.median(times[key])
        warm = "1 (B=4)" if warmup == "small" else str(warmup)
        rows.append((name, key, b, f"{warm}+{reps}", t, b / t, flops[key] / 1e9, flops[key] / t / 1e9, fn.last))
    extra = None
    if before_after:
        extra = benchlib.median(benchlib.paired_ratios(times[BEFORE], times["ProbUNet.loss"]))
    return rows, benchlib.median(ratios), flops["per-grader"] / flops["ProbUNet.loss"], ratios, extra


def main(argv=None) -> int:
    p = benchlib.parser(__doc__, "64x64 plus a batch-4 128x128 case (about a minute)")
    p.add_argument("--reps", type=int, default=None, help="timed steps per contender (default 5 at 64, 2 at 128)")
    p.add_argument("--before-after", action="store_true",
                   help="also time ProbUNet.loss with the earlier conv2d Fcomb.forward (bench/benchlib/reference.py)")
    p.add_argument("--nchw", action="store_true",
                   help="contiguous NCHW weights instead of the channels_last that fit uses on the CPU")
    args = benchlib.parse(p, argv)
    if args.nchw:
        global MEMORY_FORMAT
        MEMORY_FORMAT = torch.contiguous_format

    syn = load_config(ROOT / "configs" / "synthetic.yaml")
    paper_model = ModelConfig()  # docs/architecture.md, Model: filters 32-64-128-192, 3 convs per block, fcomb 4
    paper_loss = LossConfig()  # gamma 100, S = 4
    cases = [("64x64 synthetic model", syn.model, syn.loss, 32, 64, args.reps or 5, 1)]
    if args.quick:
        cases.append(("128x128 paper model", paper_model, paper_loss, 4, 128, args.reps or 2, 1))
    else:
        cases.append(("128x128 paper model", paper_model, paper_loss, 32, 128, args.reps or 2, "small"))

    ceiling = benchlib.matmul_gflops()
    rows, summary, before_after = [], [], []
    for name, mcfg, lcfg, b, size, reps, warmup in cases:
        case_rows, ratio, flop_ratio, ratios, extra = bench_case(name, mcfg, lcfg, b, size, reps, warmup,
                                                                 args.before_after)
        rows += case_rows
        if extra is not None:
            before_after.append((name, b, extra))
        summary.append((name, D, b, ratio, " ".join(f"{r:.2f}" for r in ratios), flop_ratio, ">= 2.5",
                        "holds" if ratio >= 2.5 else "does NOT hold"))
        print(benchlib.table(["case", "formulation", "B", "warm+timed", "s/step", "img/s", "GFLOP/step",
                              "GFLOP/s", "loss"], case_rows), flush=True)
    ceiling = max(ceiling, benchlib.matmul_gflops())  # again after the steps, in case load changed
    body = (
        "Training step (loss + backward + Adam), D=4 graders: ProbUNet.loss vs the authors' per-grader loop "
        "(U-Net D+1 times, prior and posterior D times), both built from supuq modules, timed interleaved; "
        "times are medians, the speed-up is the median of per-round ratios. Weights "
        + ("NCHW (--nchw)" if args.nchw else "channels_last, as fit trains on the CPU")
        + "; large batches of the U-Net and latent nets run in cache-sized pieces (supuq/models/pieces.py).\n\n"
        + benchlib.table(["case", "formulation", "B", "warm+timed", "s/step", "img/s", "GFLOP/step", "GFLOP/s",
                          "loss"], rows)
        + "\n\n"
        + benchlib.table(["case", "D", "B", "speed-up", "per-round", "FLOP ratio", "target", ""], summary)
        + f"\n\nPractical ceiling: 2048^3 fp32 matmul {ceiling:.1f} GFLOP/s in the same run "
        "(GFLOP/step from torch.utils.flop_counter.FlopCounterMode: convolutions and matmuls, forward + backward, "
        "convolutions counted as direct ones; oneDNN may use cheaper algorithms, so GFLOP/s is an effective rate that "
        "can exceed the matmul's)."
    )
    if before_after:
        body += "\n\nFcomb before/after (same step, conv2d Fcomb.forward vs channel-first matmul):\n\n" + benchlib.table(
            ["case", "B", "speed-up of the step"], before_after)
    flags = (" --quick" if args.quick else "") + (" --mmap-threshold" if args.mmap_threshold else "")
    flags += " --nchw" if args.nchw else ""
    benchlib.report("bench/step.py" + flags, body, record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
