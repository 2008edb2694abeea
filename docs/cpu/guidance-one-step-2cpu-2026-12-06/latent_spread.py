"""How much one window's generated latents depend on the noise, per checkpoint and sampler.

    python latent_spread.py SHARDS N NAME,CHECKPOINT,mf|euler,STEPS,CFG[,RESCALE,PHI] ...

For the first N windows of the shards: FD between the generated and the real latent frames
(20-d), mean |frame-to-frame difference| ("texture", the roughness of the room tone), the spread
of one window's output over three noises ("seed-std"), and the MSE to the real latents.
"""

import glob
import sys

import torch

from dub.model.flow.guidance import Guidance
from dub.model.flow.sampling import guided_field, sample_euler, sample_meanflow
from dub.model.weights.checkpoint import load_checkpoint
from dub.workflows.metrics.fad import frechet_distance
from dub.workflows.train.data import collate, iter_samples
from dub.workflows.train.loop import conditions

torch.set_num_threads(2)


def load(path, limit):
    samples = []
    for sample in iter_samples(sorted(glob.glob(f"{path}/shard-*.tar"))):
        samples.append(sample)
        if len(samples) >= limit:
            break
    return {k: torch.from_numpy(v) for k, v in collate(samples).items()}


def fd(a, b):
    """Frechet distance between the latent frames' Gaussians (frames as samples, 20-d)."""
    return frechet_distance(a.reshape(-1, a.shape[-1]).double().numpy(), b.reshape(-1, b.shape[-1]).double().numpy())


def texture(x):
    return float((x[:, 1:] - x[:, :-1]).abs().mean())


def cat(a, b):
    return {k: torch.cat([a[k], b[k]]) for k in a}


def run(ckpt, data, sampler, steps, cfg, rescale="std", phi=0.7, seeds=(0, 1, 2)):
    net, _ = load_checkpoint(ckpt)
    net.eval()
    cond, empty = conditions(net, data)
    uncond = {k: empty[k].expand_as(v) for k, v in cond.items()}

    def predict(z, t, s, c):
        return net(z, t, s, **c)

    field = guided_field(predict, cond, uncond, Guidance(cfg=cfg, rescale=rescale, phi=phi), cat=cat)
    sample = sample_meanflow if sampler == "mf" else sample_euler
    outs = []
    with torch.no_grad():
        for seed in seeds:
            noise = torch.randn(data["latent_mean"].shape, generator=torch.Generator().manual_seed(seed))
            outs.append(sample(field, noise, steps))
    return net.unnormalize(torch.stack(outs))


if __name__ == "__main__":
    shards, n, specs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    data = load(shards, n)
    x = data["latent_mean"]
    print("real texture", round(texture(x), 4), "real std", round(float(x.std()), 4))
    for spec in specs:
        name, ckpt, sampler, steps, cfg, *rest = spec.split(",")
        extra = [rest[0], float(rest[1])] if rest else []
        o = run(ckpt, data, sampler, int(steps), float(cfg), *extra)
        print(
            f"{name:24s} FD {fd(o[0], x):8.3f}  texture {texture(o[0]):.4f}  seed-std {float(o.std(0).mean()):.4f}"
            f"  mse-to-real {float((o[0] - x).square().mean()):.4f}",
            flush=True,
        )
