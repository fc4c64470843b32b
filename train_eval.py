"""train_eval.py -- train a searched architecture from scratch: the last stage of every paper's pipeline.

It reads what any algos/*.py writes (`--genotype runs/<run>/genotype.json`, or just `runs/<run>`), a published
genotype by name (`--genotype DARTS_V2`), an NB201 arch string, or an NB101 spec as JSON ({"matrix": [[...]], "ops":
[...]}, e.g. the NAS-Bench-1Shot1 cells that algos/*.py derive), and picks the protocol from the kind of genotype and
the dataset. Any image size of >= 8 px works (the DARTS auxiliary head pools to 2x2 whatever its input, see spaces.py).

Protocols (defaults = the papers'; every default can be overridden by its flag):
  darts-cifar     DARTS evaluation network (NetworkCIFAR), C=36, 20 cells, auxiliary head weight 0.4, drop path 0.3
                  (ramped linearly from 0), cutout 16, 600 epochs, batch 96, SGD lr 0.025 cosine to 0 (per epoch),
                  momentum 0.9, wd 3e-4, grad clip 5 -- the PC-DARTS / GAEA routine (DARTS itself: batch 96, drop
                  path 0.2). Reports parameters without the auxiliary head and the final test error.
  darts-imagenet  `--dataset imagenet --data-dir DIR` (ImageFolder DIR/train, DIR/val): DARTS NetworkImageNet, mobile
                  setting, C=48, 14 cells; PC-DARTS' train_imagenet.py recipe as its README runs it: batch 1024, SGD lr
                  0.5, momentum 0.9, wd 3e-5, 250 epochs, label smoothing 0.1 (also on the auxiliary loss), linear
                  decay lr*(E-5-e)/(E-5) (a gentler slope over the last 5 epochs), warm-up x(e+1)/5 in the first 5
                  epochs, auxiliary weight 0.4, grad clip 5, drop path 0; RandomResizedCrop 224, flip, ColorJitter
                  (0.4, 0.4, 0.4, 0.2); test on Resize 256 + CenterCrop 224. Top-1 and top-5 are reported.
  nb201           the NAS-Bench-201 network (C=16, N=5) with NB201's schedule: SGD nesterov momentum 0.9, lr 0.1
                  cosine to 0 per iteration, wd 5e-4, batch 256, 200 epochs, crop + flip, on cifar10 / cifar100 /
                  imagenet16-120. `--nb201-table` prints the benchmark's accuracy of the same cell beside the run's.
  enas-cifar      ASNG-NAS's retraining of an ENAS micro cell (main_classification.py): 20 cells, C = the largest value
                  whose network has <= --params-limit (4.0) million parameters without the auxiliary head (binary
                  search, as the official code), 600 epochs, batch 80, SGD lr 0.025 cosine (per epoch) to 0, momentum
                  0.9, wd 3e-4, grad clip 5, drop path 0.3 (linear ramp), auxiliary weight 0.4, cutout 16.
  cae-inpainting  ASNG-NAS's retraining of a CAE genotype (main_inpainting_int.py): MSE reconstruction of the masked
                  image (--mask center | random-pixel | random-half), Adam lr 1e-3, batch 16, grad clip 5, lr x0.1 after
                  2/5 and 4/5 of 500k iterations, on celeba (DATA_DIR/celebA/{train,test}, default) / svhn / any array
                  set resized to --image-size (64); test MSE, PSNR, SSIM. One process, no --resume.
  nb101           the NAS-Bench-101 network (stem 128, 3 stacks x 3 cells) with NB101's schedule: RMSProp as TF1
                  computes it (decay 0.9, momentum 0.9, epsilon 1.0), lr 0.2 cosine to 0 per step, L2 1e-4 on all
                  weights, batch 256, 108 epochs, crop + flip. (NB101's config says lr 0.1, but its model_fn scales it
                  by the 2 TPU shards it ran on.)

Reproduce (CIFAR-10, DARTS_V2: expect about 2.6-2.8% test error, 3.35M parameters; 600 epochs):
    python train_eval.py --genotype DARTS_V2
    torchrun --nproc_per_node 4 train_eval.py --genotype runs/<search run>/genotype.json --amp
ImageNet (mobile setting), 8 GPUs:
    torchrun --nproc_per_node 8 train_eval.py --genotype DARTS_V2 --dataset imagenet --data-dir /data/imagenet --amp
NAS-Bench-201 cell with the benchmark's figure beside it:
    python train_eval.py --genotype "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|" \\
        --nb201-table ../shared/data/nb201/nb201_oracle.csv.gz
Recurrent cells (`--genotype DARTS_V2_RNN`, or what `algos/darts.py --space rnn` / `algos/nasp.py --space rnn`
write) retrain as DARTS' rnn/train.py does, on --dataset ptb (default) or wt2 (NASP's Table 7 transfer): see
RNN_PROTOCOL below; their flags are their own (--emsize, --nhid, --bptt, the dropouts, --nonmono, ...):
    python train_eval.py --genotype DARTS_V2_RNN --data-dir data/penn
    python train_eval.py --genotype runs/nasp_rnn_ptb_s3 --dataset wt2 --data-dir data
CPU quick start on the real CIFAR-10 subset:
    python train_eval.py --genotype DARTS_V2 --dataset ../shared/data/images/cifar10_partial.npz --C 16 --layers 8 \\
        --batch-size 64 --train-subset 1024 --epochs 2 --device cpu
Resume a killed, preempted (SIGTERM) or Ctrl-C'd run: the same command plus --resume (the line printed when it
stopped; on CPU the result equals an uninterrupted run's):
    python train_eval.py --genotype DARTS_V2 --resume

Outputs in runs/{run_name}/: args.json (resolved), metrics.jsonl (one line per epoch), checkpoint.pt (every epoch,
written atomically), summary.json (parameters, final test accuracy / error, benchmark figure), cell.dot; the run
lifecycle is the searches' (data.Run: resume, lock, progress, --tensorboard, the non-finite stop). Under torchrun every
rank trains on its DistributedSampler shard (--batch-size is the global batch) and only rank 0 writes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

_here = Path(__file__).resolve().parent
if not (_here / "spaces.py").exists():
    sys.path.insert(0, str(_here.parent))
import data  # noqa: E402
import spaces  # noqa: E402

PROTOCOLS = {  # per protocol: network size, optimiser, schedule and regularisers (see the header)
    # DEVIATION: drop path 0.3 (GAEA's README, PC-DARTS' train.py) instead of DARTS' train.py 0.2 — the protocol of the
    # GAEA / PC-DARTS tables this repository reproduces; batch 96 is all three's.
    "darts-cifar": dict(C=36, layers=20, epochs=600, batch_size=96, lr=0.025, lr_min=0.0, momentum=0.9, wd=3e-4,
                        grad_clip=5.0, auxiliary_weight=0.4, drop_path=0.3, cutout=16, label_smoothing=0.0,
                        warmup_epochs=0, optimizer="sgd", schedule="cosine-epoch"),
    "darts-imagenet": dict(C=48, layers=14, epochs=250, batch_size=1024, lr=0.5, lr_min=0.0, momentum=0.9, wd=3e-5,
                           grad_clip=5.0, auxiliary_weight=0.4, drop_path=0.0, cutout=0, label_smoothing=0.1,
                           warmup_epochs=5, optimizer="sgd", schedule="linear-epoch"),
    # DEVIATION: NB201 reports CIFAR-100 / ImageNet16-120 on half of the test set (x-test); we test on all of it.
    "nb201": dict(C=16, layers=5, epochs=200, batch_size=256, lr=0.1, lr_min=0.0, momentum=0.9, wd=5e-4,
                  grad_clip=0.0, auxiliary_weight=0.0, drop_path=0.0, cutout=0, label_smoothing=0.0,
                  warmup_epochs=0, optimizer="sgd-nesterov", schedule="cosine-step"),
    # DEVIATION: NB101 also keeps lr 0 for its very first step, trains on a 40k split (use --train-subset 40000) and
    # uses TF's BN momentum 0.997 (0.003 in PyTorch terms); here every step learns and BN keeps PyTorch's 0.1.
    "nb101": dict(C=128, layers=3, epochs=108, batch_size=256, lr=0.2, lr_min=0.0, momentum=0.9, wd=1e-4,
                  grad_clip=0.0, auxiliary_weight=0.0, drop_path=0.0, cutout=0, label_smoothing=0.0,
                  warmup_epochs=0, optimizer="rmsprop-tf", schedule="cosine-step"),
    # ASNG-NAS (shirakawas/ASNG-NAS classification/main_classification.py): C from --params-limit, see enas_channels
    "enas-cifar": dict(C=None, layers=20, epochs=600, batch_size=80, lr=0.025, lr_min=0.0, momentum=0.9, wd=3e-4,
                       grad_clip=5.0, auxiliary_weight=0.4, drop_path=0.3, cutout=16, label_smoothing=0.0,
                       warmup_epochs=0, optimizer="sgd", schedule="cosine-epoch"),
    # ASNG-NAS inpainting (main_inpainting_int.py): Adam 1e-3, lr x0.1 at 2/5 and 4/5 of 500k iterations, see run_cae
    "cae-inpainting": dict(C=0, layers=0, epochs=None, batch_size=16, lr=1e-3, lr_min=0.0, momentum=0.9, wd=0.0,
                           grad_clip=5.0, auxiliary_weight=0.0, drop_path=0.0, cutout=0, label_smoothing=0.0,
                           warmup_epochs=0, optimizer="adam", schedule="multistep-iter"),
}
COMMON = dict(dataset="cifar10", data_dir="./data", train_subset=0, seed=0, device="auto", out_dir="runs", amp=False)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a searched architecture from scratch (defaults: the protocol "
                                            "of the genotype's paper, see the file header).")
    p.add_argument("--genotype", default=None, help="genotype.json path (or the search run's directory), published name (DARTS_V2, PC_DARTS, NASP, "
                   "...), NB201 arch string, or JSON (DARTS genotype, NB201 arch, NB101 spec {matrix, ops})")
    p.add_argument("--dataset", default=None, help="cifar10 (default) | cifar100 | imagenet16-120 | synthetic | "
                   "path/to/file.npz | imagenet (ImageFolder at --data-dir with train/ and val/)")
    p.add_argument("--data-dir", default=None, help="where datasets are (or are downloaded to); default ./data")
    p.add_argument("--train-subset", type=data.nonneg_int, default=None, help="use only N training images (0 = all)")
    p.add_argument("--epochs", type=data.positive_int, default=None, help="epochs (darts-cifar 600, imagenet 250, nb201 200, nb101 108)")
    p.add_argument("--batch-size", type=data.positive_int, default=None, help="global batch size, split over the ranks")
    p.add_argument("--C", type=data.positive_int, default=None, help="initial channels (darts 36 / imagenet 48, nb201 16, nb101 stem 128)")
    p.add_argument("--layers", type=data.positive_int, default=None, help="darts: cells in all (20 / 14); nb201: cells per stage (5); "
                   "nb101: cells per stack (3)")
    p.add_argument("--lr", type=data.positive_float, default=None, help="initial learning rate")
    p.add_argument("--lr-min", type=data.nonneg_float, default=None, help="final learning rate of cosine schedules")
    p.add_argument("--momentum", type=data.fraction, default=None, help="momentum (SGD, or RMSProp for nb101)")
    p.add_argument("--wd", type=data.nonneg_float, default=None, help="weight decay (L2, on all weights)")
    p.add_argument("--grad-clip", type=data.nonneg_float, default=None, help="gradient-norm clip (0 = none)")
    p.add_argument("--auxiliary-weight", type=data.nonneg_float, default=None, help="DARTS auxiliary head loss weight (0 = no head)")
    p.add_argument("--drop-path", type=data.fraction, default=None, help="DARTS drop-path probability at the last epoch")
    p.add_argument("--cutout", type=data.nonneg_int, default=None, help="cutout length (0 = off; array datasets only)")
    p.add_argument("--label-smoothing", type=data.fraction, default=None, help="label smoothing of the training loss")
    p.add_argument("--warmup-epochs", type=data.nonneg_int, default=None, help="linear lr warm-up: x(e+1)/W in epoch e < W")
    p.add_argument("--workers", type=data.nonneg_int, default=None, help="imagenet: data-loading worker processes (default 8)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (mixed precision)")
    p.add_argument("--nb201-table", default=None, help="NB201 table (arch_str + accuracy columns): print the "
                   "benchmark's accuracy of the same cell next to the run's")
    p.add_argument("--params-limit", type=data.positive_float, default=None, help="enas: C = the largest with <= this many "
                   "million parameters, auxiliary head excluded (default 4.0, ASNG-NAS's rule); --C overrides it")
    p.add_argument("--mask", default=None, choices=data.INPAINT_MASKS, help="cae: the corruption (default center)")
    p.add_argument("--image-size", type=data.int_at_least(8), default=None, help="cae: images resized to this (default 64)")
    p.add_argument("--seed", type=data.seed, default=None, help="random seed (default 0)")
    p.add_argument("--device", type=data.device_name, default=None, help="auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--out-dir", type=data.out_dir, default=None, help="results go to OUT_DIR/RUN_NAME/ (default runs)")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: eval_{space}_{genotype}_{dataset}_s{seed}")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    args = p.parse_args(argv)
    if args.genotype is None:
        p.error("--genotype is required")
    return args


def read_genotype(text: str):
    """spaces.parse_genotype, plus NB101 specs given as bare {matrix, ops} JSON (no 'space' key)."""
    if text.strip().startswith("{"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise spaces.GenotypeError(f"genotype is not valid JSON: {err}") from err
        if isinstance(d, dict) and "space" not in d and {"matrix", "ops"} <= set(d):
            return spaces.NB101Spec.from_json(d)
    return spaces.parse_genotype(text)


def protocol_of(genotype, dataset: str) -> str:
    if isinstance(genotype, (spaces.EnasGenotype, spaces.CAEGenotype)) and dataset != "imagenet":
        return "enas-cifar" if isinstance(genotype, spaces.EnasGenotype) else "cae-inpainting"
    if isinstance(genotype, spaces.DartsGenotype):
        return "darts-imagenet" if dataset == "imagenet" else "darts-cifar"
    if dataset == "imagenet":
        raise spaces.SpaceError("--dataset imagenet (ImageFolder) is for DARTS genotypes; NB201 / NB101 / ENAS / CAE "
                                "cells train on cifar10 / cifar100 / imagenet16-120 / .npz arrays (CAE: also celeba, svhn)")
    return "nb201" if isinstance(genotype, spaces.NB201Genotype) else "nb101"


def resolve(args: argparse.Namespace, genotype) -> argparse.Namespace:
    """Fill every flag left unset with the protocol's default; reject flags the protocol has no use for."""
    if args.dataset is None and isinstance(genotype, spaces.CAEGenotype):
        args.dataset = "celeba"  # the official inpainting data
    for k, v in COMMON.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.protocol = protocol_of(genotype, args.dataset)
    proto = PROTOCOLS[args.protocol]
    is_darts, folder = args.protocol.startswith(("darts", "enas")), args.dataset == "imagenet"
    for flag, ok in (("auxiliary_weight", is_darts), ("drop_path", is_darts), ("cutout", not folder),
                     ("workers", folder), ("lr_min", proto["schedule"] != "linear-epoch"),
                     ("nb201_table", args.protocol == "nb201"), ("params_limit", args.protocol == "enas-cifar"),
                     ("mask", args.protocol == "cae-inpainting"), ("image_size", args.protocol == "cae-inpainting")):
        if getattr(args, flag) and not ok:
            raise spaces.SpaceError(f"--{flag.replace('_', '-')} does not apply to the {args.protocol} protocol")
    for k, v in proto.items():
        if k in ("optimizer", "schedule"):
            setattr(args, k, v)
        elif getattr(args, k) is None:
            setattr(args, k, v)
    if folder and args.workers is None:
        args.workers = 8
    if args.protocol == "enas-cifar" and args.C is not None and args.params_limit is not None:
        raise spaces.SpaceError("--C and --params-limit both choose the channels: give one")
    if args.protocol == "cae-inpainting":
        args.mask, args.image_size = args.mask or "center", args.image_size or 64
    if is_darts and args.layers < 3:
        raise spaces.SpaceError(f"--layers {args.layers}: a DARTS network needs >= 3 cells (reductions at layers//3 "
                                f"and 2*layers//3)")
    if args.optimizer == "sgd-nesterov" and args.momentum == 0:
        raise spaces.SpaceError("--momentum 0: the nb201 protocol's nesterov SGD needs a momentum > 0")
    if args.schedule == "linear-epoch" and args.epochs <= 5:
        raise spaces.SpaceError(f"--epochs {args.epochs}: the darts-imagenet schedule decays over epochs - 5, so it "
                                f"needs > 5 epochs")
    return args


# ----------------------------------------------------------------------------------------------- network
def build_network(genotype, args, num_classes: int, in_channels: int = 3) -> nn.Module:
    aux = args.auxiliary_weight > 0
    if args.protocol == "enas-cifar":
        return enas_network(genotype, args, num_classes, in_channels)
    if args.protocol == "darts-cifar":
        return spaces.DartsEvalNetwork(genotype, args.C, args.layers, num_classes, aux, in_channels=in_channels)
    if args.protocol == "darts-imagenet":
        return spaces.DartsEvalNetworkImageNet(genotype, args.C, args.layers, num_classes, aux, in_channels)
    if args.protocol == "nb201":
        return spaces.NB201Network(genotype, args.C, args.layers, num_classes, in_channels)
    return spaces.NB101Network(genotype, args.C, 3, args.layers, num_classes, in_channels)


def forward(model, x):
    """(logits, auxiliary logits or None) for every network kind."""
    out = model(x)
    return out if isinstance(out, tuple) else (out, None)


class TFRMSprop(torch.optim.Optimizer):
    """RMSProp as TF1's RMSPropOptimizer computes it (NB101 trains with it), which differs from torch.optim.RMSprop:
    the mean square starts at 1, epsilon sits inside the square root and the lr inside the momentum:
        ms <- rho ms + (1 - rho) g^2;  mom <- mu mom + lr g / sqrt(ms + eps);  w <- w - mom,
    with g = grad + wd w (NB101 adds wd/2 ||w||^2 over all trainable variables to its loss)."""

    def __init__(self, params, lr, rho=0.9, momentum=0.9, eps=1.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, rho=rho, momentum=momentum, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                state = self.state[p]
                if not state:
                    state["ms"], state["mom"] = torch.ones_like(p), torch.zeros_like(p)
                state["ms"].mul_(group["rho"]).addcmul_(g, g, value=1 - group["rho"])
                state["mom"].mul_(group["momentum"]).addcdiv_(g, (state["ms"] + group["eps"]).sqrt(), value=group["lr"])
                p.sub_(state["mom"])
        return loss


def make_optimizer(args, params):
    if args.optimizer == "rmsprop-tf":
        return TFRMSprop(params, args.lr, momentum=args.momentum, weight_decay=args.wd)
    return torch.optim.SGD(params, args.lr, momentum=args.momentum, weight_decay=args.wd,
                           nesterov=args.optimizer == "sgd-nesterov")


def lr_factor(step: int, steps_per_epoch: int, args) -> float:
    """Learning rate at optimiser step `step` (0-based) as a fraction of --lr."""
    epoch, E = step // steps_per_epoch, args.epochs
    floor = args.lr_min / args.lr
    if args.schedule == "cosine-epoch":  # DARTS: CosineAnnealingLR stepped once per epoch
        f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * epoch / E))
    elif args.schedule == "cosine-step":  # NB201 / NB101: cosine per iteration
        f = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * step / (E * steps_per_epoch)))
    else:  # "linear-epoch", PC-DARTS ImageNet: linear to ~0 at E-5, then a gentler slope over the last 5 epochs
        f = (E - 5 - epoch) / (E - 5) if E - epoch > 5 else (E - epoch) / ((E - 5) * 5)
    if epoch < args.warmup_epochs:  # PC-DARTS warm-up: x(e+1)/5 for e < 5 (its rule for batches > 256)
        f *= (epoch + 1) / args.warmup_epochs
    return f


# -------------------------------------------------------------------------------------------------- data
def load_data(args, rank: int, world: int):
    """(train dataset, test dataset, DataInfo, (train, test) batch transforms, augmentation generator). Datasets
    serve uint8 NCHW images; `data.Augment` crops / flips / cutouts (arrays) and normalises on the device. The
    generator is seeded alike on every rank and draws for the global batch (Augment's `shard`), so it resumes exactly."""
    gen = torch.Generator().manual_seed(args.seed)
    if args.dataset == "imagenet":
        from torchvision import datasets, transforms  # only the ImageFolder path needs it
        root = Path(args.data_dir)
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise data.DataError(f"--dataset imagenet needs ImageFolder directories {root}/train and {root}/val")
        train_dir, test_dir = datasets.ImageFolder(root / "train"), datasets.ImageFolder(root / "val")
        if test_dir.classes != train_dir.classes:
            raise data.DataError(f"{root}/val has other classes than {root}/train")
        if args.train_subset > len(train_dir):
            raise data.DataError(f"--train-subset {args.train_subset} is larger than {root}/train ({len(train_dir)} images)")
        samples = train_dir.samples
        if args.train_subset:  # evenly spaced, so every class keeps its share
            samples = [samples[i] for i in np.linspace(0, len(samples) - 1, args.train_subset).astype(int)]
        train = data.FolderImages(samples, transforms.Compose([
            transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2), transforms.PILToTensor()]))
        test = data.FolderImages(test_dir.samples[rank::world], transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()]))
        info = data.DataInfo("imagenet", len(train_dir.classes), 224, data.IMAGENET_MEAN, data.IMAGENET_STD, 0,
                             loader_augments=True)
    else:
        arrays, info = data.load_arrays(args.dataset, args.data_dir)
        train = data.ArrayDataset(*data.take_subset(arrays["x_train"], arrays["y_train"], args.train_subset))
        test = data.ArrayDataset(arrays["x_test"][rank::world], arrays["y_test"][rank::world])  # exact shards
    augment = data.Augment(info, train=True, cutout=args.cutout, generator=gen, shard=(rank, world))
    return train, test, info, (augment, data.Augment(info, train=False)), gen


def make_loaders(args, train, test, rank, world, device):
    """Train loader: one process, the resumable SeededSampler; torchrun, DistributedSampler (a pass per epoch from
    seed + epoch, so it needs no state). ImageFolder data is decoded by --workers processes."""
    per_rank = args.batch_size // world
    n_rank = math.ceil(len(train) / world)
    drop_last = n_rank % per_rank == 1  # a lone last sample would break BN on the 1x1 maps of the auxiliary head
    sampler = (torch.utils.data.DistributedSampler(train, world, rank, shuffle=True, seed=args.seed) if world > 1
               else data.SeededSampler(len(train), args.seed))
    if args.dataset != "imagenet":  # arrays: whole batches from memory, no workers
        return (data.make_loader(train, per_rank, True, args.seed, drop_last, sampler=sampler),
                data.make_loader(test, per_rank, False, args.seed))
    kw = dict(num_workers=args.workers, pin_memory=device.type == "cuda")
    return (torch.utils.data.DataLoader(train, per_rank, sampler=sampler, drop_last=drop_last, **kw),
            torch.utils.data.DataLoader(test, per_rank, shuffle=False, **kw))


# -------------------------------------------------------------------------------------------- train/eval
def reduce_sum(values: list, device, world: int) -> list:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


def train_epoch(model, net, run, loader, epoch, prep, opt, sched, args, device) -> dict:
    """One epoch through `run.steps` (progress, the non-finite stop). Metrics are means over this rank's steps
    (data.Run averages them over the ranks)."""
    model.train()
    sums = {"train_loss": 0.0, "train_acc": 0.0}
    for x, y in run.steps(loader, epoch, sums):
        x, y = prep(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits, aux = forward(model, x)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            if aux is not None:  # DARTS auxiliary tower. PAPER: DARTS Sec. 3.2 (weight 0.4)
                loss = loss + args.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
        opt.step()
        sched.step()
        step_loss, step_acc = torch.stack([loss.detach().float(), (logits.argmax(1) == y).float().mean()]).tolist()
        sums["train_loss"], sums["train_acc"] = sums["train_loss"] + step_loss, sums["train_acc"] + step_acc
    return {k: v / len(loader) for k, v in sums.items()}


@torch.no_grad()
def evaluate(net, loader, prep, args, device, world) -> dict:
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-5, n
    for x, y in loader:
        x, y = prep(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            logits, _ = forward(net, x)
        logits = logits.float()
        top = logits.topk(min(5, logits.size(1)), dim=1).indices
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(1).sum()
        sums[3] += len(y)
    loss_sum, top1, top5, n = reduce_sum(sums.tolist(), device, world)
    return {"test_loss": loss_sum / n, "test_acc": top1 / n, "test_top5": top5 / n}


def sync_buffers(net, world):
    """Rank 0's BN statistics everywhere, so every shard of the test set is scored by the same network."""
    if world > 1:
        for b in net.buffers():
            dist.broadcast(b, 0)


def genotype_tag(text: str, genotype) -> str:
    """Run-name part: the published name, the search run's directory, or a short hash of the genotype."""
    if text in spaces.PUBLISHED:
        return text
    if Path(text).is_dir():  # a search run's directory
        return Path(text).resolve().name
    if Path(text).is_file():
        return Path(text).parent.name if Path(text).name == "genotype.json" else Path(text).stem
    return f"{genotype.space}_" + hashlib.sha1(json.dumps(genotype.to_json(), sort_keys=True).encode()).hexdigest()[:8]


# ------------------------------------------------------------------------------- ASNG-NAS's two retrainings
def enas_network(genotype, args, num_classes: int, in_channels: int) -> nn.Module:
    """ENAS micro evaluation network; --C unset: the official rule, the largest C in [0, 128) whose network has
    <= --params-limit (4.0) million parameters without the auxiliary head, by binary search (written to args)."""
    if args.C is None:
        args.C = spaces.enas_params_limited_C(genotype, args.params_limit or 4.0, args.layers, num_classes, in_channels)
    return spaces.EnasNetwork(genotype, args.C, args.layers, num_classes, args.auxiliary_weight > 0, in_channels)


def run_cae(args, genotype, world, device) -> dict:
    """Retrains a CAE genotype (spaces.CAENetwork) as main_inpainting_int.py does: MSE of the masked image's
    reconstruction, Adam (--lr 1e-3, betas (0.9, 0.999)), grad clip 5, batch 16, lr x0.1 after 2/5 and 4/5 of the
    steps (500k iterations: --epochs defaults to them rounded up); test MSE / PSNR / SSIM after every epoch. The run
    lifecycle is data.Run's (checkpoint and --resume, progress, the non-finite stop)."""
    if world > 1:
        raise data.DataError("the cae-inpainting protocol runs as one process (the official retraining is single-GPU)")
    torch.manual_seed(args.seed)
    train_loader, test_loader, channels = data.inpainting_loaders(args.dataset, args.data_dir, args.batch_size,
                                                                  args.seed, args.image_size, args.train_subset, False)
    args.epochs = args.epochs or math.ceil(500_000 / len(train_loader))
    net = spaces.CAENetwork(genotype=genotype, in_channels=channels).to(device)
    n_params, steps = spaces.count_parameters(net), args.epochs * len(train_loader)
    opt = torch.optim.Adam(net.parameters(), args.lr, betas=(args.momentum, 0.999), weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(steps * 2 / 5), int(steps * 4 / 5)], 0.1)
    gen = torch.Generator().manual_seed(args.seed + 1)
    run = data.Run(args, f"eval_{genotype_tag(args.genotype, genotype)}_{Path(args.dataset).stem}_s{args.seed}")
    state = {"model": net, "opt": opt, "sched": sched, "mask_gen": gen}
    if hasattr(train_loader.sampler, "state_dict"):
        state["data_order"] = train_loader.sampler
    print(f"cae-inpainting ({args.mask} mask): {genotype}\nparameters: {n_params:,} | {len(train_loader.dataset)} "
          f"training images on {device}", flush=True)
    metrics = {}
    for epoch in range(run.restore(state), args.epochs + 1):
        t0, sums, net = time.time(), {"train_loss": 0.0}, net.train()
        for x, _ in run.steps(train_loader, epoch, sums):
            inp, target = data.inpainting_batch(x, args.mask, gen, device)
            loss = F.mse_loss(net(inp), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), args.grad_clip)
            opt.step()
            sched.step()
            sums["train_loss"] += loss.item()
        net.eval()
        metrics = {"epoch": epoch, "lr": sched.get_last_lr()[0], "train_loss": sums["train_loss"] / len(train_loader),
                   **data.evaluate_inpainting(net, test_loader, args.mask, device), "epoch_time_s": time.time() - t0}
        run.end_epoch(state, metrics, show=("train_loss", "test_psnr", "test_ssim", "lr"))
    metrics = run.history[-1] if run.history else metrics
    result = {"protocol": args.protocol, "genotype": genotype.to_json(), "genotype_str": str(genotype),
              "params": n_params, "epochs": args.epochs, **{k: metrics[k] for k in ("test_mse", "test_psnr", "test_ssim")},
              "train_time_s": time.time() - run.start}
    print(f"params {n_params / 1e6:.3f}M | test PSNR {result['test_psnr']:.2f} dB, SSIM {result['test_ssim']:.4f}",
          flush=True)
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype), result_file="summary.json")


def main(argv=None) -> dict:
    if recurrent_job(argv):  # a recurrent cell: DARTS' language-model retraining (rnn_main, below)
        return rnn_main(argv)
    args = parse_args(argv)
    genotype = read_genotype(args.genotype)
    args = resolve(args, genotype)
    rank, world, device = data.init_distributed(args.device)
    if args.protocol == "cae-inpainting":
        return run_cae(args, genotype, world, device)
    # everything that can fail on bad input happens before the run directory exists
    data.per_rank_batch(args.batch_size, world)  # raises unless the global batch splits over the ranks
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    train, test, info, (train_prep, test_prep), aug_gen = load_data(args, rank, world)
    table = data.load_table(args.nb201_table) if args.nb201_table else None
    train_loader, test_loader = make_loaders(args, train, test, rank, world, device)
    if len(train_loader) == 0:
        raise data.DataError(f"{len(train)} training image(s) make no batch (a lone sample breaks batch norm)")
    net = build_network(genotype, args, info.num_classes, info.channels).to(device)
    n_params = spaces.count_parameters(net)
    opt = make_optimizer(args, net.parameters())
    steps_per_epoch = len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps_per_epoch, args))
    model = data.wrap_ddp(net, device)
    torch.manual_seed(args.seed + 1000 * rank)  # per-rank stream for drop path (data.Run saves every rank's)
    if device.type == "cuda" and not args.deterministic:
        torch.backends.cudnn.benchmark = True

    name = f"eval_{genotype_tag(args.genotype, genotype)}_{Path(args.dataset).stem}_s{args.seed}"
    run = data.Run(args, name, argv)
    # everything the next epoch depends on (checkpointed each epoch; data.py adds every rank's global RNGs)
    state = {"model": net, "opt": opt, "sched": sched, "augment_gen": aug_gen}
    if isinstance(train_loader.sampler, data.SeededSampler):
        state["data_order"] = train_loader.sampler
    if run.main:
        print(f"{args.protocol}: {genotype}\nparameters (without auxiliary head): {n_params:,} | "
              f"{len(train)} training images, {world} process(es) on {device}", flush=True)
    metrics = {}
    for epoch in range(run.restore(state), args.epochs + 1):
        t0 = time.time()
        if isinstance(train_loader.sampler, torch.utils.data.DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        # ALGO LOGIC: drop path ramps linearly from 0 (DARTS: p * epoch / epochs, epoch counted from 0)
        net.drop_path_prob = args.drop_path * (epoch - 1) / args.epochs
        metrics = {"epoch": epoch, "lr": opt.param_groups[0]["lr"],
                   **train_epoch(model, net, run, train_loader, epoch, train_prep, opt, sched, args, device)}
        sync_buffers(net, world)
        metrics.update(evaluate(net, test_loader, test_prep, args, device, world))
        metrics["epoch_time_s"] = time.time() - t0
        run.end_epoch(state, metrics, show=("train_loss", "train_acc", "test_acc", "lr"))
    metrics = run.history[-1] if run.history else metrics  # a resumed finished run: the saved last epoch

    result = {"protocol": args.protocol, "genotype": genotype.to_json(), "genotype_str": str(genotype),
              "params": n_params, "epochs": args.epochs, "test_acc": metrics["test_acc"],
              "test_error": 1 - metrics["test_acc"], "test_top5": metrics["test_top5"], "test_loss": metrics["test_loss"],
              "train_time_s": time.time() - run.start}
    if table is not None:
        result["benchmark"] = data.oracle_metrics(table, genotype, args.dataset)
    if run.main:
        print(f"params {n_params / 1e6:.3f}M | test accuracy {100 * result['test_acc']:.2f}% "
              f"(error {100 * result['test_error']:.2f}%)", flush=True)
        if table is not None:
            shown = ", ".join(f"{k} {v:.2f}%" for k, v in result["benchmark"].items() if "test" in k)
            print(f"NB201 benchmark (mean over seeds): {shown or 'cell not in the table'} | this run: "
                  f"{100 * result['test_acc']:.2f}%", flush=True)
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype), result_file="summary.json")


# ------------------------------------------------------------------------------------ the recurrent cell space
# quark0/darts rnn/train.py (its PTB setting; no code copied): emsize = nhid = 850, batch 64, BPTT 35 with random
# window lengths, SGD lr 20 (scaled by seq_len / bptt per step), wd 8e-7, clip 0.25, the five dropouts, TAR 1e-3,
# then ASGD (lr 20, t0 0, lambda 0: a plain average of the iterates from the switch on) once the validation loss is
# above the best of all but the last `nonmono` epochs; the best validation model (the averaged weights under ASGD)
# is tested at batch 1; validation at batch 10.
RNN_PROTOCOL = dict(dataset="ptb", data_dir="./data", emsize=850, nhid=850, bptt=35, dropout=0.75, dropouth=0.25,
                    dropoutx=0.75, dropouti=0.2, dropoute=0.1, ar=0.0, tar=1e-3, epochs=8000, batch_size=64, lr=20.0,
                    wd=8e-7, grad_clip=0.25, nonmono=5, seed=1267, device="auto", out_dir="runs")


def recurrent_job(argv) -> bool:
    """Does this command line retrain a recurrent cell (a genotype of the rnn space)?"""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--genotype")
    known = pre.parse_known_args(argv)[0]
    return known.genotype is not None and read_genotype(known.genotype).space == "rnn"


def rnn_parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Retrain a recurrent cell as DARTS' rnn/train.py (defaults: its PTB run).")
    p.add_argument("--genotype", default=None, help="recurrent genotype: genotype.json / search run directory, "
                   "DARTS_V1_RNN / DARTS_V2_RNN, or JSON {space: rnn, recurrent, concat}")
    p.add_argument("--dataset", help="ptb (default) | wt2 | a directory with train/valid/test text")
    p.add_argument("--data-dir", help="where ptb / wt2 are (default ./data)")
    data.add_lm_args(p)
    p.add_argument("--epochs", type=data.positive_int, help="epochs (8000)")
    p.add_argument("--batch-size", type=data.positive_int, help="training batch (64)")
    p.add_argument("--lr", type=data.positive_float, help="SGD (then ASGD) learning rate (20)")
    p.add_argument("--wd", type=data.nonneg_float, help="weight decay (8e-7)")
    p.add_argument("--grad-clip", type=data.positive_float, help="gradient-norm clip (0.25)")
    p.add_argument("--nonmono", type=data.positive_int, help="switch to ASGD when the validation loss is above the best "
                   "but the last N epochs' (5)")
    p.add_argument("--seed", type=data.seed, help="random seed (1267)")
    p.add_argument("--device", type=data.device_name, help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out-dir", type=data.out_dir, help="results go to OUT_DIR/RUN_NAME/ (default runs)")
    p.add_argument("--run-name", type=data.run_name, help="default: eval_{genotype}_{dataset}_s{seed}")
    data.add_run_args(p)  # --resume, --tensorboard, --log-every, --deterministic
    p.set_defaults(**{k: None for k in RNN_PROTOCOL})
    return p.parse_args(argv)


def asgd_averaged(model, opt) -> dict | None:
    """The average ASGD keeps of every weight ({name: ax}); None under SGD."""
    if not isinstance(opt, torch.optim.ASGD):
        return None
    return {n: opt.state[p]["ax"] if p in opt.state else p.detach() for n, p in model.named_parameters()}


@torch.no_grad()
def rnn_validate(model, opt, source, bptt) -> tuple[float, dict]:
    """(validation NLL, the weights scored, on the CPU): the current weights, or under ASGD their average."""
    current = {n: p.detach().clone() for n, p in model.named_parameters()}
    scored = asgd_averaged(model, opt) or current
    for n, p in model.named_parameters():
        p.copy_(scored[n])
    loss = spaces.evaluate_lm(model, source, bptt)
    weights = {n: p.detach().cpu().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.copy_(current[n])
    return loss, weights


def rnn_train_epoch(model, train, opt, args) -> float:
    """One epoch of rnn/train.py: random-length windows, lr * seq_len / bptt per step; returns the mean NLL."""
    model.train()
    hidden, lr, total, steps = model.init_hidden(train.size(1)), opt.param_groups[0]["lr"], 0.0, 0
    for i, n in data.lm_windows(train.size(0), args.bptt, np.random, jitter=True):
        opt.param_groups[0]["lr"] = lr * n / args.bptt
        nll, hidden = spaces.lm_weight_step(model, opt, data.lm_batch(train, i, n), hidden, None, args.grad_clip,
                                            args.ar, args.tar)
        if not math.isfinite(nll):  # DEVIATION: rnn/train.py rolls back to its best model; we stop (resumable)
            raise data.NonFiniteLoss(f"non-finite training loss at window {steps + 1}; lower --lr or resume")
        total, steps = total + nll, steps + 1
    opt.param_groups[0]["lr"] = lr
    return total / steps


def make_lm_optimizer(model, args, asgd: bool) -> torch.optim.Optimizer:
    if asgd:
        return torch.optim.ASGD(model.parameters(), args.lr, t0=0, lambd=0.0, weight_decay=args.wd)
    return torch.optim.SGD(model.parameters(), args.lr, weight_decay=args.wd)


def rnn_main(argv=None) -> dict:
    args = rnn_parse_args(argv)
    if args.genotype is None:
        raise spaces.GenotypeError("--genotype is required")
    genotype = read_genotype(args.genotype)
    for k, v in RNN_PROTOCOL.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.protocol = "rnn"
    data.refuse_torchrun("the recurrent cell retrains as one process (as DARTS' rnn/train.py)")
    # everything that can fail on bad input happens before the run directory exists
    device = data.resolve_device(args.device)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    corpus = data.lm_corpus(args.dataset, args.data_dir)
    train = data.batchify(corpus["train"], args.batch_size, device)
    valid, test = data.batchify(corpus["valid"], 10, device), data.batchify(corpus["test"], 1, device)
    model = spaces.RNNModel(len(corpus["vocab"]), genotype=genotype, **data.lm_model_args(args)).to(device)
    n_params = spaces.count_parameters(model)
    # both optimizers exist from the start (ASGD's state is made at its first step, as a fresh one at the switch)
    sgd, asgd = make_lm_optimizer(model, args, asgd=False), make_lm_optimizer(model, args, asgd=True)
    run = data.Run(args, f"eval_{genotype_tag(args.genotype, genotype)}_{Path(args.dataset).stem}_s{args.seed}", argv)
    progress = {"best": {"loss": math.inf, "epoch": 0, "weights": None}, "asgd_epoch": None, "val_losses": []}
    state = {"model": model, "sgd": sgd, "asgd": asgd, "progress": progress}  # checkpointed with the RNGs
    print(f"rnn: {genotype}\nparameters: {n_params:,} | {corpus['train'].numel():,} training tokens, vocabulary "
          f"{len(corpus['vocab']):,}, on {device}", flush=True)
    for epoch in range(run.restore(state), args.epochs + 1):
        t0 = time.time()
        opt = asgd if progress["asgd_epoch"] is not None else sgd
        train_loss = rnn_train_epoch(model, train, opt, args)
        val_loss, weights = rnn_validate(model, opt, valid, args.bptt)
        if val_loss < progress["best"]["loss"]:
            progress["best"] = {"loss": val_loss, "epoch": epoch, "weights": weights}
        if progress["asgd_epoch"] is None:
            if len(progress["val_losses"]) > args.nonmono and val_loss > min(progress["val_losses"][:-args.nonmono]):
                progress["asgd_epoch"] = epoch  # rnn/train.py "Switching!": ASGD from the next epoch on
            progress["val_losses"].append(val_loss)
        metrics = {"epoch": epoch, "train_ppl": math.exp(min(train_loss, 700)), "valid_ppl": math.exp(min(val_loss, 700)),
                   "next_optimizer": "asgd" if progress["asgd_epoch"] is not None else "sgd",
                   "epoch_time_s": time.time() - t0}
        run.end_epoch(state, metrics, show=("train_ppl", "valid_ppl", "next_optimizer"))
    best = progress["best"]
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(best["weights"][n])
    test_loss = spaces.evaluate_lm(model, test, args.bptt)
    result = {"protocol": "rnn", "genotype": genotype.to_json(), "genotype_str": str(genotype), "params": n_params,
              "epochs": args.epochs, "best_epoch": best["epoch"], "asgd_from_epoch": progress["asgd_epoch"],
              "valid_ppl": math.exp(best["loss"]), "test_ppl": math.exp(test_loss), "train_time_s": time.time() - run.start}
    print(f"params {n_params / 1e6:.2f}M | valid perplexity {result['valid_ppl']:.2f} (epoch {best['epoch']}) | "
          f"test perplexity {result['test_ppl']:.2f}", flush=True)
    return run.finish(result, genotype, spaces.genotype_to_dot(genotype), result_file="summary.json")


if __name__ == "__main__":
    data.cli(main)
