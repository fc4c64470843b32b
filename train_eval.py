"""train_eval.py -- train a searched architecture from scratch: the last stage of every paper's pipeline.

It reads what any algos/*.py writes (`--genotype runs/<run>/genotype.json`, or just `runs/<run>`), a published
genotype by name (`--genotype DARTS_V2`), an NB201 arch string, or an NB101 spec as JSON ({"matrix": [[...]], "ops":
[...]}, e.g. the NAS-Bench-1Shot1 cells that algos/*.py derive), and picks the protocol from the kind of genotype and
the dataset. Any image size of >= 8 px works (the DARTS auxiliary head pools to 2x2 whatever its input, see spaces.py).

Protocols (defaults = the papers'; every default can be overridden by its flag):
  darts-cifar     DARTS evaluation network (NetworkCIFAR), C=36, 20 cells, auxiliary head weight 0.4, drop path 0.3
                  (ramped linearly from 0), cutout 16, 600 epochs, batch 128, SGD lr 0.025 cosine to 0 (per epoch),
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
Resume a killed run (same result as an uninterrupted one on CPU; other flags are taken from the run):
    python train_eval.py --resume runs/<run>

Outputs in runs/{run_name}/: args.json (resolved), metrics.jsonl (one line per epoch), checkpoint.pt (every epoch,
written atomically), summary.json (parameters, final test accuracy / error, benchmark figure). Under torchrun every
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
    # DEVIATION: batch 128 and drop path 0.3 are the PC-DARTS / GAEA routine; DARTS' train.py uses 96 and 0.2.
    "darts-cifar": dict(C=36, layers=20, epochs=600, batch_size=128, lr=0.025, lr_min=0.0, momentum=0.9, wd=3e-4,
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
}
COMMON = dict(dataset="cifar10", data_dir="./data", train_subset=0, seed=0, device="auto", out_dir="runs", amp=False)
# may differ between a run and its resumption; everything else must match
RESUMABLE_CHANGES = {"genotype", "device", "amp", "out_dir", "run_name", "resume", "data_dir", "workers"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


ResumeError = data.ResumeError  # one error for every refused resume, searches and retraining alike


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
    p.add_argument("--seed", type=data.seed, default=None, help="random seed (default 0)")
    p.add_argument("--device", type=data.device_name, default=None, help="auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--out-dir", type=data.out_dir, default=None, help="results go to OUT_DIR/RUN_NAME/ (default runs)")
    p.add_argument("--run-name", type=data.run_name, default=None, help="default: eval_{space}_{genotype}_{dataset}_s{seed}")
    p.add_argument("--resume", default=None, help="run directory to continue from its checkpoint.pt")
    args = p.parse_args(argv)
    if args.genotype is None and args.resume is None:
        p.error("--genotype is required (or --resume RUN_DIR)")
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
    if isinstance(genotype, spaces.DartsGenotype):
        return "darts-imagenet" if dataset == "imagenet" else "darts-cifar"
    if dataset == "imagenet":
        raise spaces.SpaceError("--dataset imagenet (ImageFolder) is for DARTS genotypes; NB201 / NB101 cells train "
                                "on cifar10 / cifar100 / imagenet16-120 / .npz arrays")
    return "nb201" if isinstance(genotype, spaces.NB201Genotype) else "nb101"


def resolve(args: argparse.Namespace, genotype) -> argparse.Namespace:
    """Fill every flag left unset with the protocol's default; reject flags the protocol has no use for."""
    for k, v in COMMON.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.protocol = protocol_of(genotype, args.dataset)
    proto = PROTOCOLS[args.protocol]
    is_darts, folder = args.protocol.startswith("darts"), args.dataset == "imagenet"
    for flag, ok in (("auxiliary_weight", is_darts), ("drop_path", is_darts), ("cutout", not folder),
                     ("workers", folder), ("lr_min", proto["schedule"] != "linear-epoch"),
                     ("nb201_table", args.protocol == "nb201")):
        if getattr(args, flag) and not ok:
            raise spaces.SpaceError(f"--{flag.replace('_', '-')} does not apply to the {args.protocol} protocol")
    for k, v in proto.items():
        if k in ("optimizer", "schedule"):
            setattr(args, k, v)
        elif getattr(args, k) is None:
            setattr(args, k, v)
    if folder and args.workers is None:
        args.workers = 8
    if is_darts and args.layers < 3:
        raise spaces.SpaceError(f"--layers {args.layers}: a DARTS network needs >= 3 cells (reductions at layers//3 "
                                f"and 2*layers//3)")
    if args.optimizer == "sgd-nesterov" and args.momentum == 0:
        raise spaces.SpaceError("--momentum 0: the nb201 protocol's nesterov SGD needs a momentum > 0")
    if args.schedule == "linear-epoch" and args.epochs <= 5:
        raise spaces.SpaceError(f"--epochs {args.epochs}: the darts-imagenet schedule decays over epochs - 5, so it "
                                f"needs > 5 epochs")
    return args


def merge_resumed(args: argparse.Namespace, ckpt: dict):
    """Flags not given now come from the run being resumed; given ones must match it (except RESUMABLE_CHANGES)."""
    saved = ckpt["args"]
    genotype = spaces.genotype_from_json(ckpt["genotype"])
    if args.genotype is not None and read_genotype(args.genotype).to_json() != ckpt["genotype"]:
        raise ResumeError(f"refusing to resume {args.resume}: it trains a different genotype ({genotype})")
    clashes = [f"--{k.replace('_', '-')} {getattr(args, k)} (run: {v})" for k, v in saved.items()
               if k not in RESUMABLE_CHANGES and hasattr(args, k) and getattr(args, k) is not None
               and getattr(args, k) != v]
    if clashes:
        raise ResumeError(f"refusing to resume {args.resume} with different settings: {', '.join(clashes)}")
    for k, v in saved.items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    return args, genotype


# ----------------------------------------------------------------------------------------------- network
def build_network(genotype, args, num_classes: int, in_channels: int = 3) -> nn.Module:
    aux = args.auxiliary_weight > 0
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
class ImageFolderInfo:
    def __init__(self, name, num_classes, image_size, channels=3):
        self.name, self.num_classes, self.image_size, self.channels = name, num_classes, image_size, channels


def load_data(args, rank: int, world: int):
    """(train dataset, test dataset, info, per-batch input transform for train / test, shuffling generator)."""
    if args.dataset == "imagenet":
        from torchvision import datasets, transforms  # only the ImageFolder path needs it
        root = Path(args.data_dir)
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise data.DataError(f"--dataset imagenet needs ImageFolder directories {root}/train and {root}/val")
        norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train = datasets.ImageFolder(root / "train", transforms.Compose([
            transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
            transforms.ToTensor(), norm]))
        test = datasets.ImageFolder(root / "val", transforms.Compose([
            transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm]))
        if test.classes != train.classes:
            raise data.DataError(f"{root}/val has other classes than {root}/train")
        info = ImageFolderInfo("imagenet", len(train.classes), 224)
        if args.train_subset > len(train):
            raise data.DataError(f"--train-subset {args.train_subset} is larger than {root}/train ({len(train)} images)")
        if args.train_subset:  # evenly spaced, so every class keeps its share
            idx = np.linspace(0, len(train) - 1, args.train_subset).astype(int).tolist()
            train = torch.utils.data.Subset(train, idx)
        test = torch.utils.data.Subset(test, list(range(rank, len(test), world)))
        return train, test, info, None, None
    arrays, info = data.load_arrays(args.dataset, args.data_dir)
    x, y = data.take_subset(arrays["x_train"], arrays["y_train"], args.train_subset)
    gen = torch.Generator().manual_seed(args.seed + 1000 * rank)
    augment = data.Augment(info, train=True, cutout=args.cutout, generator=gen)
    train = data.ArrayDataset(x, y)
    test = data.ArrayDataset(arrays["x_test"][rank::world], arrays["y_test"][rank::world])  # exact shards
    return train, test, info, (augment, data.Augment(info, train=False)), gen


def make_loaders(args, train, test, rank, world, device):
    per_rank = args.batch_size // world
    sampler = None
    n_rank = math.ceil(len(train) / world)
    drop_last = n_rank % per_rank == 1  # a lone last sample would break BN on the 1x1 maps of the auxiliary head
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(train, world, rank, shuffle=True, seed=args.seed)
    if args.dataset == "imagenet":
        if sampler is None:
            sampler = torch.utils.data.RandomSampler(train, generator=torch.Generator().manual_seed(args.seed))
        kw = dict(num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=False)
        return (torch.utils.data.DataLoader(train, per_rank, sampler=sampler, drop_last=drop_last, **kw),
                torch.utils.data.DataLoader(test, per_rank, shuffle=False, **kw))
    train_loader = data.make_loader(train, per_rank, shuffle=True, seed=args.seed, drop_last=drop_last, sampler=sampler)
    return train_loader, data.make_loader(test, per_rank, shuffle=False, seed=args.seed)


# ----------------------------------------------------------------------------------------- checkpointing
def rng_state(augment_gen, sampler) -> dict:
    gen = getattr(sampler, "generator", None)
    return {**data.rng_state(), "augment": augment_gen.get_state() if augment_gen is not None else None,
            "sampler": gen.get_state() if gen is not None else None}


def set_rng_state(state: dict, augment_gen, sampler) -> None:
    data.set_rng_state(state)
    if augment_gen is not None:
        augment_gen.set_state(state["augment"])
    if getattr(sampler, "generator", None) is not None:
        sampler.generator.set_state(state["sampler"])


CHECKPOINT_KEYS = {"epoch", "genotype", "args", "model", "optimizer", "scheduler", "rng", "history", "elapsed",
                   "world_size"}


def load_checkpoint(run_dir: str) -> dict:
    path = Path(run_dir) / data.CHECKPOINT
    ckpt = data.load_checkpoint(path)  # missing, torn or foreign: one error line
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
        raise ResumeError(f"{path} is not a train_eval.py checkpoint (missing its keys)")
    return ckpt


class ResumedRun(data.RunLogger):
    """An existing run directory, continued (RunLogger itself always starts a new one)."""

    def __init__(self, path: str, elapsed: float, history: list):
        self.path, self.start = Path(path), time.time() - elapsed
        self.write_text("metrics.jsonl", "".join(json.dumps(m) + "\n" for m in history))  # drop epochs past the checkpoint


# -------------------------------------------------------------------------------------------- train/eval
def reduce_sum(values: list, device, world: int) -> list:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


def train_epoch(model, net, loader, prep, opt, sched, args, device, world) -> dict:
    model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * n, correct, n (kept on device: no syncs)
    for x, y in loader:
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
        with torch.no_grad():
            sums[0] += loss.detach().double() * len(y)
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(y)
    loss_sum, correct, n = reduce_sum(sums.tolist(), device, world)
    return {"train_loss": loss_sum / n, "train_acc": correct / n}


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


def benchmark_figures(table: dict, genotype, dataset: str) -> dict:
    row = table.get(str(genotype), {})
    name = Path(dataset).name.lower()
    prefix = "c100" if "cifar100" in name else "c10" if "cifar10" in name else "in16" if "imagenet16" in name else ""
    # the column's dataset is the part before the first "_": "c10" must not match "c100_test_200"
    return {k: v for k, v in row.items() if k.endswith("_test_200") and k.split("_")[0] == (prefix or k.split("_")[0])
            and not k.startswith("nats")}


def genotype_tag(text: str, genotype) -> str:
    """Run-name part: the published name, the search run's directory, or a short hash of the genotype."""
    if text in spaces.PUBLISHED:
        return text
    if Path(text).is_dir():  # a search run's directory
        return Path(text).resolve().name
    if Path(text).is_file():
        return Path(text).parent.name if Path(text).name == "genotype.json" else Path(text).stem
    return f"{genotype.space}_" + hashlib.sha1(json.dumps(genotype.to_json(), sort_keys=True).encode()).hexdigest()[:8]


def main(argv=None) -> dict:
    if recurrent_job(argv):  # a recurrent cell: DARTS' language-model retraining (rnn_main, below)
        return rnn_main(argv)
    args = parse_args(argv)
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        args, genotype = merge_resumed(args, ckpt)
    else:
        genotype = read_genotype(args.genotype)
    args = resolve(args, genotype)
    rank, world, device = data.init_distributed(args.device)
    result = run(args, genotype, ckpt, rank, world, device)
    data.barrier_and_destroy()
    return result


def run(args, genotype, ckpt, rank, world, device) -> dict:
    # everything that can fail on bad input happens before the run directory exists
    data.per_rank_batch(args.batch_size, world)  # raises unless the global batch splits over the ranks
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    train, test, info, preps, aug_gen = load_data(args, rank, world)
    table = data.load_table(args.nb201_table) if args.nb201_table else None
    train_loader, test_loader = make_loaders(args, train, test, rank, world, device)
    if len(train_loader) == 0:
        raise data.DataError(f"{len(train)} training image(s) make no batch (a lone sample breaks batch norm)")
    net = build_network(genotype, args, info.num_classes, info.channels).to(device)
    n_params = spaces.count_parameters(net)
    opt = make_optimizer(args, net.parameters())
    steps = len(train_loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, args))
    model = data.wrap_ddp(net, device)
    train_prep, test_prep = (preps[0], preps[1]) if preps else (lambda x: x, lambda x: x)
    torch.manual_seed(args.seed + 1000 * rank)  # per-rank stream for drop path (and ImageFolder workers)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    start_epoch, history = 1, []
    if ckpt is not None:
        if ckpt["world_size"] != world:
            raise ResumeError(f"{args.resume} ran on {ckpt['world_size']} processes; resume it on the same number")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"][rank], aug_gen, train_loader.sampler)
        start_epoch, history = ckpt["epoch"] + 1, ckpt["history"]
    log = None
    if rank == 0:
        if ckpt is not None:
            log = ResumedRun(args.resume, ckpt["elapsed"], history)
        else:
            name = args.run_name or f"eval_{genotype_tag(args.genotype, genotype)}_{Path(args.dataset).stem}_s{args.seed}"
            log = data.RunLogger(args.out_dir, name, vars(args))
            log.write_text("cell.dot", spaces.genotype_to_dot(genotype))
        print(f"{args.protocol}: {genotype}\nparameters (without auxiliary head): {n_params:,} | "
              f"{len(train)} training images, {world} process(es) on {device}", flush=True)

    metrics = history[-1] if history else {}
    for epoch in range(start_epoch, args.epochs + 1):
        t0 = time.time()
        if isinstance(train_loader.sampler, torch.utils.data.DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        # ALGO LOGIC: drop path ramps linearly from 0 (DARTS: p * epoch / epochs, epoch counted from 0)
        net.drop_path_prob = args.drop_path * (epoch - 1) / args.epochs
        lr = opt.param_groups[0]["lr"]
        metrics = {"epoch": epoch, "lr": lr, **train_epoch(model, net, train_loader, train_prep, opt, sched, args,
                                                           device, world)}
        sync_buffers(net, world)
        metrics.update(evaluate(net, test_loader, test_prep, args, device, world))
        metrics["epoch_time_s"] = time.time() - t0
        history.append(metrics)
        states = [None] * world
        if world > 1:
            dist.all_gather_object(states, rng_state(aug_gen, train_loader.sampler))
        else:
            states = [rng_state(aug_gen, train_loader.sampler)]
        if rank == 0:
            log.log(metrics)
            data.save_checkpoint(log.path / "checkpoint.pt", {
                "epoch": epoch, "genotype": genotype.to_json(), "args": vars(args), "model": net.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": states, "history": history,
                "elapsed": time.time() - log.start, "world_size": world})
            log.progress(epoch, args.epochs, metrics, ("train_loss", "train_acc", "test_acc", "lr"))

    result = {"protocol": args.protocol, "genotype": genotype.to_json(), "genotype_str": str(genotype),
              "params": n_params, "epochs": args.epochs, "test_acc": metrics["test_acc"],
              "test_error": 1 - metrics["test_acc"], "test_top5": metrics["test_top5"], "test_loss": metrics["test_loss"]}
    if table is not None:
        result["benchmark"] = benchmark_figures(table, genotype, args.dataset)
    if rank != 0:
        return result
    result["train_time_s"] = time.time() - log.start
    log.write_json("summary.json", result)
    print(f"params {n_params / 1e6:.3f}M | test accuracy {100 * result['test_acc']:.2f}% "
          f"(error {100 * result['test_error']:.2f}%)", flush=True)
    if table is not None:
        shown = ", ".join(f"{k} {v:.2f}%" for k, v in result["benchmark"].items()) or "cell not in the table"
        print(f"NB201 benchmark (200 epochs, mean over seeds): {shown} | this run: {100 * result['test_acc']:.2f}%")
    print(f"results in {log.path}", flush=True)
    return {**result, "run_dir": str(log.path)}


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
    """Does this command line retrain a recurrent cell (a genotype of the rnn space, or --resume of such a run)?"""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--genotype")
    pre.add_argument("--resume")
    known = pre.parse_known_args(argv)[0]
    if known.resume:
        try:
            return json.loads((Path(known.resume) / "args.json").read_text()).get("protocol") == "rnn"
        except (OSError, ValueError):  # not a run directory: the image path says so
            return False
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
    p.add_argument("--resume", default=None, help="run directory to continue from its checkpoint.pt")
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
    args, ckpt = rnn_parse_args(argv), None
    if args.genotype is None and args.resume is None:
        raise spaces.GenotypeError("--genotype is required (or --resume RUN_DIR)")
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        args, genotype = merge_resumed(args, ckpt)
    else:
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
    opt = make_lm_optimizer(model, args, ckpt is not None and ckpt["asgd_epoch"] is not None)
    start, history, best, asgd_epoch, val_losses = 1, [], {"loss": math.inf, "epoch": 0, "weights": None}, None, []
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        data.set_rng_state(ckpt["rng"])
        start, history, best, asgd_epoch, val_losses = (ckpt["epoch"] + 1, ckpt["history"], ckpt["best"],
                                                        ckpt["asgd_epoch"], ckpt["val_losses"])
        log = ResumedRun(args.resume, ckpt["elapsed"], history)
    else:
        name = args.run_name or f"eval_{genotype_tag(args.genotype, genotype)}_{Path(args.dataset).stem}_s{args.seed}"
        log = data.RunLogger(args.out_dir, name, vars(args))
        log.write_text("cell.dot", spaces.genotype_to_dot(genotype))
    print(f"rnn: {genotype}\nparameters: {n_params:,} | {corpus['train'].numel():,} training tokens, vocabulary "
          f"{len(corpus['vocab']):,}, on {device}", flush=True)
    for epoch in range(start, args.epochs + 1):
        t0 = time.time()
        train_loss = rnn_train_epoch(model, train, opt, args)
        val_loss, weights = rnn_validate(model, opt, valid, args.bptt)
        if val_loss < best["loss"]:
            best = {"loss": val_loss, "epoch": epoch, "weights": weights}
        if asgd_epoch is None:
            if len(val_losses) > args.nonmono and val_loss > min(val_losses[:-args.nonmono]):
                opt, asgd_epoch = make_lm_optimizer(model, args, asgd=True), epoch  # rnn/train.py "Switching!"
            val_losses.append(val_loss)
        metrics = {"epoch": epoch, "train_ppl": math.exp(min(train_loss, 700)), "valid_ppl": math.exp(min(val_loss, 700)),
                   "next_optimizer": "asgd" if isinstance(opt, torch.optim.ASGD) else "sgd", "epoch_time_s": time.time() - t0}
        history.append(metrics)
        log.log(metrics)
        data.save_checkpoint(log.path / data.CHECKPOINT, {
            "epoch": epoch, "genotype": genotype.to_json(), "args": vars(args), "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": None, "rng": data.rng_state(), "history": history,
            "elapsed": time.time() - log.start, "world_size": 1, "best": best, "asgd_epoch": asgd_epoch,
            "val_losses": val_losses})
        log.progress(epoch, args.epochs, metrics, ("train_ppl", "valid_ppl", "next_optimizer"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(best["weights"][n])
    test_loss = spaces.evaluate_lm(model, test, args.bptt)
    result = {"protocol": "rnn", "genotype": genotype.to_json(), "genotype_str": str(genotype), "params": n_params,
              "epochs": args.epochs, "best_epoch": best["epoch"], "asgd_from_epoch": asgd_epoch,
              "valid_ppl": math.exp(best["loss"]), "test_ppl": math.exp(test_loss), "train_time_s": time.time() - log.start}
    log.write_json("summary.json", result)
    print(f"params {n_params / 1e6:.2f}M | valid perplexity {result['valid_ppl']:.2f} (epoch {best['epoch']}) | "
          f"test perplexity {result['test_ppl']:.2f}\nresults in {log.path}", flush=True)
    return {**result, "run_dir": str(log.path)}


if __name__ == "__main__":
    try:
        main()
    except (data.DataError, spaces.SpaceError, spaces.GenotypeError) as err:  # ResumeError is a DataError
        sys.exit(f"error: {err}")
